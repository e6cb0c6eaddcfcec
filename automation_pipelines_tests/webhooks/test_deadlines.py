"""BodyDeadlines: each late body's task is cancelled at its own deadline and not before, in the
order they came, whatever else comes and goes meanwhile; a body that came in time is never
cancelled; a cancellation from elsewhere (the server stopping) is not taken for a late body; an
app served again, on a new event loop, still keeps its deadlines."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from automation_pipelines.webhooks.app import BodyDeadlines

SECONDS = 0.2
#: uvloop keeps its clock in whole milliseconds, read at the start of a loop turn.
CLOCK_SLACK = 0.005


async def reader(deadlines: BodyDeadlines, body_after: float, outcomes: dict, name: str):
    """What the receiver does around a body read: enter, wait for the body, leave."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    began = loop.time()
    deadlines.enter(task)
    try:
        await asyncio.sleep(body_after)
        outcomes[name] = ("read", loop.time() - began)
    except asyncio.CancelledError:
        if not deadlines.expired(task):
            raise
        outcomes[name] = ("late", loop.time() - began)
    finally:
        deadlines.leave(task)
    await asyncio.sleep(0)  # the task goes on after a late body, as the handler answers 408
    outcomes[name] += ("went on",)


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 0.15), st.sampled_from([0.05, 0.15, 0.3, 10.0])),
        min_size=1,
        max_size=6,
    )
)
def test_late_bodies_are_cancelled_at_their_deadline_and_no_others(plan) -> None:
    """plan: (when the request comes, after its head; how long its body takes)."""

    async def main() -> dict:
        deadlines = BodyDeadlines(SECONDS)
        outcomes: dict = {}

        async def request(n: int, start: float, body_after: float) -> None:
            await asyncio.sleep(start)
            await reader(deadlines, body_after, outcomes, str(n))

        await asyncio.gather(*(request(n, s, b) for n, (s, b) in enumerate(plan)))
        assert not deadlines._waiting and not deadlines._expired  # nothing kept
        return outcomes

    outcomes = uvloop.run(main())
    for n, (_, body_after) in enumerate(plan):
        what, took, went_on = outcomes[str(n)]
        assert went_on == "went on"
        if body_after < SECONDS - 0.02:
            assert what == "read", (n, outcomes)
        elif body_after > SECONDS + 0.05:
            assert what == "late", (n, outcomes)
            assert SECONDS - CLOCK_SLACK <= took < SECONDS + 0.1


def test_a_cancellation_from_elsewhere_is_not_a_late_body() -> None:
    async def main() -> None:
        deadlines = BodyDeadlines(SECONDS)
        outcomes: dict = {}
        task = asyncio.create_task(reader(deadlines, 10, outcomes, "stopped"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert outcomes == {}
        assert not deadlines._waiting
        # the deadline's timer finds nothing to cancel, and the next request is served
        late = asyncio.create_task(reader(deadlines, 10, outcomes, "late"))
        await asyncio.sleep(SECONDS + 0.1)
        await late
        assert outcomes["late"][0] == "late"

    uvloop.run(main())


def test_a_server_stopping_while_a_late_body_is_cancelled_still_stops_it() -> None:
    """Two cancellations, the deadline's and the server's: the task ends cancelled."""

    async def main() -> None:
        deadlines = BodyDeadlines(SECONDS)
        outcomes: dict = {}
        task = asyncio.create_task(reader(deadlines, 10, outcomes, "both"))
        await asyncio.sleep(SECONDS - 0.02)
        loop = asyncio.get_running_loop()
        loop.call_at(deadlines._waiting[task], task.cancel)  # right beside the deadline's
        with pytest.raises(asyncio.CancelledError):
            await task
        assert "both" not in outcomes

    uvloop.run(main())


def test_deadlines_still_hold_on_a_new_event_loop() -> None:
    """The first loop is closed with a body still waiting and its timer armed: a new loop (the
    app served again) arms its own, and the old loop's leftover is dropped, not touched."""
    deadlines = BodyDeadlines(SECONDS)
    first = uvloop.new_event_loop()
    abandoned: list[asyncio.Task] = []

    async def left_waiting() -> None:
        abandoned.append(asyncio.create_task(reader(deadlines, 10, {}, "abandoned")))
        await asyncio.sleep(0.01)

    first.run_until_complete(left_waiting())
    first.close()  # its reader never left, nor was it cancelled

    async def later() -> dict:
        outcomes: dict = {}
        await reader(deadlines, 10, outcomes, "late")
        return outcomes

    assert uvloop.run(later())["late"][0] == "late"
    assert not abandoned[0].done()  # the closed loop's task was left alone
