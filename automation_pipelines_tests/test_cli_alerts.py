"""`automation-pipelines alerts test|pending|deliver` against a real JSON webhook server: a route
is proven before an incident, an undeliverable alert is listed with its reason, and delivered
once the route is fixed."""

from __future__ import annotations

from pathlib import Path

import pytest

from automation_pipelines import cli


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.delenv("AUTOMATION_DB_URL", raising=False)
    monkeypatch.delenv("DAGSTER_PG_HOST", raising=False)
    for name in ("ALERT_URLS", "ALERT_URLS_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_alerts_test_reaches_the_owner(monkeypatch, json_receiver, capsys, home) -> None:
    monkeypatch.setenv("ALERT_URLS_PLATFORM", json_receiver.url)
    assert cli.main(["alerts", "test", "--owner", "team:platform"]) == 0
    assert json_receiver.titles() == ["[TEST] alert route of team:platform works"]
    assert "ALERT_URLS_PLATFORM or ALERT_URLS" in json_receiver.received[0]["message"]
    assert "delivered to 1 channel(s)" in capsys.readouterr().out
    assert (home / "automation_pipelines.db").is_file()


def test_unrouted_alert_is_listed_then_delivered(monkeypatch, json_receiver, capsys) -> None:
    assert cli.main(["alerts", "test", "--owner", "team:platform"]) == 1
    out = capsys.readouterr().out
    assert "✗ no alert URLs for owner team:platform: set ALERT_URLS_PLATFORM or ALERT_URLS" in out

    assert cli.main(["alerts", "pending"]) == 1
    out = capsys.readouterr().out
    assert "[TEST] alert route of team:platform works" in out
    assert "1 alert(s) waiting for delivery" in out

    monkeypatch.setenv("ALERT_URLS", json_receiver.url)
    assert cli.main(["alerts", "deliver"]) == 0
    assert len(json_receiver.received) == 1
    assert cli.main(["alerts", "pending"]) == 0
    assert "0 alert(s) waiting" in capsys.readouterr().out


def test_refused_delivery_fails_the_command(monkeypatch, json_receiver, capsys) -> None:
    monkeypatch.setenv("ALERT_URLS", json_receiver.url)
    json_receiver.status = 500
    assert cli.main(["alerts", "test", "--owner", "team:platform"]) == 1
    assert "500" in capsys.readouterr().out


def test_pending_shows_why_each_channel_refused(monkeypatch, json_receiver, capsys) -> None:
    from automation_pipelines.local_stack import free_port

    closed = f"json://127.0.0.1:{free_port()}/alerts"  # nothing listens there
    monkeypatch.setenv("ALERT_URLS", f"{closed},{json_receiver.url}")
    json_receiver.status = 503
    assert cli.main(["alerts", "test", "--owner", "team:platform"]) == 1
    capsys.readouterr()

    assert cli.main(["alerts", "pending"]) == 1
    lines = capsys.readouterr().out.splitlines()

    channels = [line.strip() for line in lines if line.startswith("    ")]
    assert len(channels) == 2, lines
    assert any("A Connection error occurred" in line for line in channels), lines
    assert any("503" in line for line in channels), lines
    assert all("1 attempt(s); next at" in line for line in channels), lines
