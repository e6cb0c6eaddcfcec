"""Listening sensors: a tick that finds nothing to do keeps watching for a while instead of
returning at once.

Dagster's sensor daemon goes round every 5 s (a constant of its loop), so a sensor that looks
once per round sees an event 2.5 s late on average, and a file that needs a quiet second after
it lands waits a whole extra round when the round comes too early. A listening tick looks, and
while the look finds nothing to request it watches a cheap stamp (a folder's mtime, an inbox's
newest row) and looks again the moment the stamp moves, or at every poll while the last look
said something is about to become due (a file settling, a run about to start). It returns as
soon as a look has work, or when its window ends. The window stays well inside the daemon's
round so the next round finds the tick finished and starts the next one: the sensor is watching
about `window / 5 s` of the time, and an event in the gap is seen at the start of the next tick.

A window of 0 looks once, as a plain sensor does; resources made in code (tests) default to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

#: The daemon's round (`MIN_INTERVAL_LOOP_TIME` in Dagster's sensor daemon).
DAEMON_ROUND_SECONDS = 5.0
#: The window the automations' settings default to: the rest of the round is the margin for the
#: tick's own writes and the daemon's bookkeeping, so the next round never finds it running.
DEFAULT_WINDOW_SECONDS = 3.5
#: How often the stamp is read while listening.
POLL_SECONDS = 0.2

Look = TypeVar("Look")
_FAILED = object()


def _read(stamp: Callable[[], Hashable]) -> object:
    """The stamp, or `_FAILED` when reading it raised."""
    try:
        return stamp()
    except Exception:
        return _FAILED


@dataclass
class Listened(Generic[Look]):
    """The last look of a tick, how many looks and seconds it took, and the window it had."""

    look: Look
    looks: int
    seconds: float
    window: float = 0.0
    stopped: bool = False  # `go_on` said no: the automation was paused or stopped meanwhile

    def sentence(self) -> str:
        said = f"listened {self.seconds:.1f} s, {self.looks} look(s)"
        if self.stopped:
            said += "; stopped listening: the automation was paused or stopped"
        return said

    def describe(self, sentence: str) -> str:
        """The tick's `sentence`, with how long it listened when it had a window to listen."""
        return f"{sentence}; {self.sentence()}" if self.window else sentence


def listen(
    look: Callable[[], Look],
    has_work: Callable[[Look], bool],
    stamp: Callable[[], Hashable],
    window: float,
    *,
    due_soon: Callable[[Look], bool] = lambda _look: False,
    go_on: Callable[[], bool] = lambda: True,
    poll: float = POLL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Listened[Look]:
    """Look, and while the look has no work and `window` seconds have not passed, look again
    whenever `stamp()` changes or, at every poll, while `due_soon(last look)`.

    The stamp is read before each look, so a change during a look is seen at the next poll. A
    stamp that cannot be read ends the listening with the last look (which, if its own reads
    fail too, fails the tick as a plain sensor's would). `go_on()` is asked before every look
    after the first: the automation paused (or its breaker tripped) while the tick listened
    ends the listening with the last look, so nothing is requested after the pause.
    """
    if window > DAEMON_ROUND_SECONDS - 1:
        raise ValueError(
            f"a listening window of {window} s would still run when the daemon's next round "
            f"({DAEMON_ROUND_SECONDS:.0f} s) comes, and that round would skip the sensor: keep "
            f"it at most {DAEMON_ROUND_SECONDS - 1:.0f} s"
        )
    start = clock()
    mark = _read(stamp)
    result = look()
    looks = 1
    while not has_work(result) and clock() + poll <= start + window:
        sleep(poll)
        now_mark = _read(stamp)
        if now_mark is _FAILED:
            break  # the database or folder went away: the last look stands, the next tick retries
        if now_mark != mark or due_soon(result):
            if not go_on():
                return Listened(result, looks, clock() - start, window, stopped=True)
            mark = now_mark
            result = look()
            looks += 1
    return Listened(result, looks, clock() - start, window)
