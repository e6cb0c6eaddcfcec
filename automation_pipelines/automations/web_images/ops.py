"""Render a batch of inbox photos: renditions published all together, one database row per photo,
originals moved to processed/, bad files quarantined with a reason while the good ones are
delivered, and files that end early (an upload still going) left to wait their grace period.

The work itself is `batch.process_batch`; this op adds what the Dagster UI shows. Runs of this
job must never overlap: two writers of one folder tree lose records. The job runs its step
inside the run worker (in-process executor), so killing the worker kills the step and no orphan
keeps writing; and the batch holds an exclusive `flock` on `<root>/.web_images.lock`, so a
second run launched anyway (by hand, or after run monitoring misjudged a live worker) waits for
the first instead of overlapping. The kernel drops the lock when its holder dies. Under the
lock a run also repairs what a killed run left: stale temp files, photos rendered and recorded
but not yet moved, renditions no row lists, and a manifest that missed the last rows.

With the Celery executor (`execution.py`) the batch is three steps instead, which may run on
different workers: `split_web_images_batch` (the batch's first phase, then one part per
`WEB_IMAGES_FILES_PER_STEP` photos), `render_web_images_part` for each part, side by side, and
`publish_web_images_batch` (the last phase, and what the UI shows). See `batch.py`.

A run that quarantined files is tagged `result/quarantined=N` (the run list shows it next to
the green status) and its materialization's description names the files.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import dagster as dg

from automation_pipelines.automations.web_images import AUTOMATION, book, execution
from automation_pipelines.automations.web_images.batch import (
    BatchOutcome,
    close_batch,
    manifest_entry,
    open_batch,
    process_batch,
    render_files,
)
from automation_pipelines.automations.web_images.images import ImageSettings
from automation_pipelines.automations.web_images.resources import PhotoFolders
from automation_pipelines.reliability import breaker
from automation_pipelines.reliability.alerts import AlertRouter
from automation_pipelines.reliability.deadletters import flag_run
from automation_pipelines.reliability.errors import LOCAL_IO
from automation_pipelines.reliability.numbers import report_run

ASSET_KEY = dg.AssetKey("web_images")

__all__ = [
    "ASSET_KEY",
    "RenderConfig",
    "manifest_entry",
    "publish_web_images_batch",
    "render_web_images",
    "render_web_images_part",
    "settings_key",
    "split_web_images_batch",
]


class RenderConfig(dg.Config):
    """The batch (paths relative to the inbox), quarantined files to look at again (relative to
    quarantine/) and the output settings. The inbox sensor names its batch by run key (`batch`)
    instead of listing the files: Dagster keeps each run request in its tick record as well."""

    files: list[str] = []
    revisit: list[str] = []
    #: The run key of a batch the inbox sensor asked for; its files are read from the sensor's
    #: book (ap_web_images_files), beside any `files` and `revisit` named here.
    batch: str = ""
    widths: list[int] = [1600, 800, 400]
    webp_quality: int = 80
    jpeg_quality: int = 82
    max_megapixels: float = 60.0


def settings_key(settings: ImageSettings) -> str:
    """The output settings a row was rendered with: outputs of other settings are not reused."""
    return settings.key()


def batch_files_of(
    context: dg.OpExecutionContext, config: RenderConfig, folders: PhotoFolders
) -> tuple[list[str], list[str]]:
    """(files, revisit): those the config names, and those of its `batch`, which the op log
    lists (the run config names only the batch)."""
    files, revisit = list(config.files), list(config.revisit)
    if config.batch:
        named, again = book.batch_files(
            breaker.engine_for(context.instance), folders.root, config.batch
        )
        files += [rel for rel in named if rel not in files]
        revisit += [rel for rel in again if rel not in revisit]
        listed = ", ".join([*named, *(f"quarantine/{rel}" for rel in again)]) or _NONE_LEFT
        context.log.info(f"{_BATCH_SAID}{config.batch}: {listed}")
    return files, revisit


_BATCH_SAID = "batch "
_NONE_LEFT = "none left"


def files_of_run(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str] | None:
    """The inbox photos of a run of the job: those its config lists, or, for a batch the sensor
    named by run key, those the run's log listed as it started (None before it has)."""
    config = next(iter(run.run_config.get("ops", {}).values()), {}).get("config", {})
    if not config.get("batch"):
        return list(config.get("files", []))
    said = f"{_BATCH_SAID}{config['batch']}: "
    for record in instance.get_records_for_run(run.run_id, limit=500).records:
        entry = record.event_log_entry
        if entry.dagster_event is None and entry.user_message.startswith(said):
            listed = entry.user_message[len(said) :]
            names = [] if listed == _NONE_LEFT else listed.split(", ")
            return [name for name in names if not name.startswith("quarantine/")]
    return None


def image_settings(config: RenderConfig) -> ImageSettings:
    return ImageSettings(
        widths=tuple(config.widths),
        webp_quality=config.webp_quality,
        jpeg_quality=config.jpeg_quality,
        max_pixels=int(config.max_megapixels * 1_000_000),
    )


@AUTOMATION.op(LOCAL_IO)
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
    engine = alerts.outbox(context.instance).engine
    files, revisit = batch_files_of(context, config, folders)
    outcome = process_batch(
        folders,
        engine,
        files,
        image_settings(config),
        run_id=context.run_id,
        revisit=revisit,
        on_wait=context.log.warning,
        log=context.log,
    )
    if outcome.quarantined:
        flag_run(context, quarantined=len(outcome.quarantined))
        _alert_quarantine(context, alerts, folders, outcome.quarantined)
    return _report(context, outcome, time.monotonic() - started)


@AUTOMATION.op(LOCAL_IO, out=dg.DynamicOut(dict, io_manager_key=execution.STEP_OUTPUTS_KEY))
def split_web_images_batch(
    context: dg.OpExecutionContext,
    config: RenderConfig,
    folders: PhotoFolders,
    alerts: AlertRouter,
):
    """The batch's first phase, then one part per `WEB_IMAGES_FILES_PER_STEP` files, so that
    workers render parts side by side. Always at least one part: the last step then still
    repairs the manifest."""
    batch, revisit = batch_files_of(context, config, folders)
    outcome = open_batch(
        folders,
        alerts.outbox(context.instance).engine,
        batch,
        run_id=context.run_id,
        revisit=revisit,
        on_wait=context.log.warning,
        log=context.log,
    )
    files = [*batch, *outcome.revisited]
    size = execution.files_per_step()
    settings = config.model_dump(exclude={"files", "revisit", "batch"})
    for number, start in enumerate(range(0, max(len(files), 1), size)):
        yield dg.DynamicOutput(
            {
                "files": files[start : start + size],
                "settings": settings,
                "revisited": outcome.revisited if number == 0 else [],
                "started": time.time(),
            },
            mapping_key=f"part_{number}",
        )


@AUTOMATION.op(LOCAL_IO, out=dg.Out(dict, io_manager_key=execution.STEP_OUTPUTS_KEY))
def render_web_images_part(
    context: dg.OpExecutionContext,
    part: dict,
    folders: PhotoFolders,
    alerts: AlertRouter,
) -> dict:
    """Render one part of the batch under the tree's shared lock. A step whose run has ended
    (its run worker died, and a retry of the run took over the batch) does nothing: it checks
    once it holds the lock, and the retry's first step holds the lock exclusively."""

    def run_still_going() -> None:
        run = context.instance.get_run_by_id(context.run_id)
        if run is None or run.is_finished:
            raise dg.Failure(
                f"run {context.run_id} ended before this step started; its batch is left to "
                "the run that retries it",
                allow_retries=False,
            )

    outcome = render_files(
        folders,
        alerts.outbox(context.instance).engine,
        part["files"],
        image_settings(RenderConfig(**part["settings"])),
        run_id=context.run_id,
        before=run_still_going,
        on_wait=context.log.warning,
        log=context.log,
    )
    outcome.revisited = list(part["revisited"])
    context.log.info(
        f"rendered {len(outcome.delivered)} of {len(part['files'])} file(s) in this part "
        f"on {execution.worker_name()}"
    )
    return {"files": part["files"], "outcome": outcome, "started": part["started"]}


@AUTOMATION.op(LOCAL_IO)
def publish_web_images_batch(
    context: dg.OpExecutionContext,
    parts: list[dict],
    folders: PhotoFolders,
    alerts: AlertRouter,
) -> None:
    """The batch's last phase once every part is rendered: the manifest moves to the new sets,
    replaced renditions go, and the UI gets the run's materialization; quarantined files are
    flagged and alerted as by `render_web_images`. Then the run's step outputs are deleted:
    nothing reads them any more, and the shared folder would otherwise grow with every run."""
    outcome = BatchOutcome()
    files: list[str] = []
    for part in parts:
        outcome.merge(part["outcome"])
        files.extend(part["files"])
    outcome.manifest_entries, outcome.removed_outputs = close_batch(
        folders,
        alerts.outbox(context.instance).engine,
        files,
        outcome.superseded,
        run_id=context.run_id,
        on_wait=context.log.warning,
    )
    if outcome.quarantined:
        flag_run(context, quarantined=len(outcome.quarantined))
        _alert_quarantine(context, alerts, folders, outcome.quarantined)
    started = min((part["started"] for part in parts), default=time.time())
    _report(context, outcome, time.time() - started)
    shutil.rmtree(Path(execution.step_outputs_dir(folders.root)) / context.run_id, True)


def _report(context: dg.OpExecutionContext, outcome: BatchOutcome, seconds: float) -> dict:
    delivered, quarantined, waiting = outcome.delivered, outcome.quarantined, outcome.waiting
    bytes_in = sum(entry["source_bytes"] for entry in delivered)
    bytes_out = sum(o["bytes"] for entry in delivered for o in entry["outputs"])
    saved = sum(entry["bytes_saved"] for entry in delivered)
    summary = {
        "images_processed": len(delivered),
        "images_quarantined": len(quarantined),
        "images_waiting": len(waiting),
        "already_done": len(outcome.missing),
        "repaired": len(outcome.repaired),
        "revisited": len(outcome.revisited),
        "animated": sum(1 for entry in delivered if entry.get("animated")),
        "outputs_removed": len(outcome.removed_outputs),
        "manifest_entries": outcome.manifest_entries,
        "mb_in": round(bytes_in / 1e6, 3),
        "mb_out": round(bytes_out / 1e6, 3),
        "percent_saved": round(100.0 * saved / bytes_in, 1) if bytes_in else 0.0,
        "seconds": round(seconds, 2),
    }
    description = (
        f"{len(delivered)} photo(s) rendered, {len(outcome.repaired)} repaired, "
        f"{len(quarantined)} quarantined, {len(waiting)} waiting (they end early)"
    )
    if quarantined:
        names = ", ".join(rel for rel, _ in quarantined[:10])
        more = f" and {len(quarantined) - 10} more" if len(quarantined) > 10 else ""
        description += f". QUARANTINED (see quarantine/ and quarantined_files): {names}{more}"
    context.log_event(
        dg.AssetMaterialization(
            asset_key=ASSET_KEY,
            description=description,
            metadata={
                **{k: dg.MetadataValue.float(float(v)) for k, v in summary.items()},
                "quarantined_files": dg.MetadataValue.text(
                    "\n".join(f"{rel}: {why}" for rel, why in quarantined) or "-"
                ),
                "waiting_files": dg.MetadataValue.text(
                    "\n".join(
                        f"{rel}: {why} (quarantined after "
                        f"{time.strftime('%H:%M:%S UTC', time.gmtime(until))} unless it changes)"
                        for rel, why, until in waiting
                    )
                    or "-"
                ),
            },
        )
    )
    report_run(
        context,
        AUTOMATION.name,
        items=len(delivered),
        quarantined=len(quarantined),
        arrived=outcome.arrived,
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
