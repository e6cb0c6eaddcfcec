"""Secret redaction (automation_pipelines/reliability/secrets.py).

Covers `redact` masking the values of secret-looking environment variables, of names registered
with `secret_env`, every part of ALERT_URLS and passwords embedded in URLs, while leaving short
values and ordinary variables alone; and `env_vars_of_resources` / `register_resources` finding
the `dg.EnvVar` fields of (nested) `dg.ConfigurableResource`s so their values are masked too.
"""

from __future__ import annotations

import os

import dagster as dg
import pytest

from automation_pipelines.reliability import secrets
from automation_pipelines.reliability.secrets import (
    MASK,
    env_vars_of_resources,
    redact,
    register_resources,
    secret_env,
)


@pytest.fixture(autouse=True)
def hermetic_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """No registered names and no secret-looking variables from the surrounding environment."""
    monkeypatch.setattr(secrets, "_registered", set())
    for name in list(os.environ):
        if secrets.SECRET_NAME.search(name):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SOME_API_TOKEN", "tok-7f3a9c2e"),
        ("X_PASSWORD", "correct-horse"),
        ("MAIL_SECRET", "s3cr3t-mail"),
        ("VENDOR_APIKEY", "AKIA1234EXAMPLE"),
        ("SERVICE_CREDENTIALS", "svc:pa55word"),
        ("ALERT_URLS", "https://hooks.example/T000/B000/XXXX"),
    ],
)
def test_secret_looking_names_are_masked(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    assert redact(f"request failed with {value} in the header") == (
        f"request failed with {MASK} in the header"
    )


@pytest.mark.parametrize(
    "name", ["SSH_AUTH_SOCK", "GITHUB_WEBHOOK_SECRET_PREVIOUS_UNTIL", "SMTP_AUTH_METHOD"]
)
def test_names_that_point_at_a_secret_are_not_masked(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "/tmp/ssh-XXXXabcd/agent.1234")
    text = "socket /tmp/ssh-XXXXabcd/agent.1234 in use"
    assert redact(text) == text
    secret_env(name)  # declared as a secret after all: then it is masked
    assert redact(text) == f"socket {MASK} in use"


def test_registered_name_is_masked_and_unregistered_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAIN_NAME", "plain-but-private")
    monkeypatch.setenv("OTHER_PLAIN_NAME", "ordinary-value")
    text = "got plain-but-private and ordinary-value"
    assert redact(text) == text

    env_var = secret_env("PLAIN_NAME")
    assert isinstance(env_var, dg.EnvVar)
    assert env_var.env_var_name == "PLAIN_NAME"
    assert redact(text) == f"got {MASK} and ordinary-value"


@pytest.mark.parametrize("value", ["a", "ab", "abc"])
def test_values_shorter_than_four_characters_are_not_masked(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("X_PASSWORD", value)
    text = f"row {value}: a bad cabbage"
    assert redact(text) == text


def test_value_of_exactly_four_characters_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_PASSWORD", "abcd")
    assert redact("pin abcd entered") == f"pin {MASK} entered"


def test_url_password_is_masked_without_any_env_var() -> None:
    text = "could not connect to postgresql://user:hunter2pass@host/db (timeout)"
    assert redact(text) == f"could not connect to postgresql://user:{MASK}@host/db (timeout)"


def test_url_password_with_empty_user_is_masked() -> None:
    """PRODUCT BUG: secrets._URL_PASSWORD requires a non-empty user name, so the common
    `redis://:password@host` form (password only) is not masked and the password leaks."""
    text = "cache down: redis://:s3cretpw@cache:6379/0"
    redacted = redact(text)
    assert "s3cretpw" not in redacted, f"password leaked in {redacted!r}"
    assert redacted == f"cache down: redis://:{MASK}@cache:6379/0"


def test_url_password_inside_secret_env_value_is_masked_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WAREHOUSE_DB_URL", "postgresql://etl:w4rehouse-pw@db.internal/warehouse")
    assert redact("auth failed for password w4rehouse-pw") == f"auth failed for password {MASK}"


def test_every_part_of_alert_urls_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [
        "https://hooks.slack.example/services/T01/B02/abc123",
        "mailto:oncall@example.org",
        "https://ntfy.example/ap-alerts-9f8e",
    ]
    monkeypatch.setenv("ALERT_URLS", ", ".join(parts))
    for part in parts:
        assert redact(f"posting to {part} failed") == f"posting to {MASK} failed"
    assert redact(" | ".join(parts)) == " | ".join([MASK] * len(parts))


def test_redact_leaves_empty_text_alone() -> None:
    assert redact("") == ""


class ApiResource(dg.ConfigurableResource):
    base_url: str
    token: str


class MailResource(dg.ConfigurableResource):
    host: str
    password: str


class IntegrationResource(dg.ConfigurableResource):
    api: ApiResource
    name: str


def make_resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "api": ApiResource(base_url="https://api.example", token=dg.EnvVar("VENDOR_BEARER")),
        "mail": MailResource(host="smtp.example", password=dg.EnvVar("SMTP_LOGIN_PHRASE")),
        "integration": IntegrationResource(
            api=ApiResource(base_url=dg.EnvVar("NESTED_BASE"), token=dg.EnvVar("NESTED_KEY")),
            name="crm",
        ),
    }


def test_env_vars_of_resources_finds_direct_and_nested_env_vars() -> None:
    assert env_vars_of_resources(make_resources()) == {
        "VENDOR_BEARER",
        "SMTP_LOGIN_PHRASE",
        "NESTED_BASE",
        "NESTED_KEY",
    }


def test_env_vars_of_resources_ignores_literal_values() -> None:
    resources = {"api": ApiResource(base_url="https://api.example", token="literal-token")}
    assert env_vars_of_resources(resources) == set()


def test_register_resources_masks_their_values(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "VENDOR_BEARER": "bearer-0a1b2c3d",
        "SMTP_LOGIN_PHRASE": "smtp-phrase-77",
        "NESTED_BASE": "https://nested.internal",
        "NESTED_KEY": "nested-key-5e6f",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    text = " / ".join(values.values())
    assert redact(text) == text

    registered = register_resources(dg.Definitions(resources=make_resources()))

    assert registered == set(values)
    assert set(values) <= secrets._registered
    assert redact(text) == " / ".join([MASK] * len(values))


@pytest.mark.parametrize(
    ("settings", "found"),
    [
        ({"db": "postgresql://app:hunter22@db/x"}, ["db holds a password in a URL"]),
        (
            {"sources": {"b": {"postgres": "host=db user=u password='a b' dbname=x"}}},
            ["sources.b.postgres holds a password in a connection string (password=…)"],
        ),
        ({"dsn": "postgresql://db/x?user=u&password=hunter22"}, ["dsn holds a password in a URL"]),
        ({"smtp": {"password": "hunter22"}}, ["smtp.password is a literal value"]),
        ({"api_key": 123456789}, ["api_key is a literal value"]),
        (
            {"hooks": [{"signingSecret": "whsec_abc"}]},
            ["hooks[0].signingSecret is a literal value"],
        ),
        ({"x-auth-token": "abc"}, ["x-auth-token is a literal value"]),
        ({"key": "sk_live_4eC39HqLyjWDarjtT1zdp7dc"}, ["key is a literal value"]),
        # What is not a secret written into the file:
        ({"key": "automation", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}, []),
        ({"password": {"env": "DAGSTER_PG_PASSWORD"}}, []),
        ({"secret_env": "GITHUB_WEBHOOK_SECRET", "signature_header": "X-Signature"}, []),
        ({"password": "${PGPASSWORD}", "token": "$API_TOKEN", "secret": ""}, []),
        ({"dsn": "postgresql://backup@db/x", "url": "https://example.com/a:b@c"}, []),
        ({"dsn": "postgresql://backup:${PGPASSWORD}@db/x", "password": None}, []),
        ({"token_auth": True, "dedup_key": "digest:x", "run_key": "r-1"}, []),
        ({"owners": {"team:platform": ["ALERT_URLS_PLATFORM", "ALERT_URLS"]}}, []),
    ],
)
def test_literal_secrets_in_settings(settings, found) -> None:
    assert secrets.literal_secrets(settings) == found
    described = " ".join(found)
    for word in ("hunter22", "a b", "whsec_abc", "sk_live", "123456789"):
        assert word not in described


@pytest.mark.parametrize(
    ("dsn", "clean"),
    [
        ("host=db user=u password=hunter22 dbname=x", "host=db user=u dbname=x"),
        ("host=db password='a b\\' c' dbname=x", "host=db dbname=x"),
        ("postgresql://u:hunter22@db:5432/x", "postgresql://u@db:5432/x"),
        (
            "postgresql://db/x?user=u&password=hunter22&sslmode=require",
            "postgresql://db/x?user=u&sslmode=require",
        ),
        ("postgresql://db/x?password=hunter22", "postgresql://db/x"),
        ("host=db dbname=x", "host=db dbname=x"),
    ],
)
def test_strip_passwords(dsn: str, clean: str) -> None:
    assert secrets.strip_passwords(dsn) == clean
    assert secrets.has_password(dsn) is (dsn != clean)
