"""The real Dagster UI in a real browser, on the project's own code location.

A daemon and a webserver serve `automation_pipelines.definitions` on a temp instance; Debian's
Chromium, driven by Playwright, checks what a person sees:

- every job of the definitions is listed, and its page shows its description and `owner` tag;
- every schedule and sensor is listed on the Automation page and switched on (running);
- a run launched with the Launchpad's "Launch Run" button succeeds and its page says so;
- a backfill of three past days of `webhook_daily_report`, chosen and launched in the
  "Materialize…" dialog, completes with three successful runs, in the UI and in the instance.

Each step leaves a screenshot in $AP_SCREENSHOTS_DIR (default test-artifacts/screenshots/).
Without /usr/bin/chromium the tests skip, unless AP_REQUIRE_POSTGRES=1 (CI) makes that a failure.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from playwright.sync_api import Page, expect

from automation_pipelines_tests.e2e.browser import UI_TIMEOUT_MS, screenshot
from automation_pipelines_tests.e2e.harness import DagsterProcesses, project_ui, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

MODULE = "automation_pipelines.definitions"
BACKFILL_DAYS = ["2026-03-01", "2026-03-02", "2026-03-03"]


def repository() -> dg.RepositoryDefinition:
    from automation_pipelines.definitions import defs

    return defs.get_repository_def()


def first_sentence(text: str) -> str:
    return re.split(r"(?<=\.)\s", text.strip(), maxsplit=1)[0]


def named(name: str) -> re.Pattern[str]:
    """An accessible name holding `name` as a word: the UI puts icon names around it."""
    return re.compile(rf"(^|\s){re.escape(name)}(\s|$)")


@pytest.fixture(scope="module")
def dagster_ui(
    chromium: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DagsterProcesses, str]]:
    """One daemon and webserver for the module: starting them is most of its run time."""
    with project_ui(tmp_path_factory.mktemp("ui")) as (processes, base_url, _):
        yield processes, base_url


def test_every_job_is_listed_with_owner_and_description(page: Page, dagster_ui) -> None:
    """People find an automation by its job: the UI must show who owns it and what it does."""
    _, base_url = dagster_ui
    jobs = [job for job in repository().get_all_jobs() if not job.name.startswith("__")]
    assert len(jobs) >= 7, [job.name for job in jobs]

    page.goto(f"{base_url}/jobs")
    for job in jobs:
        expect(page.get_by_role("link", name=named(job.name))).to_be_visible(timeout=UI_TIMEOUT_MS)
    screenshot(page, "01-jobs")

    for job in jobs:
        [owner] = job.owners or [None]
        assert owner, f"{job.name} has no owner"
        assert job.description, f"{job.name} has no description"
        page.goto(f"{base_url}/jobs")
        page.get_by_role("link", name=named(job.name)).click()
        expect(page.get_by_role("heading", name=job.name)).to_be_visible(timeout=UI_TIMEOUT_MS)
        expect(page.get_by_text(first_sentence(job.description))).to_be_visible(
            timeout=UI_TIMEOUT_MS
        )
        # The job's Owners section: Dagster shows a team by its name, with a team's icon.
        expect(page.get_by_text("Owners", exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
        shown = owner.removeprefix("team:")
        expect(page.get_by_text(shown, exact=True).first).to_be_visible(timeout=UI_TIMEOUT_MS)
        screenshot(page, f"01-jobs-{job.name}")


def test_schedules_and_sensors_are_running(page: Page, dagster_ui) -> None:
    """The project's triggers default to RUNNING, so a fresh deployment automates at once."""
    _, base_url = dagster_ui
    repo = repository()
    triggers = [("schedules", s.name) for s in repo.schedule_defs]
    triggers += [("sensors", s.name) for s in repo.sensor_defs]
    assert len(triggers) >= 11, triggers

    page.goto(f"{base_url}/automation")
    for _, name in triggers:
        expect(page.get_by_role("link", name=named(name))).to_be_visible(timeout=UI_TIMEOUT_MS)
    # One switch per schedule or sensor, all on (the other checkboxes select rows).
    expect(page.get_by_role("checkbox", checked=True)).to_have_count(
        len(triggers), timeout=UI_TIMEOUT_MS
    )
    screenshot(page, "02-automation-running")

    for kind, name in triggers:
        page.goto(f"{base_url}/automation")
        page.get_by_role("link", name=named(name)).click()
        page.wait_for_url(re.compile(rf"/{kind}/{re.escape(name)}$"))
        running = page.get_by_role("row", name=re.compile(r"^Running"))
        expect(running.get_by_role("checkbox")).to_be_checked(timeout=UI_TIMEOUT_MS)


def test_run_launched_from_the_launchpad_succeeds(page: Page, dagster_ui) -> None:
    """A person can run an automation by hand from the UI, and the daemon carries it out."""
    processes, base_url = dagster_ui
    page.goto(f"{base_url}/jobs")
    page.get_by_role("link", name=named("check_disk_space_job")).click()
    page.get_by_role("tab", name="Launchpad").click()
    page.get_by_role("button", name=named("Launch Run")).click()

    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    run_id = page.url.rsplit("/", 1)[1]
    run = wait_for(
        f"run {run_id} to finish",
        lambda: (r := processes.instance.get_run_by_id(run_id)) and r.is_finished and r,
        120,
        processes.logs,
    )
    assert run.job_name == "check_disk_space_job"
    assert run.status == dg.DagsterRunStatus.SUCCESS, processes.logs()
    expect(page.get_by_text("Success", exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.get_by_text("RUN_SUCCESS", exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
    screenshot(page, "03-run-success")


def test_backfill_launched_from_the_ui_completes(page: Page, dagster_ui) -> None:
    """Recomputing past days of the report is done from the UI; it must finish on its own."""
    processes, base_url = dagster_ui
    page.goto(f"{base_url}/jobs")
    page.get_by_role("link", name=named("webhook_daily_report_job")).click()
    page.get_by_role("button", name="Materialize…").click()

    dialog = page.get_by_role("dialog")
    selection = dialog.get_by_role("textbox")
    expect(selection).to_be_visible(timeout=UI_TIMEOUT_MS)
    # The dialog offers only the last 90 days until asked for all of them.
    show_all = dialog.get_by_role("button", name="Show all partitions")
    if show_all.is_visible():
        show_all.click()
    selection.fill(f"[{BACKFILL_DAYS[0]}...{BACKFILL_DAYS[-1]}]")
    selection.press("Enter")
    expect(dialog.get_by_text(f"{len(BACKFILL_DAYS)} partitions", exact=True)).to_be_visible(
        timeout=UI_TIMEOUT_MS
    )
    dialog.get_by_role("button", name="Launch backfill").click()

    toast = page.get_by_role("region", name=re.compile("Notifications")).get_by_role("listitem")
    created = toast.get_by_text(re.compile(r"^Created backfill \w+$"))
    expect(created).to_be_visible(timeout=UI_TIMEOUT_MS)
    backfill_id = created.inner_text().split()[-1]
    toast.get_by_role("link", name="View", exact=True).click()
    page.wait_for_url(re.compile(rf"/runs/b/{backfill_id}"))

    def finished_backfill():
        backfill = processes.instance.get_backfill(backfill_id)
        runs = processes.instance.get_runs(
            filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id})
        )
        done = backfill.status.value != "REQUESTED" and all(run.is_finished for run in runs)
        return done and (backfill, runs)

    backfill, runs = wait_for(f"backfill {backfill_id}", finished_backfill, 240, processes.logs)
    assert backfill.status.value == "COMPLETED_SUCCESS", processes.logs()
    assert sorted(run.tags["dagster/partition"] for run in runs) == BACKFILL_DAYS
    assert {run.job_name for run in runs} == {"webhook_daily_report_job"}
    assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs), processes.logs()
    # No events on those days: each report is empty, but it is written.
    reports = Path(processes.env["WEBHOOK_REPORTS_DIR"])
    assert sorted(p.name for p in reports.iterdir()) == [f"{day}.csv" for day in BACKFILL_DAYS]

    # A fresh load shows what the instance holds, and drops the notification from the screenshot.
    page.reload()
    status = page.get_by_text("Status", exact=True).locator("xpath=..")
    expect(status.get_by_text("Succeeded", exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
    # Partitions targeted, in progress, succeeded, failed.
    expect(
        page.get_by_role("row", name=re.compile("webhook_daily_report_job")).get_by_role("cell")
    ).to_have_text([re.compile("100% completed"), "3", "0", "3", "0"], timeout=UI_TIMEOUT_MS)
    screenshot(page, "04-backfill-completed")

    page.goto(f"{base_url}/assets/webhook_daily_report")
    expect(page.get_by_text(BACKFILL_DAYS[-1], exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
    screenshot(page, "05-asset-webhook-daily-report")
