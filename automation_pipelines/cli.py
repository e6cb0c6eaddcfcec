"""`automation-pipelines …`: the commands people and cron run around the Dagster instance."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from automation_pipelines.instance import instance_config_path, prepare_home
from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability import readiness
from automation_pipelines.reliability.processes import ProcessGroup, become_subreaper

DEFAULT_DEFS = "automation_pipelines.definitions:defs"


def _check(args: argparse.Namespace) -> int:
    defs = readiness.load_definitions(args.defs)
    config = readiness.load_instance_config(Path(args.instance_config))
    findings = readiness.run_checks(defs, config)
    print(readiness.format_report(findings))
    return 0 if all(f.ok for f in findings) else 1


def _dev_env(home: Path) -> dict[str, str]:
    """The environment for `dagster dev`: the project's .env under what the caller already set."""
    from dotenv import dotenv_values

    env = {k: v for k, v in dotenv_values(PROJECT_ROOT / ".env").items() if v is not None}
    env.update(os.environ)
    env["DAGSTER_HOME"] = str(home)
    # `dagster dev` suggests `dg dev`, which needs a package this project does not use.
    env.setdefault("PYTHONWARNINGS", "ignore:Function `dev_command` is superseded")
    return env


def _dev(args: argparse.Namespace) -> int:
    """Run `dagster dev` on a persistent home and stop all of it within 10 s of a signal."""
    stop_reason: list[str] = []

    def request_stop(signum: int, _frame: object) -> None:
        stop_reason.append(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, request_stop)

    home = prepare_home()
    env = _dev_env(home)
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or "dagster"
    workspace = PROJECT_ROOT / "workspace.yaml"
    argv = [dagster, "dev", "-w", str(workspace), "-h", args.host, "-p", str(args.port)]
    print(
        f"Dagster UI: http://{args.host}:{args.port}  (instance {home}, config "
        f"{(home / 'dagster.yaml').resolve()}); Ctrl-C stops everything.",
        flush=True,
    )
    become_subreaper()
    parent = os.getppid()
    group = ProcessGroup(reap_orphans=True)
    leader = group.start(argv, env=env, cwd=home)
    try:
        while not stop_reason and leader.poll() is None:
            if os.getppid() != parent:
                stop_reason.append("parent exited")
            time.sleep(0.2)
    finally:
        group.stop()
    if stop_reason:
        print(f"Stopped ({stop_reason[0]}); every Dagster process has exited.", flush=True)
        return 0
    print(f"dagster dev exited with code {leader.returncode}.", file=sys.stderr, flush=True)
    return leader.returncode or 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automation-pipelines", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser(
        "check", help="verify every job against the production-readiness checklist"
    )
    check.add_argument(
        "--defs", default=DEFAULT_DEFS, help="module or module:attr of the dg.Definitions"
    )
    check.add_argument(
        "--instance-config",
        default=str(instance_config_path()),
        help="dagster.yaml whose run queue limits the jobs (default: the one in force)",
    )
    check.set_defaults(func=_check)

    dev = commands.add_parser("dev", help="start the Dagster webserver and daemon (make run)")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(func=_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
