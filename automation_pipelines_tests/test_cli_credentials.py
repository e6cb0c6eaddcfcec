"""`automation-pipelines credentials [--check] | credentials rotated NAME` and the `check`
command's refusal of an undeclared secret: what a person runs to see the inventory, probe it
and record a rotation, against the project database of a real instance home."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from automation_pipelines import cli
from automation_pipelines.local_stack import free_port
from automation_pipelines.reliability import credentials as creds


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    for name in ("AUTOMATION_DB_URL", "DAGSTER_PG_HOST", *creds.load().variables):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **extra) -> Path:
    path = tmp_path / "credentials.yaml"
    entry = {
        "env": "HOOK_SECRET",
        "probe": "webhook_secret",
        "account": "svc-partner",
        "owner": "team:data",
        "used_by": ["/hooks/partner"],
        "rotate": "roll it at the partner",
        "rotate_every_days": 90,
        **extra,
    }
    path.write_text(yaml.safe_dump({"warn_days": 14, "credentials": {"partner": entry}}))
    monkeypatch.setenv(creds.CREDENTIALS_FILE_ENV, str(path))
    return path


def test_the_list_shows_each_credential_without_probing(tmp_path, monkeypatch, capsys):
    inventory(tmp_path, monkeypatch)
    assert cli.main(["credentials"]) == 1  # required and not set
    out = capsys.readouterr().out
    assert "✗ partner  $HOOK_SECRET  (not set)" in out
    assert "account: svc-partner; owner: team:data" in out
    assert "every 90 days, from the first check" in out
    monkeypatch.setenv("HOOK_SECRET", "x" * 3)
    assert cli.main(["credentials"]) == 0  # listing never probes
    assert cli.main(["credentials", "--check"]) == 1
    assert "too short to be safe (3 byte(s)" in capsys.readouterr().out


def test_a_recorded_rotation_moves_the_due_date(tmp_path, monkeypatch, capsys):
    inventory(tmp_path, monkeypatch, last_rotated="2020-01-01")
    monkeypatch.setenv("HOOK_SECRET", "s" * 32)
    assert cli.main(["credentials", "--check"]) == 1
    assert "overdue for rotation since 2020-03-31" in capsys.readouterr().out
    expires = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=365)).isoformat()
    assert cli.main(["credentials", "rotated", "partner", "--expires", expires]) == 0
    today = dt.datetime.now(dt.UTC).date()
    due = today + dt.timedelta(days=90)
    assert f"rotated on {today}; next rotation due {due}" in capsys.readouterr().out
    assert cli.main(["credentials", "--check"]) == 0
    out = capsys.readouterr().out
    assert f"last rotated: {today} (recorded); rotation due: {due}; expires: {expires}" in out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["credentials", "rotated", "nosuch"], "no credential named 'nosuch'"),
        (["credentials", "rotated", "partner", "--on", "2999-01-01"], "in the future"),
        (["credentials", "rotated", "partner", "--expires", "2001-01-01"], "must come after"),
    ],
)
def test_a_wrong_rotation_is_refused_and_records_nothing(tmp_path, monkeypatch, capsys, argv, says):
    inventory(tmp_path, monkeypatch)
    assert cli.main(argv) == 2
    assert says in capsys.readouterr().err
    assert creds.history(["partner"])["partner"] == creds.History()


def test_a_bad_date_is_an_argument_error(tmp_path, monkeypatch, capsys):
    inventory(tmp_path, monkeypatch)
    with pytest.raises(SystemExit):
        cli.main(["credentials", "rotated", "partner", "--on", "yesterday"])
    assert "not a date (YYYY-MM-DD)" in capsys.readouterr().err


def test_check_fails_while_a_secret_is_used_but_not_declared(tmp_path, monkeypatch, capsys):
    inventory(tmp_path, monkeypatch)  # declares only HOOK_SECRET
    assert cli.main(["check"]) == 1
    out = capsys.readouterr().out
    assert "✗ credentials: $GITHUB_WEBHOOK_SECRET is read by webhook_sources.yaml (github)" in out
    monkeypatch.delenv(creds.CREDENTIALS_FILE_ENV)
    assert cli.main(["check"]) == 0
    assert "credential(s) declared in credentials.yaml" in capsys.readouterr().out


def test_the_alert_route_probe_through_the_cli(tmp_path, monkeypatch, capsys, json_receiver):
    monkeypatch.setenv("ALERT_URLS", f"{json_receiver.url} json://127.0.0.1:{free_port()}/x")
    assert cli.main(["credentials", "--check"]) == 1
    out = capsys.readouterr().out
    assert "✗ alert_urls  $ALERT_URLS  (URL 2 of 2 (json://…)" in out
    assert json_receiver.received == []
