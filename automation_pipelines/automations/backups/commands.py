"""`automation-pipelines backups list|restore|rotate-key`: what an operator runs by hand.

Both formats are read: restic runs (one snapshot per source, tagged with the run's id) and the
archives made before restic, so nothing backed up earlier becomes unreachable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from automation_pipelines.automations.backups import engine
from automation_pipelines.automations.backups import snapshots as archives
from automation_pipelines.automations.backups.resources import BackupSettings
from automation_pipelines.automations.backups.restic import Repository
from automation_pipelines.automations.backups.sources import BackupError


def settings(args: argparse.Namespace) -> BackupSettings:
    """backups.yaml's settings, with --destination in place of its destination."""
    found = BackupSettings.from_config()
    if getattr(args, "destination", None):
        return found.model_copy(update={"destination": args.destination})
    return found


def _runs(
    config: BackupSettings, *, known_here: bool = True
) -> tuple[Repository | None, list[engine.Run]]:
    """The repository's runs, or none when the destination holds no repository yet."""
    local = config.local_destination
    if local is not None and not local.is_dir():
        raise BackupError(f"destination {local} does not exist")
    if local is not None and not (Path(config.repository_location) / "config").exists():
        return None, []
    repo = config.open_repository()
    return repo, engine.list_runs(repo, known_here=known_here)


def _archives(config: BackupSettings) -> list[archives.Snapshot]:
    local = config.local_destination
    return archives.list_snapshots(local) if local is not None else []


def list_command(args: argparse.Namespace) -> int:
    """Runs and archives, newest first; with --files, what one of them holds."""
    try:
        config = settings(args)
        # Listed by restic, which also shows that the configured password opens the repository.
        repo, runs = _runs(config, known_here=False)
        old = _archives(config)
        if args.files:
            run = next((r for r in runs if r.id == args.files), None)
            if run is not None and repo is not None:
                for snap in sorted(run.snapshots, key=lambda s: s.tag(engine.SOURCE) or ""):
                    name = snap.tag(engine.SOURCE) or snap.short_id
                    for node in repo.ls(snap.id):
                        if node.get("type") == "file":
                            print(f"{node['size']:>14,}  {name}{node['path']}")
                return 0
            archive = next((a for a in old if a.id == args.files), None)
            if archive is None:
                raise BackupError(f"no snapshot {args.files!r} (see `backups list`)")
            for entry in archives.read_manifest(archive.path)["files"]:
                print(f"{entry['size']:>14,}  {entry['sha256'][:12]}  {entry['path']}")
            return 0
    except BackupError as exc:
        print(f"✗ {exc}", file=sys.stderr)
        return 1
    for run in runs:
        names = sorted(s.tag(engine.SOURCE) or s.short_id for s in run.snapshots)
        ids = " ".join(s.short_id for s in run.snapshots)
        print(f"{run.id}  restic  {len(names)} source(s): {', '.join(names)}  [{ids}]")
    for archive in old:
        size = archive.archive.stat().st_size if archive.archive.exists() else 0
        state = "verified" if archive.verified else "NOT verified"
        print(f"{archive.id}  archive  {size / 1e6:,.1f} MB  {state}")
    print(f"{len(runs)} restic run(s) and {len(old)} archive(s) at {config.destination}.")
    return 0


def restore_command(args: argparse.Namespace) -> int:
    """Restore a run (or one source, or single files), verified byte for byte."""
    target = Path(args.to)
    try:
        config = settings(args)
        repo, runs = _runs(config)
        old = [a for a in _archives(config) if a.verified or a.id == args.snapshot]
        newest_run = runs[0] if runs else None
        newest_archive = old[0] if old else None
        if args.snapshot == "latest":
            use_archive = newest_archive is not None and (
                newest_run is None or newest_archive.created > newest_run.time
            )
            if newest_run is None and newest_archive is None:
                raise BackupError(f"no snapshot at {config.destination}")
            run = None if use_archive else newest_run
            archive = newest_archive if use_archive else None
        else:
            run = next((r for r in runs if r.id == args.snapshot), None)
            run = run or next(
                (
                    engine.Run(s.id, s.time, (s,))
                    for r in runs
                    for s in r.snapshots
                    if s.id.startswith(args.snapshot)
                ),
                None,
            )
            archive = next((a for a in old if a.id == args.snapshot), None)
            if run is None and archive is None:
                raise BackupError(
                    f"no snapshot {args.snapshot!r} at {config.destination} (see `backups list`)"
                )
        if run is not None and repo is not None:
            done = engine.restore(
                repo,
                run,
                target,
                source=args.source,
                files=args.file or None,
                overwrite=args.overwrite,
            )
            checked = "restic read every file back against the snapshot's content hashes"
        else:
            files = args.file or None
            if args.source:
                manifest = archives.read_manifest(archive.path)
                prefix = f"{args.source}/"
                files = [f["path"] for f in manifest["files"] if f["path"].startswith(prefix)]
            done = archives.restore(archive.path, target, files=files, overwrite=args.overwrite)
            checked = "every SHA-256 matched the manifest"
    except BackupError as exc:
        print(f"✗ {exc}", file=sys.stderr)
        return 1
    ident = getattr(done, "run", None) or getattr(done, "snapshot", "")
    others = "".join(
        f", {len(getattr(done, kind, ()))} {label}"
        for kind, label in (("links", "symbolic link(s)"), ("folders", "folder(s)"))
        if getattr(done, kind, ())
    )
    print(
        f"Restored {len(done.files)} file(s), {done.bytes:,} bytes{others}, from {ident} into "
        f"{args.to}; {checked}."
    )
    return 0


def rotate_key_command(args: argparse.Namespace) -> int:
    """Replace the repository's key: add one for the new password, then remove the old one."""
    try:
        config = settings(args)
        repo = config.open_repository()
        removed, added = engine.rotate_key(repo, Path(args.new_password_file))
    except BackupError as exc:
        print(f"✗ {exc}", file=sys.stderr)
        return 1
    print(
        f"Key {added} added and key {removed} removed: {repo.location} now opens with the "
        f"password in {args.new_password_file} only. Put it where {config.password_env} or "
        f"{config.password_file_env} reads it and in the recovery copy (see the backups "
        "runbook), then run `automation-pipelines credentials rotated backup_restic_password`."
    )
    return 0
