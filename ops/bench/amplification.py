#!/usr/bin/env python3
"""Can a small request make a worker big? Worker RSS before, during and after each case.

Each case is a request that is cheap to send and was expensive to answer (issue "Hardening,
round 2"): JSON tensors of empty arrays or objects (raw, and gzip-compressed: 20 KB on the
wire, the body limit once inflated), pictures that decode to far more than they weigh (a
flat PNG and WebP: the largest the default decode memory takes, and the largest the pixel
limit lets through its header check), a truncated JPEG whose header declares that size. A case sends its request from ``--clients`` clients
at once, ``--rounds`` times.

The service runs with one worker, so every request lands on the process measured; its
RSS (``/proc/<pid>/status`` VmRSS) is sampled every 10 ms from before the case until
``--settle`` seconds after its last answer. Printed per case: wire bytes, the statuses,
RSS before / peak / after, and the two targets: a request under 1 MB on the wire raises
the worker's RSS by at most 150 MB (``peak - before``), and RSS comes back within 10 % of
its baseline (``after / before``).

Run from the project root: ``.venv/bin/python ops/bench/amplification.py [--clients 4]``.
"""
from __future__ import annotations

import argparse
import gzip
import http.client
import json
import math
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2  # noqa: E402  (after serving: the project's environment)
import numpy as np  # noqa: E402

# serving.py and slow_clients.py sit next to this file; serving puts the project root on sys.path.
from serving import positive_int
from slow_clients import service

from twinfer.decode_budget import decode_bytes  # noqa: E402
from twinfer.settings_table import read  # noqa: E402

MB = 1_000_000
SMALL_REQUEST = 1 * MB  # the targets hold for requests smaller than this on the wire
PEAK_TARGET = 150 * MB
AFTER_TARGET = 1.10
SAMPLE_SECONDS = 0.01
BOMB_SIDE = math.isqrt(read("TWINFER_MAX_IMAGE_PIXELS", {}))  # the largest square picture the header check lets by
BODY_LIMIT = read("TWINFER_MAX_BODY_BYTES", {})


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Outcome:
    case: Case
    statuses: Counter = field(default_factory=Counter)
    before: int = 0
    peak: int = 0
    after: int = 0


def _tensor_request(input_name: str, data_text: str) -> bytes:
    head = json.dumps({"inputs": [{"name": input_name, "datatype": "FP32", "shape": [1, 300, 300, 3],
                                   "data": ["@"]}]})
    return head.replace('["@"]', data_text).encode()


def _repeated(item: str, total_bytes: int) -> str:
    """A JSON array of ``item`` repeated until the text is about ``total_bytes`` long."""
    count = max(1, (total_bytes - 2) // (len(item) + 1))
    return "[" + ",".join([item] * count) + "]"


def build_cases(model: str, input_name: str, body_limit: int) -> list[Case]:
    infer = f"/v2/models/{model}/infer"
    json_type = {"Content-Type": "application/json"}
    gzipped = {**json_type, "Content-Encoding": "gzip"}
    fill = body_limit - 4096
    arrays, objects = _repeated("[]", fill), _repeated("{}", fill)
    flat = np.full((BOMB_SIDE, BOMB_SIDE, 3), 127, np.uint8)
    png = cv2.imencode(".png", flat, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()
    webp = cv2.imencode(".webp", flat, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()  # 101: lossless
    jpeg = cv2.imencode(".jpg", flat[:64, :64])[1].tobytes()
    png_side, webp_side = largest_decodable("PNG"), largest_decodable("WEBP")
    png_fit = cv2.imencode(".png", flat[:png_side, :png_side], [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()
    webp_fit = cv2.imencode(".webp", flat[:webp_side, :webp_side], [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    declared = jpeg.replace(b"\xff\xc0\x00\x11\x08\x00\x40\x00\x40", b"\xff\xc0\x00\x11\x08"
                            + BOMB_SIDE.to_bytes(2, "big") + BOMB_SIDE.to_bytes(2, "big"), 1)
    return [
        Case("json [] x 1 MB", infer, _tensor_request(input_name, _repeated("[]", SMALL_REQUEST - 4096)), json_type),
        Case("json [] 20 MiB gzip", infer, gzip.compress(_tensor_request(input_name, arrays), 9), gzipped),
        Case("json {} 20 MiB gzip", infer, gzip.compress(_tensor_request(input_name, objects), 9), gzipped),
        Case("json [] 20 MiB raw", infer, _tensor_request(input_name, arrays), json_type),
        Case(f"png {png_side}^2 flat", "/detect", png_fit, {"Content-Type": "image/png"}),
        Case(f"webp {webp_side}^2 flat", "/detect", webp_fit, {"Content-Type": "image/webp"}),
        Case(f"png {BOMB_SIDE}^2 flat", "/detect", png, {"Content-Type": "image/png"}),
        Case(f"webp {BOMB_SIDE}^2 flat", "/detect", webp, {"Content-Type": "image/webp"}),
        Case(f"jpeg truncated {BOMB_SIDE}^2", "/detect", declared[: len(declared) // 2], {"Content-Type": "image/jpeg"}),
    ]


def largest_decodable(image_format: str) -> int:
    """The side of the largest square picture of ``image_format`` the default decode memory takes."""
    side = math.isqrt(read("TWINFER_DECODE_MEMORY", {}) // 3)
    while decode_bytes(image_format, side, side) > read("TWINFER_DECODE_MEMORY", {}):
        side -= 1
    return side


def worker_pid(supervisor: int) -> int:
    """The one gunicorn worker: the grandchild of the supervisor (supervisor -> arbiter -> worker)."""
    def children(pid: int) -> list[int]:
        found = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(p) for p in (task / "children").read_text().split()]
        return found

    workers = [worker for arbiter in children(supervisor) for worker in children(arbiter)]
    if len(workers) != 1:
        raise RuntimeError(f"expected one worker under {supervisor}, found {workers}")
    return workers[0]


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def post(port: int, case: Case) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", case.path, body=case.body, headers=case.headers)
        answer = conn.getresponse()
        answer.read()
        return answer.status
    except OSError:
        return 0  # reset or timed out: counted as status 0
    finally:
        conn.close()


def run_case(port: int, pid: int, case: Case, clients: int, rounds: int, settle: float) -> Outcome:
    outcome = Outcome(case, before=rss(pid))
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(rss(pid))
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(rounds):
            outcome.statuses.update(pool.map(lambda _: post(port, case), range(clients)))
    time.sleep(settle)
    done.set()
    sampler.join()
    outcome.peak, outcome.after = max(samples), rss(pid)
    return outcome


def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def warm_up(port: int) -> None:
    """A few ordinary requests first: the baseline is a worker that has served, not a fresh one."""
    picture = cv2.imencode(".jpg", np.full((480, 640, 3), 90, np.uint8))[1].tobytes()
    for _ in range(5):
        post(port, Case("warm-up", "/detect", picture, {"Content-Type": "image/jpeg"}))


def print_table(outcomes: list[Outcome], clients: int) -> None:
    print(f"\n{clients} client(s) at once; RSS of the one worker in MB (10^6 bytes)")
    print(f"{'case':26} {'wire':>10} {'statuses':18} {'before':>7} {'peak':>7} {'after':>7} {'+peak':>7} "
          f"{'after/before':>12}  targets")
    for o in outcomes:
        wire = len(o.case.body)
        small = wire < SMALL_REQUEST
        rise, ratio = o.peak - o.before, o.after / o.before
        verdict = ("ok" if rise <= PEAK_TARGET else "PEAK") if small else "n/a (>= 1 MB)"
        verdict += ", " + ("ok" if ratio <= AFTER_TARGET else "AFTER")
        statuses = " ".join(f"{code}x{n}" for code, n in sorted(o.statuses.items()))
        print(f"{o.case.name:26} {wire:>10,} {statuses:18} {o.before / MB:7.0f} {o.peak / MB:7.0f} "
              f"{o.after / MB:7.0f} {rise / MB:7.0f} {ratio:12.2f}  {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=positive_int, default=4, help="requests of a case sent at once")
    parser.add_argument("--rounds", type=positive_int, default=2, help="times each case is sent by every client")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after a case before 'after' is read")
    parser.add_argument("--only", default="", help="comma-separated case-name prefixes to run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        with service(Path(work), 1, {}) as running:
            port = int(running.url.rsplit(":", 1)[1])
            name = get_json(port, "/models")["active"]["name"]
            input_name = get_json(port, f"/v2/models/{name}")["inputs"][0]["name"]
            pid = worker_pid(running.pid)
            warm_up(port)
            cases = build_cases(name, input_name, BODY_LIMIT)
            wanted = [prefix.strip() for prefix in args.only.split(",") if prefix.strip()]
            cases = [c for c in cases if not wanted or any(c.name.startswith(p) for p in wanted)]
            outcomes = [run_case(port, pid, case, args.clients, args.rounds, args.settle) for case in cases]
    print_table(outcomes, args.clients)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
