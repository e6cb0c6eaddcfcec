"""`automation-pipelines …`: the commands people and cron run around the Dagster instance."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from automation_pipelines import settings
from automation_pipelines.instance import instance_config_path, instance_home
from automation_pipelines.reliability import readiness
from automation_pipelines.settings import ConfigurationError

DEFAULT_DEFS = "automation_pipelines.definitions:defs"


def _check(args: argparse.Namespace) -> int:
    from automation_pipelines import discovery

    broken: list[discovery.Broken] = []
    try:
        defs = readiness.load_definitions(args.defs)
    except discovery.BrokenAutomations as error:
        # The code location would not load; show each folder at fault and check the others.
        broken = error.broken
        defs = discovery.code_location(discovery.discover()[0])
    for folder in broken:
        print(f"✗ automation folder {folder.line()}")
    if broken:
        print()
    config = readiness.load_instance_config(Path(args.instance_config))
    findings = readiness.run_checks(defs, config)
    print(readiness.format_report(findings))
    declared = _credentials_declared()
    return 0 if all(f.ok for f in findings) and declared and not broken else 1


def _snapshot(args: argparse.Namespace) -> int:
    """Print the definitions snapshot, or write it after a deliberate change."""
    import json

    from automation_pipelines import snapshot
    from automation_pipelines.paths import PROJECT_ROOT

    if args.write:
        path = snapshot.write()
        print(f"wrote {path.relative_to(PROJECT_ROOT)}: review the diff and commit it")
    else:
        print(json.dumps(snapshot.taken_apart(), indent=1, sort_keys=True))
    return 0


def _new(args: argparse.Namespace) -> int:
    """Write a new automation's folder, runbook and test (see automation_pipelines/scaffold.py)."""
    from automation_pipelines import scaffold
    from automation_pipelines.paths import PROJECT_ROOT

    try:
        made = scaffold.create(args.name, args.owner, args.cron, PROJECT_ROOT)
    except scaffold.ScaffoldError as error:
        print(f"✗ {error}", file=sys.stderr)
        return 2
    for path in made.files:
        print(f"  wrote {path.relative_to(PROJECT_ROOT)}")
    if made.route_added:
        print(f"  added a route for {args.owner} to alert_routes.yaml: set its URLs in .env")
    from automation_pipelines import snapshot

    print(f"  wrote {snapshot.write(PROJECT_ROOT).relative_to(PROJECT_ROOT)} (the new job)")
    print(
        f"Next: fill in ops.py, the runbook's sections and the test; "
        f"`make check` and `make test` pass as generated ({args.name}_job)."
    )
    return 0


def _credentials_declared() -> bool:
    """Every secret variable the project reads is declared in credentials.yaml."""
    from automation_pipelines.reliability import credentials

    try:
        inventory = credentials.load()
    except credentials.InventoryError as error:
        print(f"\n✗ credentials: {error}")
        return False
    missing = credentials.undeclared(inventory)
    for name, where in sorted(missing.items()):
        print(f"\n✗ credentials: ${name} is read by {where} but not declared in {inventory.path}")
    if not missing:
        print(
            f"\nAll {len(inventory.credentials)} credential(s) declared in {inventory.path.name}."
        )
    return not missing


def _ports(args: argparse.Namespace):
    from automation_pipelines import topology

    return topology.Ports(args.host, args.port, args.webhooks_port, args.code_server_port)


def _dev(args: argparse.Namespace) -> int:
    """`make run`: the UI, daemon, code server and receiver on the instance in force, each
    supervised on its own."""
    from automation_pipelines import topology

    return topology.run(_ports(args), production=False)


def _prod(args: argparse.Namespace) -> int:
    """`make run-prod`: the same processes, on PostgreSQL only."""
    from automation_pipelines import topology

    return topology.run(_ports(args), production=True)


def _demo(args: argparse.Namespace) -> int:
    """Send the demo through the running `make run` (see automation_pipelines/demo.py)."""
    from automation_pipelines import demo
    from automation_pipelines.automations.web_images.resources import PhotoFolders

    try:
        result = demo.run_demo(
            args.receiver,
            PhotoFolders.from_env().inbox,
            os.environ.get(demo.SECRET_ENV),
            events=args.events,
        )
    except demo.DemoError as exc:
        print(f"✗ {exc}", file=sys.stderr)
        return 1
    print(demo.where_to_look(args.ui, result))
    return 0


def _project_database() -> str:
    """The URL of the project database of the instance in force, after one round trip to it."""
    from automation_pipelines.reliability import store

    return store.check_reachable(instance_home())


def _outbox():
    from automation_pipelines.reliability.alerts import AlertRouter

    return AlertRouter.from_env().outbox_at(_project_database())


def _switch_engine():
    from automation_pipelines.reliability import store

    return store.engine(_project_database())


def _known_automations() -> set[str]:
    from automation_pipelines.reliability.identity import job_automation

    defs = readiness.load_definitions(DEFAULT_DEFS)
    jobs = defs.get_repository_def().get_all_jobs()
    return {name for job in jobs if (name := job_automation(job))}


def _pause(args: argparse.Namespace) -> int:
    """Stop an automation's schedules and sensors from requesting runs, until `resume`."""
    from automation_pipelines.reliability import breaker

    known = _known_automations()
    if args.name not in known:
        print(f"✗ no automation named {args.name!r}; known: {', '.join(sorted(known))}")
        return 2
    by = os.environ.get("USER") or "cli"
    breaker.pause(_switch_engine(), args.name, args.reason or f"paused by {by}", by=by)
    print(f"{args.name} is paused: its schedules and sensors request no runs.")
    print(f"Resume with: automation-pipelines resume {args.name}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    """Close the breaker (or lift a pause); earlier failures no longer count towards it."""
    from automation_pipelines.reliability import breaker

    previous = breaker.resume(_switch_engine(), args.name, by=os.environ.get("USER") or "cli")
    was = previous.status if previous else "active"
    print(f"{args.name} resumed (it was {was}); its schedules and sensors request runs again.")
    return 0


def _status(args: argparse.Namespace) -> int:
    """Each automation's switch: active, paused or tripped, and why."""
    from automation_pipelines.reliability import breaker

    states = {s.automation: s for s in breaker.all_states(_switch_engine())}
    for name in sorted(_known_automations() | set(states)):
        state = states.get(name)
        print(f"{name}: {state.explain() if state and state.open else 'active'}")
    return 0


def _webhooks_serve(args: argparse.Namespace) -> int:
    """Run the webhook receiver on the project database until SIGINT/SIGTERM."""
    from automation_pipelines.reliability import store
    from automation_pipelines.webhooks.app import DEFAULT_WORKERS, serve

    home = instance_home()
    os.environ["DAGSTER_HOME"] = str(home)
    workers = args.workers
    if workers is None:
        workers = settings.integer("WEBHOOKS_WORKERS", DEFAULT_WORKERS, minimum=1, maximum=64)
    return serve(
        args.host,
        args.port,
        store.database_url(home),
        max_group=args.max_group,
        fd=args.fd,
        workers=max(1, workers),
    )


def _events_engine():
    from automation_pipelines.webhooks import inbox  # noqa: F401 - creates the inbox table

    return _switch_engine()


def _events_status(args: argparse.Namespace) -> int:
    """Inbox rows per source and state."""
    from automation_pipelines.webhooks import inbox

    counts = inbox.counts(_events_engine())
    if not counts:
        print("The inbox is empty.")
    for source in sorted({source for source, _ in counts}):
        states = ", ".join(
            f"{counts.get((source, state), 0)} {state}"
            for state in (inbox.PENDING, inbox.DONE, inbox.DEAD)
        )
        print(f"{source}: {states}")
    return 0


def _events_dead(args: argparse.Namespace) -> int:
    """Dead-lettered events with their last error."""
    from automation_pipelines.webhooks import inbox

    rows = inbox.dead_rows(_events_engine(), args.source)
    for row in rows:
        print(f"{row.id}\t{row.source}/{row.delivery_id}\t{row.event_type}\t{row.last_error}")
    print(f"{len(rows)} dead-lettered event(s).")
    return 0


def _events_replay(args: argparse.Namespace) -> int:
    """Re-queue dead-lettered events; the inbox sensor loads them like new ones."""
    from automation_pipelines.webhooks import inbox

    if not (args.all or args.id or args.source):
        print("✗ say which events: --all, --id N [N ...] or --source NAME")
        return 2
    count = inbox.replay(_events_engine(), ids=args.id, source=args.source, everything=args.all)
    print(f"{count} event(s) re-queued; the webhook_inbox_sensor picks them up on its next tick.")
    return 0


def _deadletters_list(args: argparse.Namespace) -> int:
    """Items the automations set aside and nobody has resolved yet, oldest first, with their age."""
    from automation_pipelines.reliability.deadletters import age_text, open_dead_letters

    rows = open_dead_letters(_switch_engine(), args.automation)
    if not rows:
        scope = f" of {args.automation}" if args.automation else ""
        print(f"No open dead-lettered or quarantined items{scope}.")
        return 0
    now = time.time()
    print("ID\tAUTOMATION\tAGE\tITEM\tREASON")
    for row in rows:
        reason = " ".join(row.reason.split())
        print(f"{row.id}\t{row.automation}\t{age_text(now - row.created_at)}\t{row.item}\t{reason}")
    print(
        f"{len(rows)} open item(s). Once one is handled: automation-pipelines deadletters "
        "resolve ID [ID ...]"
    )
    return 0


def _deadletters_resolve(args: argparse.Namespace) -> int:
    """Mark items handled by hand, by id or every open item of one automation."""
    from automation_pipelines.reliability import deadletters

    by_automation = bool(args.automation and args.all)
    if bool(args.ids) == by_automation or bool(args.automation) != bool(args.all):
        print("✗ say which items: ID [ID ...], or --automation NAME --all", file=sys.stderr)
        return 2
    engine = _switch_engine()
    if by_automation:
        count = deadletters.resolve_automation(engine, args.automation)
        if count:
            print(f"Resolved {count} item(s) of {args.automation}.")
        else:
            others = sorted(deadletters.count_open_by_automation(engine))
            print(
                f"{args.automation} has no open items (open items: {', '.join(others) or 'none'})."
            )
        return 0
    wanted = sorted(set(args.ids))
    open_ids = {row.id for row in deadletters.open_dead_letters(engine)}
    chosen = [i for i in wanted if i in open_ids]
    resolved = deadletters.resolve_dead_letters(engine, chosen)
    if chosen:
        print(f"Resolved {resolved} item(s): {', '.join(f'#{i}' for i in chosen)}.")
    missing = [i for i in wanted if i not in open_ids]
    if missing:
        names = ", ".join(f"#{i}" for i in missing)
        print(f"✗ {names}: not open (unknown, or resolved already); see `deadletters list`")
        return 1
    return 0


def _backups_list(args: argparse.Namespace) -> int:
    """Backup runs and archives at the destination, newest first; --files: what one holds."""
    from automation_pipelines.automations.backups import commands

    return commands.list_command(args)


def _backups_restore(args: argparse.Namespace) -> int:
    """Restore a backup run, one source of it or single files, verified byte for byte."""
    from automation_pipelines.automations.backups import commands

    return commands.restore_command(args)


def _backups_rotate_key(args: argparse.Namespace) -> int:
    """Replace the backup repository's password (restic key add, then key remove)."""
    from automation_pipelines.automations.backups import commands

    return commands.rotate_key_command(args)


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
    from automation_pipelines.monitoring.outside import deliver_now

    report = deliver_now(outbox, budget_seconds=60)
    for error in report.errors:
        print(f"✗ {error}")
    print(f"delivered to {report.sent} channel(s), {report.failed} refused")
    return 0 if report.sent and not report.failed and not report.unrouted else 1


def _alerts_pending(args: argparse.Namespace) -> int:
    """List alerts not yet accepted by every channel; exit 1 if there are any."""
    outbox = _outbox()
    pending = outbox.alerts(status="pending")
    deliveries: dict[int, list] = {}
    for delivery in outbox.deliveries():
        deliveries.setdefault(delivery.alert_id, []).append(delivery)
    for alert in pending:
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(alert.created_at))
        print(f"#{alert.id} {created} UTC {alert.owner}: {alert.title}")
        waiting = [d for d in deliveries.get(alert.id, []) if d.status in ("pending", "sending")]
        for delivery in waiting:
            when = time.strftime("%H:%M:%S", time.gmtime(delivery.next_attempt_at))
            why = _one_line(delivery.last_error) or "not tried yet"
            print(
                f"    {delivery.channel_label}: {why} ({delivery.attempts} attempt(s); next at "
                f"{when} UTC)"
            )
        if alert.last_error and not waiting:
            print(f"    {alert.last_error}")
    print(f"{len(pending)} alert(s) waiting for delivery")
    return 1 if pending else 0


def _one_line(error: str | None) -> str:
    """A channel's error as one line, without the log format's time and level."""
    parts = [
        re.sub(r"^\d{4}-\d\d-\d\d [\d:,.]+ - [A-Z]+ - ", "", line.strip())
        for line in (error or "").splitlines()
    ]
    text = "; ".join(part for part in parts if part)
    return text if len(text) <= 300 else text[:299] + "…"


def _alerts_deliver(args: argparse.Namespace) -> int:
    """Deliver what is due now, e.g. right after a broken channel was fixed."""
    from automation_pipelines.monitoring.outside import deliver_now

    report = deliver_now(_outbox(), budget_seconds=120)
    for error in report.errors:
        print(f"✗ {error}")
    print(f"delivered {report.sent}, refused {report.failed}, unrouted {report.unrouted}")
    return 0 if not (report.failed or report.unrouted) else 1


def _watchdog(args: argparse.Namespace) -> int:
    """Check the daemon and the watchdog sensor from outside Dagster (cron, systemd timer)."""
    from automation_pipelines.monitoring import outside, watchdog
    from automation_pipelines.reliability.alerts import AlertRouter

    interval = watchdog.interval_seconds()
    if args.max_watchdog_age < 2 * interval:
        raise ConfigurationError(
            f"the watchdog sensor looks every {interval} s (WATCHDOG_INTERVAL_SECONDS), so a "
            f"maximum age of its last tick of {args.max_watchdog_age:g} s "
            "(WATCHDOG_MAX_SENSOR_AGE, --max-watchdog-age) would call it silent between two "
            f"looks: make that at least {2 * interval} s"
        )
    outcome = outside.check(
        AlertRouter.from_env(),
        ping_url=args.ping_url or os.environ.get("DEADMAN_PING_URL"),
        max_heartbeat_age=args.max_heartbeat_age,
        max_watchdog_age=args.max_watchdog_age,
    )
    print("\n".join(outcome.lines), flush=True)
    return 0 if outcome.healthy else 1


def _drift(args: argparse.Namespace) -> int:
    """Compare this Python and its packages with the lock, and the lock with pyproject.toml."""
    from automation_pipelines.monitoring import drift

    try:
        lines, as_locked = drift.report(Path(args.lock) if args.lock else drift.LOCK_FILE)
    except drift.LockError as error:
        print(f"✗ {error}", flush=True)
        return 2
    print("\n".join(lines), flush=True)
    return 0 if as_locked else 1


def _host() -> str:
    return os.environ.get("AUTOMATION_HOST") or "127.0.0.1"


def _credential_statuses(probe: bool):
    from automation_pipelines.reliability import credentials

    inventory = credentials.load()
    url = _project_database()
    if probe:
        # The automations register the probes of their own credentials (backups: restic).
        readiness.load_definitions(DEFAULT_DEFS)
        return inventory, credentials.check_all(inventory, now=time.time(), database_url=url)
    known = credentials.history([c.name for c in inventory.credentials], database_url=url)
    # Listing never probes (a login, a connection): the state shown is "set" or "not set".
    statuses = [
        credentials.evaluate(
            c,
            value=os.environ.get(c.env),
            known=known[c.name],
            now=time.time(),
            warn_days=inventory.warn_days,
            probe=lambda _c, _v: credentials.ProbeResult(True, "set (not probed)"),
        )
        for c in inventory.credentials
    ]
    return inventory, statuses


def _credentials_list(args: argparse.Namespace) -> int:
    """Each declared credential: its variable, account, owner, dates; `--check` probes them."""
    from automation_pipelines.reliability.credentials import InventoryError

    try:
        inventory, statuses = _credential_statuses(args.check)
    except InventoryError as error:
        print(f"✗ {error}", file=sys.stderr)
        return 2
    mark = {"ok": "✓", "due": "!", "overdue": "✗", "broken": "✗"}
    for status in statuses:
        c, facts = status.credential, status.metadata
        print(f"{mark[status.kind]} {c.name}  ${c.env}  ({facts.get('probe', 'set')})")
        print(f"    account: {c.account}; owner: {c.owner}")
        print(f"    used by: {', '.join(c.used_by)}")
        print(
            f"    last rotated: {facts['last_rotated']}; rotation due: "
            f"{facts['rotation_due']}; expires: {facts['expires']}"
        )
        if not status.passed:
            print(f"    {status.sentence}")
    problems = [s for s in statuses if s.kind in ("broken", "overdue")]
    print(
        f"\n{len(statuses)} credential(s) in {inventory.path}; {len(problems)} problem(s), "
        f"{sum(s.kind == 'due' for s in statuses)} due within {inventory.warn_days} days."
    )
    return 1 if problems else 0


def _day_argument(value: str) -> float:
    import datetime as dt

    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None
    return dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()


def _credentials_rotated(args: argparse.Namespace) -> int:
    """Record that a credential was rotated (today unless --on), so its next due date counts
    from now; --expires records when the new one stops working."""
    from automation_pipelines.reliability import credentials

    try:
        credential = credentials.load().get(args.name)
    except credentials.InventoryError as error:
        print(f"✗ {error}", file=sys.stderr)
        return 2
    at = args.on if args.on is not None else time.time()
    if at > time.time():
        print("✗ --on is in the future; record a rotation once it is done", file=sys.stderr)
        return 2
    if args.expires is not None and args.expires <= at:
        print("✗ --expires must come after the rotation", file=sys.stderr)
        return 2
    credentials.record_rotation(
        credential.name,
        at=at,
        expires_at=args.expires,
        note=args.note,
        database_url=_project_database(),
    )
    day = time.strftime("%Y-%m-%d", time.gmtime(at))
    due = (
        time.strftime("%Y-%m-%d", time.gmtime(at + credential.rotate_every_days * 86400))
        if credential.rotate_every_days
        else "no cadence declared"
    )
    print(f"✓ {credential.name} (${credential.env}) rotated on {day}; next rotation due {due}.")
    return 0


def _topology_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the processes listen: flags, else the settings (.env), else the defaults."""
    parser.add_argument("--host", default=_host(), help="env AUTOMATION_HOST (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=settings.port("UI_PORT", 3000), help="the UI (env UI_PORT)"
    )
    parser.add_argument(
        "--webhooks-port",
        type=int,
        default=settings.port("WEBHOOKS_PORT", 3001),
        help="the webhook receiver (env WEBHOOKS_PORT)",
    )
    parser.add_argument(
        "--code-server-port",
        type=int,
        default=settings.port("CODE_SERVER_PORT", 4000),
        help="the gRPC code server (env CODE_SERVER_PORT)",
    )


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

    snap = commands.add_parser(
        "snapshot", help="what the UI shows of the code location, as the test holds it"
    )
    snap.add_argument("--write", action="store_true", help="write definitions.snapshot.json")
    snap.set_defaults(func=_snapshot)

    new = commands.add_parser(
        "new", help="scaffold a complete automation to fill in (it passes check as generated)"
    )
    new.add_argument("name", help="the folder's and the automation's name, e.g. invoice_sync")
    new.add_argument("--owner", required=True, help="who is alerted, e.g. team:data")
    new.add_argument(
        "--cron", default="0 6 * * *", help="when its schedule runs, in UTC (default: daily 06:00)"
    )
    new.set_defaults(func=_new)

    dev = commands.add_parser(
        "dev", help="the UI, daemon, code server and webhook receiver, supervised (make run)"
    )
    _topology_arguments(dev)
    dev.set_defaults(func=_dev)

    prod = commands.add_parser(
        "prod", help="the production topology on PostgreSQL: code server, UI, daemon, receiver"
    )
    _topology_arguments(prod)
    prod.set_defaults(func=_prod)

    demo = commands.add_parser(
        "demo", help="with `make run` up: sample photos and signed webhook events to watch"
    )
    demo.add_argument(
        "--receiver",
        default=f"http://{_host()}:{settings.port('WEBHOOKS_PORT', 3001)}",
        help="the webhook receiver's URL",
    )
    demo.add_argument(
        "--ui", default=f"http://{_host()}:{settings.port('UI_PORT', 3000)}", help="the UI's URL"
    )
    demo.add_argument("--events", type=int, default=12)
    demo.set_defaults(func=_demo)

    webhooks = commands.add_parser("webhooks", help="the webhook receiver")
    webhook_commands = webhooks.add_subparsers(dest="webhooks_command", required=True)
    serve = webhook_commands.add_parser("serve", help="receive signed webhooks into the inbox")
    serve.add_argument("--host", default=_host())
    serve.add_argument("--port", type=int, default=settings.port("WEBHOOKS_PORT", 3001))
    serve.add_argument(
        "--fd",
        type=int,
        help="serve this inherited listening socket instead of binding --host/--port",
    )
    serve.add_argument(
        "--max-group",
        type=int,
        default=None,
        help="most events one inbox commit takes (default 512; 1 commits each event alone)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="receiver processes sharing the port (env WEBHOOKS_WORKERS, default 2)",
    )
    serve.set_defaults(func=_webhooks_serve)

    events = commands.add_parser("events", help="the webhook inbox: status, dead letters, replay")
    event_commands = events.add_subparsers(dest="events_command", required=True)
    event_status = event_commands.add_parser("status", help="inbox rows per source and state")
    event_status.set_defaults(func=_events_status)
    dead = event_commands.add_parser("dead", help="list dead-lettered events and why")
    dead.add_argument("--source")
    dead.set_defaults(func=_events_dead)
    replay = event_commands.add_parser("replay", help="re-queue dead-lettered events")
    replay.add_argument("--all", action="store_true", help="every dead-lettered event")
    replay.add_argument("--id", type=int, nargs="+", help="inbox ids (see `events dead`)")
    replay.add_argument("--source", help="only this source's dead-lettered events")
    replay.set_defaults(func=_events_replay)

    letters = commands.add_parser(
        "deadletters", help="items the automations set aside (quarantined, dead-lettered)"
    )
    letter_commands = letters.add_subparsers(dest="deadletters_command", required=True)
    letters_list = letter_commands.add_parser("list", help="open items, oldest first, with age")
    letters_list.add_argument("--automation", help="only this automation's items")
    letters_list.set_defaults(func=_deadletters_list)
    letters_resolve = letter_commands.add_parser(
        "resolve", help="mark items handled: by id, or --automation NAME --all"
    )
    letters_resolve.add_argument("ids", type=int, nargs="*", metavar="ID", help="ids from `list`")
    letters_resolve.add_argument("--automation", help="with --all: every open item of it")
    letters_resolve.add_argument("--all", action="store_true", help="with --automation")
    letters_resolve.set_defaults(func=_deadletters_resolve)

    backups = commands.add_parser(
        "backups", help="list and restore backups, rotate the repository key"
    )
    backup_commands = backups.add_subparsers(dest="backups_command", required=True)
    listing = backup_commands.add_parser("list", help="snapshots at the destination")
    listing.add_argument("--files", metavar="SNAPSHOT", help="list the files of one snapshot")
    restore = backup_commands.add_parser(
        "restore", help="restore a snapshot or single files, verifying every hash"
    )
    restore.add_argument(
        "snapshot", nargs="?", default="latest", help="a run id, a restic snapshot id, or latest"
    )
    restore.add_argument("--to", required=True, help="folder to restore into")
    restore.add_argument(
        "--file", nargs="+", help="only these files, as `backups list --files` names them"
    )
    restore.add_argument("--source", help="only this source of the run")
    restore.add_argument("--overwrite", action="store_true", help="replace files that exist")
    rotate = backup_commands.add_parser(
        "rotate-key", help="replace the repository password (restic key add + key remove)"
    )
    rotate.add_argument(
        "--new-password-file", required=True, help="a file holding the new password"
    )
    for sub in (listing, restore, rotate):
        sub.add_argument("--destination", help="default: backups.yaml / $BACKUP_DESTINATION")
    listing.set_defaults(func=_backups_list)
    restore.set_defaults(func=_backups_restore)
    rotate.set_defaults(func=_backups_rotate_key)

    pause = commands.add_parser("pause", help="stop an automation's triggers until resumed")
    pause.add_argument("name", help="automation name (its folder under automations/)")
    pause.add_argument("--reason", help="why, for the team (shown in skips and alerts)")
    pause.set_defaults(func=_pause)
    resume = commands.add_parser("resume", help="resume a paused or tripped automation")
    resume.add_argument("name")
    resume.set_defaults(func=_resume)
    status = commands.add_parser("status", help="which automations are paused or tripped")
    status.set_defaults(func=_status)

    watch = commands.add_parser(
        "watchdog", help="check the daemon and the watchdog sensor from outside (for cron)"
    )
    watch.add_argument(
        "--max-heartbeat-age",
        type=float,
        default=float(settings.integer("WATCHDOG_MAX_HEARTBEAT_AGE", 180, minimum=1)),
        help="seconds (env WATCHDOG_MAX_HEARTBEAT_AGE, default 180)",
    )
    watch.add_argument(
        "--max-watchdog-age",
        type=float,
        default=float(settings.integer("WATCHDOG_MAX_SENSOR_AGE", 600, minimum=1)),
        help="seconds (env WATCHDOG_MAX_SENSOR_AGE, default 600)",
    )
    watch.add_argument(
        "--ping-url", help="dead-man's switch URL to ping when healthy (env DEADMAN_PING_URL)"
    )
    watch.set_defaults(func=_watchdog)

    drift = commands.add_parser(
        "drift", help="compare the installed packages with requirements.lock (exit 1 on drift)"
    )
    drift.add_argument("--lock", help="another lock than the project's requirements.lock")
    drift.set_defaults(func=_drift)

    alerts = commands.add_parser("alerts", help="the alert outbox and routes")
    alert_commands = alerts.add_subparsers(dest="alerts_command", required=True)
    test = alert_commands.add_parser("test", help="send a test alert through an owner's route")
    test.add_argument("--owner", required=True, help="owner as in alert_routes.yaml")
    test.set_defaults(func=_alerts_test)
    pending = alert_commands.add_parser("pending", help="list alerts not yet delivered")
    pending.set_defaults(func=_alerts_pending)
    deliver = alert_commands.add_parser("deliver", help="deliver what is due now")
    deliver.set_defaults(func=_alerts_deliver)

    creds = commands.add_parser(
        "credentials", help="the declared credentials: list, probe, record a rotation"
    )
    creds.add_argument("--check", action="store_true", help="probe each one (a harmless call)")
    creds.set_defaults(func=_credentials_list)
    cred_commands = creds.add_subparsers(dest="credentials_command")
    rotated = cred_commands.add_parser("rotated", help="record that a credential was rotated")
    rotated.add_argument("name", help="its name in credentials.yaml")
    rotated.add_argument("--on", type=_day_argument, help="YYYY-MM-DD (default: now)")
    rotated.add_argument("--expires", type=_day_argument, help="YYYY-MM-DD the new one expires")
    rotated.add_argument("--note", help="who rotated it, a ticket")
    rotated.set_defaults(func=_credentials_rotated)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Dagster warns about its own beta parameter when it binds resources to sensors.
    warnings.filterwarnings("ignore", message="Parameter `owners` of initializer")
    try:
        settings.load_project_env()  # before the parser: its defaults come from the settings
        args = build_parser().parse_args(argv)
        return args.func(args)
    except ConfigurationError as error:
        print(f"✗ {error}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
