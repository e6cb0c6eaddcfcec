"""Where the Dagster instance lives: a persistent DAGSTER_HOME holding the chosen dagster.yaml.

`dagster dev` without DAGSTER_HOME keeps history in a temp folder it deletes on exit. Here the home
is `.dagster_home/` in the project (or $DAGSTER_HOME), and its dagster.yaml is a link to the
project's config (or to $AUTOMATION_INSTANCE_CONFIG, e.g. deploy/postgres/dagster.yaml).
"""

from __future__ import annotations

import os
from pathlib import Path

from automation_pipelines.paths import PROJECT_ROOT

DEFAULT_HOME = PROJECT_ROOT / ".dagster_home"
DEFAULT_CONFIG = PROJECT_ROOT / "dagster.yaml"
CONFIG_ENV = "AUTOMATION_INSTANCE_CONFIG"


def instance_config_path() -> Path:
    """The dagster.yaml in force: $AUTOMATION_INSTANCE_CONFIG, else the project's own."""
    configured = os.environ.get(CONFIG_ENV)
    if not configured:
        return DEFAULT_CONFIG
    path = Path(configured)
    return path if path.is_absolute() else (PROJECT_ROOT / path)


def prepare_home(home: Path | None = None, config: Path | None = None) -> Path:
    """Create the instance home and link its dagster.yaml; return the absolute home path."""
    home = Path(home or os.environ.get("DAGSTER_HOME") or DEFAULT_HOME).resolve()
    explicit = config is not None or bool(os.environ.get(CONFIG_ENV))
    config = (config or instance_config_path()).resolve()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if target.exists() and not target.is_symlink():
        if explicit:
            raise FileExistsError(
                f"{target} is a file of its own, not a link to {config}; move it away or point "
                "DAGSTER_HOME at another folder"
            )
        return home
    if not config.is_file():
        raise FileNotFoundError(f"instance config {config} does not exist (see {CONFIG_ENV})")
    if not (target.is_symlink() and target.resolve() == config):
        target.unlink(missing_ok=True)
        target.symlink_to(config)
    return home
