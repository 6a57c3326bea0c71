#!/usr/bin/env python3
"""The demo SSD's int8 variant against its fp32 model on this machine, in one run.

* speed in-process (``VisionModel.detect``, the request path's core: c=1 latency and one
  process per worker at saturation) and served (``python -m service``, gunicorn, wrk at
  saturation), fp32 and int8 interleaved round by round (the machine is shared: medians);
* agreement on photos not used for calibration: leave-one-out over the repository's photos
  (int8 calibrated on four, measured on the fifth, its mirror image, a centre crop and a
  half-size copy), F1 of matched detections at IoU 0.5, same class, and score differences;
* bytes: model files, bundles (``bundle``'s stored ZIP) and their zstd frames for the wire
  (``bundle --compressed``), int8 / fp32;
* the zstd delta between two int8 versions after a fine-tune of the detection head, beside the
  same delta between the two fp32 versions.

The int8 variant is made as ``bundle --quantize int8`` makes it (``service.variant_bundle``).
Run from the project root: ``.venv/bin/python ops/bench/variants.py [--rounds 3] [--duration 8]``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
for path in (PROJECT_ROOT, PROJECT_ROOT / "ops" / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
from serving import make_pictures, measure_in_process, run_wrk, running_service, wrk_script  # noqa: E402

from service.quantize import QuantizeOptions  # noqa: E402
from service.update.delta import build_patch, compress_bundle  # noqa: E402
from service.variant_bundle import make_variant  # noqa: E402
from service.verification import Gate, agreement, detections  # noqa: E402
from tests.support.finetune import perturb  # noqa: E402
from tests.support.paths import DEFAULT_MODEL, IMAGES  # noqa: E402
from tests.support.variants import PHOTOS, bundle_directory, reference_dir  # noqa: E402
from twinfer.cpu import cpuinfo_lines, int8_support  # noqa: E402
from twinfer.engines import EngineOptions  # noqa: E402
from twinfer.loader import load_model  # noqa: E402

GATE = Gate()
PICTURE = "640x480"
SATURATION_CONCURRENCY = 4  # 2 workers, one inference slot each: 4 keeps both busy with one waiting
TARGET_SERVED_SPEEDUP = 2.0
TARGET_SERVED_OF_CEILING = 0.95
TARGET_BYTES = 0.35


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def make_int8(reference: Path, into: Path, calibration: list[bytes], pictures: list[bytes]) -> None:
    into.mkdir(parents=True)
    make_variant(reference, None, into, pictures, precision="int8", quantize=QuantizeOptions(), gate=GATE,
                 verification_pictures=4, enforce_gate=False, calibration=calibration)


def bundle_of(directory: Path, out: Path) -> Path:
    bundle_directory(directory, out)
    return out


# --- agreement on photos the calibration never saw --------------------------------------------


def variations(picture: bytes) -> list[bytes]:
    """The photo, its mirror image, a centre crop (80%) and a half-size copy, as PNGs."""
    image = cv2.imdecode(np.frombuffer(picture, np.uint8), cv2.IMREAD_COLOR)
    h, w = image.shape[:2]
    crop = image[h // 10: h - h // 10, w // 10: w - w // 10]
    half = cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    return [cv2.imencode(".png", v)[1].tobytes() for v in (image, cv2.flip(image, 1), crop, half)]


def held_out_agreement(work: Path) -> dict:
    photos = {name: (IMAGES / name).read_bytes() for name in PHOTOS}
    options = EngineOptions(intra_op_threads=1, use_host_artifacts=False)
    reference = load_model(DEFAULT_MODEL, "fp32", "0", options)
    threshold = reference.spec.score_threshold
    ref_all, cand_all, folds = [], [], []
    for held in PHOTOS:
        calibration = [data for name, data in photos.items() if name != held]
        int8_dir = work / f"held-out-{held}"
        make_int8(reference_dir(work / f"ref-{held}"), int8_dir, calibration, calibration)
        int8 = load_model(int8_dir, "int8", "0", options)
        pictures = variations(photos[held])
        ref = [detections(reference, p, threshold, GATE) for p in pictures]
        cand = [detections(int8, p, threshold, GATE) for p in pictures]
        fold = agreement(ref, cand, threshold, GATE)
        folds.append({"held_out": held, **fold.report()})
        ref_all += ref
        cand_all += cand
    return {"overall": agreement(ref_all, cand_all, threshold, GATE).report(), "folds": folds}


# --- speed ----------------------------------------------------------------------------------


def in_process(dirs: dict[str, Path], picture: Path, workers: int, duration: float, rounds: int) -> dict:
    options = EngineOptions.for_pool(workers)
    runs: dict[str, list] = {name: [] for name in dirs}
    for index in range(rounds):
        for name, directory in dirs.items():
            result = measure_in_process(directory, options, picture, workers, duration)
            runs[name].append(result)
            print(f"  in-process round {index + 1} {name}: c=1 p50 {result.c1_p50_ms:.1f} ms, saturation "
                  f"{result.saturation_rps:.1f} rps (load {load()})", flush=True)
    return {name: {"c1_p50_ms": statistics.median(r.c1_p50_ms for r in results),
                   "c1_rps": statistics.median(r.c1_rps for r in results),
                   "saturation_rps": statistics.median(r.saturation_rps for r in results),
                   "rounds": [asdict(r) for r in results]}
            for name, results in runs.items()}


def served(dirs: dict[str, Path], picture: Path, work: Path, workers: int, duration: int, rounds: int) -> dict:
    runs: dict[str, list] = {name: [] for name in dirs}
    with ExitStack() as stack:
        urls = {}
        for name, directory in dirs.items():
            (work / f"service-{name}").mkdir()
            urls[name] = stack.enter_context(running_service(work / f"service-{name}", workers, None, directory))
        script = wrk_script(work, picture)
        for url in urls.values():
            run_wrk(url, script, SATURATION_CONCURRENCY, 2)  # warm-up
        for index in range(rounds):
            for name, url in urls.items():
                result = run_wrk(url, script, SATURATION_CONCURRENCY, duration)
                runs[name].append(result)
                print(f"  served round {index + 1} {name}: {result.rps:.1f} rps, p50 {result.p50_ms:.1f} ms, p99 "
                      f"{result.p99_ms:.1f} ms, errors {result.non_2xx + result.socket_errors} (load {load()})",
                      flush=True)
    return {name: {"rps": statistics.median(r.rps for r in results),
                   "p50_ms": statistics.median(r.p50_ms for r in results),
                   "p99_ms": statistics.median(r.p99_ms for r in results),
                   "errors": sum(r.non_2xx + r.socket_errors for r in results),
                   "rounds": [asdict(r) for r in results]}
            for name, results in runs.items()}


# --- bytes ----------------------------------------------------------------------------------


def sizes(dirs: dict[str, Path], work: Path) -> dict:
    figures = {}
    for name, directory in dirs.items():
        bundle = bundle_of(directory, work / f"{name}.zip")
        frame = work / f"{name}.zip.zst"
        figures[name] = {"model": (directory / "model.onnx").stat().st_size, "bundle": bundle.stat().st_size,
                         "compressed": compress_bundle(bundle, frame).patch_size}
    return figures


def head_deltas(work: Path, int8_v1: Path, photos: list[bytes]) -> dict:
    """fp32 and int8 bundles of the demo model and of a head fine-tune; zstd patch v1 -> v2 of each."""
    work.mkdir(parents=True)
    tuned = work / "tuned.onnx"
    perturb(DEFAULT_MODEL / "model.onnx", tuned, head_only=True)
    fp32_v1 = bundle_of(reference_dir(work / "fp32-v1"), work / "fp32-v1.zip")
    fp32_v2 = bundle_of(reference_dir(work / "fp32-v2", tuned), work / "fp32-v2.zip")
    make_int8(reference_dir(work / "ref-v2", tuned), work / "int8-v2", photos, photos)
    int8_v2 = bundle_of(work / "int8-v2", work / "int8-v2.zip")
    figures = {}
    for name, (v1, v2) in {"fp32": (fp32_v1, fp32_v2), "int8": (int8_v1, int8_v2)}.items():
        info = build_patch(v1, v2, work / f"{name}.patch")
        figures[name] = {"bundle": v2.stat().st_size, "patch": info.patch_size,
                         "share": round(info.patch_size / v2.stat().st_size, 4)}
    return figures


# --- report ---------------------------------------------------------------------------------


def report(figures: dict) -> None:
    setup, speed, serve = figures["setup"], figures["in_process"], figures["served"]
    print(f"\nsetup: {setup['cpu']}; int8 support: {setup['int8_support']}; onnxruntime {setup['onnxruntime']}; "
          f"{setup['workers']} workers; {setup['rounds']} interleaved rounds of {setup['duration_s']} s; "
          f"load {setup['load_before']} -> {setup['load_after']}")
    print(f"\n{'':<34}{'fp32':>10}{'int8':>10}{'int8/fp32':>11}")
    rows = [
        ("in-process c=1 p50 ms", speed["fp32"]["c1_p50_ms"], speed["int8"]["c1_p50_ms"]),
        ("in-process saturation rps", speed["fp32"]["saturation_rps"], speed["int8"]["saturation_rps"]),
        ("served /detect saturation rps", serve["fp32"]["rps"], serve["int8"]["rps"]),
        ("served p50 ms", serve["fp32"]["p50_ms"], serve["int8"]["p50_ms"]),
        ("served p99 ms", serve["fp32"]["p99_ms"], serve["int8"]["p99_ms"]),
    ]
    for label, fp32, int8 in rows:
        print(f"{label:<34}{fp32:>10.1f}{int8:>10.1f}{int8 / fp32:>11.2f}")
    for name in ("fp32", "int8"):
        print(f"served / in-process saturation, {name}: {serve[name]['rps'] / speed[name]['saturation_rps']:.2f}")
    speedup = serve["int8"]["rps"] / serve["fp32"]["rps"]
    ceiling = serve["int8"]["rps"] / speed["int8"]["saturation_rps"]
    print(f"targets: served int8/fp32 {speedup:.2f} (>= {TARGET_SERVED_SPEEDUP}); served int8 / its in-process "
          f"ceiling {ceiling:.2f} (>= {TARGET_SERVED_OF_CEILING}); errors {serve['fp32']['errors']}, "
          f"{serve['int8']['errors']}")
    print("\nbytes              fp32        int8   int8/fp32")
    for key in ("model", "bundle", "compressed"):
        fp32, int8 = figures["bytes"]["fp32"][key], figures["bytes"]["int8"][key]
        print(f"{key:<12}{fp32:>12}{int8:>12}{int8 / fp32:>11.3f}")
    print(f"target: bundle bytes int8/fp32 <= {TARGET_BYTES}")
    held = figures["held_out"]["overall"]
    print(f"\nagreement on photos not used for calibration (leave-one-out, 4 variations each): F1 {held['f1']:.3f}, "
          f"{held['matched']} of {held['reference_detections']} fp32 detections found, "
          f"{held['candidate_detections']} int8 detections, mean score difference {held['mean_score_diff']:.4f} "
          f"(max {held['max_score_diff']:.4f})")
    for fold in figures["held_out"]["folds"]:
        print(f"  {fold['held_out']:<18} F1 {fold['f1']:.3f}  {fold['matched']}/{fold['reference_detections']} found, "
              f"{fold['candidate_detections']} made")
    deltas = figures["deltas"]
    print(f"\nhead fine-tune delta: int8 {deltas['int8']['patch']} bytes ({100 * deltas['int8']['share']:.1f}% of "
          f"its {deltas['int8']['bundle']}-byte bundle); fp32 {deltas['fp32']['patch']} bytes "
          f"({100 * deltas['fp32']['share']:.1f}% of {deltas['fp32']['bundle']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved fp32/int8 rounds (default 3)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per measurement (default 8)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="gunicorn workers (default: cores)")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON to this path")
    args = parser.parse_args(argv)
    cpu = next((value for key, value in cpuinfo_lines() if key == "model name"), "unknown CPU")
    figures: dict = {"setup": {"cpu": cpu, "int8_support": int8_support().why, "onnxruntime": onnxruntime.__version__,
                               "workers": args.workers, "rounds": args.rounds, "duration_s": args.duration,
                               "load_before": load()}}
    with tempfile.TemporaryDirectory(prefix="twinfer-variants-") as tmp:
        work = Path(tmp)
        photos = [(IMAGES / name).read_bytes() for name in PHOTOS]
        dirs = {"fp32": reference_dir(work / "fp32"), "int8": work / "int8"}
        make_int8(reference_dir(work / "int8-reference"), dirs["int8"], photos, photos)
        figures["bytes"] = sizes(dirs, work)
        print("held-out agreement ...", flush=True)
        figures["held_out"] = held_out_agreement(work / "held-out")
        figures["deltas"] = head_deltas(work / "deltas", work / "int8.zip", photos)
        picture = make_pictures(work)[PICTURE]
        print("in-process ...", flush=True)
        figures["in_process"] = in_process(dirs, picture, args.workers, args.duration, args.rounds)
        print("served ...", flush=True)
        figures["served"] = served(dirs, picture, work, args.workers, args.duration, args.rounds)
        shutil.rmtree(work / "held-out", ignore_errors=True)
    figures["setup"]["load_after"] = load()
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
