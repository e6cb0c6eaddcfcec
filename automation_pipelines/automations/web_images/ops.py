"""Render a batch of inbox photos: renditions written atomically, originals moved to processed/,
bad files quarantined with a reason while the good ones are delivered."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg

from automation_pipelines.automations.web_images import AUTOMATION
from automation_pipelines.automations.web_images.images import (
    BadImage,
    ImageResult,
    ImageSettings,
    render_image,
)
from automation_pipelines.automations.web_images.resources import PhotoFolders
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.deadletters import record_dead_letter
from automation_pipelines.reliability.errors import LOCAL_IO, classify, reliable_op
from automation_pipelines.reliability.files import atomic_write_bytes, move_into, quarantine

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


def _load_manifest(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


@reliable_op(LOCAL_IO)
def render_web_images(
    context: dg.OpExecutionContext,
    config: RenderConfig,
    folders: PhotoFolders,
    alerts: AlertRouter,
) -> dict:
    """Render every file of the batch; a file that can never become a web image is quarantined
    and the owner told once, without stopping the others. Transient errors retry the op, which
    is safe: finished files have left the inbox, and outputs are rewritten identically."""
    started = time.monotonic()
    settings = ImageSettings(
        widths=tuple(config.widths),
        webp_quality=config.webp_quality,
        jpeg_quality=config.jpeg_quality,
        max_pixels=int(config.max_megapixels * 1_000_000),
    )
    manifest = _load_manifest(folders.manifest)
    delivered: list[dict] = []
    quarantined: list[tuple[str, str]] = []
    missing: list[str] = []
    for relative in config.files:
        source = folders.inbox / relative
        if not source.exists():
            missing.append(relative)  # already handled by an earlier attempt
            continue
        try:
            result = render_image(source, folders.output, Path(relative), settings)
        except Exception as exc:
            # Disk and I/O errors (a full or read-only output volume) are not the photo's fault:
            # they fail the run for the owner instead of quarantining a good photo.
            if classify(exc).transient or (
                isinstance(exc, OSError) and not isinstance(exc, BadImage)
            ):
                raise
            reason = exc.reason if isinstance(exc, BadImage) else f"{type(exc).__name__}: {exc}"
            quarantine(source, folders.quarantine, Path(relative), reason)
            record_dead_letter(
                alerts.outbox(context.instance).engine, AUTOMATION.name, relative, reason
            )
            quarantined.append((relative, reason))
            context.log.warning(f"quarantined {relative}: {reason}")
            continue
        move_into(source, folders.processed, Path(relative))
        manifest[relative] = manifest_entry(relative, result)
        atomic_write_bytes(
            folders.manifest, json.dumps(manifest, indent=1, sort_keys=True).encode()
        )
        delivered.append(manifest[relative])

    if quarantined:
        _alert_quarantine(context, alerts, folders, quarantined)
    bytes_in = sum(entry["source_bytes"] for entry in delivered)
    bytes_out = sum(o["bytes"] for entry in delivered for o in entry["outputs"])
    saved = sum(entry["bytes_saved"] for entry in delivered)
    summary = {
        "images_processed": len(delivered),
        "images_quarantined": len(quarantined),
        "already_done": len(missing),
        "mb_in": round(bytes_in / 1e6, 3),
        "mb_out": round(bytes_out / 1e6, 3),
        "percent_saved": round(100.0 * saved / bytes_in, 1) if bytes_in else 0.0,
        "seconds": round(time.monotonic() - started, 2),
    }
    context.log_event(
        dg.AssetMaterialization(
            asset_key=ASSET_KEY,
            description=f"{len(delivered)} photo(s) rendered, {len(quarantined)} quarantined",
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
