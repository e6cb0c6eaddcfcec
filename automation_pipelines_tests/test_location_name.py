"""The code location is named as configured (`automation_pipelines`) however it is served: the
way `make run` / `make run-prod` serve it (a gRPC code server and a workspace that reaches it),
pyproject's `dg` settings, and the harness the e2e and browser tests start, whose UI is what
the README's screenshots show. Loaded from the module alone, Dagster would name it
`automation_pipelines.definitions`."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import yaml

from automation_pipelines import topology
from automation_pipelines.instance import prepare_home
from automation_pipelines.local_stack import DagsterProcesses, venv_script
from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability.processes import ProcessGroup

#: Ports this module may listen on.
PORTS = range(23100, 23200)


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS}")


def _location_names(workspace: Path, home: Path) -> list[str]:
    """The names the webserver and daemon give the workspace's locations, by Dagster's own
    loader (`dagster definitions validate`)."""
    done = subprocess.run(
        [venv_script("dagster"), "definitions", "validate", "-w", str(workspace)],
        cwd=workspace.parent,
        env={**os.environ, "DAGSTER_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    return [
        line.split("Validation successful for code location ", 1)[1].strip().removesuffix(".")
        for line in output.splitlines()
        if "Validation successful for code location " in line
    ]


def test_make_run_serves_the_location_under_its_configured_name(tmp_path: Path) -> None:
    home = prepare_home(tmp_path / "home")
    ports = topology.Ports("127.0.0.1", _free_port(), _free_port(), _free_port())
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump(topology.workspace(ports.host, ports.code_server)))
    [code_server] = [s for s in topology.services(ports, workspace) if s.name == "code server"]
    group = ProcessGroup()
    log = (tmp_path / "code-server.log").open("wb")
    try:
        env = {**os.environ, "DAGSTER_HOME": str(home)}
        group.start(code_server.argv, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 180
        while not code_server.ready():
            assert time.monotonic() < deadline, (tmp_path / "code-server.log").read_text()[-3000:]
            time.sleep(1)
        assert _location_names(workspace, home) == [topology.LOCATION]
    finally:
        group.stop()
        log.close()


def test_the_test_harness_names_it_the_same(tmp_path: Path) -> None:
    """The e2e and browser tests' UI (workspace.yaml is checked in test_definitions)."""
    (tmp_path / "stack").mkdir()
    processes = DagsterProcesses(tmp_path / "stack", topology.MODULE)
    assert _location_names(processes.workspace, processes.home) == [topology.LOCATION]


def test_dg_names_it_the_same() -> None:
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]
    assert pyproject["dg"]["project"]["code_location_name"] == topology.LOCATION
    assert pyproject["dagster"]["code_location_name"] == topology.LOCATION
