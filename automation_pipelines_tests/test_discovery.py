"""Finding the automations (`discovery.py`) in a package of folders made by the test: one that
works, and each way a folder is half made or broken. Each broken folder is named with the file at
fault and its error; the code location refuses to load while any is broken; `check` shows each as
a ✗ line and still checks the folders that load."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from automation_pipelines import cli, discovery

GOOD = """
import dagster as dg

@dg.op
def hello():
    return 1

@dg.job(description="Says hello.")
def hello_job():
    hello()

defs = dg.Definitions(jobs=[hello_job])
"""

FOLDERS = {
    "good": {"__init__.py": "", "definitions.py": GOOD},
    "half_made": {"__init__.py": "", "README.md": "# half made\n"},
    "no_init": {"definitions.py": "import no_such_module_anywhere\n"},
    "crashing": {
        "__init__.py": "",
        "ops.py": "import dagster as dg\n\nLIMIT = undefined_name + 1\n",
        "definitions.py": "from .ops import LIMIT\n",
    },
    "no_defs": {"__init__.py": "", "definitions.py": "jobs = []\n"},
    "not_defs": {"__init__.py": "", "definitions.py": "defs = {'jobs': []}\n"},
    "syntax": {"__init__.py": "", "definitions.py": "defs = (\n"},
}


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A package `made_automations` under tmp_path holding FOLDERS, plus the private and hidden
    folders discovery must pass over."""
    name = f"made_automations_{tmp_path.name}"
    root = tmp_path / name
    for folder, files in FOLDERS.items():
        for file, text in files.items():
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / folder / file).write_text(textwrap.dedent(text))
    (root / "__init__.py").write_text("")
    (root / "__pycache__").mkdir()
    (root / ".hidden").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(name)
    for module in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[module]


def test_every_folder_is_seen_and_each_broken_one_is_named(package) -> None:
    root = Path(package.__path__[0])
    assert [name for name, _ in discovery.folders(package)] == sorted(FOLDERS)
    loaded, broken = discovery.discover(package)
    assert [job.name for d in loaded for job in d.jobs] == ["hello_job"]
    by_folder = {b.folder: b for b in broken}
    assert sorted(by_folder) == sorted(set(FOLDERS) - {"good"})
    assert by_folder["half_made"].line() == (
        f"half_made: {root / 'half_made' / 'definitions.py'}: no definitions.py: it must "
        "define `defs`"
    )
    assert by_folder["no_init"].error == (
        "ModuleNotFoundError: No module named 'no_such_module_anywhere'"
    )
    assert by_folder["no_init"].file == Path(f"{root / 'no_init' / 'definitions.py'}:1")
    assert by_folder["crashing"].file == Path(f"{root / 'crashing' / 'ops.py'}:3")
    assert by_folder["crashing"].error == "NameError: name 'undefined_name' is not defined"
    assert by_folder["no_defs"].error == "no `defs`, not dg.Definitions"
    assert by_folder["not_defs"].error == "`defs` is a dict, not dg.Definitions"
    assert by_folder["syntax"].file == Path(f"{root / 'syntax' / 'definitions.py'}:1")
    assert by_folder["syntax"].error.startswith("SyntaxError: ")


def test_the_code_location_refuses_to_load_and_names_every_broken_folder(package) -> None:
    with pytest.raises(discovery.BrokenAutomations) as refused:
        discovery.load(package)
    message = str(refused.value)
    assert message.startswith("6 automation folder(s) give no definitions")
    for folder in set(FOLDERS) - {"good"}:
        assert f"✗ {folder}: " in message


def test_check_shows_each_broken_folder_and_still_checks_the_others(
    package, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a new engineer sees with a half-made folder: ✗ lines, the other jobs checked, exit
    1; no traceback."""
    monkeypatch.setattr(discovery, "automations", package)
    for module in [m for m in sys.modules if m == "automation_pipelines.definitions"]:
        monkeypatch.delitem(sys.modules, module)

    code = cli.main(["check"])

    out = capsys.readouterr().out
    assert code == 1
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.startswith("✗ automation folder ")]
    assert len(lines) == 6
    assert any("crashing: " in line and "ops.py:3: NameError" in line for line in lines)
    assert "hello_job" in out  # the folder that loads is still judged
