#!/usr/bin/env python3
"""Can slow clients take the worker pool away from normal clients?

For each server configuration (worker class, threads, deadlines; ``CONFIGS``) this starts
the real service (``python -m service``) and measures:

1. without attack: ``POST /detect`` throughput at c=2 and c=4 with wrk (``serving.py``'s
   functions, 640x480 JPEG), the CPU the whole service spends per request at c=4 (steadier
   than rps on a shared machine), and the service's PSS after a c=16 burst (threads let
   one worker run several inferences at once, each with its own activation buffers);
2. under attack: K slow clients (default K = workers x 2) each send a complete header
   block for a 640x480 JPEG upload and then the body one byte per second ("slow POST";
   ``--mode headers`` trickles the header block instead: slowloris; ``--mode hello``, over
   TLS, trickles the ClientHello itself; ``--interval`` sets the pace). An attacker that
   is cut off reconnects at once, so the pressure never stops. ``--tls`` runs the service
   with a throwaway certificate and every client over https. Meanwhile C normal clients
   (default C = workers) post the same JPEG in a closed loop with a per-request timeout;
   their success rate (200 within the timeout) and latency percentiles (a timed-out or
   failed request counts with the time it took) tell whether the service stayed usable.
   Each slow connection's fate is recorded: how long the server let it hold a worker or
   thread, and how it ended (408, another status, or closed without an answer).

``--paired BASELINE,CANDIDATE`` runs both services at once and alternates short wrk runs
between them: on a busy machine the per-pair throughput ratio is far steadier than two
separate runs.

Run from the project root, e.g.:
``.venv/bin/python ops/bench/slow_clients.py --configs sync,gthread8+deadline --rounds 3``
``.venv/bin/python ops/bench/slow_clients.py --configs sync,gthread8+deadline --paired``
``.venv/bin/python ops/bench/slow_clients.py --configs gthread6+deadline --skip-throughput --mode headers --slow 20 --interval 2``
``.venv/bin/python ops/bench/slow_clients.py --configs gthread6+deadline --skip-throughput --mode hello --slow 16``
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

# serving.py sits next to this file and puts the project root on sys.path itself.
from serving import (
    DEFAULT_MODEL_DIR,
    PROJECT_ROOT,
    free_port,
    make_pictures,
    positive_int,
    run_wrk,
    service_env,
    stop,
    wait_ready,
    wrk_script,
)

from tests.support.tls import issue_server_cert  # noqa: E402  (after serving: the project root on sys.path)

PICTURE = "640x480"
CONFIGS: dict[str, dict[str, str]] = {
    # the service as it was: gunicorn's own sync worker, no header or body deadline
    # (TWINFER_WORKER_CLASS=sync keeps threads at 1: gunicorn turns sync into gthread otherwise)
    "sync": {"TWINFER_WORKER_CLASS": "sync", "GUNICORN_CMD_ARGS": "--worker-class sync", "TWINFER_BODY_TIMEOUT": "0"},
    # sync workers with both deadlines (TWINFER_HEADER_TIMEOUT, TWINFER_BODY_TIMEOUT: 10 s)
    "sync+deadline": {"TWINFER_WORKER_CLASS": "sync"},
    "gthread4": {
        "TWINFER_WORKER_CLASS": "gthread", "TWINFER_THREADS": "4",
        "TWINFER_BODY_TIMEOUT": "0", "TWINFER_HEADER_TIMEOUT": "0",
    },
    "gthread4+deadline": {"TWINFER_WORKER_CLASS": "gthread", "TWINFER_THREADS": "4"},
    "gthread6+deadline": {"TWINFER_WORKER_CLASS": "gthread", "TWINFER_THREADS": "6"},  # the default
    "gthread8+deadline": {"TWINFER_WORKER_CLASS": "gthread", "TWINFER_THREADS": "8"},
    # gevent is not a dependency of twinfer: this one needs `pip install gevent` first. It runs
    # gunicorn's own gevent worker (no header deadline), with the app's body deadline.
    "gevent+deadline": {"TWINFER_WORKER_CLASS": "sync", "GUNICORN_CMD_ARGS": "--worker-class gevent"},
}


# --- the service -----------------------------------------------------------------------


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of ``root`` and every descendant (supervisor, gunicorn, workers),
    from /proc: a throughput proxy that a busy, shared machine disturbs less than rps."""
    parents, times = {}, {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(times.get(pid, 0.0) for pid in tree)


def tree_pss_mib(root: int) -> float:
    """Proportional set size of ``root`` and its descendants (shared pages split fairly)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    total_kib = 0
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


@dataclass
class Running:
    url: str
    pid: int
    context: ssl.SSLContext | None  # a client context that trusts the service's certificate (--tls)


@contextmanager
def service(workdir: Path, workers: int, extra: dict[str, str], tls: bool = False) -> Iterator[Running]:
    """``python -m service`` with ``extra`` settings on a fresh store; with ``tls``, on
    https with a throwaway certificate."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "service.log"
    env = service_env(workdir / "store", port, workers, None, DEFAULT_MODEL_DIR)
    env.update(extra)
    context = None
    if tls:
        certs = issue_server_cert(workdir / "certs")
        env.update(TWINFER_TLS_CERT=str(certs.cert_file), TWINFER_TLS_KEY=str(certs.key_file))
        context = ssl.create_default_context(cafile=str(certs.ca_file))
        url = f"https://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_ready(proc, url, workers, log_path, context)
        yield Running(url, proc.pid, context)
    finally:
        stop(proc)


# --- slow clients ----------------------------------------------------------------------


@dataclass
class SlowOutcome:
    held_s: float  # connect -> the server answered or closed
    ended: str  # "408", another status, "closed" (no answer), "reset", or "open" (still held at the end)
    bytes_sent: int


def client_hello(context: ssl.SSLContext) -> bytes:
    """The ClientHello ``context`` would send, for an attacker to trickle."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class SlowClient(threading.Thread):
    """One attacker: trickle a request (or over TLS its ClientHello) one byte per
    ``interval`` seconds, reconnect when cut off."""

    def __init__(
        self, port: int, body_size: int, mode: str, interval: float, context: ssl.SSLContext | None,
        stop_event: threading.Event,
    ) -> None:
        super().__init__(daemon=True)
        self.port, self.body_size, self.mode, self.stop_event = port, body_size, mode, stop_event
        self.interval, self.context = interval, context
        self.outcomes: list[SlowOutcome] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.outcomes.append(self._one())

    def _one(self) -> SlowOutcome:
        headers = (
            f"POST /detect HTTP/1.1\r\nHost: bench\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {self.body_size}\r\n\r\n"
        ).encode()
        started = time.monotonic()
        sent = 0
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            time.sleep(0.2)
            return SlowOutcome(time.monotonic() - started, "connect_failed", 0)
        try:
            if self.context is not None and self.mode != "hello":
                sock = self.context.wrap_socket(sock, server_hostname="127.0.0.1")
        except (OSError, ssl.SSLError):
            sock.close()
            time.sleep(0.2)
            return SlowOutcome(time.monotonic() - started, "handshake_failed", 0)
        with sock:
            try:
                if self.mode == "body":
                    sock.sendall(headers)
                    sent = len(headers)
                    trickle = b"\xff" * self.body_size
                elif self.mode == "headers":  # the request line at once, then the header block byte by byte
                    line_end = headers.index(b"\r\n") + 2
                    sock.sendall(headers[:line_end])
                    sent = line_end
                    trickle = headers[line_end:] + b"\xff" * self.body_size
                else:  # hello: the TLS ClientHello byte by byte, on the plain socket
                    trickle = client_hello(self.context)
                for byte in trickle:
                    # Wait for the server to answer or close, then send one byte.
                    readable, _, _ = select.select([sock], [], [], self.interval)
                    if readable:
                        return self._ended(sock, started, sent)
                    if self.stop_event.is_set():
                        return SlowOutcome(time.monotonic() - started, "open", sent)
                    sock.sendall(bytes([byte]))
                    sent += 1
                return self._ended(sock, started, sent)
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                return SlowOutcome(time.monotonic() - started, "reset", sent)

    @staticmethod
    def _ended(sock: socket.socket, started: float, sent: int) -> SlowOutcome:
        sock.settimeout(5)
        try:
            data = sock.recv(4096)
        except (ConnectionResetError, socket.timeout, ssl.SSLError):
            return SlowOutcome(time.monotonic() - started, "reset", sent)
        held = time.monotonic() - started
        if not data:
            return SlowOutcome(held, "closed", sent)
        status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "garbage"
        return SlowOutcome(held, status, sent)


# --- normal clients --------------------------------------------------------------------


@dataclass
class NormalResult:
    latencies_ms: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    ok: int = 0


def normal_client(
    port: int, body: bytes, timeout: float, until: float, result: NormalResult, lock, context: ssl.SSLContext | None
) -> None:
    """POST the JPEG in a closed loop; a new connection whenever the last one ended."""
    conn = None
    while time.monotonic() < until:
        started = time.monotonic()
        outcome = "ok"
        try:
            if conn is None:
                conn = (
                    http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context) if context
                    else http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                )
            conn.request("POST", "/detect", body=body, headers={"Content-Type": "image/jpeg"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                outcome = str(response.status)
            if response.will_close:
                conn.close()
                conn = None
        except (socket.timeout, TimeoutError):
            outcome = "timeout"
        except (OSError, http.client.HTTPException):
            outcome = "error"
        if outcome != "ok" and conn is not None:
            conn.close()
            conn = None
        elapsed_ms = (time.monotonic() - started) * 1e3
        with lock:
            result.latencies_ms.append(elapsed_ms)
            if outcome == "ok":
                result.ok += 1
            else:
                result.failures[outcome] = result.failures.get(outcome, 0) + 1
    if conn is not None:
        conn.close()


def percentile(values: list[float], pct: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


@dataclass
class AttackResult:
    normal_requests: int
    normal_ok: int
    normal_success: float
    normal_rps: float
    normal_p50_ms: float
    normal_p99_ms: float
    normal_failures: dict[str, int]
    slow_connections: int
    slow_endings: dict[str, int]
    slow_held_median_s: float
    slow_held_max_s: float


def attack(
    port: int, body: bytes, slow: int, normal: int, seconds: float, timeout: float, mode: str, interval: float,
    context: ssl.SSLContext | None,
) -> AttackResult:
    stop_event = threading.Event()
    attackers = [SlowClient(port, len(body), mode, interval, context, stop_event) for _ in range(slow)]
    for a in attackers:
        a.start()
    time.sleep(1.0)  # let them take their workers / threads first
    result, lock = NormalResult(), threading.Lock()
    until = time.monotonic() + seconds
    clients = [
        threading.Thread(target=normal_client, args=(port, body, timeout, until, result, lock, context), daemon=True)
        for _ in range(normal)
    ]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    stop_event.set()
    for a in attackers:
        a.join(timeout=10)
    outcomes = [o for a in attackers for o in a.outcomes]
    cut = [o.held_s for o in outcomes if o.ended != "open"]
    endings: dict[str, int] = {}
    for o in outcomes:
        endings[o.ended] = endings.get(o.ended, 0) + 1
    total = len(result.latencies_ms)
    return AttackResult(
        normal_requests=total,
        normal_ok=result.ok,
        normal_success=result.ok / total if total else 0.0,
        normal_rps=result.ok / seconds,
        normal_p50_ms=percentile(result.latencies_ms, 50),
        normal_p99_ms=percentile(result.latencies_ms, 99),
        normal_failures=result.failures,
        slow_connections=len(outcomes),
        slow_endings=endings,
        slow_held_median_s=statistics.median(cut) if cut else float("nan"),
        slow_held_max_s=max((o.held_s for o in outcomes), default=float("nan")),
    )


# --- one configuration -----------------------------------------------------------------


@dataclass
class ConfigResult:
    config: str
    settings: dict[str, str]
    rps_c2: float
    rps_c4: float
    cpu_ms_per_request: float  # the whole service tree's CPU during the c=4 run / requests
    pss_mib: float  # the service tree's PSS after a c=16 burst
    attack: AttackResult | None


def measure(
    name: str, settings: dict[str, str], workdir: Path, picture: Path, script: Path, args: argparse.Namespace
) -> ConfigResult:
    with service(workdir / name, args.workers, settings, args.tls) as running:
        url = running.url
        port = int(url.rsplit(":", 1)[1])
        c2 = c4 = cpu_ms = pss = float("nan")
        if not args.skip_throughput and not args.tls:  # wrk here speaks plain http
            run_wrk(url, script, args.workers, 2)  # warm-up
            c2 = run_wrk(url, script, 2, args.duration).rps
            cpu_before = tree_cpu_seconds(running.pid)
            at_c4 = run_wrk(url, script, 4, args.duration)
            c4 = at_c4.rps
            cpu_ms = (tree_cpu_seconds(running.pid) - cpu_before) * 1e3 / max(1, at_c4.requests)
            run_wrk(url, script, 16, 3)  # a burst: as many requests in flight as the pool admits
            pss = tree_pss_mib(running.pid)
        under = None
        if not args.skip_attack:
            slow = args.slow or args.workers * 2
            normal = args.normal or args.workers
            under = attack(port, picture.read_bytes(), slow, normal, args.attack_seconds, args.timeout, args.mode,
                           args.interval, running.context)
    return ConfigResult(name, settings, c2, c4, cpu_ms, pss, under)


def print_table(results: list[ConfigResult], args: argparse.Namespace) -> None:
    slow = args.slow or args.workers * 2
    normal = args.normal or args.workers
    print(
        f"\nworkers={args.workers} cores={os.cpu_count()} picture={PICTURE} wrk {args.duration}s; attack: "
        f"{slow} slow clients ({args.mode}{' over TLS' if args.tls else ''}, 1 byte per {args.interval:g}s, "
        f"reconnecting), {normal} normal clients, "
        f"{args.attack_seconds:g}s, timeout {args.timeout:g}s"
    )
    header = (
        f"{'config':<20} {'c=2 rps':>8} {'c=4 rps':>8} {'CPU ms/req':>10} {'PSS MiB':>8} | {'ok %':>6} {'ok rps':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"| {'slow conns':>10} {'held med s':>10} {'held max s':>10}  endings"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        a = r.attack
        if a is None:
            print(f"{r.config:<20} {r.rps_c2:>8.1f} {r.rps_c4:>8.1f} {r.cpu_ms_per_request:>10.2f} {r.pss_mib:>8.0f} |")
            continue
        endings = ", ".join(f"{k}:{v}" for k, v in sorted(a.slow_endings.items()))
        failures = ", ".join(f"{k}:{v}" for k, v in sorted(a.normal_failures.items()))
        print(
            f"{r.config:<20} {r.rps_c2:>8.1f} {r.rps_c4:>8.1f} {r.cpu_ms_per_request:>10.2f} {r.pss_mib:>8.0f} | {a.normal_success * 100:>6.1f} {a.normal_rps:>7.1f} "
            f"{a.normal_p50_ms:>8.1f} {a.normal_p99_ms:>8.1f} | {a.slow_connections:>10} "
            f"{a.slow_held_median_s:>10.1f} {a.slow_held_max_s:>10.1f}  {endings}"
            + (f"  (normal failures {failures})" if failures else "")
        )
    by_config: dict[str, list[ConfigResult]] = {}
    for r in results:
        by_config.setdefault(r.config, []).append(r)
    if any(len(rs) > 1 for rs in by_config.values()):
        print("\nmedians over rounds")
        for name, rs in by_config.items():
            c2 = statistics.median(r.rps_c2 for r in rs)
            c4 = statistics.median(r.rps_c4 for r in rs)
            cpu = statistics.median(r.cpu_ms_per_request for r in rs)
            pss = statistics.median(r.pss_mib for r in rs)
            line = f"{name:<20} {c2:>8.1f} {c4:>8.1f} {cpu:>10.2f} {pss:>8.0f} |"
            attacked = [r.attack for r in rs if r.attack is not None]
            if attacked:
                line += (
                    f" {statistics.median(a.normal_success for a in attacked) * 100:>6.1f}"
                    f" {statistics.median(a.normal_rps for a in attacked):>7.1f}"
                    f" {statistics.median(a.normal_p50_ms for a in attacked):>8.1f}"
                    f" {statistics.median(a.normal_p99_ms for a in attacked):>8.1f} |"
                )
            print(line)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs", default="sync,sync+deadline,gthread4+deadline,gthread6+deadline,gthread8+deadline",
        help=f"comma-separated, run in order (known: {', '.join(CONFIGS)})",
    )
    parser.add_argument("--rounds", type=positive_int, default=1, help="repeat every config this many times")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1)
    parser.add_argument("--duration", type=positive_int, default=10, help="seconds per wrk measurement")
    parser.add_argument("--attack-seconds", type=float, default=30.0)
    parser.add_argument("--slow", type=int, default=0, help="slow clients (default workers x 2)")
    parser.add_argument("--normal", type=int, default=0, help="normal clients (default workers)")
    parser.add_argument("--timeout", type=float, default=5.0, help="normal clients' per-request timeout (s)")
    parser.add_argument("--mode", choices=("body", "headers", "hello"), default="body",
                        help="what the slow clients trickle (hello: the TLS ClientHello, implies --tls)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between two trickled bytes")
    parser.add_argument("--tls", action="store_true", help="the service on https, every client over TLS")
    parser.add_argument("--body-timeout", type=float, help="TWINFER_BODY_TIMEOUT for the +deadline configs")
    parser.add_argument("--skip-throughput", action="store_true", help="no wrk runs (attack only)")
    parser.add_argument(
        "--paired", action="store_true",
        help="no attack: throughput of two configs (--configs BASELINE,CANDIDATE) in alternating short wrk runs",
    )
    parser.add_argument("--pairs", type=positive_int, default=12, help="--paired: alternations (default 12)")
    parser.add_argument("--pair-seconds", type=positive_int, default=4, help="--paired: seconds per wrk run")
    parser.add_argument("--skip-attack", action="store_true", help="no attack (throughput only)")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON to this path")
    return parser


def paired_throughput(names: list[str], workdir: Path, script: Path, args: argparse.Namespace) -> dict:
    """Both services up at once, short wrk runs alternating between them (order flipped
    every pair): background load on a shared machine drifts slowly, so each pair sees about
    the same machine and the median of the per-pair ratios is far steadier than two
    separate long runs."""
    baseline, candidate = names
    ratios: dict[int, list[float]] = {2: [], 4: []}
    rps: dict[str, dict[int, list[float]]] = {n: {2: [], 4: []} for n in names}
    cpu: dict[str, dict[int, list[float]]] = {n: {2: [], 4: []} for n in names}  # CPU ms per request
    with service(workdir / baseline, args.workers, CONFIGS[baseline]) as a, \
            service(workdir / candidate, args.workers, CONFIGS[candidate]) as b:
        running = {baseline: a, candidate: b}
        for r in running.values():
            run_wrk(r.url, script, args.workers, 2)  # warm-up
        for pair in range(args.pairs):
            for concurrency in (2, 4):
                order = names if pair % 2 == 0 else names[::-1]
                got = {}
                for n in order:
                    before = tree_cpu_seconds(running[n].pid)
                    result = run_wrk(running[n].url, script, concurrency, args.pair_seconds)
                    cpu[n][concurrency].append((tree_cpu_seconds(running[n].pid) - before) * 1e3 / max(1, result.requests))
                    got[n] = result.rps
                for n in names:
                    rps[n][concurrency].append(got[n])
                ratios[concurrency].append(got[candidate] / got[baseline])
            print(f"pair {pair + 1}/{args.pairs}: " + ", ".join(
                f"c={c} {rps[candidate][c][-1]:.1f}/{rps[baseline][c][-1]:.1f} = {ratios[c][-1]:.3f}" for c in (2, 4)
            ), flush=True)
    print(f"\npaired throughput, {candidate} / {baseline}, {args.pairs} pairs of {args.pair_seconds}s wrk runs")
    summary = {}
    for c in (2, 4):
        q = statistics.quantiles(ratios[c], n=4, method="inclusive")
        summary[c] = {"median_ratio": statistics.median(ratios[c]), "q1": q[0], "q3": q[2],
                      "baseline_median_rps": statistics.median(rps[baseline][c]),
                      "candidate_median_rps": statistics.median(rps[candidate][c]),
                      "baseline_cpu_ms": statistics.median(cpu[baseline][c]),
                      "candidate_cpu_ms": statistics.median(cpu[candidate][c])}
        print(f"c={c}: median ratio {summary[c]['median_ratio']:.3f} (IQR {q[0]:.3f}..{q[2]:.3f}); median rps "
              f"{summary[c]['candidate_median_rps']:.1f} vs {summary[c]['baseline_median_rps']:.1f}; CPU ms/request "
              f"{summary[c]['candidate_cpu_ms']:.2f} vs {summary[c]['baseline_cpu_ms']:.2f}")
    return {"baseline": baseline, "candidate": candidate, "ratios": ratios, "rps": rps, "cpu_ms": cpu,
            "summary": summary}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.tls = args.tls or args.mode == "hello"
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; known: {list(CONFIGS)}")
    if args.paired:
        if len(names) != 2:
            raise SystemExit("--paired compares exactly two configs: --configs BASELINE,CANDIDATE")
        with tempfile.TemporaryDirectory(prefix="twinfer-slow-") as tmp:
            workdir = Path(tmp)
            script = wrk_script(workdir, make_pictures(workdir)[PICTURE])
            figures = paired_throughput(names, workdir, script, args)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        return 0
    results: list[ConfigResult] = []
    with tempfile.TemporaryDirectory(prefix="twinfer-slow-") as tmp:
        workdir = Path(tmp)
        picture = make_pictures(workdir)[PICTURE]
        script = wrk_script(workdir, picture)
        for round_no in range(args.rounds):
            for name in names:
                settings = dict(CONFIGS[name])
                if args.body_timeout is not None and "TWINFER_BODY_TIMEOUT" not in settings:
                    settings["TWINFER_BODY_TIMEOUT"] = f"{args.body_timeout:g}"
                result = measure(name, settings, workdir / f"round{round_no}", picture, script, args)
                results.append(result)
                print_table([result], args)  # as it comes: a full run takes minutes
    print("\n=== summary ===")
    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
