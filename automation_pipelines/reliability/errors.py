"""One place decides if a failure is transient (retry it) or permanent (stop, tell the owner).

Dagster's `RetryPolicy` retries every exception alike. Ops here run their body through
`classify_errors` (or are declared with `reliable_op`): a transient error becomes a
`dg.RetryRequested` with exponential backoff, jitter, a delay cap and the server's Retry-After; a
permanent one becomes `dg.Failure(allow_retries=False)` with metadata naming the error class, the
redacted message and the item at fault. Automations extend the rules with `register_exception` or
`register_classifier`.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import functools
import inspect
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import dagster as dg

from automation_pipelines.reliability.secrets import redact
from automation_pipelines.reliability.signatures import keep_signature

ITEM_ATTRIBUTE = "automation_item"
#: Set on a body wrapped by `classify_errors`: the name of the preset it is classified under.
CLASSIFIED_ATTRIBUTE = "classified_under"


class TransientError(Exception):
    """Raise for a failure that is worth retrying (the peer is busy, down or rate-limiting)."""

    def __init__(self, message: str, *, retry_after: float | None = None, item: str | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        if item is not None:
            setattr(self, ITEM_ATTRIBUTE, item)


class PermanentError(Exception):
    """Raise for a failure that will not fix itself: bad input, bad config, refused credentials."""

    def __init__(self, message: str, *, item: str | None = None):
        super().__init__(message)
        if item is not None:
            setattr(self, ITEM_ATTRIBUTE, item)


@dataclass(frozen=True)
class Verdict:
    """The classification of one exception."""

    transient: bool
    reason: str
    retry_after: float | None = None

    @property
    def kind(self) -> str:
        return "transient" if self.transient else "permanent"


Classifier = Callable[[BaseException], Verdict | None]

_TRANSIENT_ERRNOS = {
    errno.EAGAIN,
    errno.EBUSY,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EPIPE,
}

#: A full volume is not the input's fault and goes away when someone frees space.
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}

#: Exception classes (by module-qualified name, so no import is needed) that are transient.
_TRANSIENT_CLASSES = {
    "requests.exceptions.ConnectionError": "connection error",
    "requests.exceptions.Timeout": "timeout",
    "requests.exceptions.ChunkedEncodingError": "connection dropped mid-response",
    "httpx.TransportError": "connection error",
    "urllib3.exceptions.ProtocolError": "connection dropped",
    "psycopg2.OperationalError": "database unavailable",
    "psycopg.OperationalError": "database unavailable",
    "sqlalchemy.exc.DisconnectionError": "database connection lost",
    "smtplib.SMTPServerDisconnected": "mail server disconnected",
    "smtplib.SMTPConnectError": "mail server refused the connection",
    "grpc.RpcError": "RPC error",
}

_user_classifiers: list[Classifier] = []


def register_classifier(classifier: Classifier) -> Classifier:
    """Add a classifier consulted before the built-in rules; return None to pass."""
    _user_classifiers.insert(0, classifier)
    return classifier


def register_exception(exc_type: type[BaseException], *, transient: bool, reason: str) -> None:
    """Declare how an automation's own exception type is classified."""

    def classifier(exc: BaseException) -> Verdict | None:
        return Verdict(transient, reason) if isinstance(exc, exc_type) else None

    register_classifier(classifier)


def _class_names(exc: BaseException) -> Iterator[str]:
    for cls in type(exc).__mro__:
        yield f"{cls.__module__}.{cls.__qualname__}"


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an HTTP client's exception carries (urllib, requests, httpx, …)."""
    response = getattr(exc, "response", None)
    for holder in (response, exc):
        for attribute in ("status_code", "status", "code"):
            value = getattr(holder, attribute, None)
            if isinstance(value, int) and 100 <= value <= 599:
                return value
    return None


def retry_after_seconds(exc: BaseException, now: float | None = None) -> float | None:
    """The Retry-After header (seconds or HTTP date) of an HTTP error, if it has one."""
    explicit = getattr(exc, "retry_after", None)
    if isinstance(explicit, int | float):
        return float(explicit)
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or getattr(exc, "headers", None)
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    value = str(value).strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:  # HTTP dates are always GMT (RFC 9110), even in asctime form
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def _builtin(exc: BaseException) -> Verdict | None:
    if isinstance(exc, TransientError):
        return Verdict(True, "declared transient", exc.retry_after)
    if isinstance(exc, PermanentError):
        return Verdict(False, "declared permanent")
    status = http_status(exc)
    if status is not None and status >= 400:
        if status in (408, 425, 429) or status >= 500:
            return Verdict(True, f"HTTP {status}", retry_after_seconds(exc))
        if status in (401, 403):
            return Verdict(False, f"HTTP {status}: credentials refused")
        return Verdict(False, f"HTTP {status}")
    names = set(_class_names(exc))
    for name, reason in _TRANSIENT_CLASSES.items():
        if name in names:
            return Verdict(True, reason)
    if "sqlite3.OperationalError" in names or "sqlalchemy.exc.OperationalError" in names:
        text = str(exc).lower()
        if any(word in text for word in ("locked", "busy", "disk i/o", "could not connect")):
            return Verdict(True, "database busy or unreachable")
        if "sqlalchemy.exc.OperationalError" in names and "sqlite" not in text:
            return Verdict(True, "database unavailable")
        return Verdict(False, "database rejected the statement")
    if isinstance(exc, TimeoutError):
        return Verdict(True, "timeout")
    if isinstance(exc, ConnectionError | BlockingIOError | InterruptedError):
        return Verdict(True, "connection error")
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return Verdict(True, "disk full or over quota (clears when space is freed)")
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return Verdict(True, f"OS error {errno.errorcode.get(exc.errno, exc.errno)}")
    if isinstance(exc, PermissionError):
        return Verdict(False, "permission denied")
    if isinstance(exc, FileNotFoundError):
        return Verdict(False, "missing file or bad path")
    if isinstance(exc, dg.DagsterInvalidConfigError):
        return Verdict(False, "invalid configuration")
    if isinstance(exc, ValueError | TypeError | LookupError | AttributeError | AssertionError):
        return Verdict(False, "invalid data or configuration")
    return None


def classify(exc: BaseException) -> Verdict:
    """Transient or permanent, with a reason; unknown errors are permanent (fail fast, alert)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for classifier in (*_user_classifiers, _builtin):
            verdict = classifier(current)
            if verdict is not None:
                return verdict
        current = current.__cause__ or current.__context__
    return Verdict(False, "unclassified error")


@dataclass(frozen=True)
class RetryPreset:
    """Retries with exponential backoff, jitter in [backoff/2, backoff], and a delay cap."""

    name: str
    max_retries: int
    base_delay: float
    max_delay: float
    retry_after_cap: float = 600.0

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number `attempt + 1` (attempt counts from 0)."""
        backoff = min(self.max_delay, self.base_delay * (2**attempt))
        wait = (rng or random).uniform(backoff / 2, backoff)
        if retry_after:
            wait = max(wait, min(retry_after, self.retry_after_cap))
        return wait

    @property
    def policy(self) -> dg.RetryPolicy:
        """The matching Dagster policy, for errors raised outside the op body (e.g. IO managers)."""
        return dg.RetryPolicy(
            max_retries=self.max_retries,
            delay=self.base_delay,
            backoff=dg.Backoff.EXPONENTIAL,
            jitter=dg.Jitter.PLUS_MINUS,
        )


#: Local I/O (files, SQLite, the local disk): a few quick retries ride out a busy lock.
LOCAL_IO = RetryPreset("local_io", max_retries=3, base_delay=0.5, max_delay=10)
#: Network I/O (HTTP, mail, remote APIs): longer backoff for a peer that is briefly down.
NETWORK = RetryPreset("network", max_retries=5, base_delay=2, max_delay=120)
#: Database I/O: connection drops and lock timeouts.
DATABASE = RetryPreset("database", max_retries=5, base_delay=1, max_delay=60)

LOCAL_IO_RETRY = LOCAL_IO.policy
NETWORK_RETRY = NETWORK.policy


@contextlib.contextmanager
def for_item(item: object) -> Iterator[None]:
    """Name the item being worked on, so a failure's metadata says which one was at fault."""
    try:
        yield
    except Exception as exc:
        if getattr(exc, ITEM_ATTRIBUTE, None) is None:
            with contextlib.suppress(AttributeError, TypeError):
                setattr(exc, ITEM_ATTRIBUTE, str(item))
        raise


def failure_metadata(exc: BaseException, verdict: Verdict, attempts: int) -> dict[str, Any]:
    """What a failure says about itself, with secret values redacted."""
    metadata: dict[str, Any] = {
        "error_class": type(exc).__name__,
        "error": redact(str(exc))[:2000],
        "classification": verdict.kind,
        "reason": verdict.reason,
        "attempts": attempts,
    }
    item = getattr(exc, ITEM_ATTRIBUTE, None)
    if item is not None:
        metadata["item"] = redact(str(item))
    return metadata


def _scrub(exc: BaseException) -> None:
    """Mask secret values in the exception itself, since Dagster logs it as the failure's cause."""
    text = str(exc)
    cleaned = redact(text)
    if cleaned != text:
        with contextlib.suppress(AttributeError, TypeError):
            exc.args = (cleaned,)


def _decide(exc: Exception, preset: RetryPreset) -> BaseException:
    if isinstance(exc, dg.Failure | dg.RetryRequested):
        return exc
    _scrub(exc)
    verdict = classify(exc)
    try:
        context = dg.OpExecutionContext.get()
    except Exception:
        context = None
    attempt = context.retry_number if context is not None else 0
    metadata = failure_metadata(exc, verdict, attempt + 1)
    if verdict.transient and attempt < preset.max_retries:
        wait = preset.delay(attempt, verdict.retry_after)
        if context is not None:
            context.log.warning(
                f"transient {metadata['error_class']} ({verdict.reason}); retry "
                f"{attempt + 1}/{preset.max_retries} in {wait:.1f}s: {metadata['error']}"
            )
        return dg.RetryRequested(max_retries=preset.max_retries, seconds_to_wait=wait)
    summary = f"still failing after {attempt + 1} attempts" if verdict.transient else "not retried"
    return dg.Failure(
        description=(
            f"{metadata['error_class']}: {metadata['error']} ({verdict.kind}: {verdict.reason}; "
            f"{summary})"
        ),
        metadata=metadata,
        allow_retries=False,
    )


@contextlib.contextmanager
def _classified(preset: RetryPreset) -> Iterator[None]:
    """Re-raise an exception as the retry or failure `classify` decides for it."""
    try:
        yield
    except Exception as exc:
        decided = _decide(exc, preset)
        if decided is exc:
            raise
        raise decided from exc


def classify_errors(preset: RetryPreset) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap an op body so its exceptions are retried or failed according to `classify`."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        wrapped = keep_signature(_wrap(fn), fn)
        setattr(wrapped, CLASSIFIED_ATTRIBUTE, preset.name)
        return wrapped

    def _wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def generator(*args: Any, **kwargs: Any) -> Any:
                with _classified(preset):
                    yield from fn(*args, **kwargs)

            return generator

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with _classified(preset):
                return fn(*args, **kwargs)

        return call

    return wrap


def is_classified(definition: Any) -> bool:
    """Whether an op's (or an asset's, a check's) body goes through `classify_errors`, so that a
    retry policy on it retries transient errors only."""
    compute = getattr(definition, "compute_fn", None)
    body = getattr(compute, "decorated_fn", compute)
    return getattr(body, CLASSIFIED_ATTRIBUTE, None) is not None


def reliable_op(preset: RetryPreset = LOCAL_IO, **op_kwargs: Any) -> Callable[..., dg.OpDefinition]:
    """`dg.op` whose body is classified and retried under `preset`."""

    def decorator(fn: Callable[..., Any]) -> dg.OpDefinition:
        return dg.op(retry_policy=preset.policy, **op_kwargs)(classify_errors(preset)(fn))

    return decorator
