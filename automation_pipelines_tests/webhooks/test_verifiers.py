"""The signature verifiers: GitHub's published test vector, Stripe and plain-HMAC signatures
computed here independently of the code under test, Standard Webhooks signatures made by the
library itself and sent under either header family (`webhook-*`, or `svix-*` as Svix sends them),
and the rejections (bad or missing signature, stale timestamp, unreadable ids)
each mapped to its own error whose message never reveals the secret or the expected signature."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook

from automation_pipelines.webhooks.verifiers import (
    Delivery,
    GitHubVerifier,
    HmacVerifier,
    Malformed,
    Rejected,
    SignatureError,
    StaleTimestamp,
    StandardWebhooksVerifier,
    StripeVerifier,
)

NOW = 1_700_000_000.0

GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

STRIPE_SECRET = "whsec_test_5WbX5kEWLlfzsGNjH64I8lOOqUB6e8FH"
STRIPE_BODY = json.dumps({"id": "evt_1", "type": "invoice.paid", "data": {}}).encode()

STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def hmac_hex(secret: str, content: bytes) -> str:
    return hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()


def hmac_b64(secret: str, content: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), content, hashlib.sha256).digest()).decode()


def flip_last(text: str) -> str:
    return text[:-1] + ("0" if text[-1] != "0" else "1")


# GitHub


def github_headers(signature: str | None = GITHUB_SIGNATURE) -> dict[str, str]:
    headers = {
        "x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "x-github-event": "ping",
    }
    if signature is not None:
        headers["x-hub-signature-256"] = signature
    return headers


def test_github_documented_vector_passes():
    GitHubVerifier(GITHUB_SECRET).check_signature(GITHUB_BODY, github_headers(), NOW)


@pytest.mark.parametrize(
    "secret, signature",
    [
        pytest.param(GITHUB_SECRET, flip_last(GITHUB_SIGNATURE), id="flipped-char"),
        pytest.param("It's a Secret to Nobody", GITHUB_SIGNATURE, id="wrong-secret"),
        pytest.param(GITHUB_SECRET, None, id="missing-header"),
        pytest.param(GITHUB_SECRET, "", id="empty-header"),
        pytest.param(GITHUB_SECRET, GITHUB_SIGNATURE.replace("sha256", "sha1"), id="wrong-scheme"),
        pytest.param(GITHUB_SECRET, GITHUB_SIGNATURE[:-2], id="truncated"),
        pytest.param(GITHUB_SECRET, GITHUB_SIGNATURE[:-1] + "é", id="non-ascii"),
    ],
)
def test_github_bad_signature_is_rejected(secret, signature):
    with pytest.raises(SignatureError) as caught:
        GitHubVerifier(secret).check_signature(GITHUB_BODY, github_headers(signature), NOW)
    assert caught.value.status == 401


def test_github_identifies_delivery_from_headers():
    delivery = GitHubVerifier(GITHUB_SECRET).identify(github_headers(), {"zen": "hi"})
    assert delivery == Delivery("72d3162e-cc78-11e3-81ab-4c9367dc0958", "ping")


@pytest.mark.parametrize("missing", ["x-github-delivery", "x-github-event"])
def test_github_missing_identity_header_is_malformed(missing):
    headers = github_headers()
    del headers[missing]
    with pytest.raises(Malformed, match=missing) as caught:
        GitHubVerifier(GITHUB_SECRET).identify(headers, {})
    assert caught.value.status == 400


def test_empty_secret_is_refused_at_construction():
    with pytest.raises(ValueError, match="non-empty"):
        GitHubVerifier("")


# Stripe


def stripe_header(timestamp: int, *signatures: str) -> dict[str, str]:
    parts = [f"t={timestamp}", *(f"v1={signature}" for signature in signatures)]
    return {"stripe-signature": ",".join(parts)}


def stripe_signature(timestamp: int, body: bytes = STRIPE_BODY, secret: str = STRIPE_SECRET):
    return hmac_hex(secret, f"{timestamp}.".encode() + body)


def test_stripe_valid_signature_passes():
    t = int(NOW)
    StripeVerifier(STRIPE_SECRET).check_signature(
        STRIPE_BODY, stripe_header(t, stripe_signature(t)), NOW
    )


def test_stripe_one_valid_among_several_v1_passes():
    t = int(NOW)
    wrong = stripe_signature(t, secret="whsec_old")
    header = stripe_header(t, wrong, stripe_signature(t), flip_last(wrong))
    header["stripe-signature"] += ",v0=" + "0" * 64
    StripeVerifier(STRIPE_SECRET).check_signature(STRIPE_BODY, header, NOW)


def test_stripe_wrong_secret_fails():
    t = int(NOW)
    header = stripe_header(t, stripe_signature(t, secret="whsec_someone_else"))
    with pytest.raises(SignatureError):
        StripeVerifier(STRIPE_SECRET).check_signature(STRIPE_BODY, header, NOW)


def test_stripe_tampered_body_fails():
    t = int(NOW)
    header = stripe_header(t, stripe_signature(t))
    with pytest.raises(SignatureError):
        StripeVerifier(STRIPE_SECRET).check_signature(STRIPE_BODY + b" ", header, NOW)


@pytest.mark.parametrize("offset", [-301, 301, -86_400], ids=["stale", "future", "day-old"])
def test_stripe_timestamp_outside_tolerance_is_stale(offset):
    t = int(NOW) + offset
    with pytest.raises(StaleTimestamp) as caught:
        StripeVerifier(STRIPE_SECRET).check_signature(
            STRIPE_BODY, stripe_header(t, stripe_signature(t)), NOW
        )
    assert caught.value.status == 401


@pytest.mark.parametrize("offset", [-300, 300])
def test_stripe_timestamp_at_the_tolerance_edge_passes(offset):
    t = int(NOW) + offset
    StripeVerifier(STRIPE_SECRET).check_signature(
        STRIPE_BODY, stripe_header(t, stripe_signature(t)), NOW
    )


def test_stripe_tolerance_is_configurable():
    t = int(NOW) - 100
    header = stripe_header(t, stripe_signature(t))
    StripeVerifier(STRIPE_SECRET, tolerance_seconds=300).check_signature(STRIPE_BODY, header, NOW)
    with pytest.raises(StaleTimestamp):
        StripeVerifier(STRIPE_SECRET, tolerance_seconds=60).check_signature(
            STRIPE_BODY, header, NOW
        )


def test_stripe_forged_timestamp_is_a_signature_error_not_stale():
    signed_at = int(NOW) - 3600
    header = stripe_header(int(NOW), stripe_signature(signed_at))
    with pytest.raises(SignatureError):
        StripeVerifier(STRIPE_SECRET).check_signature(STRIPE_BODY, header, NOW)


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        "",
        "t=,v1=abc",
        f"t=notanumber,v1={'0' * 64}",
        f"t=-5,v1={'0' * 64}",
        f"v1={'0' * 64}",
        f"t={int(NOW)}",
        f"t={int(NOW)},t={int(NOW)},v1={'0' * 64}",
        f"t={int(NOW)},v0={'0' * 64}",
    ],
)
def test_stripe_unparseable_header_is_a_signature_error(header):
    with pytest.raises(SignatureError):
        StripeVerifier(STRIPE_SECRET).check_signature(
            STRIPE_BODY, {"stripe-signature": header}, NOW
        )


def test_stripe_missing_header_is_a_signature_error():
    with pytest.raises(SignatureError):
        StripeVerifier(STRIPE_SECRET).check_signature(STRIPE_BODY, {}, NOW)


def test_stripe_identifies_from_event_body():
    delivery = StripeVerifier(STRIPE_SECRET).identify({}, json.loads(STRIPE_BODY))
    assert delivery == Delivery("evt_1", "invoice.paid")


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "invoice.paid"},
        {"id": "evt_1"},
        {"id": "", "type": "invoice.paid"},
        {"id": 17, "type": "invoice.paid"},
        {"id": "evt_1", "type": None},
        {"id": "e" * 256, "type": "invoice.paid"},
        {"id": "evt_1\nforged log line", "type": "invoice.paid"},
        ["evt_1", "invoice.paid"],
        "evt_1",
        None,
    ],
)
def test_stripe_unidentifiable_body_is_malformed(payload):
    with pytest.raises(Malformed):
        StripeVerifier(STRIPE_SECRET).identify({}, payload)


def test_stripe_id_of_exactly_255_chars_is_accepted():
    delivery = StripeVerifier(STRIPE_SECRET).identify({}, {"id": "e" * 255, "type": "t"})
    assert len(delivery.delivery_id) == 255


# Standard Webhooks


def standard_headers(
    body: bytes,
    msg_id: str = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
    age: timedelta = timedelta(0),
    family: str = "webhook",
) -> dict[str, str]:
    """Headers as a sender signing with the `standardwebhooks` library sends them, named
    `webhook-*` (the spec) or `svix-*` (Svix's default)."""
    signed_at = datetime.now(tz=UTC) - age
    signature = Webhook(STANDARD_SECRET).sign(msg_id, signed_at, body.decode())
    return {
        f"{family}-id": msg_id,
        f"{family}-timestamp": str(int(signed_at.timestamp())),
        f"{family}-signature": signature,
    }


STANDARD_BODY = json.dumps({"type": "user.created", "data": {"id": 7}}).encode()


def test_standard_signed_by_the_library_passes():
    verifier = StandardWebhooksVerifier(STANDARD_SECRET)
    verifier.check_signature(STANDARD_BODY, standard_headers(STANDARD_BODY), time.time())


@pytest.mark.parametrize("family", ["webhook", "svix"])
def test_standard_either_header_family_is_verified_and_identified(family):
    verifier = StandardWebhooksVerifier(STANDARD_SECRET)
    headers = standard_headers(STANDARD_BODY, msg_id=f"msg_{family}", family=family)

    verifier.check_signature(STANDARD_BODY, headers, time.time())

    assert verifier.identify(headers, json.loads(STANDARD_BODY)) == Delivery(
        f"msg_{family}", "user.created"
    )


@pytest.mark.parametrize("family", ["webhook", "svix"])
def test_standard_tampered_body_fails_in_either_header_family(family):
    headers = standard_headers(STANDARD_BODY, family=family)
    with pytest.raises(SignatureError):
        StandardWebhooksVerifier(STANDARD_SECRET).check_signature(
            STANDARD_BODY.replace(b"7", b"8"), headers, time.time()
        )


@pytest.mark.parametrize("missing", ["svix-id", "svix-timestamp", "svix-signature"])
def test_standard_incomplete_svix_headers_are_a_signature_error(missing):
    headers = standard_headers(STANDARD_BODY, family="svix")
    del headers[missing]
    with pytest.raises(SignatureError):
        StandardWebhooksVerifier(STANDARD_SECRET).check_signature(
            STANDARD_BODY, headers, time.time()
        )


def test_standard_a_complete_family_wins_over_a_partial_one():
    """A stray webhook-id does not pull the svix-signed request into the other family."""
    verifier = StandardWebhooksVerifier(STANDARD_SECRET)
    headers = {**standard_headers(STANDARD_BODY, msg_id="msg_svix", family="svix")}
    headers["webhook-id"] = "msg_stray"

    verifier.check_signature(STANDARD_BODY, headers, time.time())

    assert verifier.identify(headers, json.loads(STANDARD_BODY)).delivery_id == "msg_svix"


def test_standard_the_spec_family_is_read_first_and_alone():
    """With both families complete, `webhook-*` decides: a bad one is not saved by the other."""
    headers = {
        **standard_headers(STANDARD_BODY, family="svix"),
        **standard_headers(STANDARD_BODY.replace(b"7", b"8"), family="webhook"),
    }
    with pytest.raises(SignatureError):
        StandardWebhooksVerifier(STANDARD_SECRET).check_signature(
            STANDARD_BODY, headers, time.time()
        )


def test_standard_accepts_secret_without_prefix():
    verifier = StandardWebhooksVerifier(STANDARD_SECRET.removeprefix("whsec_"))
    verifier.check_signature(STANDARD_BODY, standard_headers(STANDARD_BODY), time.time())


def test_standard_one_valid_among_several_signatures_passes():
    headers = standard_headers(STANDARD_BODY)
    headers["webhook-signature"] = f"v1,{'A' * 44} {headers['webhook-signature']}"
    StandardWebhooksVerifier(STANDARD_SECRET).check_signature(STANDARD_BODY, headers, time.time())


def test_standard_tampered_body_fails():
    headers = standard_headers(STANDARD_BODY)
    with pytest.raises(SignatureError):
        StandardWebhooksVerifier(STANDARD_SECRET).check_signature(
            STANDARD_BODY.replace(b"7", b"8"), headers, time.time()
        )


def test_standard_other_secret_fails():
    other = "whsec_" + base64.b64encode(b"another service account key!!").decode()
    with pytest.raises(SignatureError):
        StandardWebhooksVerifier(other).check_signature(
            STANDARD_BODY, standard_headers(STANDARD_BODY), time.time()
        )


@pytest.mark.parametrize("age", [timedelta(minutes=10), -timedelta(minutes=10)], ids=["old", "new"])
def test_standard_timestamp_outside_five_minutes_is_stale(age):
    headers = standard_headers(STANDARD_BODY, age=age)
    with pytest.raises(StaleTimestamp):
        StandardWebhooksVerifier(STANDARD_SECRET).check_signature(
            STANDARD_BODY, headers, time.time()
        )


@pytest.mark.parametrize(
    "signature",
    ["garbage", "v1,a,b", "v1,not base64!", "", "v1,abc  v1,def"],
)
def test_standard_malformed_signature_is_a_signature_error(signature):
    headers = standard_headers(STANDARD_BODY)
    headers["webhook-signature"] = signature
    with pytest.raises(SignatureError):
        StandardWebhooksVerifier(STANDARD_SECRET).check_signature(
            STANDARD_BODY, headers, time.time()
        )


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_standard_missing_header_is_a_signature_error(missing):
    headers = standard_headers(STANDARD_BODY)
    del headers[missing]
    with pytest.raises(SignatureError):
        StandardWebhooksVerifier(STANDARD_SECRET).check_signature(
            STANDARD_BODY, headers, time.time()
        )


@pytest.mark.parametrize("timestamp", ["soon", "nan", "1e400", ""])
def test_standard_unreadable_timestamp_is_a_signature_error(timestamp):
    headers = standard_headers(STANDARD_BODY)
    headers["webhook-timestamp"] = timestamp
    with pytest.raises(SignatureError):
        StandardWebhooksVerifier(STANDARD_SECRET).check_signature(
            STANDARD_BODY, headers, time.time()
        )


def test_standard_body_that_is_not_utf8_is_a_signature_error():
    headers = standard_headers(STANDARD_BODY)
    with pytest.raises(SignatureError):
        StandardWebhooksVerifier(STANDARD_SECRET).check_signature(b"\xff\xfe", headers, time.time())


@pytest.mark.parametrize("secret", ["", "whsec_", "not base64!!", "whsec_a", "héllo"])
def test_standard_bad_secret_is_refused_at_construction(secret):
    with pytest.raises(ValueError, match="base64, optionally prefixed whsec_"):
        StandardWebhooksVerifier(secret)


def test_standard_identifies_from_header_and_body():
    headers = standard_headers(STANDARD_BODY, msg_id="msg_42")
    delivery = StandardWebhooksVerifier(STANDARD_SECRET).identify(
        headers, json.loads(STANDARD_BODY)
    )
    assert delivery == Delivery("msg_42", "user.created")


@pytest.mark.parametrize(
    "headers, payload",
    [
        ({}, {"type": "user.created"}),
        ({"webhook-id": "msg_1"}, {"data": {}}),
        ({"webhook-id": "msg_1"}, {"type": 3}),
        ({"webhook-id": "msg_1"}, ["user.created"]),
        ({"webhook-id": "m" * 256}, {"type": "user.created"}),
    ],
)
def test_standard_unidentifiable_delivery_is_malformed(headers, payload):
    with pytest.raises(Malformed):
        StandardWebhooksVerifier(STANDARD_SECRET).identify(headers, payload)


# Generic HMAC

HMAC_SECRET = "generic-shared-secret"
HMAC_BODY = b'{"type": "order.shipped", "order": 12}'


def hmac_headers(
    encoding: str, prefix: str, timestamp: int | None, body: bytes = HMAC_BODY
) -> dict[str, str]:
    content = body if timestamp is None else f"{timestamp}.".encode() + body
    encode = hmac_hex if encoding == "hex" else hmac_b64
    headers = {"x-signature": prefix + encode(HMAC_SECRET, content)}
    if timestamp is not None:
        headers["x-timestamp"] = str(timestamp)
    return headers


HMAC_CASES = [
    pytest.param(encoding, prefix, timed, id=f"{encoding}-{prefix or 'bare'}-{timed}")
    for encoding in ("hex", "base64")
    for prefix in ("", "sha256=")
    for timed in ("timed", "untimed")
]


def hmac_verifier(encoding: str, prefix: str, timed: str, **kw) -> HmacVerifier:
    timestamp_header = "X-Timestamp" if timed == "timed" else None
    return HmacVerifier(
        HMAC_SECRET, prefix=prefix, encoding=encoding, timestamp_header=timestamp_header, **kw
    )


@pytest.mark.parametrize("encoding, prefix, timed", HMAC_CASES)
def test_hmac_correct_signature_passes(encoding, prefix, timed):
    timestamp = int(NOW) if timed == "timed" else None
    headers = hmac_headers(encoding, prefix, timestamp)
    hmac_verifier(encoding, prefix, timed).check_signature(HMAC_BODY, headers, NOW)


@pytest.mark.parametrize("encoding, prefix, timed", HMAC_CASES)
def test_hmac_tampered_body_fails(encoding, prefix, timed):
    timestamp = int(NOW) if timed == "timed" else None
    headers = hmac_headers(encoding, prefix, timestamp)
    with pytest.raises(SignatureError):
        hmac_verifier(encoding, prefix, timed).check_signature(HMAC_BODY + b"\n", headers, NOW)


@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_hmac_missing_prefix_fails(encoding):
    headers = hmac_headers(encoding, "", None)
    with pytest.raises(SignatureError, match="does not start with"):
        hmac_verifier(encoding, "sha256=", "untimed").check_signature(HMAC_BODY, headers, NOW)


def test_hmac_unpadded_base64_passes():
    headers = hmac_headers("base64", "", None)
    headers["x-signature"] = headers["x-signature"].rstrip("=")
    hmac_verifier("base64", "", "untimed").check_signature(HMAC_BODY, headers, NOW)


def test_hmac_hex_signature_sent_as_base64_fails():
    headers = hmac_headers("base64", "", None)
    with pytest.raises(SignatureError):
        hmac_verifier("hex", "", "untimed").check_signature(HMAC_BODY, headers, NOW)


def test_hmac_timed_signature_over_body_alone_fails():
    headers = hmac_headers("hex", "", None)
    headers["x-timestamp"] = str(int(NOW))
    with pytest.raises(SignatureError):
        hmac_verifier("hex", "", "timed").check_signature(HMAC_BODY, headers, NOW)


@pytest.mark.parametrize("offset", [-301, 301])
def test_hmac_timestamp_outside_tolerance_is_stale(offset):
    headers = hmac_headers("hex", "", int(NOW) + offset)
    with pytest.raises(StaleTimestamp):
        hmac_verifier("hex", "", "timed").check_signature(HMAC_BODY, headers, NOW)


@pytest.mark.parametrize("timestamp", [None, "", "12.5", "later"])
def test_hmac_missing_or_unreadable_timestamp_is_a_signature_error(timestamp):
    headers = hmac_headers("hex", "", int(NOW))
    if timestamp is None:
        del headers["x-timestamp"]
    else:
        headers["x-timestamp"] = timestamp
    with pytest.raises(SignatureError):
        hmac_verifier("hex", "", "timed").check_signature(HMAC_BODY, headers, NOW)


def test_hmac_header_names_are_matched_case_insensitively():
    verifier = HmacVerifier(HMAC_SECRET, signature_header="X-Hook-Sig", id_header="X-Hook-Id")
    verifier.check_signature(HMAC_BODY, {"x-hook-sig": hmac_hex(HMAC_SECRET, HMAC_BODY)}, NOW)
    assert verifier.identify({"x-hook-id": "d-1"}, {}).delivery_id == "d-1"


def test_hmac_unknown_encoding_is_refused():
    with pytest.raises(ValueError, match="encoding"):
        HmacVerifier(HMAC_SECRET, encoding="base32")


def test_hmac_identifies_from_headers_first():
    headers = {"x-delivery-id": "d-17", "x-event-type": "order.paid"}
    delivery = HmacVerifier(HMAC_SECRET).identify(headers, json.loads(HMAC_BODY))
    assert delivery == Delivery("d-17", "order.paid")


def test_hmac_falls_back_to_body_type_then_to_event():
    verifier = HmacVerifier(HMAC_SECRET)
    assert verifier.identify({}, {"type": "order.shipped"}).event_type == "order.shipped"
    assert verifier.identify({}, {"kind": "order.shipped"}).event_type == "event"
    assert verifier.identify({}, [1, 2]).event_type == "event"


def test_hmac_body_hash_delivery_id_is_stable_and_distinct():
    verifier = HmacVerifier(HMAC_SECRET)
    first = verifier.identify({}, json.loads(HMAC_BODY)).delivery_id
    again = verifier.identify({}, json.loads(HMAC_BODY)).delivery_id
    other = verifier.identify({}, {"type": "order.shipped", "order": 13}).delivery_id
    assert first == again
    assert first != other
    assert first.startswith("sha256:")
    assert len(first) == len("sha256:") + 64


def test_hmac_body_hash_ignores_spacing_and_key_order():
    verifier = HmacVerifier(HMAC_SECRET)
    one = verifier.identify({}, json.loads(b'{"a": 1, "b": [1, 2]}')).delivery_id
    two = verifier.identify({}, json.loads(b'{"b":[1,2],"a":1}')).delivery_id
    assert one == two


@pytest.mark.parametrize(
    "headers",
    [
        {"x-delivery-id": ""},
        {"x-delivery-id": "d" * 256},
        {"x-event-type": ""},
        {"x-event-type": "t" * 256},
    ],
)
def test_hmac_bad_id_or_type_header_is_malformed(headers):
    with pytest.raises(Malformed):
        HmacVerifier(HMAC_SECRET).identify(headers, {})


# What a rejection tells the sender


def test_rejections_never_reveal_secret_or_expected_signature():
    t = int(NOW)
    expected = stripe_signature(t)
    reasons = []
    for call in (
        lambda: StripeVerifier(STRIPE_SECRET).check_signature(
            STRIPE_BODY, stripe_header(t, flip_last(expected)), NOW
        ),
        lambda: StripeVerifier(STRIPE_SECRET).check_signature(
            STRIPE_BODY, stripe_header(t - 900, stripe_signature(t - 900)), NOW
        ),
        lambda: GitHubVerifier(GITHUB_SECRET).check_signature(
            GITHUB_BODY + b"!", github_headers(), NOW
        ),
        lambda: HmacVerifier(HMAC_SECRET).check_signature(
            HMAC_BODY, {"x-signature": "0" * 64}, NOW
        ),
    ):
        with pytest.raises(Rejected) as caught:
            call()
        reasons.append(str(caught.value))
    github_expected = hmac_hex(GITHUB_SECRET, GITHUB_BODY + b"!")
    hmac_expected = hmac_hex(HMAC_SECRET, HMAC_BODY)
    for reason in reasons:
        assert reason
        for secret in (STRIPE_SECRET, GITHUB_SECRET, HMAC_SECRET):
            assert secret not in reason
        for signature in (expected, github_expected, hmac_expected):
            assert signature not in reason
