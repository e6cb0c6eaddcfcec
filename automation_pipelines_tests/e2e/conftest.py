"""The e2e fixtures: real Dagster processes on a temp instance, torn down whatever happens, and
Debian's Chromium for the tests that look at the UI (one browser per module, a page per test)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, sync_playwright

from automation_pipelines_tests.e2e.browser import UI_TIMEOUT_MS, chromium_context, require_chromium
from automation_pipelines_tests.e2e.harness import DagsterProcesses


@pytest.fixture
def dagster_processes(tmp_path: Path) -> Iterator[Callable[..., DagsterProcesses]]:
    """Factory: `dagster_processes(module, env=...)` gives a DagsterProcesses to start things in."""
    started: list[DagsterProcesses] = []

    def make(module: str, env=None, instance_overrides=None) -> DagsterProcesses:
        processes = DagsterProcesses(
            tmp_path / f"e2e{len(started)}", module, env, instance_overrides
        )
        started.append(processes)
        return processes

    yield make
    for processes in started:
        processes.stop()


@pytest.fixture(scope="module")
def chromium() -> Path:
    return require_chromium()


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[BrowserContext]:
    with sync_playwright() as playwright, chromium_context(playwright, chromium) as context:
        context.set_default_timeout(UI_TIMEOUT_MS)
        context.set_default_navigation_timeout(UI_TIMEOUT_MS)
        yield context


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    page = browser.new_page()
    try:
        yield page
    finally:
        page.close()
