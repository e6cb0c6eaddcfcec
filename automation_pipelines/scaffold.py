"""`automation-pipelines new NAME`: a complete automation to fill in, which passes
`automation-pipelines check` and its own test as generated.

It writes the folder `automations/<name>/` (the declaration with its owner and expectation, one
op with a retry preset, the job, a schedule named by its cadence, `definitions.py`, the runbook
with the sections the checklist asks for) and `automation_pipelines_tests/automations/<name>/`
(a test that runs the job). The expectation follows from the schedule: a success within the
longest gap between two of its ticks plus two hours, and at most one more run an hour than its
busiest hour starts. An owner without a route in `alert_routes.yaml` gets one.
"""

from __future__ import annotations

import itertools
import keyword
import math
import re
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from croniter import croniter

from automation_pipelines.paths import PROJECT_ROOT

NAME = re.compile(r"^[a-z][a-z0-9_]{1,29}$")
OWNER = re.compile(r"^[a-z][a-z0-9_-]*:[a-z0-9][a-z0-9_.-]*$")
#: Fire times are looked at over two weeks from a fixed Monday, to find gaps and busy hours.
WINDOW = timedelta(days=14)
START = datetime(2026, 1, 5, tzinfo=UTC)


class ScaffoldError(ValueError):
    """A name, owner or schedule `new` cannot use; the message says why."""


@dataclass(frozen=True)
class Cadence:
    """What a cron expression means for the automation's declaration."""

    word: str  # hourly, daily, … as the schedule's name says it
    success_within_hours: int
    max_runs_per_hour: int


def cadence(cron: str) -> Cadence:
    if not croniter.is_valid(cron):
        raise ScaffoldError(f"{cron!r} is not a cron expression (minute hour day month weekday)")
    moments = croniter(cron, START)
    fires: list[datetime] = []
    while (moment := moments.get_next(datetime)) - START <= WINDOW:
        fires.append(moment)
    if len(fires) < 2:
        raise ScaffoldError(f"{cron!r} fires less than twice in two weeks; give a cadence")
    gaps = [(b - a).total_seconds() / 60 for a, b in itertools.pairwise(fires)]
    shortest, longest = min(gaps), max(gaps)
    if shortest < 60:
        word = f"every_{int(shortest)}_minutes"
    elif shortest == 60:
        word = "hourly"
    elif shortest < 1440:
        word = f"every_{int(shortest // 60)}_hours"
    elif shortest < 10080:
        word = "daily"
    else:
        word = "weekly"
    busiest = max(
        sum(1 for f in fires if start <= f < start + timedelta(hours=1)) for start in fires
    )
    return Cadence(word, math.ceil(longest / 60) + 2, busiest + 1)


@dataclass(frozen=True)
class Made:
    files: list[Path]
    route_added: bool


def create(name: str, owner: str, cron: str, root: Path = PROJECT_ROOT) -> Made:
    """Write the automation `name` under `root`; refuse a bad or taken name before writing."""
    if not NAME.match(name) or keyword.iskeyword(name) or name.endswith("_"):
        raise ScaffoldError(
            f"{name!r} is not a usable name: 2 to 30 lower-case letters, digits and _, starting "
            "with a letter (it becomes a Python package and the prefix of the job's name)"
        )
    if not OWNER.match(owner):
        raise ScaffoldError(f"{owner!r} is not an owner like team:data or person:alice")
    folder = root / "automation_pipelines" / "automations" / name
    tests = root / "automation_pipelines_tests" / "automations" / name
    for taken in (folder, tests):
        if taken.exists():
            raise ScaffoldError(f"{taken} already exists: pick another name or remove it")
    every = cadence(cron)
    values = {
        "name": name,
        "title": name.replace("_", " ").capitalize(),
        "klass": "".join(part.capitalize() for part in name.split("_")),
        "owner": owner,
        "cron": cron,
        "cadence": every.word,
        "within": str(every.success_within_hours),
        "max_runs": str(every.max_runs_per_hour),
        "status": "`automation-pipelines status`; *Deployment → Daemons*",
    }
    files = {
        folder / "__init__.py": INIT,
        folder / "ops.py": OPS,
        folder / "jobs.py": JOBS,
        folder / "schedules.py": SCHEDULES,
        folder / "definitions.py": DEFINITIONS,
        folder / "README.md": RUNBOOK,
        tests / "__init__.py": "",
        tests / f"test_{name}.py": TEST,
    }
    routes, inventory = root / "alert_routes.yaml", root / "credentials.yaml"
    edits = _route_edits(routes, inventory, owner)  # checked before anything is written
    written = []
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(string.Template(template).substitute(values))
        written.append(path)
    for path, text in edits.items():
        path.write_text(text)
    return Made(written, bool(edits))


def _route_edits(routes: Path, inventory: Path, owner: str) -> dict[Path, str]:
    """For an owner without a route: the route (its own variable, then ALERT_URLS) appended to
    alert_routes.yaml, and that variable declared in credentials.yaml (it holds tokens; `check`
    requires every secret the project reads to be declared). Comments and order stay."""
    text = routes.read_text()
    if re.search(rf"^\s+{re.escape(owner)}\s*:", text, re.MULTILINE):
        return {}
    variable = "ALERT_URLS_" + re.sub(r"[^A-Z0-9]+", "_", owner.split(":", 1)[1].upper())
    if not re.search(r"^owners:\s*$", text, re.MULTILINE):
        text = text.rstrip("\n") + "\nowners:\n"
    edits = {routes: text.rstrip("\n") + f"\n  {owner}: [{variable}, ALERT_URLS]\n"}
    if not inventory.is_file():
        return edits
    declared = inventory.read_text()
    if re.search(rf"^\s+env:\s*{variable}\s*$", declared, re.MULTILINE):
        return edits
    key = variable.lower()
    entry = string.Template(CREDENTIAL).substitute(key=key, variable=variable, owner=owner)
    updated = declared.rstrip("\n") + "\n\n" + entry
    found = (yaml.safe_load(updated) or {}).get("credentials") or {}
    if (found.get(key) or {}).get("env") != variable:
        raise ScaffoldError(
            f"cannot declare {variable} in {inventory}: the file does not end in its "
            "`credentials:` mapping; add the route and the credential by hand"
        )
    return {**edits, inventory: updated}


CREDENTIAL = """  ${key}:
    env: ${variable}
    probe: alert_urls
    account: "the alerting bot's tokens for ${owner}"
    owner: ${owner}
    used_by: [${owner}'s alert route]
    rotate: >-
      issue a new token, replace the URL in .env;
      `automation-pipelines credentials rotated ${key}`
    rotate_every_days: 365
    required: false
"""

INIT = '''"""${title}: say here in one line what it does and for whom."""

from automation_pipelines.reliability.automation import Automation, Expectation

AUTOMATION = Automation.here(
    __file__,
    owner="${owner}",
    # Healthy means a success at least this often; the watchdog tells the owner otherwise, and
    # more runs than max_runs_per_hour in an hour is a runaway loop.
    expect=Expectation(success_within_hours=${within}, max_runs_per_hour=${max_runs}),
    max_runtime_seconds=600,
)
'''

OPS = '''"""${title}: the work. Replace the body of do_the_work with yours."""

import dagster as dg

from automation_pipelines.automations.${name} import AUTOMATION
from automation_pipelines.reliability.errors import LOCAL_IO


class ${klass}Config(dg.Config):
    """Settings of a run, set in the Launchpad or by the schedule."""

    items: list[str] = ["example"]


@AUTOMATION.op(LOCAL_IO)
def do_the_work(
    context: dg.OpExecutionContext,
    config: ${klass}Config,
) -> int:
    """Handle each item. A transient error (a timeout, a busy database) is retried by the preset;
    raise PermanentError for one that retrying cannot fix, so the owner hears at once."""
    for item in config.items:
        context.log.info(f"handled {item}")
    return len(config.items)
'''

JOBS = '''"""The ${name} job."""

from automation_pipelines.automations.${name} import AUTOMATION, ops


@AUTOMATION.job(
    name="${name}_job",
    description="Runs ${name}; say what it produces and for whom.",
)
def ${name}_job():
    ops.do_the_work()
'''

SCHEDULES = '''"""When the ${name} job runs."""

from automation_pipelines.automations.${name} import AUTOMATION, jobs

${name}_${cadence}_schedule = AUTOMATION.schedule(
    name="${name}_${cadence}_schedule",
    job=jobs.${name}_job,
    cron_schedule="${cron}",
    description="Runs ${name}_job (cron in UTC).",
)
'''

DEFINITIONS = '''"""What the ${name} automation contributes to the code location."""

from automation_pipelines.automations.${name} import (
    AUTOMATION,
    jobs,
    schedules,
)

# The declaration refuses anything made around it and adds the resources its alert hook needs,
# so these definitions load (and the tests run them) on their own.
defs = AUTOMATION.definitions(
    jobs=[jobs.${name}_job],
    schedules=[schedules.${name}_${cadence}_schedule],
)
'''

RUNBOOK = """# ${name} — runbook

Owner: `${owner}` · Job: `${name}_job` · Trigger: `${name}_${cadence}_schedule` (cron `${cron}`,
UTC) · Max runtime: 10 min · Concurrency: one run at a time (tag `automation=${name}`)

## What it does
Say what it produces, for whom, and what "done" looks like. Its settings (op config of
`do_the_work`, set in the Launchpad or by the schedule):

| field | default | meaning |
| --- | --- | --- |
| `items` | `["example"]` | what one run handles |

## What it touches
Say what it reads and writes (folders, tables, APIs) and the credentials it uses, each declared
in `credentials.yaml`.

## How to pause
- `automation-pipelines pause ${name} --reason "…"` stops its schedule from starting runs;
  `automation-pipelines resume ${name}` undoes it.
- In the UI: *Automation → Schedules → ${name}_${cadence}_schedule → toggle off*.

## Alerts
A failed run alerts `${owner}` through the URLs its route in `alert_routes.yaml` names, once per
incident, with a recovery notice after the next success. No success within ${within} h, or more
than ${max_runs} runs in an hour, is a watchdog alert.

## Failure modes
| symptom | cause | what to do |
| --- | --- | --- |
| no runs at all | the schedule is paused or stopped, or the daemon is down | ${status} |
"""

TEST = '''"""${title}: the job runs its work and succeeds."""

from automation_pipelines.automations.${name}.definitions import defs


def test_the_job_handles_each_item(sqlite_instance) -> None:
    # The folder's own definitions, loaded alone, with the resources they carry.
    result = defs.get_job_def("${name}_job").execute_in_process(
        instance=sqlite_instance,
        run_config={"ops": {"do_the_work": {"config": {"items": ["a", "b"]}}}},
    )
    assert result.success
    assert result.output_for_node("do_the_work") == 2
'''
