"""Download windows: parsing, and what is open when, over midnight and across days."""
from __future__ import annotations

from datetime import datetime, time, timedelta, timezone

import pytest

from service.update.schedule import DownloadWindow, WindowError, parse_window, parse_windows_env, window_state

TZ = timezone(timedelta(hours=2))


def at(hour: int, minute: int = 0, day: int = 10) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=TZ)


def test_text_and_object_forms_parse_to_the_same_window():
    assert parse_window("01:00-05:30@65536") == parse_window(
        {"start": "01:00", "end": "05:30", "max_bytes_per_second": 65536}
    ) == DownloadWindow(time(1, 0), time(5, 30), 65536)
    assert parse_window(" 22:00 - 04:00 ").max_bytes_per_second is None


@pytest.mark.parametrize("bad", ["1:00-05:00", "01:00-24:00", "01:00", "01:00-05:00@100", 5, {"start": "01:00"},
                                 {"start": "01:00", "end": "02:00", "cap": 1}])
def test_malformed_windows_are_refused_with_the_reason(bad):
    with pytest.raises(WindowError):
        parse_window(bad)


def test_env_list_allows_several_windows_and_empty_means_always_open():
    assert parse_windows_env("") == ()
    windows = parse_windows_env("01:00-05:00@65536, 13:00-14:00")
    assert [w.describe() for w in windows] == ["01:00-05:00@65536", "13:00-14:00"]
    assert window_state((), at(12)).open


def test_inside_a_window_it_is_open_until_its_end_with_its_cap():
    state = window_state(parse_windows_env("01:00-05:00@65536"), at(3, 15))
    assert state.open and state.until == at(5) and state.window.max_bytes_per_second == 65536


def test_outside_every_window_the_next_opening_is_given_even_on_the_next_day():
    windows = parse_windows_env("01:00-05:00,13:00-14:00")
    assert window_state(windows, at(10)).next_opening == at(13)
    state = window_state(windows, at(14))  # the end is exclusive
    assert not state.open and state.next_opening == at(1, day=11)


def test_a_window_over_midnight_is_open_on_both_sides_and_closes_the_next_morning():
    windows = parse_windows_env("22:00-04:00")
    assert window_state(windows, at(23, 30)).until == at(4, day=11)
    assert window_state(windows, at(2)).until == at(4)
    assert window_state(windows, at(12)).next_opening == at(22)


def test_the_whole_day_window_and_overlaps_pick_the_one_open_longest():
    assert window_state(parse_windows_env("00:00-00:00"), at(9)).until == at(0, day=11)
    state = window_state(parse_windows_env("01:00-03:00@2048,02:00-06:00@4096"), at(2, 30))
    assert state.until == at(6) and state.window.max_bytes_per_second == 4096
