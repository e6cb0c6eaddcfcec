"""ProcessGroup: a tree of processes that ignores SIGINT and SIGTERM, with a grandchild that
moved to a process group of its own, is still stopped completely."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import psutil

from automation_pipelines.reliability.processes import ProcessGroup

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
