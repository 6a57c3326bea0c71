#!/usr/bin/env python3
"""Time from a desired-properties change to the published manifest, on this machine.

Starts the real supervisor (local twin, 1 worker) on a temporary store, serves a bundle of
the 10 MB SSD MobileNetV2 .tflite from a loopback HTTP server, writes the desired model
into the local twin and times each stage from the supervisor's reported properties and
the manifest. Run from the project root: ``.venv/bin/python ops/bench/update.py``.
"""
from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from functools import partial
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODELS = PROJECT_ROOT / "tests" / "fixtures" / "models"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_bundle() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(MODELS / "ssd_mobilenetv2_oidv4_fp16.tflite", "ssd_mobilenetv2_oidv4_fp16.tflite")
        archive.write(MODELS / "oidv4_labelmap.txt", "labelmap.txt")
    return buffer.getvalue()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No access log: the figures are the output."""


def serve_directory(directory: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def wait_for(condition, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)
    return time.monotonic()


def one_rollout(store: Path, url: str, bundle: bytes, version: str, twin_version: int) -> dict[str, float]:
    """Write desired, then time: first 'downloading' report, 'verifying', manifest published."""
    reported = store / "twin" / "reported.json"
    desired = {
        "model": {"name": "ssd-tflite", "version": version, "url": url, "sha256": hashlib.sha256(bundle).hexdigest(),
                  "size": len(bundle)},
        "$version": twin_version,
    }
    started = time.monotonic()
    (store / "twin" / "desired.json").write_text(json.dumps(desired))
    state = lambda: (read_json(reported).get("model") or {})  # noqa: E731
    verifying = wait_for(lambda: state().get("state") in ("verifying", "staging", "active") and state().get("target", {}).get("version") == version, 120, "download")
    published = wait_for(lambda: read_json(store / "manifest.json").get("version") == version, 120, "publish")
    return {"download_s": verifying - started, "total_s": published - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rollouts to time (default 3)")
    args = parser.parse_args()
    bundle = make_bundle()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "www").mkdir()
        store = root / "store"
        (store / "twin").mkdir(parents=True)
        server, port = serve_directory(root / "www")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWINFER_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(TWINFER_STORE=str(store), TWINFER_HTTP_HOST="127.0.0.1", TWINFER_HTTP_PORT=str(free_port()),
                   TWINFER_WORKERS="1", TWINFER_REPORT_INTERVAL="0")
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=PROJECT_ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: (read_json(store / "twin" / "reported.json").get("model") or {}).get("state") == "active", 60, "start")
            rounds = []
            for i in range(args.rounds):
                version = f"2.0.{i}"
                (root / "www" / f"ssd-{version}.zip").write_bytes(bundle)
                rounds.append(one_rollout(store, f"http://127.0.0.1:{port}/ssd-{version}.zip", bundle, version, i + 1))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            server.shutdown()
    print(f"bundle: {len(bundle) / 1e6:.1f} MB (SSD MobileNetV2 fp16 .tflite + labels), loopback HTTP, {args.rounds} rounds")
    for i, r in enumerate(rounds):
        print(f"round {i + 1}: desired -> downloaded {r['download_s']:.2f} s, desired -> manifest published {r['total_s']:.2f} s")
    print(f"median desired -> published: {statistics.median(r['total_s'] for r in rounds):.2f} s "
          f"(download {statistics.median(r['download_s'] for r in rounds):.2f} s; the rest is verify, unpack, validate in a child process, promote)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
