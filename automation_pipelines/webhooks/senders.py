"""A delivery signed as GitHub signs it: the body's HMAC-SHA256 under the shared secret, hex,
in `X-Hub-Signature-256`, with the delivery id and event name beside it. `make demo`, the
benchmarks and the tests send with it, so there is one signer to keep right."""

from __future__ import annotations

import hashlib
import hmac


def github_signature(body: bytes, secret: str) -> str:
    """`sha256=<hex>`, the value of X-Hub-Signature-256 for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_headers(
    body: bytes, secret: str, *, delivery: str | None, event: str = "push"
) -> dict[str, str]:
    """The headers of a GitHub delivery of `body`; without X-GitHub-Delivery when `delivery` is
    None (as a broken sender would send it)."""
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": github_signature(body, secret),
        "X-GitHub-Event": event,
    }
    if delivery is not None:
        headers["X-GitHub-Delivery"] = delivery
    return headers
