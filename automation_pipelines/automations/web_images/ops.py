"""Render a batch of inbox photos: renditions written atomically, one database row per photo,
originals moved to processed/, bad files quarantined with a reason while the good ones are
delivered.

Runs of this job must never overlap: two writers of one folder tree lose records. The job runs
its step inside the run worker (in-process executor), so killing the worker kills the step and
no orphan keeps writing; and the batch holds an exclusive `flock` on `<root>/.web_images.lock`,
so a second run launched anyway (by hand, or after run monitoring misjudged a live worker) waits
for the first instead of overlapping. The kernel drops the lock when its holder dies. Under the
lock a run also repairs what a killed run left: stale temp files, photos rendered and recorded
but not yet moved, and a manifest that missed the last rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from automation_pipelines.automations.web_images import AUTOMATION
from automation_pipelines.automations.web_images.images import (
    BadImage,
    ImageResult,
    ImageSettings,
    render_image,
)
from automation_pipelines.automations.web_images.records import (
    get_record,
    outputs_present,
    record_photo,
    regenerate_manifest,
)
from automation_pipelines.automations.web_images.resources import PhotoFolders
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.deadletters import record_dead_letter
from automation_pipelines.reliability.errors import LOCAL_IO, classify, for_item, reliable_op
from automation_pipelines.reliability.files import move_into, quarantine
from automation_pipelines.reliability.locks import exclusive_lock

ASSET_KEY = dg.AssetKey("web_images")


class RenderConfig(dg.Config):
    """The batch (paths relative to the inbox) and the output settings."""

    files: list[str]
    widths: list[int] = [1600, 800, 400]
    webp_quality: int = 80
    jpeg_quality: int = 82
    max_megapixels: float = 60.0


def manifest_entry(relative: str, result: ImageResult) -> dict:
    """What the manifest says of one photo: every output with its size, and the bytes saved by
    serving the largest WebP instead of the original."""
    largest_webp = max((r for r in result.renditions if r.format == "webp"), key=lambda r: r.width)
    return {
        "source": relative,
        "source_bytes": result.source_bytes,
        "width": result.width,
        "height": result.height,
        "outputs": [
            {
                "path": r.path.as_posix(),
                "format": r.format,
                "width": r.width,
                "height": r.height,
                "bytes": r.bytes,
            }
            for r in result.renditions
        ],
        "bytes_saved": result.source_bytes - largest_webp.bytes,
    }


def settings_key(settings: ImageSettings) -> str:
    """The output settings a row was rendered with: outputs of other settings are not reused."""
    widths = ",".join(str(width) for width in settings.widths)
    return f"widths={widths};webp={settings.webp_quality};jpeg={settings.jpeg_quality}"


class _Batch:
    """What became of each file of the batch."""

    def __init__(self) -> None:
        self.delivered: list[dict] = []
        self.quarantined: list[tuple[str, str]] = []
        self.missing: list[str] = []
        self.repaired: list[str] = []
        self.manifest_entries = 0


@reliable_op(LOCAL_IO)
def render_web_images(
    context: dg.OpExecutionContext,
    config: RenderConfig,
    folders: PhotoFolders,
    alerts: AlertRouter,
) -> dict:
    """Render every file of the batch under the automation's lock; a file that can never become a
    web image is quarantined and the owner told once, without stopping the others. Transient
    errors retry the op, which is safe: finished files have left the inbox, a file rendered and
    recorded but not moved is only moved, and outputs are rewritten identically."""
    started = time.monotonic()
    settings = ImageSettings(
        widths=tuple(config.widths),
        webp_quality=config.webp_quality,
        jpeg_quality=config.jpeg_quality,
        max_pixels=int(config.max_megapixels * 1_000_000),
    )
    outside = [rel for rel in config.files if Path(rel).is_absolute() or ".." in Path(rel).parts]
    if outside:
        raise ValueError(f"files must be paths inside the inbox, got {outside}")
    engine = alerts.outbox(context.instance).engine
    batch = _Batch()
    with exclusive_lock(
        folders.lock, holder={"run_id": context.run_id}, on_wait=context.log.warning
    ):
        _remove_stale_temp_files(folders, config.files)
        try:
            _render_batch(context, config.files, folders, engine, settings, batch)
        except Exception:
            # The rows written so far are safe; the manifest is the next run's to repair if
            # this write fails too (a full disk), or if the run is being terminated.
            try:
                regenerate_manifest(engine, folders.root, folders.manifest)
            except Exception as exc:
                context.log.warning(f"manifest not regenerated: {type(exc).__name__}: {exc}")
            raise
        batch.manifest_entries = regenerate_manifest(engine, folders.root, folders.manifest)

    if batch.quarantined:
        _alert_quarantine(context, alerts, folders, batch.quarantined)
    return _report(context, batch, time.monotonic() - started)


def _render_batch(
    context: dg.OpExecutionContext,
    files: list[str],
    folders: PhotoFolders,
    engine: sa.Engine,
    settings: ImageSettings,
    batch: _Batch,
) -> None:
    """Per photo: renditions (atomic), then its row (one transaction), then the move."""
    for relative in files:
        source = folders.inbox / relative
        if not source.exists():
            batch.missing.append(relative)  # already handled by an earlier attempt
            continue
        with for_item(relative):
            try:
                digest = _sha256(source, relative)
            except BadImage as exc:
                _set_aside(context, engine, folders, relative, exc.reason, batch)
                continue
            row = get_record(engine, folders.root, relative)
            if (
                row is not None
                and row.source_sha256 == digest
                and row.settings == settings_key(settings)
                and outputs_present(folders.output, row)
            ):
                # Rendered and recorded by a run that died before moving the original.
                move_into(source, folders.processed, Path(relative))
                batch.repaired.append(relative)
                continue
            try:
                result = render_image(source, folders.output, Path(relative), settings)
            except Exception as exc:
                # Disk and I/O errors (a full or read-only output volume) are not the photo's
                # fault: they fail the run for the owner instead of quarantining a good photo.
                if classify(exc).transient or (
                    isinstance(exc, OSError) and not isinstance(exc, BadImage)
                ):
                    raise
                reason = exc.reason if isinstance(exc, BadImage) else f"{type(exc).__name__}: {exc}"
                _set_aside(context, engine, folders, relative, reason, batch)
                continue
            entry = manifest_entry(relative, result)
            record_photo(
                engine,
                folders.root,
                entry,
                source_sha256=digest,
                settings=settings_key(settings),
                run_id=context.run_id,
            )
            move_into(source, folders.processed, Path(relative))
            batch.delivered.append(entry)


def _sha256(source: Path, relative: str) -> str:
    digest = hashlib.sha256()
    try:
        with source.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except PermissionError:
        raise BadImage("cannot read the file: permission denied", item=relative) from None
    return digest.hexdigest()


def _set_aside(
    context: dg.OpExecutionContext,
    engine: sa.Engine,
    folders: PhotoFolders,
    relative: str,
    reason: str,
    batch: _Batch,
) -> None:
    quarantine(folders.inbox / relative, folders.quarantine, Path(relative), reason)
    record_dead_letter(engine, AUTOMATION.name, relative, reason)
    batch.quarantined.append((relative, reason))
    context.log.warning(f"quarantined {relative}: {reason}")


def _remove_stale_temp_files(folders: PhotoFolders, files: list[str]) -> None:
    """Temp files in the batch's output folders can only be left by a run that died mid-write:
    while we hold the lock nobody else writes there."""
    targets = {folders.output} | {(folders.output / rel).parent for rel in files}
    for folder in targets:
        with contextlib.suppress(FileNotFoundError):
            for path in folder.glob(".*.tmp"):
                path.unlink(missing_ok=True)


def _report(context: dg.OpExecutionContext, batch: _Batch, seconds: float) -> dict:
    delivered, quarantined = batch.delivered, batch.quarantined
    bytes_in = sum(entry["source_bytes"] for entry in delivered)
    bytes_out = sum(o["bytes"] for entry in delivered for o in entry["outputs"])
    saved = sum(entry["bytes_saved"] for entry in delivered)
    summary = {
        "images_processed": len(delivered),
        "images_quarantined": len(quarantined),
        "already_done": len(batch.missing),
        "repaired": len(batch.repaired),
        "manifest_entries": batch.manifest_entries,
        "mb_in": round(bytes_in / 1e6, 3),
        "mb_out": round(bytes_out / 1e6, 3),
        "percent_saved": round(100.0 * saved / bytes_in, 1) if bytes_in else 0.0,
        "seconds": round(seconds, 2),
    }
    context.log_event(
        dg.AssetMaterialization(
            asset_key=ASSET_KEY,
            description=(
                f"{len(delivered)} photo(s) rendered, {len(batch.repaired)} repaired, "
                f"{len(quarantined)} quarantined"
            ),
            metadata={
                **{k: dg.MetadataValue.float(float(v)) for k, v in summary.items()},
                "quarantined_files": dg.MetadataValue.text(
                    "\n".join(f"{rel}: {why}" for rel, why in quarantined) or "-"
                ),
            },
        )
    )
    return summary


def _alert_quarantine(
    context: dg.OpExecutionContext,
    alerts: AlertRouter,
    folders: PhotoFolders,
    quarantined: list[tuple[str, str]],
) -> None:
    """One alert per run listing every quarantined file and why."""
    outbox = alerts.outbox(context.instance)
    lines = [f"- {rel}: {why}" for rel, why in quarantined]
    outbox.enqueue_message(
        AUTOMATION.owner,
        f"[QUARANTINED] web_images: {len(quarantined)} file(s) could not become web images",
        "\n".join(
            [
                f"Run {context.run_id} set these files aside in {folders.quarantine}, each with a "
                ".reason.txt; the other files of the batch were delivered.",
                *lines,
                f"Link: {alerts.ui_base_url.rstrip('/')}/runs/{context.run_id}",
                f"Runbook: {AUTOMATION.runbook_ref}",
                "To retry a file after fixing it, move it back into the inbox.",
            ]
        ),
        dedup_key=f"quarantine:{context.run_id}",
    )
    outbox.deliver_due(budget_seconds=alerts.delivery_budget_seconds)
