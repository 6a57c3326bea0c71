"""Roll a model out to a fleet ring by ring, and measure each ring at the blob store's wire.

A ring starts when its devices' twins get the desired patch (all at once, as a layered
deployment would set them) and ends when every one of them reports ``model.state ==
"active"`` on the target version for that desired ``$version``, or a final failure
(``failed``, ``rolled_back``), or the timeout. The next ring starts only then. Bytes come
from the byte-counting proxies in front of Azurite: one for the full bundle's URL, one for
the patch's, so a device that falls back from the delta to the full bundle shows up.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field

from fleet.devices import Device
from tests.support.byte_proxy import ByteCountingProxy, ByteCounts

FINAL_FAILURES = ("failed", "rolled_back")
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of the children it reaped (its validation runs)."""
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return sum(int(v) for v in fields[11:15]) / _TICKS  # utime, stime, cutime, cstime


@dataclass
class DeviceOutcome:
    device_id: str
    seconds: float | None  # desired patch -> reported active; None if it never got there
    failure: str | None  # last_error.reason, "timeout", or None
    reported_updates: int  # reported-property patches the device sent during the ring
    cpu_seconds: float  # the supervisor's CPU (and its reaped children's) during the ring
    download: dict | None  # the device's own account of the transfer (reported model.download)


@dataclass
class RingResult:
    ring: int
    devices: int
    seconds: float
    full: ByteCounts
    patch: ByteCounts
    outcomes: list[DeviceOutcome] = field(default_factory=list)

    @property
    def served(self) -> int:
        """Bytes the blob store sent (bodies and response headers) for this ring."""
        return self.full.down + self.patch.down

    @property
    def failures(self) -> int:
        return sum(1 for o in self.outcomes if o.failure)

    @property
    def device_seconds(self) -> list[float]:
        return [o.seconds for o in self.outcomes if o.seconds is not None]

    def median_device_seconds(self) -> float | None:
        times = self.device_seconds
        return statistics.median(times) if times else None

    def median_cpu_seconds(self) -> float:
        return statistics.median(o.cpu_seconds for o in self.outcomes)

    def by_delta(self) -> int:
        """Devices that report having received the bundle as a patch (``model.download.path``)."""
        return sum(1 for o in self.outcomes if (o.download or {}).get("path") == "delta")

    def median_reported_updates(self) -> float:
        return statistics.median(o.reported_updates for o in self.outcomes)


def split_rings(devices: list[Device], fractions: list[float]) -> list[list[Device]]:
    """Consecutive slices by cumulative fraction, each ring at least one device."""
    rings, start, total = [], 0, 0.0
    for index, fraction in enumerate(fractions):
        total += fraction
        end = len(devices) if index == len(fractions) - 1 else max(start + 1, round(total * len(devices)))
        rings.append(devices[start:end])
        start = end
    return [ring for ring in rings if ring]


def roll_ring(
    number: int, ring: list[Device], patch: dict, version: str, proxies: tuple[ByteCountingProxy, ByteCountingProxy],
    timeout: float,
) -> RingResult:
    full_before, patch_before = (proxy.counts() for proxy in proxies)
    before = {d.device_id: (d.hub.reported["$version"], cpu_seconds(d.service.proc.pid)) for d in ring}
    started = time.monotonic()
    desired_versions = {d.device_id: d.hub.set_desired(patch) for d in ring}
    outcomes: dict[str, DeviceOutcome] = {}
    while len(outcomes) < len(ring) and time.monotonic() - started < timeout:
        for device in ring:
            if device.device_id in outcomes:
                continue
            status = device.model
            if status.get("desired_version") != desired_versions[device.device_id]:
                continue
            active = (status.get("active") or {}).get("version")
            if status.get("state") == "active" and active == version:
                outcome_seconds, failure = time.monotonic() - started, None
            elif status.get("state") in FINAL_FAILURES:
                outcome_seconds, failure = None, (status.get("last_error") or {}).get("reason", status["state"])
            else:
                continue
            outcomes[device.device_id] = _outcome(device, outcome_seconds, failure, before)
        time.sleep(0.05)
    seconds = time.monotonic() - started
    for device in ring:
        if device.device_id not in outcomes:
            outcomes[device.device_id] = _outcome(device, None, "timeout", before)
    full_after, patch_after = (proxy.counts() for proxy in proxies)
    return RingResult(
        number, len(ring), seconds, full_after - full_before, patch_after - patch_before,
        [outcomes[d.device_id] for d in ring],
    )


def _outcome(
    device: Device, seconds: float | None, failure: str | None, before: dict[str, tuple[int, float]]
) -> DeviceOutcome:
    reported = device.hub.reported
    reported_before, cpu_before = before[device.device_id]
    return DeviceOutcome(
        device.device_id, seconds, failure, reported["$version"] - reported_before,
        round(cpu_seconds(device.service.proc.pid) - cpu_before, 2), (reported.get("model") or {}).get("download"),
    )
