"""Error classification and retries (automation_pipelines/reliability/errors.py).

Covers `classify` (built-in rules for OS, HTTP, requests, SQLite and psycopg2 errors, the cause
chain, declared TransientError/PermanentError, Retry-After in seconds and as an HTTP date, and
`register_exception`), `RetryPreset.delay` (exponential backoff, jitter window, delay cap,
Retry-After and its cap), `RetryPreset.policy`, `for_item` with `failure_metadata`, and the
`reliable_op` / `classify_errors` wrapper executed for real in Dagster jobs.
"""

from __future__ import annotations

import collections
import email.message
import email.utils
import errno
import random
import sqlite3
import time
import urllib.error
from collections.abc import Callable, Iterator

import dagster as dg
import psycopg2
import pytest
import requests

from automation_pipelines.reliability import errors
from automation_pipelines.reliability.errors import (
    DATABASE,
    LOCAL_IO,
    NETWORK,
    PermanentError,
    RetryPreset,
    TransientError,
    classify,
    classify_errors,
    failure_metadata,
    for_item,
    reliable_op,
)

FAST = RetryPreset("test", max_retries=3, base_delay=0.01, max_delay=0.05)


def http_error(code: int, retry_after: str | None = None) -> urllib.error.HTTPError:
    headers = email.message.Message()
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return urllib.error.HTTPError("https://api.example/items", code, "status", headers, None)


def requests_http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    response.url = "https://api.example/items"
    return requests.HTTPError(f"{status} Server Error", response=response)


def chained_runtime_error() -> RuntimeError:
    try:
        try:
            raise ConnectionError("peer went away")
        except ConnectionError as cause:
            raise RuntimeError("could not sync") from cause
    except RuntimeError as exc:
        return exc


# --------------------------------------------------------------------------------------------
# classify
# --------------------------------------------------------------------------------------------

CLASSIFY_CASES: list[tuple[str, Callable[[], BaseException], bool, str | None]] = [
    ("TimeoutError", lambda: TimeoutError("read timed out"), True, "timeout"),
    ("ConnectionRefusedError", lambda: ConnectionRefusedError("refused"), True, None),
    ("BrokenPipeError", lambda: BrokenPipeError("pipe"), True, None),
    ("OSError-EHOSTUNREACH", lambda: OSError(errno.EHOSTUNREACH, "no route"), True, "OS error"),
    ("OSError-ENOSPC", lambda: OSError(errno.ENOSPC, "No space left on device"), True, "disk full"),
    ("OSError-EDQUOT", lambda: OSError(errno.EDQUOT, "Disk quota exceeded"), True, "disk full"),
    ("urllib-HTTP-404", lambda: http_error(404), False, "HTTP 404"),
    ("urllib-HTTP-401", lambda: http_error(401), False, "credentials"),
    ("urllib-HTTP-403", lambda: http_error(403), False, "credentials"),
    ("urllib-HTTP-500", lambda: http_error(500), True, "HTTP 500"),
    ("requests-HTTP-502", lambda: requests_http_error(502), True, "HTTP 502"),
    ("requests-HTTP-400", lambda: requests_http_error(400), False, "HTTP 400"),
    (
        "requests-ConnectionError",
        lambda: requests.exceptions.ConnectionError("connection aborted"),
        True,
        "connection error",
    ),
    ("requests-Timeout", lambda: requests.exceptions.ReadTimeout("slow"), True, "timeout"),
    (
        "sqlite-locked",
        lambda: sqlite3.OperationalError("database is locked"),
        True,
        "database busy",
    ),
    (
        "sqlite-no-such-table",
        lambda: sqlite3.OperationalError("no such table: x"),
        False,
        "database rejected",
    ),
    (
        "psycopg2-OperationalError",
        lambda: psycopg2.OperationalError("x"),
        True,
        "database unavailable",
    ),
    ("ValueError", lambda: ValueError("bad value"), False, "invalid data"),
    ("KeyError", lambda: KeyError("missing"), False, "invalid data"),
    ("PermissionError", lambda: PermissionError("denied"), False, "permission denied"),
    ("FileNotFoundError", lambda: FileNotFoundError("nope.csv"), False, "missing file"),
    ("RuntimeError", lambda: RuntimeError("boom"), False, "unclassified error"),
    ("RuntimeError-from-ConnectionError", chained_runtime_error, True, "connection error"),
    ("TransientError", lambda: TransientError("busy", retry_after=3), True, "declared transient"),
    ("PermanentError", lambda: PermanentError("bad input"), False, "declared permanent"),
]


@pytest.mark.parametrize(
    ("make_exc", "transient", "reason_part"),
    [case[1:] for case in CLASSIFY_CASES],
    ids=[case[0] for case in CLASSIFY_CASES],
)
def test_classify(
    make_exc: Callable[[], BaseException], transient: bool, reason_part: str | None
) -> None:
    verdict = classify(make_exc())
    assert verdict.transient is transient
    assert verdict.kind == ("transient" if transient else "permanent")
    assert verdict.reason
    if reason_part is not None:
        assert reason_part in verdict.reason


def test_unknown_error_is_permanent_and_unclassified() -> None:
    verdict = classify(RuntimeError("boom"))
    assert not verdict.transient
    assert verdict.reason == "unclassified error"
    assert verdict.retry_after is None


def test_http_503_with_retry_after_seconds() -> None:
    verdict = classify(http_error(503, retry_after="7"))
    assert verdict.transient
    assert verdict.reason == "HTTP 503"
    assert verdict.retry_after == 7.0


def test_http_429_with_retry_after_http_date() -> None:
    header = email.utils.formatdate(time.time() + 30, usegmt=True)
    verdict = classify(http_error(429, retry_after=header))
    assert verdict.transient
    assert verdict.reason == "HTTP 429"
    assert verdict.retry_after is not None
    # formatdate drops the fraction of a second, so the wait is between 29 and 30 seconds.
    assert verdict.retry_after == pytest.approx(30, abs=2)


@pytest.fixture
def clock_five_hours_behind_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run the test with the process's local time zone at UTC-5 (POSIX TZ, no tzdata needed)."""
    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("clock_five_hours_behind_utc")
def test_retry_after_asctime_date_is_read_as_gmt() -> None:
    """An HTTP-date in the obsolete asctime format carries no zone and means GMT (RFC 9110
    section 5.6.7, which recipients must accept). PRODUCT BUG: errors.retry_after_seconds reads
    it as local time, so away from UTC the wait is off by the UTC offset (here 5 hours)."""
    header = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(time.time() + 30))
    verdict = classify(http_error(429, retry_after=header))
    assert verdict.transient
    assert verdict.retry_after == pytest.approx(30, abs=2), (
        f"Retry-After {header!r} (GMT) should mean ~30 s, got {verdict.retry_after} s"
    )


def test_declared_transient_error_keeps_its_retry_after() -> None:
    verdict = classify(TransientError("rate limited", retry_after=3))
    assert verdict.transient
    assert verdict.retry_after == 3


def test_declared_errors_win_over_the_cause_chain() -> None:
    try:
        raise PermanentError("bad credentials file") from ConnectionError("down")
    except PermanentError as exc:
        assert not classify(exc).transient


def test_register_exception_makes_custom_class_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "_user_classifiers", [])

    class QuotaExhausted(Exception):
        pass

    class StaleCursor(ValueError):
        pass

    assert not classify(QuotaExhausted("try later")).transient
    assert not classify(StaleCursor("expired")).transient

    errors.register_exception(QuotaExhausted, transient=True, reason="quota exhausted")
    errors.register_exception(StaleCursor, transient=True, reason="cursor expired")

    verdict = classify(QuotaExhausted("try later"))
    assert verdict.transient
    assert verdict.reason == "quota exhausted"
    # Registered rules are consulted before the built-in ones (ValueError is permanent there).
    assert classify(StaleCursor("expired")).transient
    assert len(errors._user_classifiers) == 2
    # Classes that were not registered keep their built-in verdict.
    assert not classify(ValueError("x")).transient


# --------------------------------------------------------------------------------------------
# RetryPreset
# --------------------------------------------------------------------------------------------

PRESET = RetryPreset("unit", max_retries=6, base_delay=1.0, max_delay=20.0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("attempt", range(7))
def test_delay_lies_in_jitter_window(attempt: int, seed: int) -> None:
    backoff = min(PRESET.max_delay, PRESET.base_delay * 2**attempt)
    delay = PRESET.delay(attempt, rng=random.Random(seed))
    assert backoff / 2 <= delay <= backoff
    assert delay <= PRESET.max_delay


@pytest.mark.parametrize("attempt", [5, 6, 10, 30, 60])
def test_delay_never_exceeds_max_delay(attempt: int) -> None:
    delays = [PRESET.delay(attempt, rng=random.Random(seed)) for seed in range(50)]
    assert max(delays) <= PRESET.max_delay
    assert min(delays) >= PRESET.max_delay / 2


@pytest.mark.parametrize("attempt", range(4))
def test_delay_waits_at_least_retry_after(attempt: int) -> None:
    # Backoff is at most 8 s for these attempts, so the server's 15 s is the longer wait.
    delay = PRESET.delay(attempt, retry_after=15.0, rng=random.Random(attempt))
    assert delay == 15.0


def test_delay_keeps_jitter_when_retry_after_is_shorter() -> None:
    delay = PRESET.delay(4, retry_after=0.5, rng=random.Random(1))
    assert 8.0 <= delay <= 16.0
    assert delay == PRESET.delay(4, rng=random.Random(1))


def test_delay_caps_retry_after() -> None:
    capped = RetryPreset("capped", max_retries=3, base_delay=1.0, max_delay=5.0, retry_after_cap=30)
    assert capped.delay(0, retry_after=3600, rng=random.Random(0)) == 30
    assert PRESET.delay(0, retry_after=3600, rng=random.Random(0)) == PRESET.retry_after_cap


def test_delay_jitter_varies_across_seeds_and_repeats_per_seed() -> None:
    delays = [PRESET.delay(3, rng=random.Random(seed)) for seed in range(20)]
    assert len(set(delays)) > 10
    assert max(delays) - min(delays) > 0.5
    assert PRESET.delay(3, rng=random.Random(42)) == PRESET.delay(3, rng=random.Random(42))


@pytest.mark.parametrize("preset", [FAST, LOCAL_IO, NETWORK, DATABASE], ids=lambda p: p.name)
def test_policy_matches_preset(preset: RetryPreset) -> None:
    policy = preset.policy
    assert isinstance(policy, dg.RetryPolicy)
    assert policy.max_retries == preset.max_retries
    assert policy.backoff == dg.Backoff.EXPONENTIAL
    assert policy.delay == preset.base_delay


def test_reliable_op_carries_the_preset_policy() -> None:
    assert flaky_op.retry_policy == FAST.policy


# --------------------------------------------------------------------------------------------
# for_item and failure_metadata
# --------------------------------------------------------------------------------------------


def test_for_item_names_the_item_in_failure_metadata() -> None:
    with pytest.raises(ValueError) as caught, for_item("photo.jpg"):
        raise ValueError("corrupt EXIF block")
    exc = caught.value
    assert getattr(exc, errors.ITEM_ATTRIBUTE) == "photo.jpg"

    metadata = failure_metadata(exc, classify(exc), attempts=2)
    assert metadata["item"] == "photo.jpg"
    assert metadata["error_class"] == "ValueError"
    assert metadata["error"] == "corrupt EXIF block"
    assert metadata["classification"] == "permanent"
    assert metadata["attempts"] == 2


def test_for_item_keeps_the_innermost_item() -> None:
    with pytest.raises(KeyError) as caught, for_item("album-1"), for_item("photo.jpg"):
        raise KeyError("width")
    assert getattr(caught.value, errors.ITEM_ATTRIBUTE) == "photo.jpg"


def test_failure_metadata_redacts_the_item() -> None:
    item = "https://bot:hunter2pass@files.example/photo.jpg"
    with pytest.raises(TimeoutError) as caught, for_item(item):
        raise TimeoutError("slow download")
    metadata = failure_metadata(caught.value, classify(caught.value), attempts=1)
    assert "hunter2pass" not in metadata["item"]
    assert metadata["item"] == "https://bot:***@files.example/photo.jpg"
    assert metadata["classification"] == "transient"


def test_failure_metadata_without_item_has_no_item_key() -> None:
    exc = RuntimeError("boom")
    assert "item" not in failure_metadata(exc, classify(exc), attempts=1)


# --------------------------------------------------------------------------------------------
# reliable_op / classify_errors run in Dagster
# --------------------------------------------------------------------------------------------

CALLS: collections.Counter[str] = collections.Counter()


@pytest.fixture
def calls() -> Iterator[collections.Counter[str]]:
    CALLS.clear()
    yield CALLS
    CALLS.clear()


@reliable_op(FAST)
def flaky_op() -> str:
    CALLS["flaky_op"] += 1
    if CALLS["flaky_op"] <= 2:
        raise ConnectionError("connection reset by peer")
    return f"done after {CALLS['flaky_op']} calls"


@reliable_op(FAST)
def bad_row_op() -> None:
    CALLS["bad_row_op"] += 1
    with for_item("row-7"):
        raise ValueError("bad row 7")


@reliable_op(FAST)
def always_timeout_op() -> None:
    CALLS["always_timeout_op"] += 1
    raise TimeoutError("upstream never answers")


@dg.op(retry_policy=FAST.policy)
@classify_errors(FAST)
def generator_op():
    CALLS["generator_op"] += 1
    if CALLS["generator_op"] == 1:
        raise ConnectionError("dropped")
    yield dg.Output(CALLS["generator_op"] * 10)


class ScaleConfig(dg.Config):
    factor: int


@reliable_op(FAST)
def configured_op(context: dg.OpExecutionContext, config: ScaleConfig) -> int:
    CALLS["configured_op"] += 1
    if CALLS["configured_op"] == 1:
        raise ConnectionResetError("reset")
    context.log.info(f"scaling by {config.factor} on retry {context.retry_number}")
    return 7 * config.factor


@dg.job
def flaky_job() -> None:
    flaky_op()


@dg.job
def bad_row_job() -> None:
    bad_row_op()


@dg.job
def always_timeout_job() -> None:
    always_timeout_op()


@dg.job
def generator_job() -> None:
    generator_op()


@dg.job
def configured_job() -> None:
    configured_op()


def events_of(result: dg.ExecuteInProcessResult, event_type: dg.DagsterEventType) -> list:
    return [event for event in result.all_events if event.event_type == event_type]


def step_failures(result: dg.ExecuteInProcessResult) -> list:
    return [event for event in result.all_events if event.is_step_failure]


def test_transient_errors_are_retried_until_success(calls: collections.Counter[str]) -> None:
    result = flaky_job.execute_in_process(raise_on_error=False)
    assert result.success
    assert len(events_of(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 2
    assert len(events_of(result, dg.DagsterEventType.STEP_RESTARTED)) == 2
    assert result.output_for_node("flaky_op") == "done after 3 calls"
    assert calls["flaky_op"] == 3


def test_permanent_error_fails_at_once_with_metadata(calls: collections.Counter[str]) -> None:
    result = bad_row_job.execute_in_process(raise_on_error=False)
    assert not result.success
    assert events_of(result, dg.DagsterEventType.STEP_UP_FOR_RETRY) == []
    starts = events_of(result, dg.DagsterEventType.STEP_START)
    assert [event.step_key for event in starts] == ["bad_row_op"]
    assert calls["bad_row_op"] == 1

    failures = step_failures(result)
    assert len(failures) == 1
    failure_data = failures[0].step_failure_data.user_failure_data
    assert failure_data is not None
    metadata = {key: value.value for key, value in failure_data.metadata.items()}
    assert metadata["error_class"] == "ValueError"
    assert metadata["classification"] == "permanent"
    assert metadata["item"] == "row-7"
    assert metadata["attempts"] == 1
    assert metadata["error"] == "bad row 7"
    assert "not retried" in (failure_data.description or "")


def test_transient_error_gives_up_after_max_retries(calls: collections.Counter[str]) -> None:
    result = always_timeout_job.execute_in_process(raise_on_error=False)
    assert not result.success
    assert len(events_of(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == FAST.max_retries
    assert calls["always_timeout_op"] == FAST.max_retries + 1

    failures = step_failures(result)
    assert len(failures) == 1
    failure_data = failures[0].step_failure_data.user_failure_data
    assert failure_data is not None
    assert "still failing after 4 attempts" in (failure_data.description or "")
    metadata = {key: value.value for key, value in failure_data.metadata.items()}
    assert metadata["classification"] == "transient"
    assert metadata["error_class"] == "TimeoutError"
    assert metadata["attempts"] == 4


def test_generator_op_is_retried(calls: collections.Counter[str]) -> None:
    result = generator_job.execute_in_process(raise_on_error=False)
    assert result.success
    assert len(events_of(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 1
    assert result.output_for_node("generator_op") == 20
    assert calls["generator_op"] == 2


def test_op_with_config_and_context(calls: collections.Counter[str]) -> None:
    result = configured_job.execute_in_process(
        run_config={"ops": {"configured_op": {"config": {"factor": 3}}}},
        raise_on_error=False,
    )
    assert result.success
    assert result.output_for_node("configured_op") == 21
    assert len(events_of(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 1
    assert calls["configured_op"] == 2
