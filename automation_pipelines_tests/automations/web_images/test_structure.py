"""The JPEG scan's end is found by one regular expression; it must agree with the marker rules
read byte by byte, for every arrangement of 0xFF, stuffing, restart and fill bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from automation_pipelines.automations.web_images import structure


def end_of_scan_byte_by_byte(data: bytes, at: int) -> int | None:
    """The rules as the JPEG standard states them: after 0xFF, a 0x00 is stuffing and a
    0xD0-0xD7 a restart marker (both inside the scan), another 0xFF a fill byte; any other byte
    makes a marker that ends the scan. None when the data ends first."""
    while at < len(data) - 1:
        if data[at] != 0xFF:
            at += 1
            continue
        following = data[at + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            at += 2
        elif following == 0xFF:
            at += 1
        else:
            return at
    return None


# Bytes drawn mostly from the ones that matter to the rules, so runs of them are common.
interesting = st.sampled_from([0xFF, 0x00, 0xD0, 0xD7, 0xD8, 0xD9, 0xDA, 0xC4, 0x01, 0x7F])
scan_bytes = st.lists(st.one_of(interesting, st.integers(0, 255)), max_size=64).map(bytes)


@given(scan_bytes, st.integers(0, 8))
def test_the_scan_ends_where_the_marker_rules_say(data: bytes, at: int) -> None:
    expected = end_of_scan_byte_by_byte(data, at)
    if expected is None:
        with pytest.raises(structure.Truncated):
            structure._end_of_scan(data, at)
    else:
        assert structure._end_of_scan(data, at) == expected


def test_fill_bytes_before_a_marker_end_the_scan_at_the_last_of_them() -> None:
    assert structure._end_of_scan(b"\x12\xff\x00\xff\xd3\xff\xff\xff\xd9", 0) == 7
