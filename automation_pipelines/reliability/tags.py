"""Tag and job-metadata names the layers agree on.

Tags land on every run, so they are kept to what identifies a run (owner, automation), what
Dagster's run queue and run monitoring act on, and what the run did. The declaration's settings
are job metadata instead: the job's page shows them once, and the monitoring reads them from
the definitions, never from runs.
"""

#: The automation an asset belongs to; on runs made before jobs said it in their metadata.
AUTOMATION_TAG = "automation"
#: The person or team that is alerted and answers for the automation.
OWNER_TAG = "owner"
#: Dagster's own tag: run monitoring stops a run that has run longer than this many seconds.
MAX_RUNTIME_TAG = "dagster/max_runtime"
#: Dagster's own tag: with "false", run retries never re-run a run whose op failed.
RETRY_ON_OP_FAILURE_TAG = "dagster/retry_on_asset_or_op_failure"
#: Dagster's own tags on failed runs and their automatic retries.
WILL_RETRY_TAG = "dagster/will_retry"
ROOT_RUN_TAG = "dagster/root_run_id"
#: Dagster's own tag: the run key a sensor or schedule requested the run under.
RUN_KEY_TAG = "dagster/run_key"
#: Job metadata: what healthy means (see Expectation), read by the watchdog and the checklist.
EXPECT_SUCCESS_KEY = "expect/success_within_seconds"
EXPECT_MAX_RUNS_KEY = "expect/max_runs_per_hour"
EXPECT_TRIGGER_KEY = "expect/trigger_stale_seconds"
#: Job metadata: consecutive failed runs after which the circuit breaker stops the triggers.
BREAKER_KEY = "breaker/after_failures"
#: Job metadata: the automation a job belongs to (on its page; its runs carry no tag for it, as
#: Dagster's run list gives every tag of a run a line of its own).
AUTOMATION_KEY = "automation"
#: Job metadata: the runbook's URL, a link on the job's page.
RUNBOOK_KEY = "runbook"
#: Job metadata: runs of the automation that may be in progress at once, the limit of its
#: concurrency pool (named after it; see reliability/pools.py).
RUNS_AT_ONCE_KEY = "automation/runs_at_once"
#: The line in a job description that points a reader at the runbook.
RUNBOOK_PREFIX = "Runbook: "
