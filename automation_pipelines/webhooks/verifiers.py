"""Signature checks for the senders the receiver accepts, behind one small interface.

Every failure is a `Rejected` whose message is safe to send back: it says what was wrong with
the request, never the secret or the signature we expected, so a sender can fix its side
without the receiver teaching a forger anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook, WebhookVerificationError

MAX_LABEL_CHARS = 255
_HEX_DIGITS = frozenset(string.hexdigits)
_SHA256_HEX_CHARS = 64


class Rejected(Exception):
    """A request the receiver refuses; `status` is the HTTP status and str() the reason."""

    status: int = 400


class SignatureError(Rejected):
    """The request is not signed by the holder of the secret (or not signed at all)."""

    status = 401


class StaleTimestamp(Rejected):
    """The signed timestamp is outside the tolerance, so the request may be a replay."""

    status = 401


class Malformed(Rejected):
    """Authentic, but the delivery id or event type cannot be read from it."""

    status = 400


@dataclass(frozen=True)
class Delivery:
    """What the inbox needs to deduplicate and route one delivery."""

    delivery_id: str
    event_type: str


class Verifier(Protocol):
    """One sender's signature scheme; header keys are lower-case. `payload_keys`: the top-level
    keys of the payload `identify` reads (the receiver reads only those, faster), or None when
    it reads the whole payload."""

    payload_keys: tuple[str, ...] | None

    def check_signature(self, body: bytes, headers: Mapping[str, str], now: float) -> None: ...

    def identify(self, headers: Mapping[str, str], payload: Any) -> Delivery: ...


def _require_secret(secret: str) -> bytes:
    if not isinstance(secret, str) or not secret:
        raise ValueError("the webhook secret must be a non-empty string")
    return secret.encode("utf-8")


def _hmac_sha256(key: bytes, content: bytes) -> bytes:
    return hmac.new(key, content, hashlib.sha256).digest()


def _hex_matches(expected: bytes, received: str) -> bool:
    """Compare a received hex digest in constant time; anything that is not hex never matches."""
    if len(received) != _SHA256_HEX_CHARS or not _HEX_DIGITS.issuperset(received):
        return False
    return hmac.compare_digest(expected, bytes.fromhex(received))


def _base64_matches(expected: bytes, received: str) -> bool:
    """Like `_hex_matches`, accepting padded or unpadded standard base64."""
    stripped = received.rstrip("=")
    try:
        decoded = base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(expected, decoded)


def _parse_timestamp(value: str | None) -> int:
    if not value or not value.isascii() or not value.isdigit():
        raise SignatureError("timestamp missing or not whole seconds since the epoch")
    return int(value)


def _check_fresh(timestamp: int, now: float, tolerance_seconds: int) -> None:
    if abs(now - timestamp) > tolerance_seconds:
        raise StaleTimestamp(f"timestamp is more than {tolerance_seconds}s away from our clock")


def _label(value: Any, what: str) -> str:
    """A delivery id or event type, refused when it could not serve as a key or a log field."""
    if not isinstance(value, str) or not value:
        raise Malformed(f"{what} is missing")
    if len(value) > MAX_LABEL_CHARS:
        raise Malformed(f"{what} is longer than {MAX_LABEL_CHARS} characters")
    if not value.isprintable():
        raise Malformed(f"{what} contains control characters")
    return value


def _required_header(headers: Mapping[str, str], name: str) -> str:
    return _label(headers.get(name), f"header {name}")


class GitHubVerifier:
    """GitHub's `X-Hub-Signature-256`: an HMAC of the body alone, with no timestamp to check."""

    payload_keys = ()  # the id and type are headers

    def __init__(self, secret: str) -> None:
        self._key = _require_secret(secret)

    def check_signature(self, body: bytes, headers: Mapping[str, str], now: float) -> None:
        header = headers.get("x-hub-signature-256")
        if not header:
            raise SignatureError("missing X-Hub-Signature-256 header")
        scheme, _, digest = header.partition("=")
        if scheme != "sha256" or not _hex_matches(_hmac_sha256(self._key, body), digest.lower()):
            raise SignatureError("signature does not match")

    def identify(self, headers: Mapping[str, str], payload: Any) -> Delivery:
        return Delivery(
            delivery_id=_required_header(headers, "x-github-delivery"),
            event_type=_required_header(headers, "x-github-event"),
        )


class StripeVerifier:
    """Stripe's `Stripe-Signature`: a timestamped HMAC, any `v1` of which may match.

    The signature is checked before the age, so a forged timestamp reads as a bad signature.
    """

    payload_keys = ("id", "type")

    def __init__(self, secret: str, tolerance_seconds: int = 300) -> None:
        self._key = _require_secret(secret)
        self._tolerance = tolerance_seconds

    def check_signature(self, body: bytes, headers: Mapping[str, str], now: float) -> None:
        header = headers.get("stripe-signature")
        if not header:
            raise SignatureError("missing Stripe-Signature header")
        timestamps: list[str] = []
        candidates: list[str] = []
        for item in header.split(","):
            key, sep, value = item.strip().partition("=")
            if not sep:
                raise SignatureError("Stripe-Signature header is not a list of key=value pairs")
            if key == "t":
                timestamps.append(value)
            elif key == "v1":
                candidates.append(value)
        if len(timestamps) != 1 or not candidates:
            raise SignatureError("Stripe-Signature header needs one t= and at least one v1=")
        timestamp = _parse_timestamp(timestamps[0])
        expected = _hmac_sha256(self._key, timestamps[0].encode("ascii") + b"." + body)
        # Check every candidate so the time taken does not depend on which one matched.
        matches = [_hex_matches(expected, candidate.lower()) for candidate in candidates]
        if not any(matches):
            raise SignatureError("no v1 signature matches")
        _check_fresh(timestamp, now, self._tolerance)

    def identify(self, headers: Mapping[str, str], payload: Any) -> Delivery:
        if not isinstance(payload, dict):
            raise Malformed("body is not a Stripe event object")
        return Delivery(
            delivery_id=_label(payload.get("id"), "event id"),
            event_type=_label(payload.get("type"), "event type"),
        )


def _standard_secret(secret: str) -> bytes:
    """Decode a Standard Webhooks secret strictly; the library skips characters it cannot read."""
    message = "the Standard Webhooks secret must be base64, optionally prefixed whsec_"
    if not isinstance(secret, str):
        raise ValueError(message)
    encoded = secret.removeprefix("whsec_").rstrip("=")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(message) from None
    if not key:
        raise ValueError(message)
    return key


#: The header families a Standard Webhooks sender may use: the spec's `webhook-*`, and `svix-*`,
#: which Svix sends by default. A request is read in one family whole, `webhook-*` first.
STANDARD_FAMILIES = ("webhook", "svix")
_STANDARD_PARTS = ("id", "timestamp", "signature")


def standard_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request's id, timestamp and signature under the spec's `webhook-*` names, taken from
    the first family that has all three (else what `webhook-*` has, which fails as missing)."""
    for family in STANDARD_FAMILIES:
        found = {part: headers.get(f"{family}-{part}") for part in _STANDARD_PARTS}
        if all(found.values()):
            return {f"webhook-{part}": value for part, value in found.items()}
    return {
        f"webhook-{p}": headers[f"webhook-{p}"]
        for p in _STANDARD_PARTS
        if f"webhook-{p}" in headers
    }


class StandardWebhooksVerifier:
    """The Standard Webhooks spec (Svix and others), checked by the `standardwebhooks` library,
    with its headers named `webhook-*` or, as Svix names them by default, `svix-*`.

    The library reads its own clock with a fixed five-minute tolerance, so `now` is not used.
    """

    payload_keys = ("type",)  # the id is a header

    def __init__(self, secret: str) -> None:
        try:
            self._webhook = Webhook(_standard_secret(secret))
        except EmptyWebhookSecretError:
            raise ValueError("the Standard Webhooks secret is empty") from None

    def check_signature(self, body: bytes, headers: Mapping[str, str], now: float) -> None:
        try:
            self._webhook.verify(body, standard_headers(headers), json_parse=False)
        except WebhookVerificationError as error:
            if "timestamp too" in str(error):
                raise StaleTimestamp(
                    "webhook-timestamp is more than 300s away from our clock"
                ) from None
            raise SignatureError("signature missing or does not match") from None
        except (ValueError, TypeError):
            # Malformed webhook-signature values, bad base64 and non-UTF-8 bodies land here.
            raise SignatureError("signature headers are malformed") from None

    def identify(self, headers: Mapping[str, str], payload: Any) -> Delivery:
        event_type = payload.get("type") if isinstance(payload, dict) else None
        return Delivery(
            delivery_id=_required_header(standard_headers(headers), "webhook-id"),
            event_type=_label(event_type, "event type"),
        )


class HmacVerifier:
    """A sender that signs with plain HMAC-SHA256, described by its header names and encoding.

    Without an id header the delivery id is a hash of the payload, so identical re-deliveries
    still deduplicate.
    """

    payload_keys = None  # the digest covers the whole payload, every number as sent

    def __init__(
        self,
        secret: str,
        signature_header: str = "x-signature",
        prefix: str = "",
        encoding: str = "hex",
        timestamp_header: str | None = None,
        tolerance_seconds: int = 300,
        id_header: str = "x-delivery-id",
        type_header: str = "x-event-type",
    ) -> None:
        if encoding not in ("hex", "base64"):
            raise ValueError(f"encoding must be 'hex' or 'base64', not {encoding!r}")
        self._key = _require_secret(secret)
        self._signature_header = signature_header.lower()
        self._prefix = prefix
        self._matches = _hex_matches if encoding == "hex" else _base64_matches
        self._timestamp_header = timestamp_header.lower() if timestamp_header else None
        self._tolerance = tolerance_seconds
        self._id_header = id_header.lower()
        self._type_header = type_header.lower()

    def check_signature(self, body: bytes, headers: Mapping[str, str], now: float) -> None:
        header = headers.get(self._signature_header)
        if not header:
            raise SignatureError(f"missing {self._signature_header} header")
        if not header.startswith(self._prefix):
            raise SignatureError(f"{self._signature_header} does not start with {self._prefix!r}")
        received = header[len(self._prefix) :]
        if self._matches is _hex_matches:
            received = received.lower()
        if self._timestamp_header is None:
            if not self._matches(_hmac_sha256(self._key, body), received):
                raise SignatureError("signature does not match")
            return
        raw_timestamp = headers.get(self._timestamp_header)
        timestamp = _parse_timestamp(raw_timestamp)
        expected = _hmac_sha256(self._key, f"{raw_timestamp}.".encode("ascii") + body)
        if not self._matches(expected, received):
            raise SignatureError("signature does not match")
        _check_fresh(timestamp, now, self._tolerance)

    def identify(self, headers: Mapping[str, str], payload: Any) -> Delivery:
        if self._id_header in headers:
            delivery_id = _label(headers[self._id_header], f"header {self._id_header}")
        else:
            delivery_id = "sha256:" + _payload_digest(payload)
        if self._type_header in headers:
            event_type = _label(headers[self._type_header], f"header {self._type_header}")
        elif isinstance(payload, dict) and isinstance(payload.get("type"), str):
            event_type = _label(payload["type"], "event type")
        else:
            event_type = "event"
        return Delivery(delivery_id=delivery_id, event_type=event_type)


def _payload_digest(payload: Any) -> str:
    """SHA-256 of the payload in canonical JSON.

    `identify` sees the parsed body, not its bytes; canonical JSON makes the digest the same for
    every copy of one event, however the sender spaced or ordered it.
    """
    try:
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        raise Malformed("body is not JSON") from None
    # A `\ud800` escape parses to a lone surrogate, which strict UTF-8 cannot encode; passing it
    # through keeps every other payload's digest (and so its delivery id) what it always was.
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


class RotatingVerifier:
    """A source while its secret is rotated: the current secret, and the previous one until
    `until` (seconds since the epoch), so each sender switches at its own pace and the old
    secret stops working at the end of the window by itself, with nothing restarted."""

    def __init__(self, current: Verifier, previous: Verifier, until: float) -> None:
        self.current = current
        self.previous = previous
        self.until = until

    @property
    def payload_keys(self) -> tuple[str, ...] | None:
        return self.current.payload_keys

    def check_signature(self, body: bytes, headers: Mapping[str, str], now: float) -> None:
        try:
            self.current.check_signature(body, headers, now)
        except SignatureError:
            if now >= self.until:
                raise
            self.previous.check_signature(body, headers, now)

    def identify(self, headers: Mapping[str, str], payload: Any) -> Delivery:
        return self.current.identify(headers, payload)
