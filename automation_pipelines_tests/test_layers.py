"""The floors of docs/architecture.md, held: a module imports only from its own floor or the ones
below, never from above (a function's own import included), so the reliability layer never
depends on an automation and the automations never on the project's entry points."""

from __future__ import annotations

import ast
from pathlib import Path

import automation_pipelines

PACKAGE = Path(automation_pipelines.__file__).parent

#: Floor of each part of the package, by its first name under automation_pipelines.
FLOORS = {
    "paths": 0,
    "settings": 0,
    "instance": 0,
    "reliability": 1,
    "monitoring": 2,
    "webhooks": 2,
    "automations": 3,
}
PROJECT = 4  # definitions, discovery, cli, topology, proxy, scaffold, snapshot, demo


def floor(module: str) -> int:
    """`automation_pipelines.x.y` → the floor of x."""
    parts = module.split(".")
    return FLOORS.get(parts[1], PROJECT) if len(parts) > 1 else PROJECT


def imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import of the package in `path`, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "automation_pipelines":  # from automation_pipelines import x
                found += [(f"automation_pipelines.{a.name}", node.lineno) for a in node.names]
            else:
                found.append((node.module, node.lineno))
    return [(m, line) for m, line in found if m.split(".")[0] == "automation_pipelines"]


def test_no_import_runs_back_up() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "automation_pipelines." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        here = floor(module)
        for imported, line in imports(path):
            if floor(imported) > here:
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {imported}")
    assert upward == []


def test_the_rule_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os\n"
        "from automation_pipelines import discovery\n"
        "def later():\n"
        "    from automation_pipelines.automations.backups import engine\n"
    )
    found = imports(module)
    assert found == [
        ("automation_pipelines.discovery", 2),
        ("automation_pipelines.automations.backups", 4),
    ]
    assert [floor(m) for m, _ in found] == [PROJECT, 3]
    assert floor("automation_pipelines.reliability.alerts") == 1


def _top_imports(path: Path) -> list[tuple[str, int]]:
    """(top-level name, line) of every absolute import in `path`, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name.split(".")[0], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module.split(".")[0], node.lineno))
    return found


def test_benchmarks_and_tests_share_nothing_but_the_package() -> None:
    """A benchmark measures what a user runs; one that leaned on the tests' harness could measure
    the harness, and a change to a test could move a published figure."""
    root = PACKAGE.parent
    crossing = [
        f"{path.relative_to(root)}:{line} imports {name}"
        for folder, other in (
            ("bench", "automation_pipelines_tests"),
            ("automation_pipelines_tests", "bench"),
        )
        for path in sorted((root / folder).rglob("*.py"))
        for name, line in _top_imports(path)
        if name == other
    ]
    assert crossing == []
