"""The declared credentials and their daily check: the inventory refuses what it cannot use, the
probes tell a working credential from a broken one against real servers (a PostgreSQL cluster
with password logins, SMTP and HTTP alert peers), the dates warn before a rotation or an expiry,
and the Dagster check turns each credential into a red or green asset check and alerts its owner
through the outbox."""

from __future__ import annotations

import base64
import datetime as dt
import socket
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from automation_pipelines.local_stack import free_port
from automation_pipelines.monitoring import credentials as check_module
from automation_pipelines.reliability import credentials as creds
from automation_pipelines.reliability.secrets import redact
from automation_pipelines_tests.pg_server import PrivateServer
from automation_pipelines_tests.test_proxy import certificate

DAY = 86400.0
NOW = dt.datetime(2026, 12, 4, 12, tzinfo=dt.UTC).timestamp()


def entry(**overrides) -> dict:
    base = {
        "env": "SOME_SECRET",
        "probe": "present",
        "account": "svc-sender",
        "owner": "team:test",
        "used_by": ["the tests"],
        "rotate": "issue a new one",
    }
    return {**base, **overrides}


def write_inventory(path: Path, credentials: dict, **top) -> Path:
    path.write_text(yaml.safe_dump({**top, "credentials": credentials}))
    return path


def one(**overrides) -> creds.Credential:
    raw = entry(**overrides)
    return creds._parse("one", raw, "test")


# -- The inventory ---------------------------------------------------------------------------


def test_the_project_declares_every_secret_it_reads():
    inventory = creds.load()
    assert creds.undeclared(inventory) == {}
    used = creds.secret_variables_in_use()
    # What "in use" covers: alert routes, each webhook source's secret, the PostgreSQL password.
    assert {"ALERT_URLS", "GITHUB_WEBHOOK_SECRET", "DAGSTER_PG_PASSWORD"} <= set(used)
    for credential in inventory.credentials:
        assert not creds._PERSONAL.search(credential.account)


def test_a_secret_read_but_not_declared_is_named(tmp_path: Path):
    sources = tmp_path / "webhook_sources.yaml"
    sources.write_text(
        yaml.safe_dump({"sources": {"acme": {"kind": "standard", "secret_env": "ACME_SECRET"}}})
    )
    missing = creds.undeclared(creds.load(), project_root=tmp_path)
    assert missing == {"ACME_SECRET": "webhook_sources.yaml (acme)"}


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"credentials": {"x": {**entry(), "env": None}}}, "credentials.x.env is missing"),
        ({"credentials": {"x": entry(account="alice@example.com")}}, "looks like a person"),
        ({"credentials": {"x": entry(account="person:alice")}}, "looks like a person"),
        ({"credentials": {"x": entry(probe="ping")}}, "is not one of"),
        ({"credentials": {"x": entry(expires="next week")}}, "not a date"),
        ({"credentials": {"x": entry(rotate_every_days=0)}}, "rotate_every_days"),
        ({"credentials": {"x": entry(required="yes")}}, "not true or false"),
        ({"credentials": {"x": entry(colour="red")}}, "unknown setting(s) colour"),
        ({"credentials": {"x": entry(env="MY-SECRET")}}, "not an environment variable name"),
        ({"credentials": {"Bad Name": entry()}}, "a name is lowercase"),
        ({"credentials": {"a": entry(), "b": entry()}}, "$SOME_SECRET is declared twice"),
        ({"credentials": []}, "needs a `credentials:` mapping"),
        ({"warn_days": -1, "credentials": {"a": entry()}}, "warn_days"),
    ],
)
def test_an_unusable_inventory_says_where_and_why(tmp_path: Path, raw: dict, says: str):
    path = tmp_path / "credentials.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(creds.InventoryError) as caught:
        creds.load(path)
    assert says in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_missing_or_broken_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(creds.InventoryError, match="cannot read"):
        creds.load(tmp_path / "nowhere.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("credentials: [unclosed\n")
    with pytest.raises(creds.InventoryError, match="not valid YAML"):
        creds.load(broken)


# -- Dates -----------------------------------------------------------------------------------


def evaluate(credential: creds.Credential, known=None, value="a-value-long-enough-123", **kw):
    return creds.evaluate(
        credential,
        value=value,
        known=known or creds.History(),
        now=kw.pop("now", NOW),
        warn_days=kw.pop("warn_days", 14),
        **kw,
    )


def test_ten_days_before_the_rotation_date_is_a_warning_that_names_the_date():
    rotated = dt.date(2026, 12, 14) - dt.timedelta(days=90)
    status = evaluate(one(rotate_every_days=90, last_rotated=rotated.isoformat()))
    assert status.kind == "due" and status.severity == "warn" and not status.passed
    assert "is due for rotation in 10 day(s), on 2026-12-14" in status.sentence
    assert "Rotate: issue a new one" in status.sentence


def test_a_recorded_rotation_wins_over_the_declared_date_and_sets_the_expiry():
    credential = one(rotate_every_days=90, last_rotated="2020-01-01")
    recorded = creds.History(rotated_at=NOW - DAY, expires_at=NOW + 100 * DAY)
    status = evaluate(credential, recorded)
    assert status.kind == "ok", status.sentence
    assert status.metadata["last_rotated"].endswith("(recorded)")
    assert status.metadata["expires"] == "2027-03-14"


@pytest.mark.parametrize(
    ("overrides", "known", "kind", "says"),
    [
        ({"expires": "2026-12-01"}, None, "overdue", "expired on 2026-12-01"),
        ({"expires": "2026-12-10"}, None, "due", "expires in 6 day(s)"),
        ({"rotate_every_days": 30, "last_rotated": "2026-10-01"}, None, "overdue", "overdue"),
        ({"rotate_every_days": 30}, creds.History(first_seen_at=NOW - 20 * DAY), "due", "in 10"),
        ({"rotate_every_days": 30}, creds.History(first_seen_at=NOW - DAY), "ok", "set"),
        ({}, None, "ok", "set"),
    ],
)
def test_dates_decide_the_state(overrides, known, kind, says):
    status = evaluate(one(**overrides), known)
    assert status.kind == kind
    assert says in status.sentence


@settings(max_examples=200, deadline=None)
@given(
    every=st.integers(min_value=1, max_value=1000),
    age_days=st.floats(min_value=0, max_value=2000, allow_nan=False),
    warn=st.integers(min_value=0, max_value=60),
)
def test_the_state_follows_the_days_left(every: int, age_days: float, warn: int):
    known = creds.History(rotated_at=NOW - age_days * DAY)
    status = evaluate(one(rotate_every_days=every), known, warn_days=warn)
    due = NOW + (every - age_days) * DAY
    due_day = dt.datetime.fromtimestamp(due, dt.UTC).date()
    days = (due_day - dt.datetime.fromtimestamp(NOW, dt.UTC).date()).days
    assert status.metadata["rotation_due"] == due_day.isoformat()
    if due <= NOW:
        assert status.kind == "overdue"
        assert f"overdue for rotation since {due_day}" in status.sentence
    elif days < warn:
        assert status.kind == "due"
        assert f"in {days} day(s), on {due_day}" in status.sentence
    else:
        assert status.kind == "ok"


def test_an_unset_credential_is_broken_only_when_required():
    required = evaluate(one(), value=None)
    assert required.kind == "broken" and "$SOME_SECRET) is not set" in required.sentence
    optional = evaluate(one(required=False), value=None)
    assert optional.passed and "nothing uses it" in optional.sentence


# -- Probes against real peers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "ok"),
    [
        ("s" * 16, True),
        ("s" * 15, False),
        ("whsec_" + base64.b64encode(b"k" * 24).decode(), True),
        ("whsec_" + base64.b64encode(b"k" * 8).decode(), False),
        ("whsec_not-base64!", False),
    ],
)
def test_webhook_secrets_need_enough_key_material(secret: str, ok: bool):
    result = creds.probe_webhook_secret(one(probe="webhook_secret"), secret)
    assert result.ok is ok, result.sentence


def test_alert_urls_reach_real_peers_and_a_closed_port_is_named(json_receiver, smtp_receiver):
    good = f"{json_receiver.url}, {smtp_receiver.url}"
    result = creds.probe_alert_urls(one(probe="alert_urls"), good)
    assert result.ok, result.sentence
    assert "2 channel(s) reachable" in result.sentence
    assert json_receiver.titles() == [] and smtp_receiver.messages == []  # nothing was sent
    closed = free_port()
    bad = f"{json_receiver.url} json://127.0.0.1:{closed}/alerts"
    result = creds.probe_alert_urls(one(probe="alert_urls"), bad)
    assert not result.ok
    assert f"URL 2 of 2 (json://…): 127.0.0.1:{closed} cannot be reached" in result.sentence
    nonsense = creds.probe_alert_urls(one(probe="alert_urls"), "nosuchscheme://x")
    assert not nonsense.ok and "apprise does not understand" in nonsense.sentence


def test_an_smtp_port_that_does_not_speak_smtp_is_unreachable():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        url = f"mailto://127.0.0.1:{port}?from=a@example.org&to=b@example.org&mode=insecure"
        started = time.monotonic()
        result = creds.probe_alert_urls(one(probe="alert_urls"), url)
    assert not result.ok and f"127.0.0.1:{port} cannot be reached" in result.sentence
    assert time.monotonic() - started < creds.PROBE_TIMEOUT_SECONDS * 3  # bounded, not hung


@pytest.fixture(scope="module")
def password_server():
    """A PostgreSQL cluster of its own whose TCP logins need the right password."""
    server = PrivateServer(host_auth="scram-sha-256")
    server.start()
    with server.connect_as_owner() as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("CREATE ROLE svc_dagster LOGIN PASSWORD 'first-password-1234'")
    yield server
    server.remove()


def revoke(server: PrivateServer, new_password: str) -> None:
    conn = server.connect_as_owner()
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f"ALTER ROLE svc_dagster PASSWORD '{new_password}'")
    conn.close()


def pg_env(server: PrivateServer, monkeypatch: pytest.MonkeyPatch, password: str) -> None:
    from automation_pipelines.instance import CONFIG_ENV
    from automation_pipelines.paths import PROJECT_ROOT

    monkeypatch.setenv(CONFIG_ENV, str(PROJECT_ROOT / "deploy" / "postgres" / "dagster.yaml"))
    for key, value in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(server.port),
        "DAGSTER_PG_DB": "postgres",
        "DAGSTER_PG_USERNAME": "svc_dagster",
        "DAGSTER_PG_PASSWORD": password,
    }.items():
        monkeypatch.setenv(key, value)


def test_the_postgres_probe_logs_in_and_names_a_refused_password(
    password_server, monkeypatch: pytest.MonkeyPatch
):
    revoke(password_server, "first-password-1234")
    pg_env(password_server, monkeypatch, "first-password-1234")
    credential = one(env="DAGSTER_PG_PASSWORD", probe="postgres")
    assert creds.probe_postgres(credential, "first-password-1234").ok
    revoke(password_server, "second-password-5678")
    refused = creds.probe_postgres(credential, "first-password-1234")
    assert not refused.ok
    assert "password authentication failed" in refused.sentence
    assert "first-password-1234" not in refused.sentence
    url = f"postgresql://svc_dagster:wrong@127.0.0.1:{password_server.port}/postgres"
    by_url = creds.probe_postgres(one(probe="postgres"), url)
    assert not by_url.ok and "wrong" not in by_url.sentence.replace("wrong@", "")


def test_the_postgres_probe_is_not_in_use_on_sqlite(monkeypatch: pytest.MonkeyPatch):
    from automation_pipelines.instance import CONFIG_ENV
    from automation_pipelines.paths import PROJECT_ROOT

    monkeypatch.setenv(CONFIG_ENV, str(PROJECT_ROOT / "dagster.yaml"))
    result = creds.probe_postgres(one(probe="postgres"), "some-password")
    assert result.ok and not result.in_use


# -- The Dagster check -----------------------------------------------------------------------


def run_check(inventory, env: dict[str, str], alert_router, instance, monkeypatch, now=NOW):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    resources = check_module.credential_resources(inventory)
    check = check_module.build_check(inventory, set(resources))
    job = dg.define_asset_job(
        "credentials_check_job",
        selection=dg.AssetSelection.checks_for_assets(check_module.CREDENTIALS_KEY),
    )
    defs = dg.Definitions(
        assets=[check_module.credentials_asset],
        asset_checks=[check],
        jobs=[job],
        resources={"alerts": alert_router, **resources},
    )
    monkeypatch.setattr(check_module, "_now", lambda: now)
    result = defs.resolve_job_def("credentials_check_job").execute_in_process(instance=instance)
    assert result.success
    return {
        e.check_name: e
        for e in result.get_asset_check_evaluations()  # one per declared credential
    }


def test_the_daily_check_alerts_for_a_revoked_password_and_a_rotation_ten_days_out(
    tmp_path: Path,
    password_server,
    smtp_receiver,
    alert_router,
    sqlite_instance,
    monkeypatch: pytest.MonkeyPatch,
):
    revoke(password_server, "first-password-1234")
    pg_env(password_server, monkeypatch, "first-password-1234")
    today = dt.datetime.fromtimestamp(NOW, dt.UTC).date()
    inventory = creds.load(
        write_inventory(
            tmp_path / "credentials.yaml",
            {
                "postgres": entry(env="DAGSTER_PG_PASSWORD", probe="postgres"),
                "partner_webhook": entry(
                    env="PARTNER_SECRET",
                    probe="webhook_secret",
                    rotate_every_days=90,
                    last_rotated=(today - dt.timedelta(days=80)).isoformat(),
                ),
                "fine_webhook": entry(env="FINE_SECRET", probe="webhook_secret"),
            },
        )
    )
    env = {
        "TEST_ALERT_URLS": smtp_receiver.url,
        "PARTNER_SECRET": "p" * 32,
        "FINE_SECRET": "f" * 32,
    }
    first = run_check(inventory, env, alert_router, sqlite_instance, monkeypatch)
    assert {name: e.passed for name, e in first.items()} == {
        "postgres_credential": True,
        "partner_webhook_credential": False,
        "fine_webhook_credential": True,
    }
    assert first["partner_webhook_credential"].severity == dg.AssetCheckSeverity.WARN
    assert "in 10 day(s)" in first["partner_webhook_credential"].description

    revoke(password_server, "second-password-5678")  # the password in .env no longer works
    second = run_check(inventory, env, alert_router, sqlite_instance, monkeypatch)
    assert not second["postgres_credential"].passed
    assert second["postgres_credential"].severity == dg.AssetCheckSeverity.ERROR
    assert "password authentication failed" in second["postgres_credential"].description
    assert second["fine_webhook_credential"].passed

    outbox = alert_router.outbox(sqlite_instance)
    outbox.deliver_due(budget_seconds=30)
    bodies = smtp_receiver.bodies()
    assert len(bodies) == 2, bodies  # one alert per problem, not one per run
    joined = "\n".join(bodies)
    assert "partner_webhook ($PARTNER_SECRET) is due for rotation in 10 day(s)" in joined
    assert "postgres ($DAGSTER_PG_PASSWORD) does not work" in joined
    assert "first-password-1234" not in joined

    revoke(password_server, "first-password-1234")  # fixed: the incident closes
    third = run_check(inventory, env, alert_router, sqlite_instance, monkeypatch)
    assert third["postgres_credential"].passed
    outbox.deliver_due(budget_seconds=30)
    recovered = smtp_receiver.bodies()[2:]
    assert len(recovered) == 1 and "postgres" in recovered[0]


def test_credential_values_are_read_through_env_vars_and_masked(monkeypatch):
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", "hook-secret-value-0123456789")
    inventory = creds.load()
    resources = check_module.credential_resources(inventory)
    resource = resources["credential_github_webhook"]
    assert isinstance(resource.value, dg.EnvVar)
    assert resource.value.env_var_name == "GITHUB_WEBHOOK_SECRET"
    # Every declared variable is masked, whatever its name looks like.
    monkeypatch.setenv("DEADMAN_PING_URL", "https://hc.example/ping/uuid-1234")
    text = "ping https://hc.example/ping/uuid-1234 and hook-secret-value-0123456789"
    assert "uuid-1234" not in redact(text)
    assert "hook-secret-value" not in redact(text)


def test_the_code_location_has_one_check_per_declared_credential():
    from automation_pipelines.definitions import defs

    repository = defs.get_repository_def()
    job = repository.get_job("credentials_check_job")
    assert job is not None
    checks = {
        key.name
        for checks_def in repository.asset_checks_defs_by_key.values()
        for key in checks_def.check_keys
        if key.asset_key == check_module.CREDENTIALS_KEY
    }
    assert checks == {c.check_name for c in creds.load().credentials}
    schedule = repository.get_schedule_def("credentials_daily_schedule")
    assert schedule.job_name == "credentials_check_job"


def test_a_certificate_names_its_own_expiry_and_warns_before_it(tmp_path: Path):
    cert, key = certificate(tmp_path, days=10)
    credential = one(env="PROXY_TLS_CERT", probe="tls_certificate")
    status = creds.evaluate(
        credential, value=str(cert), known=creds.History(), now=time.time(), warn_days=14
    )
    assert status.kind == "due", status.sentence
    assert "expires in 10 day(s)" in status.sentence
    assert "CN = localhost" in status.metadata["probe"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    long_cert, _ = certificate(fresh, days=400)
    assert creds.evaluate(
        credential, value=str(long_cert), known=creds.History(), now=time.time(), warn_days=14
    ).passed
    not_a_cert = creds.probe_tls_certificate(credential, str(key))
    assert not not_a_cert.ok and "not a PEM certificate" in not_a_cert.sentence
    missing = creds.probe_tls_certificate(credential, str(tmp_path / "gone.pem"))
    assert not missing.ok and "is not a file" in missing.sentence


def test_key_and_users_files_must_be_private_and_hashed(tmp_path: Path):
    _, key = certificate(tmp_path, days=30)
    probe = creds.probe_secret_file
    assert probe(one(), str(key)).ok
    key.chmod(0o644)
    shared = probe(one(), str(key))
    assert not shared.ok and "readable by every user" in shared.sentence
    users = tmp_path / "users"
    hashed = subprocess.run(
        ["openssl", "passwd", "-6", "pw-of-alice"], capture_output=True, text=True, check=True
    ).stdout.strip()
    users.write_text(f"alice:{hashed}\n")
    users.chmod(0o640)
    assert probe(one(), str(users)).sentence.endswith("1 user(s), passwords hashed")
    users.write_text(f"alice:{hashed}\nbob:{{PLAIN}}hunter2\n")
    clear = probe(one(), str(users))
    assert not clear.ok and "the password of bob is not hashed" in clear.sentence
    users.write_text("\n")
    assert "neither a private key nor any" in probe(one(), str(users)).sentence


def test_a_probe_nobody_registered_is_reported_not_skipped(monkeypatch):
    monkeypatch.delitem(creds.PROBE_FUNCTIONS, "restic_repository", raising=False)
    status = evaluate(one(probe="restic_repository"), value="some-password")
    assert status.kind == "broken"
    assert "nothing registered the probe 'restic_repository'" in status.sentence
    with pytest.raises(ValueError, match="is not one of"):
        creds.register_probe("carrier_pigeon", lambda _c, _v: creds.ProbeResult(True, "coo"))
