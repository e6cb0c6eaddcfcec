"""Web images: a watched folder of photos becomes web-ready WebP and JPEG renditions."""

from automation_pipelines.reliability.automation import Automation, Expectation

AUTOMATION = Automation.here(
    __file__,
    owner="team:platform",
    # Photos arrive when people take them, so no success window: silence is the inbox sensor
    # not ticking. A steady trickle of photos gets a run at every round of the sensor daemon,
    # 720 an hour, and the paced sensor keeps to 810; more than 900 is a loop, not a busy day.
    expect=Expectation(max_runs_per_hour=900, trigger_stale_minutes=10),
    max_runtime_seconds=1800,
    breaker_after_failures=5,
    # A run renders its batch under the tree's lock, and every write is idempotent, so a second
    # run may start while one renders: its worker loads meanwhile, then waits for the lock.
    side_by_side=2,
)
