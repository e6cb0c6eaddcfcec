"""A second deployment of this project, as an operator has one: its own folder with a `.env`, a
`.venv` whose console scripts import the code from that folder, and commands run the way cron
runs them (`env -i` with only PATH and HOME, then `cd` into the folder).

The copy's virtualenv borrows the installed dependencies of the suite's own virtualenv through a
`.pth` file instead of installing them again, and puts the copy itself first on `sys.path`, so
`PROJECT_ROOT` (and with it `.env`) is the copy's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from automation_pipelines.paths import PROJECT_ROOT

_SKIP = (
    ".git",
    ".venv",
    ".dagster_home*",
    "data",
    "test-artifacts",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    ".env",
    ".data",
    "screenshots",
)
#: What cron gives a command: a bare PATH and HOME, nothing else.
CRON_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class Deployment:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / ".venv" / "bin"

    @property
    def home(self) -> Path:
        return self.root / ".dagster_home"

    def write_env(self, values: Mapping[str, str]) -> None:
        lines = [f"{key}={value}" for key, value in values.items()]
        (self.root / ".env").write_text("\n".join(lines) + "\n")

    def cron(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """`cd <root> && .venv/bin/automation-pipelines ARGS` with nothing in the environment but
        PATH and HOME, as the README's cron line runs it."""
        command = f"cd {self.root} && .venv/bin/automation-pipelines {' '.join(args)}"
        return subprocess.run(
            ["env", "-i", f"PATH={CRON_PATH}", f"HOME={self.root}", "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def environment(self) -> dict[str, str]:
        """The `.env` of the deployment over a cron-like environment, for processes a test
        starts itself (a daemon, say) the way the deployment's service manager would."""
        from dotenv import dotenv_values

        env = {"PATH": CRON_PATH, "HOME": str(self.root)}
        env.update({k: v for k, v in dotenv_values(self.root / ".env").items() if v is not None})
        env.setdefault("DAGSTER_HOME", str(self.home))
        return env


def make_deployment(destination: Path) -> Deployment:
    """Copy the project to `destination` and give it a virtualenv of its own."""
    shutil.copytree(PROJECT_ROOT, destination, ignore=shutil.ignore_patterns(*_SKIP))
    venv = destination / ".venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    packages = venv / "lib" / version / "site-packages"
    ours = sysconfig.get_paths()["purelib"]
    # The copy first, then the suite's installed dependencies (and their own .pth files).
    (packages / "00_deployment.pth").write_text(f"{destination}\n")
    (packages / "zz_dependencies.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    python = venv / "bin" / "python"
    for script in Path(sys.executable).parent.iterdir():
        if not script.is_file() or script.name.startswith(("python", "activate", "pip")):
            continue
        head = script.read_bytes()[:200]
        if not head.startswith(b"#!") or b"python" not in head.split(b"\n", 1)[0]:
            continue
        body = script.read_text().split("\n", 1)[1]
        target = venv / "bin" / script.name
        target.write_text(f"#!{python}\n{body}")
        target.chmod(0o755)
    return Deployment(destination)


def check_imports_from(deployment: Deployment) -> str:
    """Where the deployment's interpreter imports the project from (a sanity check)."""
    done = subprocess.run(
        [
            str(deployment.bin / "python"),
            "-c",
            "import automation_pipelines.paths as p; print(p.PROJECT_ROOT)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": CRON_PATH, "HOME": str(deployment.root)},
        cwd="/",
    )
    return done.stdout.strip() or done.stderr
