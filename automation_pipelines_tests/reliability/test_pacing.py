"""Run pacing: a paced sensor never starts more runs than its automation's declared maximum.

The room is computed from when runs were created; Hypothesis drives arrival patterns (a trickle,
bursts, silence) through a sensor that asks for its room every round of the sensor daemon, and
no hour ever holds more runs than the budget. On a real instance the room is counted from the
automation's runs, and a sensor that asks for more than its room fails its tick instead of
starting the runs. The readiness checklist refuses an expectation a trigger can exceed.
"""

from __future__ import annotations

import itertools
import time

import dagster as dg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from automation_pipelines.instance import DEFAULT_CONFIG
from automation_pipelines.reliability import pacing, readiness
from automation_pipelines.reliability.automation import Automation, Expectation
from automation_pipelines_tests.reliability import readiness_fixtures as fixtures

ROUND = 5.0  # seconds between two evaluations by Dagster's sensor daemon


def test_the_budget_leaves_a_tenth_for_retries_and_runs_by_hand() -> None:
    assert [pacing.budget(m) for m in (1, 10, 120, 400, 900)] == [1, 9, 108, 360, 810]


def test_a_burst_gets_a_tenth_of_the_hour_then_waits_for_the_next_slice() -> None:
    created: list[float] = []
    first = pacing.room(created, 400, now=0.0)
    assert (first.allowed, first.budget) == (36, 360)
    created += [0.0] * first.allowed
    held = pacing.room(created, 400, now=ROUND)
    assert held.allowed == 0 and "at most 36 there" in held.sentence()
    assert pacing.room(created, 400, now=360.5).allowed == 36


def _simulate(
    max_runs_per_hour: int, arrivals: list[float], hours: float, per_run: int = 1
) -> list[float]:
    """Every round, a sensor asks for a run per `per_run` waiting items, up to its room; items
    that get no run wait for a later round. Returns when the runs were created."""
    created: list[float] = []
    waiting, arrivals = 0, sorted(arrivals)
    now, index = 0.0, 0
    while now <= hours * 3600:
        while index < len(arrivals) and arrivals[index] <= now:
            waiting, index = waiting + 1, index + 1
        if waiting:
            wanted = -(-waiting // per_run)
            runs = min(wanted, pacing.room(created, max_runs_per_hour, now).allowed)
            created += [now] * runs
            waiting = max(0, waiting - runs * per_run)
        now += ROUND
    return created


@given(
    maximum=st.integers(min_value=1, max_value=2000),
    arrivals=st.lists(st.floats(min_value=0, max_value=3 * 3600), max_size=3000),
)
def test_no_hour_ever_holds_more_runs_than_the_budget(maximum, arrivals) -> None:
    created = _simulate(maximum, arrivals, hours=3)
    assert pacing.most_in_an_hour(created) <= pacing.budget(maximum) <= maximum


def test_a_trickle_every_2_s_for_an_hour_runs_every_round_within_900() -> None:
    """webhook_events declares 900: one event every 2 s gets a run every round (720 an hour),
    so nothing waits longer than a round, and the watchdog's line is never crossed."""
    created = _simulate(900, [2.0 * n for n in range(1800)], hours=1, per_run=2000)
    assert pacing.most_in_an_hour(created) == 720
    assert all(b - a == ROUND for a, b in itertools.pairwise(created))


# -- on a real instance ------------------------------------------------------------------------

FEED = Automation(
    name="feed",
    owner="team:test",
    folder=fixtures.GOOD.folder,
    expect=Expectation(max_runs_per_hour=20),
)


@dg.op
def noop() -> None:
    return None


@FEED.job(name="feed_job", description="A job whose runs the tests count.")
def feed_job():
    noop()


def _runs(instance: dg.DagsterInstance, count: int) -> None:
    for _ in range(count):
        instance.create_run_for_job(feed_job, tags=FEED.job_tags())


def test_the_room_is_counted_from_the_automations_runs(sqlite_instance) -> None:
    now = time.time()
    assert (
        pacing.pace(sqlite_instance, FEED.job_names, 20, now).allowed == 2
    )  # budget 18, slices of 2
    _runs(sqlite_instance, 1)
    assert pacing.pace(sqlite_instance, FEED.job_names, 20, time.time()).allowed == 1
    _runs(sqlite_instance, 1)
    held = pacing.pace(sqlite_instance, FEED.job_names, 20, time.time())
    assert (held.allowed, held.slice_count) == (0, 2)
    later = pacing.pace(sqlite_instance, FEED.job_names, 20, time.time() + 361)
    assert (later.allowed, later.hour_count) == (2, 2)
    assert pacing.pace(sqlite_instance, FEED.job_names, 20, time.time() + 3601).hour_count == 0


def _sensor(asks_first: bool):
    @FEED.sensor(name=f"feed_sensor_{asks_first}", job=feed_job, minimum_interval_seconds=1)
    def feed_sensor(context: dg.SensorEvaluationContext):
        count = pacing.allowed_runs(5) if asks_first else 5
        return [dg.RunRequest(run_key=f"{time.time()}-{n}") for n in range(count)]

    return feed_sensor


def test_a_paced_sensor_gets_its_room_and_asking_for_more_fails_the_tick(sqlite_instance):
    context = dg.build_sensor_context(instance=sqlite_instance)
    assert len(_sensor(asks_first=True)(context)) == 2
    _runs(sqlite_instance, 2)
    assert _sensor(asks_first=True)(dg.build_sensor_context(instance=sqlite_instance)) == []
    with pytest.raises(RuntimeError, match="asked for 5 run\\(s\\) with room for 0"):
        _sensor(asks_first=False)(dg.build_sensor_context(instance=sqlite_instance))


# -- the checklist -----------------------------------------------------------------------------


def _paced_findings(*triggers) -> list[readiness.Finding]:
    defs = dg.Definitions(
        jobs=[feed_job],
        sensors=[t for t in triggers if isinstance(t, dg.SensorDefinition)],
        schedules=[t for t in triggers if isinstance(t, dg.ScheduleDefinition)],
        resources=fixtures.RESOURCES,
    )
    config = readiness.load_instance_config(DEFAULT_CONFIG)
    return [f for f in readiness.run_checks(defs, config) if f.rule == "paced"]


def test_a_paced_sensor_passes_and_a_plain_one_is_refused() -> None:
    [ok] = _paced_findings(_sensor(asks_first=True))
    assert ok.ok

    @dg.sensor(name="plain_feed_sensor", job=feed_job, metadata={"automation/guarded_by": "feed"})
    def plain_feed_sensor(context):
        return dg.RunRequest()

    [refused] = _paced_findings(plain_feed_sensor)
    assert not refused.ok
    assert "sensor plain_feed_sensor is not paced" in refused.reason
    assert "720 an hour" in refused.reason and "max_runs_per_hour of 20" in refused.reason


@pytest.mark.parametrize(
    ("cron", "most", "ok"),
    [
        ("*/5 * * * *", 12, True),
        ("0 * * * *", 1, True),
        ("* * * * *", 60, False),
        ("*/2 9-17 * * 1-5", 30, False),
        ("0 3 * * *", 1, True),
    ],
)
def test_a_schedule_is_judged_by_its_busiest_hour(cron, most, ok) -> None:
    schedule = FEED.schedule(
        name="feed_schedule", cron_schedule=cron, job=feed_job, description="Feeds."
    )
    assert readiness.schedule_runs_per_hour(schedule) == most
    [finding] = _paced_findings(schedule)
    assert finding.ok is ok
    if not ok:
        assert (
            f"fires up to {most} times an hour, over its max_runs_per_hour of 20" in finding.reason
        )
