"""A listening tick: looks again when the stamp moves or something is due soon, returns at the
first look with work, and never outlasts its window (so the daemon's next round is not lost)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from automation_pipelines.reliability.listening import DAEMON_ROUND_SECONDS, POLL_SECONDS, listen


class World:
    """A fake clock and a folder whose stamp changes at given moments, with work from a moment."""

    def __init__(self, changes: list[float], work_at: float | None, settling: bool = False):
        self.now = 0.0
        self.changes = sorted(changes)
        self.work_at = work_at
        self.settling = settling
        self.looks: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def stamp(self) -> int:
        return sum(1 for moment in self.changes if moment <= self.now)

    def look(self) -> bool:
        self.looks.append(self.now)
        return self.work_at is not None and self.now >= self.work_at


def run(world: World, window: float = 3.5):
    return listen(
        world.look,
        lambda found: found,
        world.stamp,
        window,
        due_soon=lambda _found: world.settling,
        clock=world.clock,
        sleep=world.sleep,
    )


def test_work_at_the_first_look_returns_at_once() -> None:
    world = World([], work_at=0.0)
    listened = run(world)
    assert listened.look is True and listened.looks == 1 and listened.seconds == 0


def test_nothing_moving_means_one_look_for_the_whole_window() -> None:
    world = World([], work_at=None)
    listened = run(world)
    assert listened.look is False and listened.looks == 1
    assert 3.5 - POLL_SECONDS <= listened.seconds <= 3.5


def test_a_change_is_looked_at_within_one_poll() -> None:
    world = World([1.05], work_at=1.05)
    listened = run(world)
    assert listened.look is True and listened.looks == 2
    assert 1.05 <= listened.seconds <= 1.05 + POLL_SECONDS + 1e-9


def test_a_settling_file_is_looked_at_every_poll_without_a_change() -> None:
    world = World([], work_at=1.0, settling=True)
    listened = run(world)
    assert listened.look is True and 1.0 <= listened.seconds <= 1.0 + POLL_SECONDS + 1e-9


def test_a_stamp_that_cannot_be_read_ends_the_listening_with_the_last_look() -> None:
    """The inbox's database going down mid-tick does not fail a tick that has looked."""
    world = World([], work_at=None)
    reads = []

    def stamp():
        reads.append(world.now)
        if world.now >= 1.0:
            raise ConnectionError("the database went away")
        return 0

    listened = listen(world.look, bool, stamp, 3.5, clock=world.clock, sleep=world.sleep)
    assert listened.look is False and listened.looks == 1
    assert 1.0 <= listened.seconds <= 1.0 + POLL_SECONDS + 1e-9


def test_go_on_saying_no_ends_the_listening_with_the_last_look() -> None:
    """Paused at 1 s: a change at 1.5 s is not looked at, and the tick says why it stopped."""
    world = World([1.5], work_at=1.5)
    listened = listen(
        world.look,
        lambda found: found,
        world.stamp,
        3.5,
        go_on=lambda: world.now < 1.0,
        clock=world.clock,
        sleep=world.sleep,
    )
    assert listened.look is False and listened.looks == 1 and listened.stopped
    assert world.looks == [0.0]
    assert "stopped listening: the automation was paused or stopped" in listened.sentence()


def test_zero_window_is_one_look() -> None:
    world = World([0.0], work_at=None, settling=True)
    assert run(world, window=0).looks == 1


def test_the_tick_sentence_says_how_long_it_listened_only_when_it_had_a_window() -> None:
    listened = run(World([], work_at=None), window=1.0)
    assert listened.describe("nothing to do") == "nothing to do; listened 1.0 s, 1 look(s)"
    assert run(World([], work_at=None), window=0).describe("nothing to do") == "nothing to do"


def test_a_window_that_would_outlast_the_round_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 4 s"):
        run(World([], None), window=DAEMON_ROUND_SECONDS)


@given(
    changes=st.lists(st.floats(0, 5), max_size=10),
    work_at=st.none() | st.floats(0, 5),
    settling=st.booleans(),
    window=st.floats(0, DAEMON_ROUND_SECONDS - 1),
)
def test_never_outlasts_the_window_and_sees_work_one_poll_after_it_shows(
    changes, work_at, settling, window
) -> None:
    # Work shows only with a change (a new file) unless something is settling.
    if work_at is not None and not settling:
        changes = [*changes, work_at]
    world = World(changes, work_at, settling)
    listened = run(world, window)
    assert listened.seconds <= window + 1e-9
    if listened.look:
        assert listened.seconds <= max(0.0, work_at) + POLL_SECONDS + 1e-9
    elif work_at is not None:
        assert work_at > window - POLL_SECONDS  # it showed too late for this tick
    # No look is wasted while nothing moves and nothing is due.
    if not settling:
        assert listened.looks <= 1 + len({c for c in changes if c <= window})
