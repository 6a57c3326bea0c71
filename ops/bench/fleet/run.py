#!/usr/bin/env python3
"""Fleet-scale model rollout on one machine: bytes from the blob store, time to converge,
failures, with full bundles and with deltas; extrapolated to a large fleet on slow links.

N real headless supervisors (``TWINFER_SERVE=0``: the update pipeline without gunicorn), each
with its own store and its own twin (azure-iot-device over TLS MQTT to a mosquitto + IoT Hub
twin emulator; see ``devices.py``), download from one Azurite behind byte-counting proxies.
A model goes out in rings (default 10% / 30% / 60%): desired set on ring 1, wait until every
device of it reports active on the target (or fails), then the next ring.

Two scenarios from the same starting state (every device on bundle 1.0.0, installed from the
blob store, from a copy of one template store; a fresh fleet per scenario):

* full:  1.0.1 as a full bundle (``model: {name, version, url, sha256, size}``);
* delta: 1.0.1 as a patch from 1.0.0 (``model.delta: {base_version, base_sha256, url, sha256,
  size}``), the full bundle's URL kept as the fallback.

1.0.1 is a head-only fine-tune of the bundled SSD MobileNetV2 (``artifacts.py``). On this
machine ring convergence is CPU bound: every device of a ring validates its new model in a
child process at the same time, on 2 cores; the extrapolation therefore uses per-device
figures only (``report.py``). Run from the project root::

    .venv/bin/python ops/bench/fleet/run.py --devices 20 [--rings 0.1,0.3,0.6] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1]
PROJECT_ROOT = BENCH_DIR.parents[1]
for _path in (str(BENCH_DIR), str(PROJECT_ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from fleet.artifacts import Artifacts, Blob, build_artifacts  # noqa: E402
from fleet.devices import Fleet, prepare_template  # noqa: E402
from fleet.report import Scenario, extrapolate, extrapolation_text, table  # noqa: E402
from fleet.rings import roll_ring, split_rings  # noqa: E402
from tests.support.azurite import Azurite  # noqa: E402
from tests.support.byte_proxy import ByteCountingProxy  # noqa: E402

CONTAINER = "models"
SAS_SECONDS = 6 * 3600
FIELD_REPORT_INTERVAL = 2.0  # TWINFER_REPORT_INTERVAL's default, for the extrapolation


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=20, help="headless supervisors to run (default 20)")
    parser.add_argument("--rings", default="0.1,0.3,0.6", help="ring fractions, summing to 1 (default 0.1,0.3,0.6)")
    parser.add_argument("--scenarios", default="full,delta", help="full, delta or both (default full,delta)")
    parser.add_argument("--rate-limit", type=int, metavar="BYTES_PER_S",
                        help="desired download.max_bytes_per_second: emulate a slow link on every device")
    parser.add_argument("--report-interval", type=float, default=0.5,
                        help="TWINFER_REPORT_INTERVAL of the devices (default 0.5: finer convergence times)")
    parser.add_argument("--ring-timeout", type=float, default=1800,
                        help="seconds before a ring's laggards count as failed (default 1800)")
    parser.add_argument("--fleet", type=int, default=10_000, help="fleet size to extrapolate to (default 10000)")
    parser.add_argument("--link-kbps", type=float, default=256, help="device link for the extrapolation (default 256)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure as JSON")
    args = parser.parse_args(argv)
    args.fractions = [float(f) for f in args.rings.split(",")]
    if abs(sum(args.fractions) - 1) > 1e-6 or any(f <= 0 for f in args.fractions):
        parser.error("--rings must be positive fractions summing to 1")
    args.scenario_names = [s.strip() for s in args.scenarios.split(",")]
    if not set(args.scenario_names) <= {"full", "delta"}:
        parser.error("--scenarios takes full and/or delta")
    return args


def model_document(art: Artifacts, version: str, bundle: Blob, url: str) -> dict:
    return {"name": art.name, "version": version, "url": url, "sha256": bundle.sha256, "size": bundle.size}


def run_scenario(
    name: str, args: argparse.Namespace, art: Artifacts, root: Path, template: Path, seed: tuple[dict, int],
    urls: dict[str, str], proxies: tuple[ByteCountingProxy, ByteCountingProxy],
) -> Scenario:
    model = model_document(art, art.next_version, art.full, urls["full"])
    if name == "delta":
        assert art.patch is not None
        model["delta"] = {
            "base_version": art.base_version, "base_sha256": art.base.sha256,
            "url": urls["patch"], "sha256": art.patch.sha256, "size": art.patch.size,
        }
    patch = {"model": model, **({"download": {"max_bytes_per_second": args.rate_limit}} if args.rate_limit else {})}
    desired, desired_version = seed
    started = time.monotonic()
    with Fleet(root / name, template, args.devices, desired, desired_version, args.report_interval) as fleet:
        fleet.wait_all(lambda d: d.active_version == art.base_version, timeout=120 + 10 * args.devices)
        startup = time.monotonic() - started
        os.sync()  # the copied stores' writeback would otherwise land in ring 1's time
        print(f"[{name}] {args.devices} devices started (stores copied, brokers, twins, supervisors) and active on "
              f"{art.base_version} in {startup:.1f} s", flush=True)
        results = []
        for number, ring in enumerate(split_rings(fleet.devices, args.fractions), 1):
            result = roll_ring(number, ring, patch, art.next_version, proxies, args.ring_timeout)
            print(f"[{name}] ring {number}: {result.devices} devices in {result.seconds:.1f} s, "
                  f"{result.served / 1e6:.2f} MB served, {result.failures} failures", flush=True)
            results.append(result)
    return Scenario(name, results, startup, args.rate_limit, args.report_interval)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="twinfer-fleet-") as tmp:
        root = Path(tmp)
        art = build_artifacts(root / "artifacts")
        print(f"bundles: {art.base_version} {art.base.size:,} B, {art.next_version} {art.full.size:,} B; "
              f"fine-tune changed {100 * art.head_fraction:.1f}% of the weights; "
              + (f"patch {art.patch.size:,} B" if art.patch else f"no patch: {art.patch_missing_reason}"), flush=True)
        names = [n for n in args.scenario_names if n != "delta" or art.patch is not None]
        with Azurite.start(root / "azurite") as blobs, ByteCountingProxy(blobs.port) as full_proxy, \
                ByteCountingProxy(blobs.port) as patch_proxy:
            blobs_by_key = {"base": art.base, "full": art.full, **({"patch": art.patch} if art.patch else {})}
            urls = {}
            for key, blob in blobs_by_key.items():
                blobs.upload(CONTAINER, blob.path.name, blob.path.read_bytes())
                urls[key] = blobs.sas_url(CONTAINER, blob.path.name, expiry_seconds=SAS_SECONDS)
            via = {"full": full_proxy, "patch": patch_proxy}
            urls = {k: u.replace(f":{blobs.port}/", f":{via[k].port}/") if k in via else u for k, u in urls.items()}
            desired = {"model": model_document(art, art.base_version, art.base, urls["base"])}
            template = root / "template" / "store"
            seed_version = prepare_template(template, desired, art.base_version, args.report_interval)
            print(f"template store on {art.base_version} after {time.monotonic() - started:.0f} s", flush=True)
            scenarios = [
                run_scenario(n, args, art, root, template, (desired, seed_version), urls, (full_proxy, patch_proxy))
                for n in names
            ]
    print()
    print(table(scenarios))
    print("\nconverge s: desired patch -> every device of the ring active (CPU bound here: the ring's devices validate "
          "at once on this machine's cores); median dev s / dev CPU s: per device; served MB: what the blob store sent "
          "(full + patch URLs, headers included); twin upd/dev: reported-property patches per device\n")
    extrapolations = [
        extrapolate(s, args.fleet, args.link_kbps, args.fractions, FIELD_REPORT_INTERVAL) for s in scenarios
    ]
    print(f"extrapolation to {args.fleet:,} devices on {args.link_kbps:g} kbit/s links:")
    print(extrapolation_text(extrapolations, FIELD_REPORT_INTERVAL))
    if art.patch is None and "delta" in args.scenario_names:
        print(f"\ndelta scenario not run: {art.patch_missing_reason}")
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "artifacts": {"base_bytes": art.base.size, "full_bytes": art.full.size,
                          "patch_bytes": art.patch.size if art.patch else None, "head_fraction": art.head_fraction},
            "scenarios": [{"name": s.name, "startup_seconds": s.startup_seconds, "rings": [asdict(r) for r in s.rings]}
                          for s in scenarios],
            "extrapolation": extrapolations,
            "wall_seconds": time.monotonic() - started,
        }, indent=1, default=str))
    return 0 if all(r.failures == 0 for s in scenarios for r in s.rings) else 1


if __name__ == "__main__":
    sys.exit(main())
