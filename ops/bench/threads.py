#!/usr/bin/env python3
"""Which ONNX Runtime intra-op thread count should each pool worker use?

This is the measurement behind ``EngineOptions.for_pool`` (cores // workers): for 1 and 2
worker processes it runs every thread setting side by side on the 640x480 picture and
reports the pool's throughput and the CPU each request costs, since extra threads that
only spin against the other workers show up as CPU per request long before throughput.

Run from the project root: ``.venv/bin/python ops/bench/threads.py [--duration 8]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# serving.py sits next to this file (so on sys.path when run as a script) and puts the
# project root on sys.path itself; it owns the pictures and the spawned detect loops.
from serving import DEFAULT_MODEL_DIR, make_pictures, positive_int, run_loops

from twinfer.engines.base import EngineOptions

WORKER_COUNTS = (1, 2)
THREAD_SETTINGS = (1, 2, 0)  # 0 = ONNX Runtime's own default (one thread per core)
PICTURE = "640x480"


@dataclass(frozen=True)
class Trial:
    workers: int
    threads: int
    rps: float
    cpu_ms_per_request: float


def run_trial(model_dir: Path, picture: Path, workers: int, threads: int, duration: float) -> Trial:
    """``workers`` processes looping at once, as the gunicorn pool would under load."""
    results = run_loops(model_dir, EngineOptions(intra_op_threads=threads), picture, workers, duration)
    requests = sum(len(r.latencies_ms) for r in results)
    return Trial(
        workers=workers,
        threads=threads,
        rps=sum(r.rps for r in results),
        cpu_ms_per_request=sum(r.cpu_s for r in results) * 1e3 / requests,
    )


def thread_label(threads: int) -> str:
    return "0 (ORT)" if threads == 0 else str(threads)


def print_report(trials: list[Trial], duration: float) -> None:
    cores = os.cpu_count() or 1
    print(f"cores={cores} picture={PICTURE} duration={duration}s per setting")
    print(f"{'workers':>7} {'intra-op':>9} {'rps':>8} {'CPU ms/req':>11}")
    for t in trials:
        print(f"{t.workers:>7} {thread_label(t.threads):>9} {t.rps:>8.1f} {t.cpu_ms_per_request:>11.1f}")
    pool = [t for t in trials if t.workers == 2]
    best = max(pool, key=lambda t: t.rps)
    chosen = EngineOptions.for_pool(2).intra_op_threads
    print(
        f"\nW=2 winner: intra-op {thread_label(best.threads)} at {best.rps:.1f} rps, "
        f"{best.cpu_ms_per_request:.1f} CPU ms/request "
        f"(for_pool(2) picks {chosen} on {cores} cores)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=positive_int, default=8, help="seconds per setting (default 8)")
    parser.add_argument(
        "--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="model directory (default models/default)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="twinfer-threads-") as tmp:
        picture = make_pictures(Path(tmp))[PICTURE]
        trials = [
            run_trial(args.model_dir.resolve(), picture, workers, threads, args.duration)
            for workers in WORKER_COUNTS
            for threads in THREAD_SETTINGS
        ]
    print_report(trials, args.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
