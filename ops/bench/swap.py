#!/usr/bin/env python3
"""Hot swap under saturating load: latency before and during 20 swaps, failed requests,
and how long a rollout takes (manifest published -> every worker on the new version).

Starts the real service (supervisor + gunicorn, local twin) with the bundled ONNX model,
stages the same detector as a LiteRT bundle from a loopback HTTP server, then alternates
the desired model between the two (ONNX <-> LiteRT, both already staged, so each swap is
pure worker reload) while wrk keeps the pool saturated. Run from the project root:
``.venv/bin/python ops/bench/swap.py [--swaps 20] [--steady 20]``.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(PROJECT_ROOT))

from serving import make_pictures, parse_wrk, run_wrk, running_service, wrk_script  # noqa: E402
from update import serve_directory  # noqa: E402

from twinfer.manifest import read_default  # noqa: E402
from twinfer.worker_state import read_states  # noqa: E402

MODELS = PROJECT_ROOT / "tests" / "fixtures" / "models"
ONNX = ("ssd-mobilenetv2-oidv4", "1.0.0")
TFLITE = ("ssd-tflite", "2.0.0")


def tflite_bundle() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(MODELS / "ssd_mobilenetv2_oidv4_fp16.tflite", "ssd_mobilenetv2_oidv4_fp16.tflite")
        archive.write(MODELS / "oidv4_labelmap.txt", "labelmap.txt")
    return buffer.getvalue()


class Twin:
    """The local twin's files: write desired, wait for the rollout the supervisor reports."""

    def __init__(self, store: Path, url: str, bundle: bytes) -> None:
        self.store = store
        self.url = url
        self.sha256 = hashlib.sha256(bundle).hexdigest()
        self.version = 0

    def status(self) -> dict:
        try:
            return json.loads((self.store / "twin" / "reported.json").read_text()).get("model") or {}
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def roll_out(self, target: tuple[str, str], timeout: float = 120.0) -> int:
        self.version += 1
        desired = {"model": {"name": target[0], "version": target[1], "url": self.url, "sha256": self.sha256}, "$version": self.version}
        (self.store / "twin").mkdir(parents=True, exist_ok=True)
        (self.store / "twin" / "desired.json").write_text(json.dumps(desired))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status()
            active, rollout = s.get("active") or {}, s.get("rollout") or {}
            if s.get("state") == "active" and active.get("version") == target[1] and rollout.get("complete") and rollout.get("generation") == active.get("generation"):
                return active["generation"]
            time.sleep(0.02)
        raise TimeoutError(f"rollout of {target} did not complete: {self.status()}")


def rollout_seconds(store: Path, generation: int, published_at: float) -> float:
    """Manifest published -> the last worker finished its reload of that generation."""
    finished = [r["finished"] for s in read_states(store) for r in s.reloads if r["generation"] == generation and r["ok"]]
    return max(finished) - published_at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--steady", type=int, default=20, help="seconds of steady load measured first")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "www").mkdir()
        bundle = tflite_bundle()
        (work / "www" / "ssd-tflite.zip").write_bytes(bundle)
        server, port = serve_directory(work / "www")
        picture = make_pictures(work)["640x480"]
        script = wrk_script(work, picture)
        with running_service(work, args.workers, None, PROJECT_ROOT / "models" / "default") as url:
            store = work / "store"
            twin = Twin(store, f"http://127.0.0.1:{port}/ssd-tflite.zip", bundle)
            twin.roll_out(TFLITE)  # downloads and stages the LiteRT version once
            twin.roll_out(ONNX)
            run_wrk(url, script, args.concurrency, 3)  # warm-up
            steady = run_wrk(url, script, args.concurrency, args.steady)
            wrk = subprocess.Popen(
                ["wrk", "-t1", f"-c{args.concurrency}", "-d600s", "--latency", "-s", str(script), url + "/detect"],
                stdout=subprocess.PIPE, text=True,
            )
            time.sleep(1.0)
            started = time.monotonic()
            rollouts = []
            for i in range(args.swaps):
                generation = twin.roll_out(TFLITE if i % 2 == 0 else ONNX)
                rollouts.append(rollout_seconds(store, generation, read_default(store).published_at))
            swapping_seconds = time.monotonic() - started
            wrk.send_signal(signal.SIGINT)
            during = parse_wrk(wrk.communicate(timeout=30)[0])
        server.shutdown()
    print(f"setup: {args.workers} workers, wrk -c{args.concurrency} on a 640x480 JPEG, swaps ONNX <-> LiteRT (same SSD detector)")
    print(f"steady   ({args.steady} s): {steady.rps:6.1f} rps  p50 {steady.p50_ms:6.1f} ms  p99 {steady.p99_ms:6.1f} ms  "
          f"failed {steady.non_2xx + steady.socket_errors}")
    print(f"swapping ({swapping_seconds:.0f} s, {args.swaps} swaps): {during.rps:6.1f} rps  p50 {during.p50_ms:6.1f} ms  "
          f"p99 {during.p99_ms:6.1f} ms  failed {during.non_2xx + during.socket_errors} of {during.requests}")
    print(f"p99 during swaps / steady: {during.p99_ms / steady.p99_ms:.2f}   throughput during / steady: {during.rps / steady.rps:.2f}")
    print(f"manifest published -> every worker on the new version: median {statistics.median(rollouts):.2f} s, "
          f"max {max(rollouts):.2f} s (one worker at a time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
