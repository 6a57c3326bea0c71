"""Reported properties are coalesced, throttled, and retried when the twin is away.

The reporter's interval and backoff run on a clock the tests move by hand, so no
assertion depends on how fast this machine is."""
from __future__ import annotations

import threading
import time

from service.report import Reporter
from service.twin.base import TwinError
from tests.support.waiting import wait_until


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingTwin:
    """Only what Reporter needs of a twin source: report(); fails while ``down`` is set.
    Records each patch with the reporter's clock, and every attempt."""

    kind = "recording"

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.patches: list[tuple[float, dict]] = []
        self.attempts = 0
        self.down = threading.Event()

    def report(self, patch: dict) -> None:
        self.attempts += 1
        if self.down.is_set():
            raise TwinError("hub unreachable")
        self.patches.append((self.clock(), patch))


def progress(i: int) -> dict:
    return {"model": {"state": "downloading", "progress": {"bytes": i}}}


def test_updates_are_coalesced_and_sent_at_most_once_per_interval():
    clock = ManualClock()
    twin = RecordingTwin(clock)
    reporter = Reporter(twin, min_interval=2.0, clock=clock)
    try:
        reporter.update(progress(0))
        # the first goes at once
        wait_until(lambda: len(twin.patches) == 1 and not reporter.sending, "the reporter thread got there", 10, 0.01)
        for i in range(1, 50):
            reporter.update(progress(i))
        clock.advance(1.9)
        reporter.update(progress(50))
        time.sleep(0.2)  # would be time enough to send, if the interval were not kept
        assert len(twin.patches) == 1
        clock.advance(0.1)
        reporter.update(progress(51))  # wakes the thread: the interval has passed
        wait_until(lambda: len(twin.patches) == 2, "the reporter thread got there", 10, 0.01)
    finally:
        reporter.close()
    (first_at, first), (second_at, second) = twin.patches
    assert first == progress(0)
    assert second == progress(51)  # 50 updates merged into one patch
    assert second_at - first_at == 2.0


def test_failed_reports_are_retried_and_merged_with_later_ones():
    clock = ManualClock()
    twin = RecordingTwin(clock)
    twin.down.set()
    reporter = Reporter(twin, min_interval=0.05, max_backoff=8.0, clock=clock)
    try:
        reporter.update({"model": {"state": "downloading"}, "LatestAIModelFileName": "a.zip"})
        wait_until(lambda: twin.attempts == 1 and not reporter.sending, "the reporter thread got there", 10, 0.01)
        reporter.update({"model": {"state": "active"}})
        twin.down.clear()
        time.sleep(0.2)  # within the backoff (1 s on the reporter's clock): no retry yet
        assert twin.attempts == 1
        clock.advance(1.0)
        reporter.update({"obsolete": None})
        wait_until(lambda: twin.patches, "the reporter thread got there", 10, 0.01)
    finally:
        reporter.close()
    assert twin.attempts == 2
    assert twin.patches[0][1] == {"model": {"state": "active"}, "LatestAIModelFileName": "a.zip", "obsolete": None}
