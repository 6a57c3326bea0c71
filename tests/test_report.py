"""Reported properties are coalesced, throttled, and retried when the twin is away."""
from __future__ import annotations

import threading
import time

from service.report import Reporter
from service.twin.base import TwinError


class RecordingTwin:
    """Only what Reporter needs of a twin source: report(); fails while ``down`` is set."""

    kind = "recording"

    def __init__(self) -> None:
        self.patches: list[tuple[float, dict]] = []
        self.down = threading.Event()

    def report(self, patch: dict) -> None:
        if self.down.is_set():
            raise TwinError("hub unreachable")
        self.patches.append((time.monotonic(), patch))


def test_updates_are_coalesced_and_sent_at_most_once_per_interval():
    twin = RecordingTwin()
    reporter = Reporter(twin, min_interval=0.3)
    for i in range(50):
        reporter.update({"model": {"state": "downloading", "progress": {"bytes": i}}})
        time.sleep(0.01)
    assert reporter.flush(5)
    reporter.close()
    assert 2 <= len(twin.patches) <= 5
    gaps = [b[0] - a[0] for a, b in zip(twin.patches, twin.patches[1:])]
    assert all(gap >= 0.25 for gap in gaps[:-1])
    assert twin.patches[-1][1]["model"]["progress"] == {"bytes": 49}


def test_failed_reports_are_retried_and_merged_with_later_ones():
    twin = RecordingTwin()
    twin.down.set()
    reporter = Reporter(twin, min_interval=0.05, max_backoff=0.2)
    reporter.update({"model": {"state": "downloading"}, "LatestAIModelFileName": "a.zip"})
    time.sleep(0.3)
    reporter.update({"model": {"state": "active"}, "obsolete": None})
    assert twin.patches == []
    twin.down.clear()
    deadline = time.monotonic() + 5
    while not twin.patches and time.monotonic() < deadline:
        time.sleep(0.05)
    reporter.close()
    assert twin.patches[0][1] == {"model": {"state": "active"}, "LatestAIModelFileName": "a.zip", "obsolete": None}
