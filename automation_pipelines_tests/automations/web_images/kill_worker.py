"""A web_images run in a process of its own, for tests that kill it at a random instant.

The processes are forked from a fork server that preloads `kill_worker_warm`: it imports this
module and runs one empty batch, so the job's lazy imports are done once, not in every run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import dagster as dg

from automation_pipelines.automations.web_images.jobs import render_web_images_job
from automation_pipelines.automations.web_images.resources import PhotoFolders
from automation_pipelines.reliability import store
from automation_pipelines.reliability.alerts import AlertRouter

PRELOAD = ["automation_pipelines_tests.automations.web_images.kill_worker_warm"]


def render_batch(root: str, database_url: str, routes: str, files: list[str]) -> bool:
    """Run the job on `files` as a run worker does (in-process executor); the Dagster instance
    is an ephemeral one, the project database a real file."""
    with dg.DagsterInstance.ephemeral() as instance:
        result = render_web_images_job.execute_in_process(
            instance=instance,
            resources={
                "folders": PhotoFolders(root=root),
                "alerts": AlertRouter(database_url=database_url, routes_file=routes),
            },
            run_config={"ops": {"render_web_images": {"config": {"files": files}}}},
            raise_on_error=False,
        )
        return result.success


def warm_up() -> None:
    """One empty batch in a throw-away folder; no connection survives it into a fork."""
    with tempfile.TemporaryDirectory() as folder:
        routes = Path(folder) / "routes.yaml"
        routes.write_text("default: []\n")
        render_batch(f"{folder}/photos", f"sqlite:///{folder}/project.db", str(routes), [])
    store.dispose_all()
