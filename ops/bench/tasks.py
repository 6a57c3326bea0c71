#!/usr/bin/env python3
"""Every task on this machine, in one run, on the real MediaPipe models and the bundled SSD.

* in-process (``VisionModel.predict``, or ``twinfer.chain.predict_chained`` for a chained
  model: the request path's core), one caller: p50 latency per task;
* served (``python -m service``, gunicorn, two workers, the task pool rolled out from a local
  twin): ``POST /predict?model=...`` throughput at saturation (wrk, c=4) per task; the tasks
  take turns round by round (the machine is shared: medians, and the load seen);
* the chains: the second stage's cost per crop (its ``timing_ms`` inference over the crops,
  in-process), and served throughput on a picture of four faces with ``max_crops=1`` and
  ``max_crops=4`` (same picture, same decode and detector: the difference is the crops).

Pictures: ``astronaut.png`` as a JPEG (512x512), and four copies of its face, 448x448.
Run from the project root: ``.venv/bin/python ops/bench/tasks.py [--rounds 3] [--duration 8]``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
for path in (PROJECT_ROOT, PROJECT_ROOT / "ops" / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from serving import run_wrk, wrk_script  # noqa: E402

from tests.support.paths import DEFAULT_MODEL, IMAGES  # noqa: E402
from tests.support.task_models import mediapipe_tasks, model_dir, model_files, planted_classifier  # noqa: E402
from tests.support.task_pool import serving_task_pool  # noqa: E402
from twinfer.chain import predict_chained  # noqa: E402
from twinfer.engines import EngineOptions  # noqa: E402
from twinfer.loader import load_model  # noqa: E402
from twinfer.pipeline import PredictOptions, VisionModel  # noqa: E402

SATURATION_CONCURRENCY = 4  # 2 workers, one inference slot each: 4 keeps both busy with one waiting
MAX_PIXELS = 50_000_000
DEFAULT = "ssd-mobilenetv2-oidv4"
# The task each model is measured as, in the order they take turns.
# The classifier is a planted one (no real classifier is at hand): it measures the serving
# path of a classification answer, not a network.
TASKS = {DEFAULT: "detection (SSD)", "face": "detection (BlazeFace)", "kind": "classification (planted logits)",
         "selfie": "segmentation", "pose": "keypoints: pose detector -> pose", "mesh": "keypoints: BlazeFace -> face mesh"}


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def pictures(directory: Path) -> dict[str, Path]:
    """The astronaut as a JPEG, and a 2x2 of her face (mirrored in turn): four faces."""
    image = cv2.imread(str(IMAGES / "astronaut.png"))
    face = image[129 - 112:129 + 112, 227 - 112:227 + 112]
    faces = np.vstack([np.hstack([face, cv2.flip(face, 1)]), np.hstack([cv2.flip(face, 1), face])])
    out = {}
    for name, pixels in (("astronaut", image), ("four_faces", faces)):
        out[name] = directory / f"{name}.jpg"
        cv2.imwrite(str(out[name]), pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return out


def pool_contents() -> dict[str, dict[str, bytes]]:
    classifier = model_files("classifier.onnx", {"top_k": 5}, [f"class {i}" for i in range(1000)],
                             model_bytes=planted_classifier([float(i % 7) for i in range(1000)], size=224))
    return {**mediapipe_tasks(), "kind": classifier}


def in_process_models(root: Path) -> dict[str, VisionModel]:
    options = EngineOptions(intra_op_threads=1, use_host_artifacts=False)  # one worker's engine setting
    models = {name: load_model(model_dir(root, name, files), name, "1", options)
              for name, files in pool_contents().items()}
    models[DEFAULT] = load_model(DEFAULT_MODEL, DEFAULT, "1", options)
    return models


def call(models: dict[str, VisionModel], name: str, data: bytes, max_crops: int | None = None):
    model = models[name]
    if model.spec.chain is not None:
        return predict_chained(model, models[model.spec.chain.detector], data, MAX_PIXELS, PredictOptions(),
                               max_crops=max_crops)
    return model.predict(data, MAX_PIXELS)


def p50_ms(models: dict[str, VisionModel], name: str, data: bytes, seconds: float) -> float:
    for _ in range(3):
        call(models, name, data)
    latencies = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call(models, name, data)
        latencies.append((time.perf_counter() - started) * 1e3)
    return statistics.median(latencies)


def crop_costs(models: dict[str, VisionModel], data: dict[str, bytes], repeats: int = 20) -> dict[str, dict]:
    """Per chain: the second stage (crop + inference) per crop, and the whole request, with
    1 and with up to 4 crops (medians over ``repeats``): the face mesh on the four faces, the
    pose on the astronaut (one person: one crop)."""
    out = {}
    for name, picture in (("mesh", "four_faces"), ("pose", "astronaut")):
        rows = {}
        for crops in (1, 4):
            runs = [call(models, name, data[picture], max_crops=crops) for _ in range(repeats)]
            rows[crops] = {
                "crops": len(runs[0].result),
                "second_stage_per_crop_ms": statistics.median(
                    (r.timings_ms["crop"] + r.timings_ms["inference"]) / max(1, len(r.result)) for r in runs),
                "total_ms": statistics.median(r.timings_ms["total"] for r in runs),
            }
        out[name] = rows
    return out


def served(url: str, work: Path, picture_files: dict[str, Path], rounds: int, duration: int) -> dict:
    scripts = {name: wrk_script(work, path) for name, path in picture_files.items()}
    results: dict[str, list] = {name: [] for name in TASKS}
    crops: dict[int, list] = {1: [], 4: []}
    for _ in range(rounds):
        for name in TASKS:
            path = "/predict" if name == DEFAULT else f"/predict?model={name}"
            results[name].append(run_wrk(url, scripts["astronaut"], SATURATION_CONCURRENCY, duration, path))
        for count in (1, 4):
            crops[count].append(run_wrk(url, scripts["four_faces"], SATURATION_CONCURRENCY, duration,
                                        f"/predict?model=mesh&max_crops={count}"))
    summary = {name: {"rps": statistics.median(r.rps for r in runs), "p99_ms": statistics.median(r.p99_ms for r in runs),
                      "errors": sum(r.non_2xx + r.socket_errors for r in runs)} for name, runs in results.items()}
    summary["mesh crops"] = {count: {"rps": statistics.median(r.rps for r in runs),
                                     "errors": sum(r.non_2xx + r.socket_errors for r in runs)}
                             for count, runs in crops.items()}
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="served rounds; every task takes a turn in each")
    parser.add_argument("--duration", type=int, default=8, help="seconds of wrk per task and round")
    parser.add_argument("--in-process-seconds", type=float, default=4.0, help="seconds of calls per task, in-process")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of the served runs")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report: dict = {"load_before": load()}
    with tempfile.TemporaryDirectory(prefix="twinfer-tasks-") as tmp:
        work = Path(tmp)
        picture_files = pictures(work)
        data = {name: path.read_bytes() for name, path in picture_files.items()}
        models = in_process_models(work / "models")
        report["in_process_p50_ms"] = {name: p50_ms(models, name, data["astronaut"], args.in_process_seconds)
                                       for name in TASKS}
        report["chains"] = crop_costs(models, data)
        del models
        with serving_task_pool(work / "store", pool_contents(), workers=args.workers) as pool:
            report["served"] = served(pool.service.url, work, picture_files, args.rounds, args.duration)
    report["load_after"] = load()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"load {report['load_before']} -> {report['load_after']}; {args.workers} workers, wrk c={SATURATION_CONCURRENCY}, "
          f"{args.rounds} rounds x {args.duration} s, medians")
    print(f"{'model':<22} {'task':<36} {'in-process p50':>15} {'served rps':>11} {'p99 ms':>8} {'errors':>7}")
    for name, task in TASKS.items():
        s = report["served"][name]
        print(f"{name:<22} {task:<36} {report['in_process_p50_ms'][name]:>12.1f} ms {s['rps']:>11.1f} "
              f"{s['p99_ms']:>8.1f} {s['errors']:>7}")
    for name, rows in report["chains"].items():
        one, four = rows[1], rows[4]
        print(f"chain {name}: second stage {one['second_stage_per_crop_ms']:.1f} ms per crop with 1 crop, "
              f"{four['second_stage_per_crop_ms']:.1f} ms with {four['crops']}; whole request "
              f"{one['total_ms']:.1f} ms with 1 crop, {four['total_ms']:.1f} ms with {four['crops']}")
    crops = report["served"]["mesh crops"]
    print(f"served face mesh on four faces: {crops[1]['rps']:.1f} rps with max_crops=1, {crops[4]['rps']:.1f} rps "
          f"with max_crops=4 ({crops[4]['rps'] / crops[1]['rps']:.2f}x), errors {crops[1]['errors'] + crops[4]['errors']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
