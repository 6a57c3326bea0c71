#!/usr/bin/env python3
"""Several models in one pool: does swapping one model slow the others, and how soon is a new
model served?

Starts the real service (``python -m service``: supervisor + gunicorn, local twin, 2 workers
on 127.0.0.1) with A = the bundled SSD (the default model) and B = BlazeFace
(``models.face``), both bundles served from a loopback HTTP server, then:

(a) throughput of A (wrk, ``POST /detect`` of chelsea.png) while B swaps (``--swaps``, 20:
    BlazeFace TFLite <-> ONNX bundles, each a new, higher version, so each swap is a real
    update: download, verify, stage, host artifact, publish, one worker at a time reloads),
    against A's steady throughput measured in the same run, in interleaved rounds (steady,
    swapping, steady, swapping, ...), medians; failed requests (non-2xx, socket errors)
    must be 0;
(b) with A and B loaded and no load, the time from the twin patch (desired written) to
    every worker serving a new model C (``models.extra``: the SSD fp16 TFLite bundle), from
    the workers' own state files (when each finished loading C); C is removed between
    rounds (a full desired document without it) and comes back with a higher version.

Run from the project root: ``.venv/bin/python ops/bench/model_pool.py [--swaps 20]
[--rounds 4] [--steady 10] [--add-rounds 5]``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
for _path in (str(Path(__file__).resolve().parent), str(PROJECT_ROOT)):  # serving.py; tests.support, twinfer
    if _path not in sys.path:
        sys.path.insert(0, _path)

import requests  # noqa: E402
from serving import WrkResult, parse_wrk, run_wrk  # noqa: E402

from tests.support.bundles import Bundle, face_bundle, ssd_tflite_bundle  # noqa: E402
from tests.support.http_server import FileServer  # noqa: E402
from tests.support.local_twin import LocalTwinFiles  # noqa: E402
from tests.support.paths import IMAGES  # noqa: E402
from tests.support.service_process import QUICK_REPORTS, ServiceProcess  # noqa: E402
from twinfer.manifest import read_manifest  # noqa: E402
from twinfer.worker_state import read_states  # noqa: E402

PICTURE = IMAGES / "chelsea.png"
DEFAULT_NAME = "ssd-mobilenetv2-oidv4"  # the bundled default (A)
FACE = "face"  # B
EXTRA = "extra"  # C, part (b)
FACE_FORMATS = ("tflite", "onnx")
ROLLOUT_TIMEOUT = 180.0
LEAD_IN_SECONDS = 0.2
WRK_TIMEOUT = "30s"  # a slow answer is not a failure: only non-2xx and broken connections count


# --- load ------------------------------------------------------------------------------


def wrk_script(directory: Path, picture: Path) -> Path:
    """wrk posts the picture as it is (PNG) to the default model."""
    script = directory / "detect.lua"
    script.write_text(
        f'local f = assert(io.open([==[{picture}]==], "rb"))\n'
        'wrk.body = f:read("*a")\n'
        "f:close()\n"
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "image/png"\n'
    )
    return script


def wrk_command(url: str, script: Path, concurrency: int, duration: int) -> list[str]:
    return ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", WRK_TIMEOUT, "--latency",
            "-s", str(script), url + "/detect"]


def steady(url: str, script: Path, concurrency: int, duration: int) -> WrkResult:
    done = subprocess.run(wrk_command(url, script, concurrency, duration), capture_output=True, text=True,
                          timeout=duration + 60, check=True)
    return parse_wrk(done.stdout)


def failed(result: WrkResult) -> int:
    return result.non_2xx + result.socket_errors


# --- the pool and its twin ---------------------------------------------------------------


@dataclass
class Pool:
    service: ServiceProcess
    twin: LocalTwinFiles
    files: FileServer
    bundles: dict[str, Bundle]
    face_versions: count = field(default_factory=lambda: count(1))
    face: dict = field(default_factory=dict)  # B's current desired entry

    def entry(self, path: str, version: str) -> dict:
        bundle = self.bundles[path]
        return {"version": version, "url": self.files.url(path), "sha256": bundle.sha256, "size": len(bundle.data)}

    def next_face(self, fmt: str) -> dict:
        self.face = self.entry(f"/face-{fmt}.zip", str(next(self.face_versions)))
        return self.face

    def reported_model(self, name: str) -> dict:
        return (self.twin.reported().get("models") or {}).get(name) or {}

    def rolled_out(self, name: str, version: str) -> bool:
        status = self.reported_model(name)
        active, rollout = status.get("active") or {}, status.get("rollout") or {}
        return (status.get("state") == "active" and active.get("version") == version
                and bool(rollout.get("complete")) and rollout.get("generation") == active.get("generation"))

    def wait(self, done, what: str, timeout: float = ROLLOUT_TIMEOUT, interval: float = 0.01) -> float:
        """Poll ``done`` until it holds; returns the wall-clock time it first did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.service.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.service.proc.returncode}:\n{self.service.log()}")
            try:
                if done():
                    return time.time()
            except (KeyError, TypeError, requests.RequestException):
                pass
            time.sleep(interval)
        raise TimeoutError(f"{what}: not within {timeout:g} s; reported {self.twin.reported()}\n{self.service.log()[-4000:]}")

    def swap_face(self, fmt: str) -> float:
        """One update of B; returns seconds from the desired write to the reported rollout complete."""
        entry = self.next_face(fmt)
        started = time.time()
        self.twin.set_desired({"models": {FACE: entry}})
        finished = self.wait(lambda: self.rolled_out(FACE, entry["version"]), f"face {entry['version']} rolled out")
        return finished - started

    def workers_serving(self, workers: int, name: str, version: str | None) -> list | None:
        """Every worker's state, once all ``workers`` serve ``name`` at ``version`` (None: not at all)."""
        states = read_states(self.service.store)
        if len(states) != workers:
            return None
        if version is None:
            return states if all(name not in s.models for s in states) else None
        return states if all((s.models.get(name) or {}).get("version") == version for s in states) else None


def detect(url: str, model: str | None = None) -> int:
    params = {"model": model} if model else None
    return requests.post(url + "/detect", params=params, data=PICTURE.read_bytes(), timeout=30,
                         headers={"Content-Type": "image/png"}).status_code


# --- (a) A's throughput while B swaps -------------------------------------------------------


@dataclass(frozen=True)
class Round:
    steady: WrkResult
    swapping: WrkResult
    swap_seconds: list[float]
    swapping_wall: float
    covered: float  # share of the swapping wrk window spent in swaps


def swapping_round(pool: Pool, script: Path, concurrency: int, swaps: int,
                   first: int) -> tuple[WrkResult, list[float], float, float]:
    """wrk on A for as long as ``swaps`` updates of B take; also the share of wrk's window
    the swaps covered."""
    wrk = subprocess.Popen(wrk_command(pool.service.url, script, concurrency, 900), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    opened = time.monotonic()
    try:
        time.sleep(LEAD_IN_SECONDS)  # wrk connected (loopback) and saturating before the first swap
        started = time.monotonic()
        seconds = [pool.swap_face(FACE_FORMATS[(first + i + 1) % 2]) for i in range(swaps)]
        wall = time.monotonic() - started
    finally:
        wrk.send_signal(signal.SIGINT)  # at once: the window is the swaps, not calm time around them
        out, _ = wrk.communicate(timeout=60)
    return parse_wrk(out), seconds, wall, wall / (time.monotonic() - opened)


def measure_swaps(pool: Pool, script: Path, concurrency: int, swaps: int, rounds: int, steady_s: int) -> list[Round]:
    per_round = [swaps // rounds + (1 if r < swaps % rounds else 0) for r in range(rounds)]
    done = 0
    results = []
    for r, n in enumerate(per_round):
        calm = steady(pool.service.url, script, concurrency, steady_s)
        during, seconds, wall, covered = swapping_round(pool, script, concurrency, n, done)
        done += n
        results.append(Round(calm, during, seconds, wall, covered))
        print(f"  round {r + 1}/{rounds}: steady {calm.rps:6.1f} rps (failed {failed(calm)}), "
              f"{n} swaps of B in {wall:5.1f} s ({covered:.0%} of wrk's window): "
              f"A {during.rps:6.1f} rps (failed {failed(during)} of {during.requests}), "
              f"ratio {during.rps / calm.rps:.2f}; load {os.getloadavg()[0]:.2f}", flush=True)
    return results


# --- (b) patch -> every worker serving a new model ---------------------------------------------


@dataclass(frozen=True)
class Addition:
    published: float  # desired written -> C in the manifest (downloaded, verified, staged, prepared)
    serving: float  # -> the last worker finished loading C (its state file's loaded_at)
    reported: float  # -> the twin's reported rollout of C complete (as polled here)


def measure_additions(pool: Pool, workers: int, rounds: int, versions: count) -> list[Addition]:
    results = []
    for r in range(rounds):
        version = str(next(versions))
        entry = pool.entry("/extra.zip", version)
        started = time.time()
        pool.twin.set_desired({"models": {FACE: pool.face, EXTRA: entry}})
        pool.wait(lambda: pool.workers_serving(workers, EXTRA, version), f"{EXTRA} {version} on every worker")
        states = read_states(pool.service.store)
        serving = max(s.models[EXTRA]["loaded_at"] for s in states) - started
        reported = pool.wait(lambda: pool.rolled_out(EXTRA, version), f"{EXTRA} {version} rolled out") - started
        published = read_manifest(pool.service.store).models[EXTRA].published_at - started
        if not all({DEFAULT_NAME, FACE, EXTRA} <= set(s.models) for s in states):
            raise RuntimeError(f"a worker lost A or B: {[sorted(s.models) for s in states]}")
        codes = [detect(pool.service.url, EXTRA) for _ in range(2 * workers)]
        if any(c != 200 for c in codes):
            raise RuntimeError(f"POST /detect?model={EXTRA}: {codes}")
        results.append(Addition(published, serving, reported))
        print(f"  round {r + 1}/{rounds}: {EXTRA} {version}: published {published:5.2f} s, every worker serving "
              f"{serving:5.2f} s, reported complete {reported:5.2f} s after the patch; load {os.getloadavg()[0]:.2f}",
              flush=True)
        pool.twin.set_desired({"models": {FACE: pool.face}})  # the full document without C: removed
        pool.wait(lambda: pool.workers_serving(workers, EXTRA, None), f"{EXTRA} unloaded from every worker")
        pool.wait(lambda: not pool.reported_model(EXTRA), f"{EXTRA} gone from the reported models")
    return results


# --- report ------------------------------------------------------------------------------


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s (range {min(values):.2f}-{max(values):.2f} s, n={len(values)})"


def report(args: argparse.Namespace, rounds: list[Round], additions: list[Addition], loads: list[tuple]) -> int:
    steady_rps = [r.steady.rps for r in rounds]
    swapping_rps = [r.swapping.rps for r in rounds]
    ratio = statistics.median(swapping_rps) / statistics.median(steady_rps)
    pair_ratios = [r.swapping.rps / r.steady.rps for r in rounds]
    steady_failed = sum(failed(r.steady) for r in rounds)
    swap_failed = sum(failed(r.swapping) for r in rounds)
    swap_requests = sum(r.swapping.requests for r in rounds)
    swap_seconds = [s for r in rounds for s in r.swap_seconds]
    print(f"\nsetup: {args.workers} workers, wrk -t1 -c{args.concurrency} --timeout {WRK_TIMEOUT} POST /detect "
          f"({PICTURE.name}) on A = {DEFAULT_NAME} (default, ONNX); B = {FACE} (BlazeFace TFLite <-> ONNX); "
          f"C = {EXTRA} (SSD fp16 TFLite); {os.cpu_count()} cores")
    print("load average (1/5/15 min) at start, after (a), after (b): "
          + "; ".join(" ".join(f"{v:.2f}" for v in load) for load in loads))
    print(f"\n(a) A while B swaps {sum(len(r.swap_seconds) for r in rounds)}x, {len(rounds)} interleaved rounds:")
    print(f"  steady:   median {statistics.median(steady_rps):6.1f} rps (rounds {' '.join(f'{v:.1f}' for v in steady_rps)}), "
          f"p99 median {statistics.median(r.steady.p99_ms for r in rounds):.0f} ms, failed {steady_failed}")
    print(f"  swapping: median {statistics.median(swapping_rps):6.1f} rps (rounds {' '.join(f'{v:.1f}' for v in swapping_rps)}), "
          f"p99 median {statistics.median(r.swapping.p99_ms for r in rounds):.0f} ms, failed {swap_failed} of {swap_requests}")
    print(f"  A throughput swapping / steady: {ratio:.2f} (medians); per round {' '.join(f'{v:.2f}' for v in pair_ratios)}; "
          f"swaps covered {min(r.covered for r in rounds):.0%}-{max(r.covered for r in rounds):.0%} of each swapping window")
    print(f"  one swap of B (desired written -> rollout reported complete): {spread(swap_seconds)}")
    print(f"\n(b) twin patch -> every worker serving a new model C beside A and B (no load), {len(additions)} rounds:")
    print(f"  -> C published (downloaded, verified, staged, host artifact): {spread([a.published for a in additions])}")
    print(f"  -> every worker serving C (worker states):                   {spread([a.serving for a in additions])}")
    print(f"  -> reported rollout complete (twin, report interval {QUICK_REPORTS['TWINFER_REPORT_INTERVAL']} s): "
          f"{spread([a.reported for a in additions])}")
    return 1 if steady_failed or swap_failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--swaps", type=int, default=20, help="updates of B during load, in total (default 20)")
    parser.add_argument("--rounds", type=int, default=4, help="steady/swapping round pairs, swaps split over them (default 4)")
    parser.add_argument("--steady", type=int, default=10, help="seconds of each steady measurement (default 10)")
    parser.add_argument("--add-rounds", type=int, default=5, help="(b): times C is added and removed (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--concurrency", type=int, default=4, help="wrk connections (default 4)")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("needs wrk on PATH (ops/install-tools.sh)", file=sys.stderr)
        return 2
    for key in [k for k in os.environ if k.startswith("TWINFER_")]:  # only this script's settings
        del os.environ[key]
    loads = [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="twinfer-model-pool-") as tmp:
        work = Path(tmp)
        script = wrk_script(work, PICTURE)
        store = work / "store"
        bundles = {f"/face-{fmt}.zip": face_bundle(fmt) for fmt in FACE_FORMATS}
        bundles["/extra.zip"] = ssd_tflite_bundle()
        with FileServer() as files, ServiceProcess.start(store, workers=args.workers, extra_env=QUICK_REPORTS) as service:
            for path, bundle in bundles.items():
                files.put(path, bundle.data)
            pool = Pool(service, LocalTwinFiles(store), files, bundles)
            print(f"service up at {service.url}; B first rollout: {pool.swap_face(FACE_FORMATS[0]):.2f} s", flush=True)
            for name in (None, FACE):
                if detect(service.url, name) != 200:
                    raise RuntimeError(f"POST /detect (model {name or 'default'}) failed")
            run_wrk(service.url, script, args.concurrency, 3)  # warm-up
            print("(a) interleaved rounds", flush=True)
            rounds = measure_swaps(pool, script, args.concurrency, args.swaps, max(1, args.rounds), args.steady)
            loads.append(os.getloadavg())
            print("(b) adding C", flush=True)
            additions = measure_additions(pool, args.workers, max(1, args.add_rounds), count(1))
            loads.append(os.getloadavg())
    return report(args, rounds, additions, loads)


if __name__ == "__main__":
    sys.exit(main())
