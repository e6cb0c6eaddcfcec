"""Runs of one automation never overlap: Dagster's concurrency pools at run granularity.

Every op, asset and check of an automation is in the pool named after it (`Automation.op`,
`asset`, `multi_asset_check`), and the instance counts pools per run (`concurrency.pools.
granularity: run` in dagster.yaml): a queued run starts only when every pool of its steps has
a free slot, and holds it while it is in progress. Unlike a run tag, a pool is not written on
every run, so the run list stays free of it.

A pool's limit lives in the instance, not in dagster.yaml, and Dagster's run queue limits a
pool only once it exists: runs queued into a pool nobody has set yet all start at the queue's
first look (`default_limit: 1` applies from its second). So the limits are set ahead of the
runs: each automation's triggers set its own (`side_by_side`, 1 unless declared) before they
request a run, and the watchdog sets every automation's on each tick, which also brings a limit
changed by hand in the UI's Concurrency page back to the declared one within a minute.
"""

from __future__ import annotations

import threading
import time

import dagster as dg

from automation_pipelines.reliability.identity import job_automation, job_setting
from automation_pipelines.reliability.tags import RUNS_AT_ONCE_KEY

#: Seconds a process trusts a limit it has set or read before it looks again.
RECHECK_SECONDS = 60.0

_checked: dict[tuple[int, str], float] = {}
_lock = threading.Lock()


def current_limits(instance: dg.DagsterInstance) -> dict[str, int]:
    """Every pool's limit as the instance holds it now."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return {}
    return {pool.name: pool.limit for pool in storage.get_pool_limits()}


def hold(
    instance: dg.DagsterInstance, pool: str, limit: int, now: float | None = None
) -> str | None:
    """Make the instance limit `pool` to `limit` runs at once; return a sentence when it had to
    set it (the pool was new, or someone changed it), None when it already was. Looked up at
    most once a minute per process and pool, so a sensor's tick costs no query."""
    now = time.monotonic() if now is None else now
    key = (id(instance), pool)
    with _lock:
        if now - _checked.get(key, float("-inf")) < RECHECK_SECONDS:
            return None
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return None
    found = {p.name: p for p in storage.get_pool_limits()}.get(pool)
    changed = None
    if found is None or found.limit != limit or found.from_default:
        storage.set_concurrency_slots(pool, limit)
        was = "unset" if found is None else f"{found.limit}"
        changed = f"pool {pool}: limit set to {limit} run(s) at once (was {was})"
    with _lock:
        _checked[key] = now
    return changed


def declared(repository: dg.RepositoryDefinition) -> dict[str, int]:
    """Each automation's pool and the runs it lets in at once, as its jobs declare them."""
    limits: dict[str, int] = {}
    for job in repository.get_all_jobs():
        automation, value = job_automation(job), job_setting(job, RUNS_AT_ONCE_KEY)
        if automation and value is not None and value >= 1:
            limits[automation] = min(value, limits.get(automation, value))
    return limits


def hold_all(instance: dg.DagsterInstance, repository: dg.RepositoryDefinition) -> list[str]:
    """`hold` every automation's pool at its declared limit; the sentences of those it set."""
    return [
        said
        for pool, limit in sorted(declared(repository).items())
        if (said := hold(instance, pool, limit))
    ]


def forget() -> None:
    """Look again at the next `hold` (a test, or after the instance's pools were wiped)."""
    with _lock:
        _checked.clear()
