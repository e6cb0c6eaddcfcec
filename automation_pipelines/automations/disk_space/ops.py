"""Measure free space where the automations write, and fail while any volume is low."""

import shutil
from pathlib import Path

import dagster as dg

from automation_pipelines.automations.disk_space import AUTOMATION
from automation_pipelines.reliability.errors import LOCAL_IO
from automation_pipelines.reliability.numbers import report_run


class DiskSpaceConfig(dg.Config):
    """Thresholds for a healthy volume; empty `paths` means the instance's own home."""

    paths: list[str] = []
    min_free_percent: float = 10.0
    min_free_gb: float = 2.0


def volume_report(path: Path, min_free_percent: float, min_free_gb: float) -> dict:
    """Free space of the volume holding `path`, and whether it is below either threshold."""
    usage = shutil.disk_usage(path)
    free_gb = usage.free / 1024**3
    free_percent = 100.0 * usage.free / usage.total if usage.total else 0.0
    low = free_percent < min_free_percent or free_gb < min_free_gb
    return {
        "path": str(path),
        "free_gb": round(free_gb, 2),
        "total_gb": round(usage.total / 1024**3, 2),
        "free_percent": round(free_percent, 2),
        "low": low,
    }


@AUTOMATION.op(LOCAL_IO)
def measure_free_space(context: dg.OpExecutionContext, config: DiskSpaceConfig) -> list[dict]:
    """Record free space per volume as plottable observations; fail if one is low or missing."""
    paths = [Path(p) for p in config.paths] or [Path(context.instance.root_directory)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise dg.Failure(
            description=f"configured path(s) do not exist: {', '.join(missing)}",
            metadata={"missing": ", ".join(missing)},
            allow_retries=False,
        )
    reports = [volume_report(p, config.min_free_percent, config.min_free_gb) for p in paths]
    for report in reports:
        context.log_event(
            dg.AssetObservation(
                asset_key=dg.AssetKey(["disk_space", Path(report["path"]).name or "root"]),
                metadata={
                    "path": report["path"],
                    "free_gb": dg.MetadataValue.float(report["free_gb"]),
                    "free_percent": dg.MetadataValue.float(report["free_percent"]),
                },
            )
        )
    report_run(context, AUTOMATION.name, items=len(reports))
    low = [r for r in reports if r["low"]]
    if low:
        summary = "; ".join(
            f"{r['path']}: {r['free_gb']} GB free ({r['free_percent']}%)" for r in low
        )
        raise dg.Failure(
            description=(
                f"low disk space (below {config.min_free_percent}% or {config.min_free_gb} GB): "
                f"{summary}"
            ),
            metadata={"low_volumes": summary},
            allow_retries=False,
        )
    context.log.info("every volume has room: %s", reports)
    return reports
