"""The circuit breaker and the manual pause: one switch per automation, kept in the project
database so it survives restarts, checked by every schedule and sensor of the automation.

The breaker trips after N consecutive failed runs (a runaway loop, a dead dependency; attempts
that Dagster's run retries repeat are not runs of their own) and the owner is told how to
resume; `automation-pipelines pause NAME` throws the same switch by hand.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg
import sqlalchemy as sa

from automation_pipelines.reliability import store
from automation_pipelines.reliability.identity import records_of
from automation_pipelines.reliability.tags import WILL_RETRY_TAG

state_table = sa.Table(
    "ap_automation_state",
    store.metadata,
    sa.Column("automation", sa.String(255), primary_key=True),
    sa.Column("status", sa.String(32), nullable=False),  # active | paused | tripped
    sa.Column("reason", sa.Text),
    sa.Column("changed_at", sa.Float, nullable=False),
    sa.Column("changed_by", sa.String(255)),
)


@dataclass(frozen=True)
class SwitchState:
    automation: str
    status: str
    reason: str | None
    changed_at: float
    changed_by: str | None

    @property
    def open(self) -> bool:
        return self.status in ("paused", "tripped")

    def explain(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.changed_at))
        what = "paused" if self.status == "paused" else "stopped by its circuit breaker"
        return (
            f"automation {self.automation} is {what} since {since} ({self.reason}); "
            f"resume with `automation-pipelines resume {self.automation}`"
        )


def engine_for(instance: dg.DagsterInstance) -> sa.Engine:
    return store.engine(store.database_url(instance.root_directory))


def get_state(engine: sa.Engine, automation: str) -> SwitchState | None:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(state_table).where(state_table.c.automation == automation)
        ).first()
    return SwitchState(**row._mapping) if row else None


def all_states(engine: sa.Engine) -> list[SwitchState]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(state_table).order_by(state_table.c.automation)).all()
    return [SwitchState(**row._mapping) for row in rows]


def set_state(engine: sa.Engine, automation: str, status: str, reason: str, by: str) -> None:
    values = {"status": status, "reason": reason, "changed_at": time.time(), "changed_by": by}
    with engine.begin() as conn:
        updated = conn.execute(
            state_table.update().where(state_table.c.automation == automation).values(**values)
        )
        if updated.rowcount == 0:
            conn.execute(state_table.insert().values(automation=automation, **values))


def pause(engine: sa.Engine, automation: str, reason: str, by: str = "cli") -> None:
    set_state(engine, automation, "paused", reason, by)


def resume(engine: sa.Engine, automation: str, by: str = "cli") -> SwitchState | None:
    """Close the switch; failures before this moment no longer count towards the breaker."""
    previous = get_state(engine, automation)
    set_state(engine, automation, "active", "resumed", by)
    return previous


def blocked(instance: dg.DagsterInstance, automation: str) -> str | None:
    """Why triggers of `automation` must not request runs now, or None."""
    state = get_state(engine_for(instance), automation)
    return state.explain() if state and state.open else None


#: Run records one count reads at most; a crash loop that long has tripped the breaker already.
MAX_RECORDS = 5000


def consecutive_failures(
    instance: dg.DagsterInstance,
    jobs: Sequence[str],
    since: float = 0.0,
    limit: int | None = None,
    page_size: int = 100,
) -> int:
    """Failed final runs of the automation whose jobs are `jobs` since its last success (and
    since `since`), counting up to `limit`. Attempts Dagster's run retries repeat
    (`dagster/will_retry=true`) are read past, page by page, so any number of them between two
    final failures leaves the count right: a fixed look-back of N runs would fill up with retried
    attempts and never trip."""
    count = 0
    records = records_of(
        instance,
        jobs,
        statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
        page_size=page_size,
    )
    for record in itertools.islice(records, MAX_RECORDS):
        run = record.dagster_run
        if record.create_timestamp.timestamp() < since:
            return count
        if run.status == dg.DagsterRunStatus.SUCCESS:
            return count
        if run.tags.get(WILL_RETRY_TAG) != "true":
            count += 1
            if limit is not None and count >= limit:
                return count
    return count


def trip_if_due(
    instance: dg.DagsterInstance, automation: str, jobs: Sequence[str], threshold: int
) -> str | None:
    """Trip `automation`'s breaker after `threshold` consecutive failed runs of its `jobs`;
    return the reason if it tripped."""
    engine = engine_for(instance)
    state = get_state(engine, automation)
    if state and state.open:
        return None
    since = state.changed_at if state else 0.0
    failures = consecutive_failures(instance, jobs, since=since, limit=threshold)
    if failures < threshold:
        return None
    reason = f"{failures} consecutive failed runs"
    set_state(engine, automation, "tripped", reason, "circuit breaker")
    return reason
