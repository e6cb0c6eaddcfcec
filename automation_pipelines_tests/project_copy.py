"""A copy of the project as a checkout has it, for tests that change files or add folders."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from automation_pipelines.paths import PROJECT_ROOT


def copy_project(destination: Path) -> Path:
    """The project's files (tracked, and new ones not ignored) copied into `destination`."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for relative in filter(None, tracked.split("\0")):
        source = PROJECT_ROOT / relative
        if source.is_file():
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / relative)
    return destination
