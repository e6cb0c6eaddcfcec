"""ProcessGroup: a tree of processes that ignores SIGINT and SIGTERM, with a grandchild that
moved to a process group of its own, is still stopped completely. write_bytecode: a process
started where PYTHONDONTWRITEBYTECODE is set imports the package from the bytecode written
before it started."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from automation_pipelines.reliability.processes import ProcessGroup, write_bytecode

STUBBORN = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if sys.argv[1] == "parent":
        subprocess.Popen([sys.executable, __file__, "child"])
        subprocess.Popen([sys.executable, __file__, "detached"])
    if sys.argv[1] == "detached":
        os.setpgid(0, 0)
    open(os.path.join(os.environ["MARK_DIR"], f"{sys.argv[1]}.{os.getpid()}"), "w").close()
    while True:
        time.sleep(0.2)
    """
)


def test_stubborn_tree_is_stopped(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    group = ProcessGroup()
    group.start([sys.executable, str(script), "parent"], env={"MARK_DIR": str(tmp_path)})
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("*.[0-9]*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = sorted(int(p.suffix[1:]) for p in tmp_path.glob("*.[0-9]*"))
    assert len(pids) == 3, "the three test processes did not start"
    assert {p.pid for p in group.members()} >= set(pids)

    group.stop(graceful_seconds=0.5, term_seconds=0.5)

    still = [
        pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
    ]
    assert still == []
    assert group.popens[0].returncode is not None


def test_cooperative_process_stops_on_sigint(tmp_path: Path) -> None:
    script = tmp_path / "polite.py"
    script.write_text(
        "import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
        "    open(__file__ + '.done', 'w').close()\n"
    )
    with ProcessGroup() as group:
        popen = group.start([sys.executable, str(script)])
        time.sleep(0.5)
    assert popen.returncode == 0
    assert Path(f"{script}.done").exists()


def _loaded_from(package_parent: Path) -> str:
    """Where a new interpreter that may not write bytecode takes `pkg.mod`'s code from."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(package_parent)}
    verbose = subprocess.run(
        [sys.executable, "-v", "-c", "import pkg.mod"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    [line] = [x for x in verbose.splitlines() if x.startswith("# code object from") and "mod" in x]
    return line.strip("'")


def test_processes_that_may_not_write_bytecode_start_from_what_was_written_before(
    tmp_path: Path,
) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("VALUE = 1\n")
    assert _loaded_from(tmp_path).endswith("mod.py"), "compiled from source without it"

    assert write_bytecode(package)

    assert _loaded_from(tmp_path).endswith(".pyc")
