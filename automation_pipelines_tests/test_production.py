"""The production supervisor's pieces: it refuses to start without PostgreSQL settings (naming
them), its workspace reaches the code only over gRPC, and it stops on a crash loop."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from automation_pipelines import production
from automation_pipelines.instance import DEFAULT_CONFIG


def test_postgres_settings_are_required_and_named() -> None:
    problem = production.check_environment({"DAGSTER_PG_HOST": "db"}, production.PROD_CONFIG)

    assert problem is not None
    assert "DAGSTER_PG_PORT, DAGSTER_PG_DB, DAGSTER_PG_USERNAME" in problem
    assert "DAGSTER_PG_HOST" not in problem.split(";")[1]


def test_complete_settings_or_another_config_pass() -> None:
    env = {name: "x" for name in production.PG_VARIABLES}

    assert production.check_environment(env, production.PROD_CONFIG) is None
    assert production.check_environment({}, DEFAULT_CONFIG) is None


def test_workspace_points_only_at_the_grpc_server() -> None:
    assert production.workspace("10.1.2.3", 4100) == {
        "load_from": [
            {
                "grpc_server": {
                    "host": "10.1.2.3",
                    "port": 4100,
                    "location_name": "automation_pipelines",
                }
            }
        ]
    }


def test_missing_postgres_exits_2_before_starting_anything(tmp_path: Path, capsys) -> None:
    code = production.run(production.Ports(), {"DAGSTER_HOME": str(tmp_path / "h")})

    assert code == 2
    assert "set DAGSTER_PG_HOST" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()


def test_crash_loop_stops_the_topology(tmp_path: Path, monkeypatch, capsys) -> None:
    crashing = production.Service(
        "flaky", [sys.executable, "-c", "import time; time.sleep(0.3); raise SystemExit(3)"]
    )
    monkeypatch.setattr(production, "services", lambda ports, ws: [crashing])
    monkeypatch.setattr(production, "become_subreaper", lambda: None)
    monkeypatch.setattr(production.time, "sleep", lambda _s: None)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    code = production.run(
        production.Ports(),
        {"DAGSTER_HOME": str(tmp_path / "h"), "AUTOMATION_INSTANCE_CONFIG": str(DEFAULT_CONFIG)},
    )

    assert code == 1
    err = capsys.readouterr().err
    assert "the flaky exited 5 times within 60 s (last code 3); stopping everything" in err
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
