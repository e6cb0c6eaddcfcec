"""The monitoring layer's own jobs: the dead-man's-switch ping reaches a real HTTP server and is
only defined when its URL is set; the digest job is always there and passes the checklist."""

from __future__ import annotations

import dagster as dg

from automation_pipelines.monitoring import jobs as monitoring


def test_ping_is_defined_only_with_a_url(monkeypatch) -> None:
    monkeypatch.delenv("DEADMAN_PING_URL", raising=False)
    names = [j.name for j in monitoring.monitoring_jobs()[0]]
    assert names == ["send_daily_digest_job"]
    monkeypatch.setenv("DEADMAN_PING_URL", "http://127.0.0.1:9/ping")
    jobs, schedules = monitoring.monitoring_jobs()
    assert [j.name for j in jobs] == ["send_daily_digest_job", "ping_deadman_switch_job"]
    assert "deadman_ping_every_10_minutes_schedule" in [s.name for s in schedules]


def test_ping_reaches_the_switch(monkeypatch, json_receiver, alert_router) -> None:
    monkeypatch.setenv("DEADMAN_PING_URL", f"http://127.0.0.1:{json_receiver.port}/ping/uuid-1")
    result = monitoring.ping_deadman_switch_job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), resources={"alerts": alert_router}
    )
    assert result.success
    assert json_receiver.pings == ["/ping/uuid-1"]


def test_ping_to_a_dead_switch_fails_the_run(monkeypatch, json_receiver, alert_router) -> None:
    json_receiver.status = 404
    monkeypatch.setenv("DEADMAN_PING_URL", f"http://127.0.0.1:{json_receiver.port}/ping/gone")
    result = monitoring.ping_deadman_switch_job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        resources={"alerts": alert_router},
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_failure_data.user_failure_data.metadata["reason"].value == "HTTP 404"
