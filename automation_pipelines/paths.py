"""Where the project's files are, for code that reads its configs (dagster.yaml, routes, …)."""

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_ROOT.parent
