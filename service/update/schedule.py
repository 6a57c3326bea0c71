"""Download windows: when a metered or shared link may carry model downloads, and how fast.

Sites pay for satellite or cellular data by time of day, or share one link with the
process data that matters more, so an operator may allow downloads only in windows of
the device's local time (e.g. ``01:00-05:00``), each with its own bandwidth cap. A
window whose end is before its start runs over midnight (``22:00-04:00``); ``00:00-00:00``
is the whole day. No windows at all means always open.

Written as ``"01:00-05:00"`` or ``"01:00-05:00@65536"`` (the cap in bytes per second) in
``TWINFER_DOWNLOAD_WINDOWS`` (comma-separated), or as objects
``{"start": "01:00", "end": "05:00", "max_bytes_per_second": 65536}`` in the twin's
``download.windows`` (which replaces the environment's list).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, Iterable

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_WINDOW_TEXT = re.compile(r"^\s*(\S+)\s*-\s*(\S+?)\s*(?:@\s*(\d+))?\s*$")
MIN_CAP_BPS = 1024
MAX_WINDOWS = 24


class WindowError(ValueError):
    """A window is malformed; the message says which and why."""


@dataclass(frozen=True)
class DownloadWindow:
    start: time
    end: time
    max_bytes_per_second: int | None = None  # None: the device's general cap (if any)

    def _minutes(self) -> tuple[int, int]:
        return self.start.hour * 60 + self.start.minute, self.end.hour * 60 + self.end.minute

    def contains(self, moment: datetime) -> bool:
        start, end = self._minutes()
        now = moment.hour * 60 + moment.minute
        if start == end:
            return True  # the whole day
        if start < end:
            return start <= now < end
        return now >= start or now < end  # over midnight

    def closes_after(self, moment: datetime) -> datetime:
        """When this window, open at ``moment``, closes next (the whole-day window: in 24 h)."""
        closing = moment.replace(hour=self.end.hour, minute=self.end.minute, second=0, microsecond=0)
        while closing <= moment:
            closing += timedelta(days=1)
        return closing

    def opens_after(self, moment: datetime) -> datetime:
        opening = moment.replace(hour=self.start.hour, minute=self.start.minute, second=0, microsecond=0)
        while opening <= moment:
            opening += timedelta(days=1)
        return opening

    def describe(self) -> str:
        cap = f"@{self.max_bytes_per_second}" if self.max_bytes_per_second else ""
        return f"{self.start:%H:%M}-{self.end:%H:%M}{cap}"


@dataclass(frozen=True)
class WindowState:
    """What the schedule allows at one moment."""

    open: bool
    window: DownloadWindow | None  # the open window (None when always open, or closed)
    until: datetime | None  # when the open window closes; None when always open
    next_opening: datetime | None  # when closed: when the next window opens


def _clock(value: Any, what: str) -> time:
    match = _CLOCK.match(value) if isinstance(value, str) else None
    if match is None:
        raise WindowError(f"{what} must be a time of day as HH:MM (00:00-23:59), got {value!r}")
    return time(int(match.group(1)), int(match.group(2)))


def _cap(value: Any, what: str) -> int | None:
    if value is None or value == 0:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < MIN_CAP_BPS:
        raise WindowError(f"{what} must be an integer >= {MIN_CAP_BPS} bytes per second (or 0 for no cap)")
    return value


def parse_window(value: Any, what: str = "download window") -> DownloadWindow:
    """``"HH:MM-HH:MM[@bps]"`` or ``{"start", "end", "max_bytes_per_second"}``."""
    if isinstance(value, str):
        match = _WINDOW_TEXT.match(value)
        if match is None:
            raise WindowError(f"{what} must look like 01:00-05:00 or 01:00-05:00@65536, got {value!r}")
        start, end, cap = match.groups()
        return DownloadWindow(_clock(start, f"{what} start"), _clock(end, f"{what} end"),
                              _cap(int(cap), f"{what} cap") if cap else None)
    if isinstance(value, dict):
        unknown = set(value) - {"start", "end", "max_bytes_per_second"}
        if unknown:
            raise WindowError(f"{what} has unknown keys: {', '.join(sorted(unknown))}")
        return DownloadWindow(
            _clock(value.get("start"), f"{what} start"),
            _clock(value.get("end"), f"{what} end"),
            _cap(value.get("max_bytes_per_second"), f"{what} max_bytes_per_second"),
        )
    raise WindowError(f"{what} must be a string like 01:00-05:00 or an object with start and end")


def parse_windows(values: Iterable[Any], what: str = "download.windows") -> tuple[DownloadWindow, ...]:
    windows = tuple(parse_window(value, f"{what}[{i}]") for i, value in enumerate(values))
    if len(windows) > MAX_WINDOWS:
        raise WindowError(f"{what} has {len(windows)} windows; at most {MAX_WINDOWS}")
    return windows


def parse_windows_env(raw: str) -> tuple[DownloadWindow, ...]:
    """``TWINFER_DOWNLOAD_WINDOWS``: comma-separated ``HH:MM-HH:MM[@bps]``; empty = always open."""
    items = [item for item in raw.split(",") if item.strip()]
    return parse_windows(items, "TWINFER_DOWNLOAD_WINDOWS")


def window_state(windows: tuple[DownloadWindow, ...], moment: datetime) -> WindowState:
    """Which window is open at ``moment`` (local time, aware or naive), or when one opens.

    Overlapping windows: the one that stays open longest wins (its cap applies)."""
    if not windows:
        return WindowState(True, None, None, None)
    open_now = [w for w in windows if w.contains(moment)]
    if open_now:
        window = max(open_now, key=lambda w: w.closes_after(moment))
        return WindowState(True, window, window.closes_after(moment), None)
    return WindowState(False, None, None, min(w.opens_after(moment) for w in windows))
