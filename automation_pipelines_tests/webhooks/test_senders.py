"""The one GitHub signer (`make demo`, the benchmarks and the tests send with it) signs as GitHub
does: its documentation's example delivery gives its documented signature."""

from __future__ import annotations

from automation_pipelines.webhooks.senders import github_headers, github_signature

#: GitHub's "Validating webhook deliveries" example: this secret and payload, this signature.
DOCUMENTED_SECRET = "It's a Secret to Everybody"
DOCUMENTED_PAYLOAD = b"Hello, World!"
DOCUMENTED_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_the_documented_example_gets_the_documented_signature() -> None:
    assert github_signature(DOCUMENTED_PAYLOAD, DOCUMENTED_SECRET) == DOCUMENTED_SIGNATURE


def test_headers_carry_signature_event_and_delivery_when_given() -> None:
    headers = github_headers(DOCUMENTED_PAYLOAD, DOCUMENTED_SECRET, delivery="d-1", event="ping")
    assert headers == {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": DOCUMENTED_SIGNATURE,
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": "d-1",
    }
    assert "X-GitHub-Delivery" not in github_headers(b"{}", "s", delivery=None)
