"""The comparison table every benchmark prints: a name column, then right-aligned figures."""

from __future__ import annotations

import os
from collections.abc import Sequence


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
