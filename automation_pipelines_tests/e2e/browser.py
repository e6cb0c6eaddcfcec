"""Debian's Chromium driven by Playwright, for the tests that look at the real Dagster UI.

The browser is the system's `/usr/bin/chromium` (Debian package `chromium`, which `make test`
installs); Playwright never downloads one. Each context gets a fresh profile in a temp folder and
the flags keep Chromium off the network, so only the loopback webserver is ever contacted.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import BrowserContext, Page, Playwright

from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines_tests.conftest import require_program

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Wide enough that the UI's side panels (job info, tags) are laid out next to the graph.
VIEWPORT = {"width": 1440, "height": 900}
# The machine has two cores, shared by the webserver, the daemon, run workers and the browser.
UI_TIMEOUT_MS = 60_000
SCREENSHOTS_ENV = "AP_SCREENSHOTS_DIR"
DEFAULT_SCREENSHOTS = PROJECT_ROOT / "test-artifacts" / "screenshots"


def require_chromium() -> Path:
    return require_program(CHROMIUM, "chromium")


@contextmanager
def chromium_context(playwright: Playwright, executable: Path) -> Iterator[BrowserContext]:
    """A headless Chromium with a throw-away profile, closed and deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="ap-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(executable),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )
        try:
            yield context
        finally:
            context.close()


def screenshots_dir() -> Path:
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or DEFAULT_SCREENSHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(page: Page, name: str) -> Path:
    """Save the whole page as `<name>.png` in the screenshots folder, for the README and CI."""
    path = screenshots_dir() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
