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

from automation_pipelines.instance import DEFAULT_HOME, instance_config_path, prepare_home
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


def _outbox():
    from automation_pipelines.reliability import store
    from automation_pipelines.reliability.alerts import AlertRouter

    root = os.environ.get("DAGSTER_HOME") or str(DEFAULT_HOME)
    router = AlertRouter.from_env()
    return router.outbox_at(store.database_url(root))


def _alerts_test(args: argparse.Namespace) -> int:
    """Send a test alert to an owner's route now, so a new channel is proven before an incident."""
    outbox = _outbox()
    key = f"test:{args.owner}:{time.time_ns()}"
    outbox.enqueue_message(
        args.owner,
        f"[TEST] alert route of {args.owner} works",
        f"A test alert for owner {args.owner}, sent by `automation-pipelines alerts test`.\n"
        f"Channels: the apprise URLs in {' or '.join(outbox.routes.env_names(args.owner))}.",
        key,
    )
    report = outbox.deliver_due(budget_seconds=60)
    for error in report.errors:
        print(f"✗ {error}")
    print(f"delivered to {report.sent} channel(s), {report.failed} refused")
    return 0 if report.sent and not report.failed and not report.unrouted else 1


def _alerts_pending(args: argparse.Namespace) -> int:
    """List alerts not yet accepted by every channel; exit 1 if there are any."""
    pending = _outbox().alerts(status="pending")
    for alert in pending:
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(alert.created_at))
        print(f"#{alert.id} {created} UTC {alert.owner}: {alert.title}")
        if alert.last_error:
            print(f"    {alert.last_error}")
    print(f"{len(pending)} alert(s) waiting for delivery")
    return 1 if pending else 0


def _alerts_deliver(args: argparse.Namespace) -> int:
    """Deliver what is due now, e.g. right after a broken channel was fixed."""
    report = _outbox().deliver_due(budget_seconds=120)
    for error in report.errors:
        print(f"✗ {error}")
    print(f"delivered {report.sent}, refused {report.failed}, unrouted {report.unrouted}")
    return 0 if not (report.failed or report.unrouted) else 1


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

    alerts = commands.add_parser("alerts", help="the alert outbox and routes")
    alert_commands = alerts.add_subparsers(dest="alerts_command", required=True)
    test = alert_commands.add_parser("test", help="send a test alert through an owner's route")
    test.add_argument("--owner", required=True, help="owner as in alert_routes.yaml")
    test.set_defaults(func=_alerts_test)
    pending = alert_commands.add_parser("pending", help="list alerts not yet delivered")
    pending.set_defaults(func=_alerts_pending)
    deliver = alert_commands.add_parser("deliver", help="deliver what is due now")
    deliver.set_defaults(func=_alerts_deliver)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
