#!/usr/bin/env python3
"""How close does the HTTP service get to what the model can do on this machine?

One run measures the in-process ceiling (``VisionModel.detect``, the exact request-path
core, with the service's thread settings) and then the real service (``python -m service``,
gunicorn + Falcon) under wrk, and prints both side by side with their ratios, so a
regression in the serving layer shows up as a falling ratio rather than a bare number.

Run from the project root: ``.venv/bin/python ops/bench/serving.py [--duration 10]``.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import re
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Iterator

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: ``workers`` lives in the project root
    sys.path.insert(0, str(PROJECT_ROOT))

import cv2  # noqa: E402
import onnxruntime  # noqa: E402

from twinfer.engines.base import EngineOptions  # noqa: E402
from twinfer.loader import load_model  # noqa: E402

SOURCE_PICTURE = PROJECT_ROOT / "tests" / "fixtures" / "images" / "astronaut.png"
PICTURES = {"640x480": (640, 480), "1920x1080": (1920, 1080)}
JPEG_QUALITY = 90
MAX_PIXELS = 50_000_000  # the service's default TWINFER_MAX_IMAGE_PIXELS
DEFAULT_MODEL_DIR = PROJECT_ROOT / "models" / "default"
WARM_UP_SECONDS = 1.0
LOAD_TIMEOUT = 120.0  # model load + warm-up in a process on a busy 2-core box
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0
WRK_WARM_UP_SECONDS = 2


# --- test pictures -------------------------------------------------------------------


def make_pictures(directory: Path) -> dict[str, Path]:
    """JPEGs of the sizes clients send, from one fixture, so every run measures the same bytes."""
    source = cv2.imread(str(SOURCE_PICTURE), cv2.IMREAD_COLOR)
    if source is None:
        raise FileNotFoundError(f"cannot read {SOURCE_PICTURE}")
    paths = {}
    for name, size in PICTURES.items():
        resized = cv2.resize(source, size, interpolation=cv2.INTER_LINEAR)
        ok, encoded = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode the {name} JPEG")
        paths[name] = directory / f"{name}.jpg"
        paths[name].write_bytes(encoded.tobytes())
    return paths


# --- in-process loops ----------------------------------------------------------------


@dataclass(frozen=True)
class LoopResult:
    """One process's timed loop: per-call latencies, wall time and CPU time (all its threads)."""

    latencies_ms: list[float]
    elapsed_s: float
    cpu_s: float

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s


def cpu_seconds() -> float:
    """User + system time of this process, ONNX Runtime's threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def detect_loop(
    model_dir: str, options: EngineOptions, picture: str, duration: float, barrier: Barrier, results: Queue
) -> None:
    """Body of one spawned process: load and warm up off the clock, start together with the
    others (so saturation really overlaps), then call ``detect`` until the deadline."""
    try:
        model = load_model(Path(model_dir), "bench", "0", options)
        data = Path(picture).read_bytes()
        warm_until = time.perf_counter() + WARM_UP_SECONDS
        while time.perf_counter() < warm_until:
            model.detect(data, MAX_PIXELS)
        barrier.wait(timeout=LOAD_TIMEOUT)
    except Exception as exc:  # report it instead of leaving the parent waiting
        barrier.abort()
        results.put(f"{type(exc).__name__}: {exc}")
        return
    latencies = []
    cpu_start, started = cpu_seconds(), time.perf_counter()
    deadline = started + duration
    now = started
    while now < deadline:
        model.detect(data, MAX_PIXELS)
        latencies.append((time.perf_counter() - now) * 1e3)
        now = time.perf_counter()
    results.put(LoopResult(latencies, now - started, cpu_seconds() - cpu_start))


def run_loops(
    model_dir: Path, options: EngineOptions, picture: Path, processes: int, duration: float
) -> list[LoopResult]:
    """``processes`` spawned processes looping ``detect`` at once; one result each."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    args = (str(model_dir), options, str(picture), duration, barrier, results)
    procs = [ctx.Process(target=detect_loop, args=args, daemon=True) for _ in range(processes)]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=LOAD_TIMEOUT + duration + 30) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
    errors = [o for o in outcomes if isinstance(o, str)]
    if errors:
        raise RuntimeError(f"in-process loop failed: {errors[0]}")
    return outcomes


def percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


@dataclass(frozen=True)
class InProcess:
    c1_rps: float
    c1_p50_ms: float
    c1_p99_ms: float
    c1_cpu_ms_per_request: float
    saturation_rps: float
    saturation_processes: int


def measure_in_process(
    model_dir: Path, options: EngineOptions, picture: Path, workers: int, duration: float
) -> InProcess:
    """The ceiling: one caller (latency) and one process per worker (throughput)."""
    (single,) = run_loops(model_dir, options, picture, 1, duration)
    pool = run_loops(model_dir, options, picture, workers, duration)
    return InProcess(
        c1_rps=single.rps,
        c1_p50_ms=percentile(single.latencies_ms, 50),
        c1_p99_ms=percentile(single.latencies_ms, 99),
        c1_cpu_ms_per_request=single.cpu_s * 1e3 / len(single.latencies_ms),
        saturation_rps=sum(r.rps for r in pool),
        saturation_processes=workers,
    )


# --- the real service ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(store: Path, port: int, workers: int, threads: int | None, model_dir: Path) -> dict[str, str]:
    """Only our settings: a TWINFER_* left in the caller's shell would make the service
    differ from the in-process ceiling it is compared with."""
    inherited = os.environ.items()
    env = {k: v for k, v in inherited if not k.startswith("TWINFER_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(
        TWINFER_STORE=str(store),
        TWINFER_HTTP_HOST="127.0.0.1",
        TWINFER_HTTP_PORT=str(port),
        TWINFER_WORKERS=str(workers),
        TWINFER_DEFAULT_MODEL_DIR=str(model_dir),
    )
    if threads is not None:
        env["TWINFER_INTRA_OP_THREADS"] = str(threads)
    return env


def loaded_workers(url: str, context: ssl.SSLContext | None = None) -> int:
    """Workers whose model is loaded, as the shared metrics report them; 0 while the
    service does not answer in time (a loaded machine produces read timeouts).
    ``context`` verifies an https service's certificate."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5, context=context) as response:
            text = response.read().decode()
    except (OSError, http.client.HTTPException):
        return 0
    lines = text.splitlines()
    return sum(1 for line in lines if line.startswith("twinfer_worker_model_info{") and line.endswith(" 1.0"))


def wait_ready(
    proc: subprocess.Popen, url: str, workers: int, log_path: Path, context: ssl.SSLContext | None = None
) -> None:
    """Measuring before every worker has its model would time model loading, not serving."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        if loaded_workers(url, context) >= workers:
            return
        time.sleep(0.2)
    raise TimeoutError(f"service not ready in {READY_TIMEOUT:.0f}s:\n{log_path.read_text(errors='replace')}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM is the service's graceful stop; kill only if it ignores it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running_service(workdir: Path, workers: int, threads: int | None, model_dir: Path) -> Iterator[str]:
    """``python -m service`` on 127.0.0.1 with a fresh store; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "service.log"
    env = service_env(workdir / "store", port, workers, threads, model_dir)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_ready(proc, url, workers, log_path)
        yield url
    finally:
        stop(proc)


def wrk_script(directory: Path, picture: Path) -> Path:
    """wrk posts the JPEG itself; the body is read once when the script loads."""
    script = directory / f"{picture.stem}.lua"
    script.write_text(
        f'local f = assert(io.open([==[{picture}]==], "rb"))\n'
        "wrk.body = f:read(\"*a\")\n"
        "f:close()\n"
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "image/jpeg"\n'
    )
    return script


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _latency_ms(output: str, pct: int) -> float:
    match = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if match is None:
        raise ValueError(f"no {pct}% latency line in wrk output:\n{output}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    requests = re.search(r"(\d+) requests in", output)
    if rps is None or requests is None:
        raise ValueError(f"unexpected wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=_latency_ms(output, 50),
        p99_ms=_latency_ms(output, 99),
        requests=int(requests.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


def run_wrk(url: str, script: Path, concurrency: int, duration: int, path: str = "/detect") -> WrkResult:
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", str(script), url + path]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=True)
    return parse_wrk(done.stdout)


def measure_service(
    url: str, scripts: dict[str, Path], concurrencies: list[int], workers: int, duration: int
) -> dict[str, dict[int, WrkResult]]:
    """Every picture at every concurrency, after a short warm-up per picture."""
    results: dict[str, dict[int, WrkResult]] = {}
    for name, script in scripts.items():
        run_wrk(url, script, workers, WRK_WARM_UP_SECONDS)
        results[name] = {c: run_wrk(url, script, c, duration) for c in concurrencies}
    return results


# --- report --------------------------------------------------------------------------


def print_report(
    setup: dict, in_process: dict[str, InProcess], service: dict[str, dict[int, WrkResult]]
) -> dict:
    """The table and the ratios; returns every figure for --json."""
    print(
        f"setup: workers={setup['workers']} intra-op threads={setup['intra_op_threads']} cores={setup['cores']} "
        f"model={setup['model']} onnxruntime={setup['onnxruntime']} duration={setup['duration_s']}s"
    )
    print("\nservice over HTTP (wrk -t1, POST /detect)")
    print(f"{'picture':<10} {'conc':>4} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, by_concurrency in service.items():
        for c, r in by_concurrency.items():
            print(f"{name:<10} {c:>4} {r.rps:>8.1f} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} {r.non_2xx + r.socket_errors:>7}")
    summary = {}
    for name, ceiling in in_process.items():
        by_concurrency = service[name]
        best_c = max(by_concurrency, key=lambda c: by_concurrency[c].rps)
        ratio = by_concurrency[best_c].rps / ceiling.saturation_rps
        overhead = by_concurrency[1].p50_ms - ceiling.c1_p50_ms if 1 in by_concurrency else None
        summary[name] = {"saturation_ratio": ratio, "best_concurrency": best_c, "http_overhead_c1_p50_ms": overhead}
        print(f"\n{name}:")
        print(
            f"  in-process c=1: p50 {ceiling.c1_p50_ms:.1f} ms, p99 {ceiling.c1_p99_ms:.1f} ms, "
            f"{ceiling.c1_rps:.1f} rps "
            f"({ceiling.c1_cpu_ms_per_request:.1f} CPU ms/request)"
        )
        print(f"  in-process saturation ({ceiling.saturation_processes} processes): {ceiling.saturation_rps:.1f} rps")
        print(
            f"  service saturation / in-process saturation: {by_concurrency[best_c].rps:.1f} / "
            f"{ceiling.saturation_rps:.1f} = {ratio:.2f} (best at c={best_c})"
        )
        if overhead is not None:
            print(f"  HTTP overhead at c=1 (service p50 - in-process p50): {overhead:+.1f} ms")
    return {
        "setup": setup,
        "in_process": {name: asdict(v) for name, v in in_process.items()},
        "service": {name: {str(c): asdict(r) for c, r in rows.items()} for name, rows in service.items()},
        "summary": summary,
    }


# --- command line --------------------------------------------------------------------


def positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def concurrency_list(raw: str) -> list[int]:
    try:
        return [positive_int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {raw!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=positive_int, default=10, help="seconds per measurement (default 10)")
    parser.add_argument(
        "--concurrency", type=concurrency_list, default=[1, 2, 4, 8],
        help="wrk connections, comma-separated (default 1,2,4,8)",
    )
    parser.add_argument(
        "--workers", type=positive_int, default=os.cpu_count() or 1,
        help="gunicorn workers = in-process saturation processes (default: cores)",
    )
    parser.add_argument(
        "--intra-op-threads", type=positive_int,
        help="ONNX Runtime intra-op threads (default: the service's cores // workers)",
    )
    parser.add_argument(
        "--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="model directory (default models/default)"
    )
    parser.add_argument("--json", type=Path, help="also write every figure as JSON to this path")
    return parser


def describe_model(model_dir: Path) -> str:
    try:
        return str(model_dir.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(model_dir)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model_dir = args.model_dir.resolve()
    options = EngineOptions.for_pool(args.workers)
    if args.intra_op_threads is not None:
        options = EngineOptions(intra_op_threads=args.intra_op_threads)
    setup = {
        "workers": args.workers,
        "intra_op_threads": options.intra_op_threads,
        "cores": os.cpu_count(),
        "model": describe_model(model_dir),
        "onnxruntime": onnxruntime.__version__,
        "duration_s": args.duration,
    }
    with tempfile.TemporaryDirectory(prefix="twinfer-bench-") as tmp:
        workdir = Path(tmp)
        pictures = make_pictures(workdir)
        in_process = {
            name: measure_in_process(model_dir, options, path, args.workers, args.duration)
            for name, path in pictures.items()
        }
        scripts = {name: wrk_script(workdir, path) for name, path in pictures.items()}
        with running_service(workdir, args.workers, args.intra_op_threads, model_dir) as url:
            service = measure_service(url, scripts, args.concurrency, args.workers, args.duration)
    figures = print_report(setup, in_process, service)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
