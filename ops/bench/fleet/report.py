"""The measured table, and its extrapolation to a large fleet on slow links.

The extrapolation uses only per-device figures measured here, never this machine's ring
times (those are CPU bound: every device of a ring validates its new model at once on
this machine's cores, where in the field each device uses its own):

* egress = fleet devices x blob-store bytes per device;
* a ring's time = bytes per device / link rate + the per-device fixed overhead, measured as
  the median desired -> active time of the first (smallest, least contended) ring, minus
  its transfer time when ``--rate-limit`` slowed the transfer on purpose;
* reported-property updates per device = the state changes measured here + the download
  progress reports a slow link adds (one per progress callback of the downloader, at most one
  per 10% step: ``service.update.delivery.ProgressGate``), against IoT Hub's twin-update throttle.
"""
from __future__ import annotations

from dataclasses import dataclass

from fleet.rings import RingResult
from service.update.delivery import ProgressGate
from service.update.fetch import DownloadPolicy

MB = 1_000_000
# IoT Hub's documented throttle on twin updates (device and module): S1 50/s per hub, S3 250/s per unit.
# https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-quotas-throttling
S1_TWIN_UPDATES_PER_SECOND = 50
S3_UNIT_TWIN_UPDATES_PER_SECOND = 250
PROGRESS_INTERVAL = DownloadPolicy().progress_interval  # seconds between the downloader's progress callbacks
PROGRESS_STEPS = 100 // ProgressGate.STEP_PERCENT  # progress reports that reach the twin, at most, per download


def progress_reports(transfer_seconds: float, report_interval: float) -> float:
    """Progress reports a download of this length sends to the twin (about; the first and last ticks aside)."""
    return min(PROGRESS_STEPS, transfer_seconds / max(PROGRESS_INTERVAL, report_interval))


@dataclass(frozen=True)
class Scenario:
    name: str  # "full" or "delta"
    rings: list[RingResult]
    startup_seconds: float  # stores copied, processes started -> every device reports active on the base
    rate_limit: int | None  # desired download.max_bytes_per_second, if any
    report_interval: float  # the devices' TWINFER_REPORT_INTERVAL here

    @property
    def devices(self) -> int:
        return sum(r.devices for r in self.rings)

    @property
    def served(self) -> int:
        return sum(r.served for r in self.rings)

    @property
    def bytes_per_device(self) -> float:
        return self.served / self.devices

    def fixed_overhead(self) -> float:
        """Seconds a device needs besides the transfer (verify, patch, unpack, validate, report)."""
        first = self.rings[0]
        median = first.median_device_seconds()
        if median is None:
            raise ValueError(f"no device of the {self.name} scenario's first ring converged")
        return max(0.0, median - self._limited_transfer_seconds())

    def state_reports(self) -> float:
        """Reported-property updates per device for the state changes alone (first ring's median,
        less the progress reports a ``--rate-limit``ed transfer added)."""
        progress = progress_reports(self._limited_transfer_seconds(), self.report_interval)
        return max(0.0, self.rings[0].median_reported_updates() - progress)

    def _limited_transfer_seconds(self) -> float:
        return self.bytes_per_device / self.rate_limit if self.rate_limit else 0.0


def table(scenarios: list[Scenario]) -> str:
    head = (
        f"{'scenario':<9}{'ring':>5}{'devices':>8}{'converge s':>11}{'median dev s':>13}{'dev CPU s':>10}"
        f"{'served MB':>11}{'MB/device':>10}{'full MB':>9}{'patch MB':>9}{'by delta':>9}{'failures':>9}"
        f"{'twin upd/dev':>13}"
    )
    lines = [head, "-" * len(head)]
    for scenario in scenarios:
        for r in scenario.rings:
            median = r.median_device_seconds()
            lines.append(
                f"{scenario.name:<9}{r.ring:>5}{r.devices:>8}{r.seconds:>11.1f}"
                f"{(f'{median:.1f}' if median is not None else '-'):>13}{r.median_cpu_seconds():>10.1f}"
                f"{r.served / MB:>11.2f}{r.served / r.devices / MB:>10.3f}"
                f"{r.full.down / MB:>9.2f}{r.patch.down / MB:>9.2f}"
                f"{r.by_delta():>9}{r.failures:>9}{r.median_reported_updates():>13.0f}"
            )
        total_seconds = sum(r.seconds for r in scenario.rings)
        lines.append(
            f"{scenario.name:<9}{'all':>5}{scenario.devices:>8}{total_seconds:>11.1f}{'':>13}{'':>10}"
            f"{scenario.served / MB:>11.2f}{scenario.bytes_per_device / MB:>10.3f}"
            f"{sum(r.full.down for r in scenario.rings) / MB:>9.2f}"
            f"{sum(r.patch.down for r in scenario.rings) / MB:>9.2f}"
            f"{sum(r.by_delta() for r in scenario.rings):>9}{sum(r.failures for r in scenario.rings):>9}{'':>13}"
        )
    return "\n".join(lines)


def extrapolate(
    scenario: Scenario, fleet: int, link_kbps: float, fractions: list[float], report_interval: float
) -> dict:
    link_bps = link_kbps * 1000 / 8
    per_device = scenario.bytes_per_device
    overhead = scenario.fixed_overhead()
    transfer = per_device / link_bps
    ring_seconds = transfer + overhead
    ring_sizes = [round(f * fleet) for f in fractions]
    ring_sizes[-1] = fleet - sum(ring_sizes[:-1])
    state_reports = scenario.state_reports()
    updates = state_reports + progress_reports(transfer, report_interval)  # per device
    return {
        "scenario": scenario.name,
        "fleet": fleet,
        "link_kbps": link_kbps,
        "bytes_per_device": round(per_device),
        "egress_bytes": round(per_device * fleet),
        "transfer_seconds": round(transfer, 1),
        "fixed_overhead_seconds": round(overhead, 1),
        "fixed_overhead_cpu_seconds": round(scenario.rings[0].median_cpu_seconds(), 1),
        "first_ring_devices": scenario.rings[0].devices,
        "ring_seconds": round(ring_seconds, 1),
        "rollout_seconds": round(len(ring_sizes) * ring_seconds, 1),
        "reported_updates_per_device": round(updates),
        "rings": [
            {
                "devices": n,
                "seconds": round(ring_seconds, 1),
                "blob_egress_bytes": round(n * per_device),
                "blob_egress_peak_mbit_s": round(n * link_bps * 8 / MB, 1),
                "reported_updates": round(n * updates),
                "reported_updates_per_second": round(n * updates / ring_seconds, 1),
                "s1_throttle_seconds": round(n * updates / S1_TWIN_UPDATES_PER_SECOND),
                "s3_unit_throttle_seconds": round(n * updates / S3_UNIT_TWIN_UPDATES_PER_SECOND),
            }
            for n in ring_sizes
        ],
    }


def extrapolation_text(results: list[dict], report_interval: float) -> str:
    lines = []
    for x in results:
        lines += [
            f"{x['scenario']}: {x['bytes_per_device'] / MB:.3f} MB per device -> "
            f"{x['egress_bytes'] / 1e9:.2f} GB blob egress for {x['fleet']:,} devices",
            f"    per device: {x['transfer_seconds']:.0f} s on the link + {x['fixed_overhead_seconds']:.1f} s fixed = "
            f"{x['ring_seconds']:.0f} s ({x['ring_seconds'] / 60:.1f} min) per ring (device CPU "
            f"{x['fixed_overhead_cpu_seconds']:.1f} s); {len(x['rings'])} rings = "
            f"{x['rollout_seconds'] / 60:.1f} min; ~{x['reported_updates_per_device']} reported-property updates",
        ]
        for i, ring in enumerate(x["rings"], 1):
            lines.append(
                f"    ring {i}: {ring['devices']:>6,} devices {ring['seconds'] / 60:5.1f} min "
                f"{ring['blob_egress_bytes'] / 1e9:7.2f} GB at up to {ring['blob_egress_peak_mbit_s']:>6,.0f} Mbit/s; "
                f"{ring['reported_updates']:>7,} twin updates: {ring['s1_throttle_seconds'] / 60:5.1f} min at S1's "
                f"{S1_TWIN_UPDATES_PER_SECOND}/s, {ring['s3_unit_throttle_seconds'] / 60:4.1f} min at one S3 unit's "
                f"{S3_UNIT_TWIN_UPDATES_PER_SECOND}/s"
            )
    fleet, link = results[0]["fleet"], results[0]["link_kbps"]
    lines += [
        "assumptions:",
        f"  - every device has its own {link:g} kbit/s link, all of it for the download, no loss, no retries;",
        "    bytes are what the blob store sent at the HTTP layer here (bodies + response headers); TCP/IP",
        "    and TLS framing add about 3% on the wire and are not included",
        "  - a ring's devices download at once, each on its own link; the next ring starts when the previous",
        "    one has converged (no soak time between rings; desired-patch delivery counted as instant)",
        "  - fixed overhead per device = median desired -> active time in the first (least contended) ring",
        f"    here ({results[0]['first_ring_devices']} devices at once on this machine's x86 cores; the device's",
        "    own CPU time for the update is given beside it); a slower edge CPU scales it up",
        "  - the blob store keeps up: Azure documents a single block blob's target throughput as up to the",
        "    storage account's egress limit; the peak Mbit/s must fit it (or go through a CDN)",
        "  - twin updates per device = the state changes measured here (first ring's median) + download",
        f"    progress: one report per {max(PROGRESS_INTERVAL, report_interval):g} s on the link, at most"
        f" {PROGRESS_STEPS} (10% steps);",
        f"    IoT Hub throttles twin updates (S1: {S1_TWIN_UPDATES_PER_SECOND}/s per hub; S3:"
        f" {S3_UNIT_TWIN_UPDATES_PER_SECOND}/s per unit), queueing",
        "    and then rejecting (429) the excess: where that time exceeds the ring's, the hub, not the",
        "    link, paces the rollout",
        f"  - {fleet:,} devices in the ring fractions measured here",
    ]
    return "\n".join(lines)
