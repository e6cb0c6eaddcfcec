"""What an operator sees at a glance, in the real Dagster UI (Debian's Chromium, 1440x900), on
the project's own code location:

- the Runs page, in a fresh browser (no tag hidden), shows at least 10 runs on one screen: a
  run carries no tag of its own (its job says whose it is), and a run that quarantined a photo
  stands out from the plain successes by its `result/quarantined` tag;
- a paused automation (webhook_events, `automation-pipelines pause`), one whose circuit breaker
  opened after five failed runs (disk_space) and one whose sensor stopped (web_images,
  photo_inbox_sensor switched off in the UI) each show as not healthy on their asset
  `automations/<name>`, with the sentence naming the cause; after `automation-pipelines resume`
  and the sensor switched on again, each turns healthy — all set by watchdog_sensor's ticks.

Screenshots land in $AP_SCREENSHOTS_DIR (default test-artifacts/screenshots/).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from playwright.sync_api import Page, expect

from automation_pipelines.local_stack import venv_script
from automation_pipelines.reliability.health import HEALTH_CHECK
from automation_pipelines.reliability.numbers import automation_key
from automation_pipelines.topology import LOCATION
from automation_pipelines_tests.e2e.browser import UI_TIMEOUT_MS, screenshot, screenshots_dir
from automation_pipelines_tests.e2e.harness import DagsterProcesses, graphql, project_ui, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

#: The watchdog ticks every 60 s; a tick and the runs it reads may wait for two cores.
WATCHDOG_WAIT = 240
BREAKER_AFTER = 5
LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
DIGEST_RUNS = 5


@pytest.fixture(scope="module")
def stack(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    # The watchdog looks every 15 s instead of every minute: each change of health shows sooner.
    with project_ui(tmp_path_factory.mktemp("health"), WATCHDOG_INTERVAL_SECONDS="15") as stack:
        yield stack


def launch(base_url: str, job: str, run_config: dict | None = None) -> str:
    """Launch a run as the Launchpad does (the webserver's GraphQL API); return its id."""
    selector = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}
    params = {"selector": {**selector, "jobName": job}, "runConfigData": run_config or {}}
    answer = graphql(base_url, LAUNCH, {"p": params}, timeout=60)["launchRun"]
    assert answer["__typename"] == "LaunchRunSuccess", answer
    return answer["run"]["runId"]


def cli(processes: DagsterProcesses, *args: str) -> str:
    done = subprocess.run(
        [venv_script("automation-pipelines"), *args],
        env=processes.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def health(instance: dg.DagsterInstance, automation: str) -> tuple[str, str] | None:
    """(state, finding) of the automation's latest health evaluation, or None before one."""
    key = dg.AssetCheckKey(automation_key(automation), HEALTH_CHECK)
    records = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
    if not records or records[0].event is None:
        return None
    metadata = records[0].event.dagster_event.event_specific_data.metadata
    return metadata["state"].value, metadata["finding"].value


TICKS = """query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor {
    sensorState { ticks(limit: 6) { status timestamp error { message } } } } } }"""


def watchdog_ticks(base_url: str) -> str:
    """The watchdog sensor's latest ticks, as the UI lists them: what a timeout should show."""
    selector = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}
    try:
        found = graphql(base_url, TICKS, {"s": {**selector, "sensorName": "watchdog_sensor"}})
        ticks = found["sensorOrError"]["sensorState"]["ticks"]
    except Exception as error:  # a diagnostic only: the timeout is the failure
        return f"watchdog_sensor ticks unknown: {error}"
    return "watchdog_sensor ticks: " + "; ".join(
        f"{t['timestamp']:.0f} {t['status']} {(t['error'] or {}).get('message', '')[:300]}"
        for t in ticks
    )


def wait_for_states(
    processes: DagsterProcesses, base_url: str, wanted: dict[str, str]
) -> dict[str, str]:
    """Wait until each automation's health is in the wanted state; return the findings."""

    def now() -> dict[str, tuple[str, str] | None]:
        return {name: health(processes.instance, name) for name in wanted}

    def reached():
        found = now()
        if all(found[name] and found[name][0] == state for name, state in wanted.items()):
            return {name: found[name][1] for name in wanted}
        return None

    def seen() -> str:
        return f"health now: {now()}\n{watchdog_ticks(base_url)}\n{processes.logs()}"

    return wait_for(f"health {wanted}", reached, WATCHDOG_WAIT, seen)


def finished(processes: DagsterProcesses, run_ids: list[str], timeout: float = 300) -> list:
    def done():
        runs = [processes.instance.get_run_by_id(run_id) for run_id in run_ids]
        return all(run and run.is_finished for run in runs) and runs

    return wait_for(f"{len(run_ids)} run(s) to finish", done, timeout, processes.logs)


def open_health(page: Page, base_url: str, automation: str, name: str) -> None:
    page.goto(f"{base_url}/assets/automations/{automation}?view=checks")
    expect(page.get_by_text(HEALTH_CHECK, exact=True).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    screenshot(page, name)


def toggle_sensor(page: Page, base_url: str, name: str, running: bool) -> None:
    page.goto(f"{base_url}/locations/{LOCATION}/sensors/{name}")
    switch = page.get_by_role("row", name=re.compile(r"^Running")).get_by_role("checkbox")
    expect(switch).to_be_checked(checked=not running, timeout=UI_TIMEOUT_MS)
    switch.locator("xpath=..").click()  # the input is drawn as a switch by its label
    expect(switch).to_be_checked(checked=running, timeout=UI_TIMEOUT_MS)


# Runs, two watchdog ticks each way and a browser on two shared cores.
@pytest.mark.timeout(900)
def test_runs_at_a_glance_and_each_automations_health(page: Page, stack) -> None:
    processes, base_url, folders = stack

    # Runs: five disk space checks that fail (a path that does not exist: no retry), which
    # trip disk_space's breaker; a photo that is not an image, quarantined by a run that
    # succeeds; and daily digests.
    failing = [
        launch(
            base_url,
            "check_disk_space_job",
            {"ops": {"measure_free_space": {"config": {"paths": ["/no/such/volume"]}}}},
        )
        for _ in range(BREAKER_AFTER)
    ]
    inbox = folders["photos"] / "inbox"
    inbox.mkdir(exist_ok=True)
    staged = folders["photos"] / "broken.jpg"
    staged.write_bytes(b"this is not a photo\n" * 50)
    staged.rename(inbox / "broken.jpg")
    digests = [launch(base_url, "send_daily_digest_job") for _ in range(DIGEST_RUNS)]
    runs = finished(processes, [*failing, *digests])
    assert [r.status for r in runs[:BREAKER_AFTER]] == [dg.DagsterRunStatus.FAILURE] * 5
    photo_run = processes.wait_for_run("render_web_images_job", timeout=300)
    assert photo_run.status == dg.DagsterRunStatus.SUCCESS, processes.logs()
    assert photo_run.tags.get("result/quarantined") == "1", photo_run.tags

    # The photo's run recorded its numbers on automations/web_images, which the UI plots
    # (the asset's Overview, Metadata, Plots).
    page.goto(f"{base_url}/assets/automations/web_images")
    expect(page.get_by_text("items_quarantined").first).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.get_by_role("button", name=re.compile("Plots")).click()
    for key in ("latency_seconds", "items", "items_quarantined", "items_dead_lettered"):
        expect(page.get_by_text(key, exact=True).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    screenshot(page, "13-numbers-web_images-plots")

    # The three causes, each as a person makes it happen.
    cli(processes, "pause", "webhook_events", "--reason", "moving the warehouse")
    toggle_sensor(page, base_url, "photo_inbox_sensor", running=False)
    findings = wait_for_states(
        processes,
        base_url,
        {"webhook_events": "paused", "disk_space": "breaker open", "web_images": "stalled"},
    )
    assert "moving the warehouse" in findings["webhook_events"]
    assert "5 consecutive failed runs" in findings["disk_space"]
    assert "photo_inbox_sensor is stopped" in findings["web_images"]

    # Runs: at least 10 on one 1440x900 screen, as anyone sees them first: Dagster lists every
    # tag outside its own `dagster/` namespace on a line of its own, and nothing is hidden in
    # this browser. No run shows a tag of ours but what it set aside; the job says whose it is.
    page.goto(f"{base_url}/runs")
    assert page.evaluate("() => localStorage.getItem('unpinned-tags')") is None
    runs_listed = page.get_by_role("link", name=re.compile(r"^run [0-9a-f]{8}$"))
    expect(runs_listed.nth(9)).to_be_visible(timeout=UI_TIMEOUT_MS)
    for key in ("owner", "automation"):
        expect(page.get_by_text(re.compile(rf"^{key}: "))).to_have_count(0)
    expect(page.get_by_role("link", name="check_disk_space_job").first).to_be_visible()
    page.screenshot(path=str(screenshots_dir() / "10-runs-at-a-glance.png"))  # one screen
    height = page.viewport_size["height"]
    on_screen = [
        box
        for box in (runs_listed.nth(i).bounding_box() for i in range(runs_listed.count()))
        if box and box["y"] >= 0 and box["y"] + box["height"] <= height
    ]
    assert len(on_screen) >= 10, f"{len(on_screen)} runs on one screen"
    # The photo's run, and only it, shows what it set aside, on its own row.
    flagged = page.get_by_text(re.compile(r"result/quarantined: 1"))
    expect(flagged).to_have_count(1, timeout=UI_TIMEOUT_MS)
    photo_row = page.get_by_role("link", name=f"run {photo_run.run_id[:8]}").bounding_box()
    flag = flagged.bounding_box()
    assert photo_row and flag and abs(flag["y"] - photo_row["y"]) < photo_row["height"] + 20

    # Each automation's health in the UI: not healthy, with the cause in a sentence.
    causes = {
        "webhook_events": "automation webhook_events is paused",
        "disk_space": "stopped by its circuit breaker",
        "web_images": "photo_inbox_sensor is stopped",
    }
    for automation, cause in causes.items():
        open_health(page, base_url, automation, f"11-health-{automation}-not-healthy")
        expect(page.get_by_text(re.compile(re.escape(cause))).first).to_be_visible(
            timeout=UI_TIMEOUT_MS
        )
    open_health(page, base_url, "webhook_events", "11-health-webhook_events-not-healthy")
    expect(
        page.get_by_text(re.compile("automation-pipelines resume webhook_events")).first
    ).to_be_visible()

    # Resume both and switch the sensor on again: each turns healthy on the next ticks.
    cli(processes, "resume", "webhook_events")
    cli(processes, "resume", "disk_space")
    toggle_sensor(page, base_url, "photo_inbox_sensor", running=True)
    wait_for_states(
        processes,
        base_url,
        {"webhook_events": "healthy", "disk_space": "healthy", "web_images": "healthy"},
    )
    for automation in causes:
        open_health(page, base_url, automation, f"12-health-{automation}-healthy")
        expect(page.get_by_text(re.compile(r"^Healthy")).first).to_be_visible(timeout=UI_TIMEOUT_MS)
        for cause in causes.values():
            expect(page.get_by_text(re.compile(re.escape(cause)))).to_have_count(0)
