"""`automation-pipelines deadletters list | resolve` on the project database (SQLite and
PostgreSQL): open items with their age, resolving by id or a whole automation, exit codes for
ids that are not open, and the daily digest no longer listing what a person resolved."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from automation_pipelines import cli
from automation_pipelines.monitoring.digest import build_digest
from automation_pipelines.reliability import store
from automation_pipelines.reliability.deadletters import (
    dead_letters_table,
    open_dead_letters,
    record_dead_letter,
)
from automation_pipelines_tests.conftest import DATABASE_ENV

DAY = 24 * 3600


@pytest.fixture
def engine(
    events_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[sa.Engine]:
    """The project database the CLI finds through AUTOMATION_DB_URL, on SQLite and PostgreSQL."""
    home = tmp_path / "home"
    home.mkdir()
    for name in DATABASE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("AUTOMATION_DB_URL", events_db_url)
    yield store.engine(events_db_url)


def _aged(engine: sa.Engine, letter: int, seconds: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            dead_letters_table.update()
            .where(dead_letters_table.c.id == letter)
            .values(created_at=time.time() - seconds)
        )


@pytest.fixture
def letters(engine: sa.Engine) -> dict[str, int]:
    ids = {
        "a.jpg": record_dead_letter(engine, "web_images", "inbox/a.jpg", "not an image"),
        "b.jpg": record_dead_letter(engine, "web_images", "inbox/b.jpg", "truncated"),
        "event": record_dead_letter(engine, "webhook_events", "github/d1", "schema mismatch"),
    }
    _aged(engine, ids["a.jpg"], 3 * DAY + 4 * 3600 + 60)
    _aged(engine, ids["b.jpg"], 5 * 3600 + 12 * 60 + 5)
    _aged(engine, ids["event"], 30)
    return ids


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["deadletters", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_list_shows_open_items_with_their_age(engine, letters, capsys) -> None:
    code, out = _run(capsys, "list")
    assert code == 0, out
    rows = [line.split("\t") for line in out.splitlines() if "\t" in line]
    assert rows[0] == ["ID", "AUTOMATION", "AGE", "ITEM", "REASON"]
    assert rows[1:] == [
        [str(letters["a.jpg"]), "web_images", "3 d 4 h", "inbox/a.jpg", "not an image"],
        [str(letters["b.jpg"]), "web_images", "5 h 12 min", "inbox/b.jpg", "truncated"],
        [str(letters["event"]), "webhook_events", "under 1 min", "github/d1", "schema mismatch"],
    ]
    assert "3 open item(s)." in out

    code, out = _run(capsys, "list", "--automation", "webhook_events")
    assert code == 0
    assert "github/d1" in out and "inbox/a.jpg" not in out
    assert "1 open item(s)." in out


def test_resolve_by_id_reports_ids_that_are_not_open(engine, letters, capsys) -> None:
    code, out = _run(capsys, "resolve", str(letters["a.jpg"]))
    assert code == 0, out
    assert f"Resolved 1 item(s): #{letters['a.jpg']}." in out
    assert [row.item for row in open_dead_letters(engine)] == ["inbox/b.jpg", "github/d1"]

    code, out = _run(capsys, "resolve", str(letters["a.jpg"]), str(letters["b.jpg"]), "9999")
    assert code == 1
    assert f"Resolved 1 item(s): #{letters['b.jpg']}." in out
    assert f"✗ #{letters['a.jpg']}, #9999: not open (unknown, or resolved already)" in out
    assert [row.item for row in open_dead_letters(engine)] == ["github/d1"]


def test_resolve_a_whole_automation(engine, letters, capsys) -> None:
    code, out = _run(capsys, "resolve", "--automation", "web_images", "--all")
    assert code == 0, out
    assert "Resolved 2 item(s) of web_images." in out
    assert [row.automation for row in open_dead_letters(engine)] == ["webhook_events"]

    code, out = _run(capsys, "resolve", "--automation", "web_images", "--all")
    assert code == 0
    assert "web_images has no open items (open items: webhook_events)." in out

    code, out = _run(capsys, "list")
    assert "1 open item(s)." in out and "inbox/" not in out


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--all"],
        ["--automation", "web_images"],
        ["--automation", "web_images", "--all", "1"],
    ],
)
def test_resolve_needs_a_clear_selection(engine, letters, capsys, args) -> None:
    code, out = _run(capsys, "resolve", *args)
    assert code == 2
    assert "say which items: ID [ID ...], or --automation NAME --all" in out
    assert len(open_dead_letters(engine)) == 3


def test_the_digest_lists_only_open_items_with_their_age(
    engine, letters, capsys, sqlite_instance
) -> None:
    before = build_digest(sqlite_instance, engine, time.time())
    body = "\n".join(body for _, body in before.values())
    assert f"#{letters['a.jpg']} inbox/a.jpg: not an image (open 3 d 4 h, since " in body
    assert f"#{letters['b.jpg']} inbox/b.jpg: truncated (open 5 h 12 min, since " in body
    assert "automation-pipelines deadletters resolve ID" in body

    assert cli.main(["deadletters", "resolve", "--automation", "web_images", "--all"]) == 0
    after = build_digest(sqlite_instance, engine, time.time())
    body = "\n".join(body for _, body in after.values())
    assert "inbox/a.jpg" not in body and "inbox/b.jpg" not in body
    assert "github/d1: schema mismatch (open under 1 min" in body
    assert "Open dead-lettered/quarantined items: 1\n" in body
