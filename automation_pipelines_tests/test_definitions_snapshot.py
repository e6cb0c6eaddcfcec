"""What the UI shows of the code location is held to `definitions.snapshot.json`: an accidental
change (a renamed job, a lost owner or tag, a schedule or sensor that no longer starts running,
another cadence) fails here; a deliberate one is written again with `automation-pipelines
snapshot --write`, and reviewed in the diff."""

from __future__ import annotations

import difflib
import json

from automation_pipelines import snapshot
from automation_pipelines.paths import PROJECT_ROOT

SNAPSHOT = PROJECT_ROOT / snapshot.FILE


def test_the_definitions_are_what_the_snapshot_says() -> None:
    expected = json.loads(SNAPSHOT.read_text())
    actual = snapshot.taken_apart()
    if actual != expected:
        diff = difflib.unified_diff(
            json.dumps(expected, indent=1, sort_keys=True).splitlines(),
            json.dumps(actual, indent=1, sort_keys=True).splitlines(),
            "definitions.snapshot.json",
            "the code location now",
            lineterm="",
        )
        raise AssertionError(
            "what the UI shows changed; if that is meant, write the snapshot again with\n"
            "  automation-pipelines snapshot --write\n" + "\n".join(diff)
        )


def test_the_snapshot_sees_what_the_ui_shows() -> None:
    """Not an empty or partial file: every automation's jobs and triggers are in it."""
    taken = json.loads(SNAPSHOT.read_text())
    automations = {metadata["automation"] for metadata in taken["job_metadata"].values()}
    assert automations >= {"backups", "disk_space", "web_images", "webhook_events", "monitoring"}
    assert all(len(owners) == 1 for owners in taken["job_owners"].values())
    assert set(taken["job_owners"]) == set(taken["jobs"])
    # What each run carries: Dagster's own tags only, which its run list hides.
    for name, tags in taken["jobs"].items():
        assert [k for k in tags if not k.startswith("dagster/")] == [], name
    assert {s["default_status"] for s in taken["schedules"].values()} == {"RUNNING"}
    assert taken["sensors"]["photo_inbox_sensor"]["jobs"] == ["render_web_images_job"]
