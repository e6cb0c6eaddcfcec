"""Run pacing: an automation's sensors never start more runs than its declared maximum.

`Expectation.max_runs_per_hour` is the rate above which the watchdog calls an automation a
runaway loop. A paced sensor asks, before it requests anything, how many runs it may request
now, so normal traffic stays under that line by construction and a burst is absorbed by bigger
batches instead of more runs. The room is counted from the run history itself (runs of the
automation's jobs, created in the last hour), so a restart forgets nothing:

- at most `SHARE` of the declared maximum in any hour (the rest is left for Dagster's retries
  and runs launched by hand, which count too);
- at most a tenth of that within any tenth of an hour, so a burst cannot spend the hour's budget
  in its first minute and leave the rest of the hour with no run at all.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

from automation_pipelines.reliability.identity import records_of

#: Trigger metadata: the runs per hour a paced sensor keeps to (its automation's budget).
PACED_KEY = "automation/paced_to_runs_per_hour"
#: The share of the declared maximum a paced sensor may use.
SHARE = 0.9
#: The budget is spread over this many slices of the hour.
SLICES = 10
HOUR = 3600.0


def budget(max_runs_per_hour: int) -> int:
    """Runs per hour a paced sensor may request: `SHARE` of the declared maximum, at least 1."""
    return max(1, math.floor(max_runs_per_hour * SHARE))


@dataclass(frozen=True)
class Pace:
    """How many runs may be requested now, and why not more."""

    allowed: int
    hour_count: int
    slice_count: int
    budget: int

    def sentence(self) -> str:
        if self.allowed > 0:
            used = f"{self.hour_count}/{self.budget} this hour"
            return f"{self.allowed} run(s) may start now ({used})"
        if self.hour_count >= self.budget:
            return (
                f"paced: {self.hour_count} runs in the last hour, the budget of {self.budget} "
                "(90% of the declared max_runs_per_hour); waiting items go in bigger batches"
            )
        per_slice = _per_slice(self.budget)
        return (
            f"paced: {self.slice_count} runs in the last {HOUR / SLICES / 60:.0f} min, at most "
            f"{per_slice} there; waiting items go in bigger batches"
        )


def _per_slice(budget_: int) -> int:
    return max(1, math.ceil(budget_ / SLICES))


def room(created: Sequence[float], max_runs_per_hour: int, now: float) -> Pace:
    """The room left at `now`, given when the automation's runs were created."""
    budget_ = budget(max_runs_per_hour)
    per_slice = _per_slice(budget_)
    hour_count = sum(1 for moment in created if now - HOUR < moment <= now)
    slice_count = sum(1 for moment in created if now - HOUR / SLICES < moment <= now)
    allowed = max(0, min(budget_ - hour_count, per_slice - slice_count))
    return Pace(allowed, hour_count, slice_count, budget_)


def pace(
    instance: dg.DagsterInstance, jobs: Sequence[str], max_runs_per_hour: int, now: float
) -> Pace:
    """The room now of the automation whose jobs are `jobs`, from the runs they created in the
    last hour."""
    most = budget(max_runs_per_hour) + 1  # one past the budget says it is spent
    since = datetime.fromtimestamp(now - HOUR, tz=UTC)
    records = itertools.islice(
        records_of(instance, jobs, created_after=since, page_size=most), most
    )
    return room([r.create_timestamp.timestamp() for r in records], max_runs_per_hour, now)


def most_in_an_hour(moments: Sequence[float]) -> int:
    """The most of `moments` (sorted, in seconds) that fall within any one hour."""
    most, first = 0, 0
    for last, moment in enumerate(moments):
        while moment - moments[first] >= HOUR:
            first += 1
        most = max(most, last - first + 1)
    return most


_current: contextvars.ContextVar[Pace | None] = contextvars.ContextVar("pace", default=None)


@contextlib.contextmanager
def pacing(current: Pace | None) -> Iterator[None]:
    """Make `current` what `allowed_runs()` answers while a sensor evaluates."""
    token = _current.set(current)
    try:
        yield
    finally:
        _current.reset(token)


def allowed_runs(default: int) -> int:
    """How many runs the evaluating sensor may request: `default` (its own cap per tick) when
    it is not paced, else the smaller of the two."""
    current = _current.get()
    return default if current is None else min(default, current.allowed)


def current_pace() -> Pace | None:
    return _current.get()


def with_pace(sentence: str, cap: int) -> str:
    """A tick's `sentence`, with the pace added when it held the sensor below its `cap`."""
    current = _current.get()
    if current is None or current.allowed >= cap:
        return sentence
    return f"{sentence}; {current.sentence()}"


def count_requests(result) -> int:
    """Run requests in what a sensor function returned or yielded."""
    if isinstance(result, dg.RunRequest):
        return 1
    if isinstance(result, dg.SensorResult):
        return len(result.run_requests or [])
    if isinstance(result, list | tuple):
        return sum(1 for item in result if isinstance(item, dg.RunRequest))
    return 0
