#!/usr/bin/env python3
"""Soak: mixed load on the real service for a long time, a model swap every minute, and
per-minute requests, errors, p99 and the memory of every process; at the end the growth
after warm-up (targets: 0 errors, < 5 % memory growth).

Starts ``python -m service`` (supervisor + gunicorn, local twin) on 127.0.0.1 with the
bundled ONNX detector (1.0.0), stages a second version from a loopback HTTP server (the
same detector repackaged as 1.0.1, so every minute has the same memory shape and minutes
compare; ``--mixed``: the LiteRT build instead, ONNX <-> LiteRT), then for ``--minutes``
minutes:

* a bounded pool of Python clients (``--clients``, paced to ``--rate`` requests/s in all)
  sends a fixed mix: ``POST /detect`` with JPEGs of 320x240, 640x480 and 1920x1080 and a
  PNG photo, ``GET /models``, ``GET /metrics``, and bad inputs (random bytes, a bad
  ``threshold``, a text body) that must get their 4xx;
* every minute the desired model alternates between the two staged versions through the
  local twin (``model.allow_downgrade: true``: every other swap goes back to a lower
  version), and the swap is timed until every worker serves it;
* at the end of every minute: requests, errors (connection failures, 5xx, and any answer
  other than the one expected for its kind), p50/p99, the swap, and RSS and PSS
  (``/proc/<pid>/smaps_rollup``) of the supervisor, the gunicorn master and each worker:
  the median of samples every 2 s once the minute's swap has settled.

Memory growth compares the end of the warm-up (``--warmup-minutes``, default 2) with the
end of the run (with ``--mixed``: the last warm-up minute that ended on the same model as
the run, as ONNX and LiteRT take different memory). Requests use a fresh connection each
(``--keep-alive``: one pooled session per client). It is not a test (it takes half an hour by default); run it from the
project root: ``.venv/bin/python ops/bench/soak.py [--minutes 30] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: ``tests`` and ``workers`` live in the project root
    sys.path.insert(0, str(PROJECT_ROOT))

import requests  # noqa: E402

from tests.support.bundles import make_bundle, ssd_tflite_bundle  # noqa: E402
from tests.support.http_server import FileServer  # noqa: E402
from tests.support.images import encoded  # noqa: E402
from tests.support.local_twin import LocalTwinFiles, model_status  # noqa: E402
from tests.support.paths import DEFAULT_MODEL, IMAGES  # noqa: E402
from tests.support.service_process import ServiceProcess  # noqa: E402

ONNX = ("ssd-mobilenetv2-oidv4", "1.0.0")  # the bundled default, staged at start
ONNX_NEXT = ("ssd-mobilenetv2-oidv4", "1.0.1")  # the same files as a bundle
TFLITE = ("ssd-tflite", "2.0.0")
GROWTH_TARGET = 0.05
SETTLE_SECONDS = 5.0  # after a swap completed, before memory samples count for the minute
MiB = 1024 * 1024


# --- the request mix --------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    weight: int
    method: str
    path: str
    body: bytes | None
    content_type: str | None
    expect: int  # the status this request must get


def request_mix() -> list[Kind]:
    rng = random.Random(0)
    jpeg = "image/jpeg"
    return [
        Kind("detect_320x240", 20, "POST", "/detect", encoded(".jpg", 320, 240, seed=1), jpeg, 200),
        Kind("detect_640x480", 25, "POST", "/detect", encoded(".jpg", 640, 480, seed=2), jpeg, 200),
        Kind("detect_1920x1080", 15, "POST", "/detect", encoded(".jpg", 1920, 1080, seed=3), jpeg, 200),
        Kind("detect_png_451x300", 10, "POST", "/detect?threshold=0.3", (IMAGES / "chelsea.png").read_bytes(),
             "image/png", 200),
        Kind("models", 8, "GET", "/models", None, None, 200),
        Kind("metrics", 4, "GET", "/metrics", None, None, 200),
        Kind("bad_random_bytes", 8, "POST", "/detect", rng.randbytes(2048), jpeg, 400),
        Kind("bad_threshold", 5, "POST", "/detect?threshold=2", encoded(".jpg", 64, 48), jpeg, 400),
        Kind("bad_content_type", 5, "POST", "/detect", b"hello", "text/plain", 415),
    ]


@dataclass(frozen=True)
class Sample:
    finished: float  # time.monotonic()
    kind: str
    status: int  # 0: no answer
    ok: bool
    latency_ms: float
    detail: str | None = None


class Clients:
    """``count`` threads, each paced to ``rate / count`` requests per second (no catch-up
    bursts: a client that falls behind its schedule just goes on)."""

    def __init__(self, url: str, mix: list[Kind], count: int, rate: float, keep_alive: bool, seed: int = 1) -> None:
        self.url = url
        self.keep_alive = keep_alive
        self.mix = mix
        self.interval = count / rate
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(seed + i,), daemon=True) for i in range(count)]

    def _loop(self, seed: int) -> None:
        rng = random.Random(seed)
        weights = [k.weight for k in self.mix]
        session = requests.Session()
        if not self.keep_alive:
            session.headers["Connection"] = "close"
        next_at = time.monotonic() + rng.uniform(0, self.interval)
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            next_at = max(next_at + self.interval, time.monotonic())
            kind = rng.choices(self.mix, weights)[0]
            headers = {"Content-Type": kind.content_type} if kind.content_type else {}
            started = time.monotonic()
            try:
                answer = session.request(kind.method, self.url + kind.path, data=kind.body, headers=headers, timeout=60)
                status, detail = answer.status_code, None if answer.status_code == kind.expect else answer.text[:200]
            except requests.RequestException as exc:
                status, detail = 0, repr(exc)
            finished = time.monotonic()
            self.samples.append(Sample(finished, kind.name, status, status == kind.expect, (finished - started) * 1e3, detail))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(70)


# --- processes and their memory ---------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Child pids, from every process's parent in ``/proc/<pid>/stat``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def service_processes(supervisor: int) -> dict[str, int]:
    """supervisor, gunicorn master and its workers (``worker-<pid>``), by role."""
    roles = {"supervisor": supervisor}
    master = next((c for c in _children(supervisor) if "gunicorn" in _cmdline(c)), None)
    if master is not None:
        roles["gunicorn"] = master
        for worker in _children(master):
            roles[f"worker-{worker}"] = worker
    return roles


def memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes, from ``/proc/<pid>/smaps_rollup``."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("Pss:"):
            pss = int(line.split()[1]) * 1024
    return rss, pss


# --- model swaps ------------------------------------------------------------------------------


@dataclass
class Swap:
    minute: int
    target: str
    seconds: float | None  # desired written -> every worker serves it; None: did not complete
    generation: int | None


def rolled_out(reported: dict, version: str) -> bool:
    status = model_status(reported)
    active, rollout = status.get("active") or {}, status.get("rollout") or {}
    return (
        status.get("state") == "active" and active.get("version") == version and rollout.get("complete") is True
        and rollout.get("generation") == active.get("generation")
    )


class Swapper:
    def __init__(self, twin: LocalTwinFiles, bundles: dict[tuple[str, str], tuple[str, str]]) -> None:
        self.twin = twin
        self.bundles = bundles  # target -> (url, sha256); a staged version is not downloaded again

    def swap_to(self, target: tuple[str, str], timeout: float = 120.0) -> tuple[float | None, int | None]:
        started = time.monotonic()
        url, sha256 = self.bundles[target]
        model = {"name": target[0], "version": target[1], "url": url, "sha256": sha256, "allow_downgrade": True}
        self.twin.set_desired({"model": model})
        deadline = started + timeout
        while time.monotonic() < deadline:
            reported = self.twin.reported()
            if rolled_out(reported, target[1]):
                return time.monotonic() - started, model_status(reported)["active"]["generation"]
            time.sleep(0.02)
        return None, None


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Minute:
    minute: int
    requests: int
    errors: int
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    detect_p99_ms: float | None
    swap: dict | None
    memory: dict[str, dict[str, int]]  # role -> {"rss", "pss"}, at the end of the minute
    model: str  # active at the end of the minute
    error_samples: list[str] = field(default_factory=list)


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def summarize(minute: int, samples: list[Sample], seconds: float, swap: Swap | None, mem: dict, model: str) -> Minute:
    errors = [s for s in samples if not s.ok]
    detect = [s.latency_ms for s in samples if s.kind.startswith("detect_")]
    return Minute(
        minute=minute,
        requests=len(samples),
        errors=len(errors),
        rps=len(samples) / seconds,
        p50_ms=percentile([s.latency_ms for s in samples], 50),
        p99_ms=percentile([s.latency_ms for s in samples], 99),
        detect_p99_ms=percentile(detect, 99),
        swap=asdict(swap) if swap else None,
        memory=mem,
        model=model,
        error_samples=[f"{s.kind}: {s.status} {s.detail}" for s in errors[:5]],
    )


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_minute(m: Minute) -> None:
    swap = m.swap or {}
    swap_text = f"{swap['target']:<28} {_fmt(swap['seconds'], '.2f'):>6} s" if swap else f"{'-':<28} {'-':>8}"
    mem = "  ".join(f"{role.replace('worker-', 'w')}={v['rss'] / MiB:.0f}/{v['pss'] / MiB:.0f}" for role, v in m.memory.items())
    total_pss = sum(v["pss"] for v in m.memory.values()) / MiB
    print(f"{m.minute:>3} {m.requests:>6} {m.errors:>4} {m.rps:>6.1f} {_fmt(m.p50_ms):>7} {_fmt(m.p99_ms):>7} "
          f"{_fmt(m.detect_p99_ms):>8}  {swap_text}  {total_pss:>6.0f}  {mem}", flush=True)
    for line in m.error_samples:
        print(f"      error: {line}", flush=True)


def baseline_minute(minutes: list[Minute], warmup: int, mixed: bool) -> Minute:
    """The end of the warm-up; with two model formats, the last warm-up minute that ended
    on the model the run ends on (ONNX and LiteRT do not take the same memory)."""
    if not mixed:
        return minutes[warmup - 1]
    same = [m for m in minutes[:warmup] if m.model == minutes[-1].model]
    return same[-1] if same else minutes[warmup - 1]


def growth_report(base: Minute, last: Minute) -> dict:
    """Memory at ``base`` vs at ``last``, per role and in total (roles present in both)."""
    report: dict[str, dict] = {}
    roles = [role for role in base.memory if role in last.memory]
    for role in roles:
        report[role] = {
            key: {"start": base.memory[role][key], "end": last.memory[role][key],
                  "growth": (last.memory[role][key] - base.memory[role][key]) / base.memory[role][key]}
            for key in ("rss", "pss")
        }
    report["total"] = {}
    for key in ("rss", "pss"):
        start = sum(base.memory[r][key] for r in roles)
        end = sum(last.memory[r][key] for r in roles)
        report["total"][key] = {"start": start, "end": end, "growth": (end - start) / start}
    return report


def measure_memory(supervisor: int) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    roles = service_processes(supervisor)
    found = {}
    for role, pid in roles.items():
        try:
            rss, pss = memory(pid)
        except OSError:  # gone meanwhile
            continue
        found[role] = {"rss": rss, "pss": pss}
    return roles, found


class MemorySampler:
    """Samples every process's RSS and PSS every ``interval`` seconds in a thread: a
    worker's memory moves with the request it is serving, so a minute is summed up by the
    median of its samples (taken once the minute's swap has settled), not by one reading."""

    def __init__(self, supervisor: int, interval: float) -> None:
        self.supervisor = supervisor
        self.interval = interval
        self.samples: list[tuple[float, dict[str, dict[str, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append((time.monotonic(), measure_memory(self.supervisor)[1]))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def median(self, start: float, end: float) -> tuple[dict[str, dict[str, int]], int]:
        window = [mem for at, mem in list(self.samples) if start <= at < end]
        roles = sorted({role for mem in window for role in mem})
        result = {}
        for role in roles:
            values = [mem[role] for mem in window if role in mem]
            result[role] = {key: int(statistics.median(v[key] for v in values)) for key in ("rss", "pss")}
        return result, len(window)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=30, help="soak duration in minutes (default 30)")
    parser.add_argument("--warmup-minutes", type=int, default=2, help="minutes left out of the memory growth (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--rate", type=float, default=30.0, help="requests per second over all clients (default 30)")
    parser.add_argument("--mixed", action="store_true", help="alternate ONNX and LiteRT instead of two ONNX versions")
    parser.add_argument("--keep-alive", action="store_true", help="reuse connections (one session per client)")
    parser.add_argument("--minute-seconds", type=float, default=60.0, help=argparse.SUPPRESS)  # for trying the script out
    parser.add_argument("--json", type=Path, help="also write every minute and the growth report to this file")
    args = parser.parse_args(argv)
    if args.minutes <= args.warmup_minutes or args.warmup_minutes < 1:
        parser.error("need 1 <= --warmup-minutes < --minutes")

    mix = request_mix()
    if args.mixed:
        second, second_bundle = TFLITE, ssd_tflite_bundle()
    else:
        second = ONNX_NEXT
        second_bundle = make_bundle({p.name: p.read_bytes() for p in sorted(DEFAULT_MODEL.iterdir())
                                     if p.suffix in (".onnx", ".txt", ".json")})
    models = (ONNX, second)
    with tempfile.TemporaryDirectory(prefix="twinfer-soak-") as tmp, FileServer() as files:
        files.put("/second.zip", second_bundle.data)
        url = files.url("/second.zip")
        store = Path(tmp) / "store"
        env = {"TWINFER_REPORT_INTERVAL": "0.1"}
        with ServiceProcess.start(store, workers=args.workers, extra_env=env) as service:
            twin = LocalTwinFiles(store)
            # The bundled default is staged already; its desired document needs a URL and a
            # checksum too, but a staged version is activated without a download.
            swapper = Swapper(twin, {ONNX: (url, second_bundle.sha256), second: (url, second_bundle.sha256)})
            # Stage the second version and come back: from here on both are staged and
            # every swap is a reload in the workers.
            for target in (second, ONNX):
                seconds, _ = swapper.swap_to(target, timeout=300)
                if seconds is None:
                    raise SystemExit(f"could not stage {target}:\n{service.log()[-3000:]}")
            roles, _ = measure_memory(service.proc.pid)
            workers_at_start = sorted(r for r in roles if r.startswith("worker-"))
            print(f"soak: {args.minutes} min, {args.workers} workers, {args.clients} clients at {args.rate:g} req/s "
                  f"({'keep-alive' if args.keep_alive else 'a connection per request'}), a swap every minute between "
                  f"{' and '.join(' '.join(m) for m in models)}; processes {roles}")
            print("mix: " + ", ".join(f"{k.name} {k.weight}%" for k in mix))
            print(f"{'min':>3} {'reqs':>6} {'err':>4} {'rps':>6} {'p50 ms':>7} {'p99 ms':>7} {'det p99':>8}  "
                  f"{'swap to':<28} {'swap s':>8}  {'PSS MiB':>6}  RSS/PSS MiB per process")

            clients = Clients(service.url, mix, args.clients, args.rate, args.keep_alive)
            minutes: list[Minute] = []
            started = time.monotonic()
            clients.start()
            sampler = MemorySampler(service.proc.pid, min(2.0, args.minute_seconds / 10))
            sampler.start()
            active = ONNX
            try:
                for minute in range(1, args.minutes + 1):
                    window_start = started + (minute - 1) * args.minute_seconds
                    swap = None
                    if minute > 1:  # minute 1: steady state on the bundled default
                        active = models[1] if active == models[0] else models[0]
                        seconds, generation = swapper.swap_to(active)
                        swap = Swap(minute, " ".join(active), seconds, generation)
                    window_end = started + minute * args.minute_seconds
                    time.sleep(max(0.0, window_end - time.monotonic()))
                    now_roles, last_mem = measure_memory(service.proc.pid)
                    settled = window_start + (swap.seconds or 0.0 if swap else 0.0) + SETTLE_SECONDS
                    mem, _ = sampler.median(min(settled, window_end - args.minute_seconds / 4), window_end)
                    mem = mem or last_mem
                    window = [s for s in list(clients.samples) if window_start <= s.finished < window_end]
                    result = summarize(minute, window, args.minute_seconds, swap, mem, " ".join(active))
                    if swap is not None and swap.seconds is None:
                        result.errors += 1
                        result.error_samples.append(f"swap to {swap.target} did not complete in 120 s")
                    if sorted(r for r in now_roles if r.startswith("worker-")) != workers_at_start:
                        result.errors += 1
                        result.error_samples.append(f"workers changed: {workers_at_start} -> {sorted(now_roles)}")
                    minutes.append(result)
                    print_minute(result)
            finally:
                clients.stop()
                sampler.stop()
            log = service.log()

    total_requests = sum(m.requests for m in minutes)
    total_errors = sum(m.errors for m in minutes)
    last_end = started + len(minutes) * args.minute_seconds
    tail = [s for s in clients.samples if s.finished >= last_end and not s.ok]  # answered after the last minute
    for sample in tail:
        print(f"      error after the last minute: {sample.kind}: {sample.status} {sample.detail}")
    total_errors += len(tail)
    swaps = [m.swap["seconds"] for m in minutes if m.swap and m.swap["seconds"] is not None]
    base = baseline_minute(minutes, args.warmup_minutes, args.mixed)
    growth = growth_report(base, minutes[-1])
    total_growth = growth["total"]["pss"]["growth"]
    after = [m for m in minutes if m.minute > args.warmup_minutes]
    slope = None
    if len(after) >= 3:
        slope = statistics.linear_regression(
            [m.minute for m in after], [sum(v["pss"] for v in m.memory.values()) / MiB for m in after]
        ).slope
    log_problems = [sign for sign in ("WORKER TIMEOUT", "Traceback", "unhandled error", "exited unexpectedly") if sign in log]
    print()
    print(f"total: {total_requests} requests, {total_errors} errors (target 0); "
          f"{len(swaps)} swaps, median {_fmt(statistics.median(swaps) if swaps else None, '.2f')} s, "
          f"max {_fmt(max(swaps) if swaps else None, '.2f')} s; log problems: {log_problems or 'none'}")
    print(f"memory growth after warm-up: end of minute {base.minute} ({base.model}) -> end of minute "
          f"{minutes[-1].minute} ({minutes[-1].model}), target < {GROWTH_TARGET:.0%}:")
    for role, values in growth.items():
        rss, pss = values["rss"], values["pss"]
        mark = "  over" if max(rss["growth"], pss["growth"]) >= GROWTH_TARGET else ""
        print(f"  {role:<14} RSS {rss['start'] / MiB:7.1f} -> {rss['end'] / MiB:7.1f} MiB ({rss['growth']:+6.1%})   "
              f"PSS {pss['start'] / MiB:7.1f} -> {pss['end'] / MiB:7.1f} MiB ({pss['growth']:+6.1%}){mark}")
    print("  (a worker's memory moves by +-10 MiB with what it last served and where its allocators stand; "
          "the pool's total is what the target applies to)")
    if slope is not None:
        print(f"  trend of the pool's PSS after warm-up: {slope:+.2f} MiB per minute over {len(after)} minutes")
    if log_problems:
        lines = log.splitlines()
        first = next(i for i, line in enumerate(lines) if any(sign in line for sign in log_problems))
        print("first problem in the service log:\n  " + "\n  ".join(lines[max(0, first - 2): first + 25]))
    passed = total_errors == 0 and total_growth < GROWTH_TARGET and not log_problems
    print(f"verdict: {'PASS' if passed else 'FAIL'} (errors {total_errors}, pool PSS growth {total_growth:+.1%}, "
          f"log problems {len(log_problems)})")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "minutes": [asdict(m) for m in minutes], "baseline_minute": base.minute,
                                         "growth": growth, "pss_trend_mib_per_minute": slope, "log_problems": log_problems,
                                         "passed": passed}, indent=1))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
