"""The receiver over real HTTP, on SQLite and PostgreSQL, answers a clean 4xx (never a 5xx, which
senders retry for days) to any body that would blow up parsing or a later step:

- JSON nested past the 100-level bound, including far past Python's recursion limit;
- a body that is JSON but not an object;
- a generic-source payload whose canonical digest holds a lone surrogate, and two that differ
  only in an integer past 64 bits (two deliveries, not one);
- bodies that only Python's json reads (NaN, infinities, lone surrogates, huge integers),
  kept byte for byte by a source read the fast way;
- an event the inbox database refuses: only its sender gets 400, the others committed in the
  same group get their 202;
- and, swept by Hypothesis, arbitrary signed bytes and JSON: the answer is 202, 200 or 400.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automation_pipelines.reliability import store
from automation_pipelines.webhooks.app import prepare_sources
from automation_pipelines.webhooks.payloads import MAX_DEPTH
from automation_pipelines.webhooks.sources import SourceConfig
from automation_pipelines_tests.webhooks.conftest import (
    GITHUB_SECRET,
    github_headers,
    inbox_rows,
    post_while_writer_holds,
)

GENERIC_SECRET = "generic-test-secret-91c2"
LARGE = 1_048_576


@pytest.fixture
def receiver(start_receiver):
    """github with a 1 MiB body limit, and a generic HMAC source without an id header."""
    configs = {
        "github": SourceConfig("github", "github", "GITHUB_WEBHOOK_SECRET", LARGE),
        "generic": SourceConfig("generic", "hmac", "GENERIC_WEBHOOK_SECRET", LARGE),
    }
    environ = {"GITHUB_WEBHOOK_SECRET": GITHUB_SECRET, "GENERIC_WEBHOOK_SECRET": GENERIC_SECRET}
    return start_receiver(prepare_sources(configs, environ=environ))


def post_github(receiver, body: bytes, delivery: str = "d-1"):
    return receiver.request("POST", "/hooks/github", body, github_headers(body, delivery))


def nested(levels: int, opener: str = '{"a": ', closer: str = "}") -> bytes:
    return (opener * levels + "1" + closer * levels).encode()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(nested(MAX_DEPTH + 1), id="101-objects"),
        pytest.param(nested(1_000), id="1000-objects"),
        pytest.param(nested(100_000, "[", "]"), id="100000-arrays"),
        pytest.param(b'{"a": ' + nested(400, "[", "]") + b"}", id="mixed-400"),
    ],
)
def test_deep_json_is_a_400_naming_the_bound(receiver, events_db_url, body) -> None:
    reply = post_github(receiver, body)

    assert reply.status == 400, reply.body
    assert reply.json() == {"error": f"body is nested deeper than {MAX_DEPTH} levels"}
    assert inbox_rows(store.engine(events_db_url)) == []


def test_json_at_the_bound_is_accepted(receiver, events_db_url) -> None:
    assert post_github(receiver, nested(MAX_DEPTH)).status == 202
    assert len(inbox_rows(store.engine(events_db_url))) == 1


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_json_that_is_not_an_object_is_a_400(receiver, body) -> None:
    reply = post_github(receiver, body)

    assert reply.status == 400
    assert "body must be a JSON object" in reply.json()["error"]


def generic_headers(body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Signature": hmac.new(GENERIC_SECRET.encode(), body, hashlib.sha256).hexdigest(),
        "X-Event-Type": "job.finished",
    }


def test_lone_surrogate_in_a_digested_payload_is_not_a_500(receiver, events_db_url) -> None:
    """Without an id header the delivery id is a digest of the payload's canonical JSON."""
    body = b'{"job": "bad \\ud800 name"}'

    reply = receiver.request("POST", "/hooks/generic", body, generic_headers(body))

    assert reply.status == 202, reply.body
    again = receiver.request("POST", "/hooks/generic", body, generic_headers(body))
    assert again.status == 200  # the same digest: a re-delivery
    [row] = inbox_rows(store.engine(events_db_url))
    assert row.delivery_id.startswith("sha256:")


def test_payloads_differing_only_past_64_bits_are_two_deliveries(receiver, events_db_url):
    """The digest covers every number as sent, even where a float cannot tell them apart."""
    bodies = [b'{"n": 18446744073709551616}', b'{"n": 18446744073709551617}']

    replies = [
        receiver.request("POST", "/hooks/generic", body, generic_headers(body)) for body in bodies
    ]

    assert [reply.status for reply in replies] == [202, 202], [r.body for r in replies]
    rows = inbox_rows(store.engine(events_db_url))
    assert sorted(row.body.encode() for row in rows) == sorted(bodies)
    assert len({row.delivery_id for row in rows}) == 2


@pytest.mark.parametrize(
    "body",
    [
        b'{"amount": NaN, "fee": -Infinity}',
        b'{"amount": 1e400}',
        b'{"pusher": {"name": "bad \\ud800 name"}}',
        b'{"id": 340282366920938463463374607431768211457}',
    ],
    ids=["nan", "overflowing-float", "lone-surrogate", "128-bit-int"],
)
def test_bodies_only_json_reads_are_kept_as_sent(receiver, events_db_url, body) -> None:
    """GitHub's source reads bodies the fast way (its id and type are headers): what that way
    refuses, Python's json still takes, and the loader decides on it as before."""
    reply = post_github(receiver, body)

    assert reply.status == 202, reply.body
    [row] = inbox_rows(store.engine(events_db_url))
    assert row.body.encode() == body


def _refuse_delivery(engine: sa.Engine, delivery: str) -> None:
    """A rule only the inbox database knows: this delivery id is refused."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(
                "ALTER TABLE ap_webhook_inbox ADD CONSTRAINT no_poison "
                f"CHECK (delivery_id <> '{delivery}')"
            )
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER no_poison BEFORE INSERT ON ap_webhook_inbox "
                f"WHEN NEW.delivery_id = '{delivery}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )


def test_event_the_inbox_refuses_fails_alone_in_its_group(receiver, events_db_url) -> None:
    """Eleven deliveries, one the database refuses, reach the inbox writer while it is stopped;
    let go, it commits them as one group: the refused one gets 400, the ten others 202."""
    engine = store.engine(events_db_url)
    _refuse_delivery(engine, "poison")
    later = [f"d-{n}" for n in range(9)]
    later.insert(4, "poison")
    first, *rest = post_while_writer_holds(receiver, "first", later)
    replies = dict(zip(later, rest, strict=True))

    assert first.status == 202
    assert replies.pop("poison").status == 400
    assert {d: r.status for d, r in replies.items()} == {d: 202 for d in replies}
    stored = sorted(row.delivery_id for row in inbox_rows(engine))
    assert stored == sorted(["first", *replies])
    # The database was fine all along: the next delivery commits normally.
    assert receiver.post_push("after").status == 202


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=200),
        _json.map(lambda value: json.dumps(value).encode()),
        st.integers(min_value=1, max_value=3000).map(nested),
        st.text(max_size=50).map(lambda t: json.dumps({"t": t}, ensure_ascii=False).encode()),
    )
)
def test_no_signed_body_gets_a_5xx(receiver, body: bytes) -> None:
    for path, headers in (
        ("/hooks/github", github_headers(body, hashlib.sha256(body).hexdigest())),
        ("/hooks/generic", generic_headers(body)),
    ):
        reply = receiver.request("POST", path, body, headers)
        assert reply.status in (200, 202, 400), (path, reply.status, reply.body[:200])
