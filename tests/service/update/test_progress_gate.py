"""Download progress reaches the twin in 10% steps, not on every tick: a fleet shares the hub's twin-update quota."""
from __future__ import annotations

from service.update.delivery import ProgressGate
from service.update.fetch import DownloadProgress


def tick(received: int, total: int | None) -> DownloadProgress:
    return DownloadProgress(received=received, total=total, rate_bps=1000.0, eta_seconds=None)


def test_one_report_per_ten_percent_step_however_many_ticks():
    gate = ProgressGate()
    total = 10_000_000
    passed = [r for r in range(0, total + 1, 50_000) if gate.passes(tick(r, total), now=r / 1000)]
    assert passed == [step * total // 10 for step in range(11)]  # 0%, 10%, ..., 100%: 11 of 201 ticks


def test_a_resumed_download_does_not_report_a_step_twice_and_unknown_sizes_report_every_five_minutes():
    gate = ProgressGate()
    assert gate.passes(tick(5_500_000, 10_000_000), 0.0)
    assert not gate.passes(tick(5_900_000, 10_000_000), 1.0)
    unknown = ProgressGate()
    assert [t for t in range(0, 1000, 5) if unknown.passes(tick(t * 1000, None), float(t))] == [0, 300, 600, 900]
