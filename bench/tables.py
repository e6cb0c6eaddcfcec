"""What the benchmarks print: the machine and the photos they ran on, then the comparison table
(a name column, then right-aligned figures) with its verdicts and the load average."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path

import dagster as dg


def print_columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print `rows` under `header`, preceded by a blank line, columns as wide as their widest."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells))


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def load_average() -> str:
    """The machine's 1, 5 and 15 minute load averages, for the figures' context."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def dagster_machine(*versions: str) -> str:
    """What a Dagster benchmark ran on: cores, Python, Dagster (then `versions`), the load."""
    names = ", ".join(
        (f"Python {platform.python_version()}", f"Dagster {dg.__version__}", *versions)
    )
    return f"machine: {os.cpu_count()} cores, {names}; load average at start: {load_average()}"


def photo_set(photos: Sequence[Path], size: tuple[int, ...]) -> str:
    """'200 photos of 1600x1200 px, 98 MB in all'."""
    megabytes = sum(p.stat().st_size for p in photos) / 1e6
    return f"{len(photos):,} photos of {size[0]}x{size[1]} px, {megabytes:,.0f} MB in all"
