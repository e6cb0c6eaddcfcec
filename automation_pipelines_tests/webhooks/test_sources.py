"""The webhook sources file: the shipped webhook_sources.yaml loads, broken files are refused
with a message naming the file, the source and the problem, a missing secret names its variable,
every kind builds a verifier that accepts a correctly signed request, and during a secret's
rotation both secrets are accepted until the window's end and only the new one after it, while a
previous secret without a readable end closes the source with the reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.webhooks.sources import (
    SOURCES_FILE_ENV,
    MissingSecret,
    SourceConfig,
    SourceConfigError,
    build_verifier,
    load_sources,
    sources_file,
)
from automation_pipelines.webhooks.verifiers import Delivery, SignatureError

SHIPPED = PROJECT_ROOT / "webhook_sources.yaml"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"partner service account key 32b").decode()
ENVIRON = {
    "GITHUB_WEBHOOK_SECRET": "github-service-account-secret",
    "STRIPE_WEBHOOK_SECRET": "whsec_stripe_service_account",
    "STANDARD_WEBHOOK_SECRET": STANDARD_SECRET,
    "GENERIC_WEBHOOK_SECRET": "generic-service-account-secret",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "webhook_sources.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def sign(secret: str, content: bytes) -> str:
    return hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()


def test_shipped_file_defines_the_four_sources():
    sources = load_sources(SHIPPED)
    assert {name: (s.kind, s.secret_env) for name, s in sources.items()} == {
        "github": ("github", "GITHUB_WEBHOOK_SECRET"),
        "stripe": ("stripe", "STRIPE_WEBHOOK_SECRET"),
        "partner": ("standard", "STANDARD_WEBHOOK_SECRET"),
        "generic": ("hmac", "GENERIC_WEBHOOK_SECRET"),
    }
    assert sources["stripe"].tolerance_seconds == 300
    assert sources["generic"].options == {
        "signature_header": "x-signature",
        "prefix": "sha256=",
        "encoding": "hex",
        "timestamp_header": "x-timestamp",
        "id_header": "x-delivery-id",
        "type_header": "x-event-type",
    }


def test_sources_file_defaults_to_project_root(monkeypatch):
    monkeypatch.delenv(SOURCES_FILE_ENV, raising=False)
    assert sources_file() == SHIPPED


def test_sources_file_follows_the_environment(monkeypatch, tmp_path):
    path = write(tmp_path, "sources:\n  only:\n    kind: github\n    secret_env: ONLY_SECRET\n")
    monkeypatch.setenv(SOURCES_FILE_ENV, str(path))
    assert sources_file() == path
    assert list(load_sources()) == ["only"]


def test_top_level_body_limit_is_the_default_and_a_source_may_override(tmp_path):
    path = write(
        tmp_path,
        """
max_body_bytes: 2048
sources:
  small:
    kind: github
    secret_env: SMALL_SECRET
  large:
    kind: stripe
    secret_env: LARGE_SECRET
    max_body_bytes: 65536
    tolerance_seconds: 60
""",
    )
    sources = load_sources(path)
    assert sources["small"].max_body_bytes == 2048
    assert sources["large"] == SourceConfig(
        name="large",
        kind="stripe",
        secret_env="LARGE_SECRET",
        max_body_bytes=65536,
        tolerance_seconds=60,
    )


def test_body_limit_defaults_to_one_mebibyte(tmp_path):
    path = write(tmp_path, "sources:\n  a:\n    kind: github\n    secret_env: A_SECRET\n")
    assert load_sources(path)["a"].max_body_bytes == 1_048_576


GITHUB = "    kind: github\n    secret_env: GITHUB_WEBHOOK_SECRET\n"
HMAC = "    kind: hmac\n    secret_env: GENERIC_WEBHOOK_SECRET\n"

BROKEN = [
    ("list", "- github\n- stripe\n", "must be a mapping"),
    ("empty-file", "", "must be a mapping"),
    ("not-yaml", "sources: [unclosed\n", "not valid YAML"),
    ("top-level-typo", f"source:\n  github:\n{GITHUB}", "unknown top-level key(s): source"),
    ("no-sources", "max_body_bytes: 10\n", "at least one source"),
    ("empty-sources", "sources: {}\n", "at least one source"),
    ("sources-list", "sources:\n  - github\n", "at least one source"),
    ("name-upper", f"sources:\n  GitHub:\n{GITHUB}", "source name 'GitHub' must match"),
    ("name-slash", f"sources:\n  git/hub:\n{GITHUB}", "source name 'git/hub' must match"),
    ("name-long", f"sources:\n  {'a' * 65}:\n{GITHUB}", "must match"),
    ("name-number", f"sources:\n  7:\n{GITHUB}", "source name 7 must match"),
    ("settings-scalar", "sources:\n  github: github\n", "settings must be a mapping"),
    (
        "kind-unknown",
        "sources:\n  github:\n    kind: gitlab\n    secret_env: X_SECRET\n",
        "kind must be one of github, stripe, standard, hmac, not 'gitlab'",
    ),
    ("kind-missing", "sources:\n  github:\n    secret_env: X_SECRET\n", "kind must be one of"),
    ("secret-env-missing", "sources:\n  github:\n    kind: github\n", "secret_env is missing"),
    (
        "secret-env-lower",
        "sources:\n  github:\n    kind: github\n    secret_env: github_secret\n",
        "upper-case environment variable name",
    ),
    (
        "secret-inline",
        f"sources:\n  github:\n{GITHUB}    secret: hunter2\n",
        "unknown key(s) for kind github: secret",
    ),
    (
        "hmac-option-on-github",
        f"sources:\n  github:\n{GITHUB}    prefix: sha256=\n",
        "unknown key(s) for kind github: prefix",
    ),
    (
        "tolerance-on-github",
        f"sources:\n  github:\n{GITHUB}    tolerance_seconds: 60\n",
        "unknown key(s) for kind github: tolerance_seconds",
    ),
    (
        "tolerance-on-standard",
        "sources:\n  p:\n    kind: standard\n    secret_env: S\n    tolerance_seconds: 9\n",
        "unknown key(s) for kind standard: tolerance_seconds",
    ),
    (
        "body-zero",
        f"sources:\n  github:\n{GITHUB}    max_body_bytes: 0\n",
        "max_body_bytes must be a positive integer",
    ),
    (
        "body-string",
        f"sources:\n  github:\n{GITHUB}    max_body_bytes: 1MB\n",
        "max_body_bytes must be a positive integer",
    ),
    (
        "body-bool",
        f"max_body_bytes: true\nsources:\n  github:\n{GITHUB}",
        "max_body_bytes must be a positive integer",
    ),
    (
        "tolerance-negative",
        "sources:\n  s:\n    kind: stripe\n    secret_env: S\n    tolerance_seconds: -1\n",
        "tolerance_seconds must be a positive integer",
    ),
    (
        "hmac-encoding",
        f"sources:\n  g:\n{HMAC}    encoding: base32\n",
        "encoding must be hex or base64",
    ),
    (
        "hmac-header-space",
        f"sources:\n  g:\n{HMAC}    signature_header: X Signature\n",
        "signature_header must be an HTTP header name",
    ),
    (
        "hmac-prefix-number",
        f"sources:\n  g:\n{HMAC}    prefix: 256\n",
        "prefix must be a string",
    ),
    (
        "hmac-tolerance-without-timestamp",
        f"sources:\n  g:\n{HMAC}    tolerance_seconds: 60\n",
        "tolerance_seconds needs a timestamp_header",
    ),
    (
        "duplicate-source",
        f"sources:\n  github:\n{GITHUB}  github:\n{GITHUB}",
        "'github' appears twice",
    ),
    (
        "duplicate-key",
        f"sources:\n  github:\n{GITHUB}    kind: stripe\n",
        "'kind' appears twice",
    ),
]


@pytest.mark.parametrize(
    "text, problem", [pytest.param(text, problem, id=case) for case, text, problem in BROKEN]
)
def test_broken_file_is_refused_naming_the_problem(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(SourceConfigError) as caught:
        load_sources(path)
    message = str(caught.value)
    assert problem in message
    assert str(path) in message


@pytest.mark.parametrize(
    "text",
    [
        f"sources:\n  github:\n{GITHUB}    secret: hunter2\n",
        f"sources:\n  github:\n{GITHUB}    max_body_bytes: 0\n",
        "sources:\n  github:\n    kind: github\n",
    ],
)
def test_problem_in_a_source_names_that_source(tmp_path, text):
    with pytest.raises(SourceConfigError, match="source 'github'"):
        load_sources(write(tmp_path, text))


def test_missing_file_is_a_config_error(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(SourceConfigError, match="cannot read") as caught:
        load_sources(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("environ", [{}, {"GITHUB_WEBHOOK_SECRET": ""}], ids=["unset", "empty"])
def test_missing_secret_names_the_variable(environ):
    config = load_sources(SHIPPED)["github"]
    with pytest.raises(MissingSecret) as caught:
        build_verifier(config, environ)
    assert caught.value.env_name == "GITHUB_WEBHOOK_SECRET"
    assert str(caught.value).startswith("set GITHUB_WEBHOOK_SECRET (")
    assert "github" in str(caught.value)


def test_secret_is_read_from_the_process_environment_by_default(monkeypatch):
    config = load_sources(SHIPPED)["github"]
    monkeypatch.delenv("GITHUB_WEBHOOK_SECRET", raising=False)
    with pytest.raises(MissingSecret):
        build_verifier(config)
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", ENVIRON["GITHUB_WEBHOOK_SECRET"])
    body = b'{"zen": "Keep it logically awesome."}'
    signature = "sha256=" + sign(ENVIRON["GITHUB_WEBHOOK_SECRET"], body)
    build_verifier(config).check_signature(body, {"x-hub-signature-256": signature}, time.time())


def test_bad_standard_secret_names_the_variable_not_the_value():
    config = load_sources(SHIPPED)["partner"]
    with pytest.raises(ValueError) as caught:
        build_verifier(config, {"STANDARD_WEBHOOK_SECRET": "not base64!!"})
    assert "STANDARD_WEBHOOK_SECRET" in str(caught.value)
    assert "not base64!!" not in str(caught.value)


def signed_github(body: bytes) -> dict[str, str]:
    return {
        "x-hub-signature-256": "sha256=" + sign(ENVIRON["GITHUB_WEBHOOK_SECRET"], body),
        "x-github-delivery": "d-github",
        "x-github-event": "push",
    }


def signed_stripe(body: bytes) -> dict[str, str]:
    t = int(time.time())
    v1 = sign(ENVIRON["STRIPE_WEBHOOK_SECRET"], f"{t}.".encode() + body)
    return {"stripe-signature": f"t={t},v1={v1}"}


def signed_partner(body: bytes) -> dict[str, str]:
    now = datetime.now(tz=UTC)
    return {
        "webhook-id": "msg_partner",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(STANDARD_SECRET).sign("msg_partner", now, body.decode()),
    }


def signed_generic(body: bytes) -> dict[str, str]:
    t = int(time.time())
    signature = sign(ENVIRON["GENERIC_WEBHOOK_SECRET"], f"{t}.".encode() + body)
    return {
        "x-signature": "sha256=" + signature,
        "x-timestamp": str(t),
        "x-delivery-id": "d-generic",
        "x-event-type": "job.finished",
    }


@pytest.mark.parametrize(
    "name, signed, expected",
    [
        ("github", signed_github, Delivery("d-github", "push")),
        ("stripe", signed_stripe, Delivery("evt_1", "invoice.paid")),
        ("partner", signed_partner, Delivery("msg_partner", "invoice.paid")),
        ("generic", signed_generic, Delivery("d-generic", "job.finished")),
    ],
)
def test_each_shipped_source_accepts_a_correctly_signed_request(name, signed, expected):
    body = json.dumps({"id": "evt_1", "type": "invoice.paid"}).encode()
    headers = signed(body)
    verifier = build_verifier(load_sources(SHIPPED)[name], ENVIRON)
    verifier.check_signature(body, headers, time.time())
    assert verifier.identify(headers, json.loads(body)) == expected
    with pytest.raises(SignatureError):
        verifier.check_signature(body + b" ", headers, time.time())


def test_hmac_options_from_the_file_reach_the_verifier(tmp_path):
    path = write(
        tmp_path,
        """
sources:
  ci:
    kind: hmac
    secret_env: CI_HOOK_SECRET
    signature_header: X-CI-Signature
    encoding: base64
    id_header: X-CI-Delivery
""",
    )
    secret = "ci-service-account"
    body = b'{"type": "build.done"}'
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    headers = {"x-ci-signature": base64.b64encode(digest).decode(), "x-ci-delivery": "b-9"}
    verifier = build_verifier(load_sources(path)["ci"], {"CI_HOOK_SECRET": secret})
    verifier.check_signature(body, headers, time.time())
    assert verifier.identify(headers, json.loads(body)) == Delivery("b-9", "build.done")


# A secret's rotation window

OLD, NEW = "the-old-github-secret", "the-new-github-secret"
BODY = b'{"zen": "Rotate without a gap."}'


def github_signed(secret: str) -> dict[str, str]:
    return {"x-hub-signature-256": "sha256=" + sign(secret, BODY)}


def rotating(until: str | None) -> dict[str, str]:
    environ = {"GITHUB_WEBHOOK_SECRET": NEW, "GITHUB_WEBHOOK_SECRET_PREVIOUS": OLD}
    if until is not None:
        environ["GITHUB_WEBHOOK_SECRET_PREVIOUS_UNTIL"] = until
    return environ


def test_both_secrets_are_accepted_until_the_window_ends_and_then_only_the_new_one():
    verifier = build_verifier(load_sources(SHIPPED)["github"], rotating("2030-01-01T00:00:00Z"))
    end = datetime(2030, 1, 1, tzinfo=UTC).timestamp()

    for now in (end - 3600, end - 0.001):
        verifier.check_signature(BODY, github_signed(NEW), now)
        verifier.check_signature(BODY, github_signed(OLD), now)
    for now in (end, end + 3600):
        verifier.check_signature(BODY, github_signed(NEW), now)
        with pytest.raises(SignatureError):
            verifier.check_signature(BODY, github_signed(OLD), now)
    with pytest.raises(SignatureError):
        verifier.check_signature(BODY, github_signed("neither"), end - 3600)


def test_the_window_takes_any_offset():
    late = build_verifier(load_sources(SHIPPED)["github"], rotating("2030-01-01T02:00:00+02:00"))
    assert late.until == datetime(2030, 1, 1, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("until", "says"),
    [
        (
            None,
            "GITHUB_WEBHOOK_SECRET_PREVIOUS is set without GITHUB_WEBHOOK_SECRET_PREVIOUS_UNTIL",
        ),
        ("", "is set without GITHUB_WEBHOOK_SECRET_PREVIOUS_UNTIL"),
        ("next tuesday", "'next tuesday' is not an ISO 8601 moment"),
        ("2030-01-01T00:00:00", "has no offset"),
    ],
    ids=["unset", "empty", "unreadable", "no offset"],
)
def test_a_previous_secret_without_a_readable_end_closes_the_source_and_says_why(until, says):
    with pytest.raises(ValueError, match=says) as caught:
        build_verifier(load_sources(SHIPPED)["github"], rotating(until))
    assert OLD not in str(caught.value) and NEW not in str(caught.value)


def test_a_previous_secret_the_sender_kind_refuses_names_its_own_variable():
    environ = {
        "STANDARD_WEBHOOK_SECRET": ENVIRON["STANDARD_WEBHOOK_SECRET"],
        "STANDARD_WEBHOOK_SECRET_PREVIOUS": "not base64!!",
        "STANDARD_WEBHOOK_SECRET_PREVIOUS_UNTIL": "2030-01-01T00:00:00Z",
    }
    with pytest.raises(ValueError, match="STANDARD_WEBHOOK_SECRET_PREVIOUS") as caught:
        build_verifier(load_sources(SHIPPED)["partner"], environ)
    assert "not base64!!" not in str(caught.value)
