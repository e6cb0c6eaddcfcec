"""Finding the automations: every folder under `automations/` is one, and its `definitions.py`
holds its `defs`. A folder that cannot give them (no definitions.py yet, an import error, no
`defs`) is reported with the file at fault and the error, never skipped: the code location
refuses to load with every such folder named (nothing vanishes from the UI), and
`automation-pipelines check` shows each as a ✗ line and goes on checking the others."""

from __future__ import annotations

import importlib
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import dagster as dg

from automation_pipelines import automations


@dataclass(frozen=True)
class Broken:
    """A folder that gave no definitions: where, and why, in one line."""

    folder: str
    file: Path
    error: str

    def line(self) -> str:
        return f"{self.folder}: {self.file}: {self.error}"


class BrokenAutomations(Exception):
    """Raised by `load` while any folder is broken, naming all of them."""

    def __init__(self, broken: list[Broken]) -> None:
        self.broken = broken
        lines = "\n".join(f"  ✗ {b.line()}" for b in broken)
        super().__init__(
            f"{len(broken)} automation folder(s) give no definitions, so the code location does "
            f"not load (run `automation-pipelines check`):\n{lines}"
        )


def folders(package: ModuleType | None = None) -> list[tuple[str, Path]]:
    """(name, path) of every automation folder: each sub-folder that is not hidden or private
    (`__pycache__`), with or without an `__init__.py`, so a half-made one is seen too."""
    package = package or automations
    found = []
    for root in package.__path__:
        for path in sorted(Path(root).iterdir()):
            if path.is_dir() and not path.name.startswith((".", "_")):
                found.append((path.name, path))
    return found


def discover(package: ModuleType | None = None) -> tuple[list[dg.Definitions], list[Broken]]:
    """Each folder's `defs`, and the folders that could not give theirs."""
    package = package or automations
    loaded: list[dg.Definitions] = []
    broken: list[Broken] = []
    for name, path in folders(package):
        file = path / "definitions.py"
        if not file.is_file():
            broken.append(Broken(name, file, "no definitions.py: it must define `defs`"))
            continue
        try:
            module = importlib.import_module(f"{package.__name__}.{name}.definitions")
        except Exception as error:
            broken.append(Broken(name, _at_fault(error, path, file), _sentence(error)))
            continue
        defs = getattr(module, "defs", None)
        if not isinstance(defs, dg.Definitions):
            what = "no `defs`" if defs is None else f"`defs` is a {type(defs).__name__}"
            broken.append(Broken(name, file, f"{what}, not dg.Definitions"))
            continue
        loaded.append(defs)
    return loaded, broken


def load(package: ModuleType | None = None) -> list[dg.Definitions]:
    """Every folder's `defs`; raises `BrokenAutomations` if any folder gave none."""
    loaded, broken = discover(package)
    if broken:
        raise BrokenAutomations(broken)
    return loaded


def code_location(loaded: list[dg.Definitions]) -> dg.Definitions:
    """The automations' definitions merged with the monitoring layer's, and every automation's
    own asset with its health check: what the code location serves (or, without its broken
    folders, what `check` can still judge)."""
    from automation_pipelines.monitoring import definitions as monitoring
    from automation_pipelines.monitoring import health

    return dg.Definitions.merge(
        *loaded, monitoring.defs, health.definitions([*loaded, monitoring.defs])
    )


def _sentence(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _at_fault(error: BaseException, folder: Path, fallback: Path) -> Path:
    """The deepest frame of the traceback in the folder (file:line), else `fallback`; for a
    syntax error, the file that holds it."""
    if isinstance(error, SyntaxError) and error.filename:
        return Path(f"{error.filename}:{error.lineno}")
    inside = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if Path(frame.filename).is_relative_to(folder)
    ]
    if not inside:
        return fallback
    return Path(f"{inside[-1].filename}:{inside[-1].lineno}")
