"""What the code location shows in the UI, as data: every job with its tags (which its runs
carry), its owners and its metadata (the declaration's settings, the runbook link), every
schedule and sensor with its target, cadence and default status, every asset with its owners and
group, and every asset check. A test holds it to `definitions.snapshot.json` at the project
root, so an accidental change to what people see (a renamed job, a schedule that no longer
starts running, a lost owner) fails `make test`; a deliberate one is written with
`automation-pipelines snapshot --write` (and by `automation-pipelines new`) and reviewed in the
diff. It is taken in a process of its own with the project's settings only (no .env, no
variables of this shell), so it does not depend on where it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from automation_pipelines.paths import PROJECT_ROOT

FILE = "definitions.snapshot.json"


def snapshot() -> dict:
    """The code location's definitions as the UI lists them."""
    from automation_pipelines.definitions import defs

    repository = defs.get_repository_def()
    declared = [
        job
        for job in sorted(repository.get_all_jobs(), key=lambda j: j.name)
        if not job.name.startswith("__")
    ]
    jobs = {job.name: dict(sorted(job.tags.items())) for job in declared}
    owners = {job.name: list(job.owners or ()) for job in declared}
    job_metadata = {
        job.name: {key: getattr(value, "value", value) for key, value in job.metadata.items()}
        for job in declared
    }
    schedules = {
        s.name: {
            "job": s.job_name,
            "cron": s.cron_schedule,
            "timezone": s.execution_timezone,
            "default_status": s.default_status.value,
        }
        for s in sorted(repository.schedule_defs, key=lambda s: s.name)
    }
    sensors = {
        s.name: {
            "jobs": sorted(job.name for job in s.jobs) if s.has_jobs else [],
            "minimum_interval_seconds": s.minimum_interval_seconds,
            "default_status": s.default_status.value,
        }
        for s in sorted(repository.sensor_defs, key=lambda s: s.name)
    }
    graph = defs.resolve_asset_graph()
    assets = {
        key.to_user_string(): {
            "group": graph.get(key).group_name,
            "owners": sorted(graph.get(key).owners),
            "tags": dict(sorted(graph.get(key).tags.items())),
            "materializable": graph.get(key).is_materializable,
        }
        for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string())
    }
    checks = sorted(
        f"{key.asset_key.to_user_string()}:{key.name}" for key in graph.asset_check_keys
    )
    return {
        "jobs": jobs,
        "job_owners": owners,
        "job_metadata": job_metadata,
        "schedules": schedules,
        "sensors": sensors,
        "assets": assets,
        "asset_checks": checks,
    }


def taken_apart(root: Path = PROJECT_ROOT) -> dict:
    """`snapshot()` of the project at `root`, from a fresh process that sees none of this
    shell's settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key in {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"}
    }
    env.update(AUTOMATION_ENV_FILE=os.devnull, PYTHONPATH=str(root))
    done = subprocess.run(
        [sys.executable, "-m", "automation_pipelines.snapshot"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the snapshot could not be taken:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def write(root: Path = PROJECT_ROOT) -> Path:
    """Write the project's snapshot file from the code location as it is now."""
    path = root / FILE
    path.write_text(json.dumps(taken_apart(root), indent=1, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":
    print(json.dumps(snapshot()))
