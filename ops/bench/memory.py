#!/usr/bin/env python3
"""What does each extra worker cost in memory, naive loading vs shared (host artifact)?

For each model it spawns 1, 2 and 4 worker processes (multiprocessing spawn, like fresh
gunicorn workers) that load the model through ``twinfer.loader.load_model`` (or the engine
for the synthetic model, which is no detector), run it once and hold it; with every
process loaded, the parent reads ``/proc/<pid>/smaps_rollup`` (PSS splits each shared
page between the processes that map it, so the pool's total PSS is what the pool really
costs). Then a swap: a pool of 2 where one worker holds a second copy of the model.

Models: (a) the demo model (``models/default``, SSD MobileNetV2 ONNX), (b) a generated
ONNX model with ~300 MB of MatMul weights, (c) the TFLite SSD fixture (XNNPACK weight
cache). "weights" is the initializer bytes (ONNX) or the XNNPACK packed-weight bytes
(TFLite: what each Interpreter packs privately).

Targets: each extra worker <= 10% of the weight bytes + 30 MiB; a swap <= 1.1 model copies.

``--pool``: several models in each worker (shared weights only), as a pool serves them: 1, 2
and 4 workers each holding 1, 2 or 3 models ((a) the demo SSD ONNX, then (b) BlazeFace,
TFLite or ONNX, then (c) the SSD fp16 TFLite), in interleaved rounds (medians). Each extra
model must cost each extra worker <= 10% of its weight bytes + 30 MiB, as the single model
does: the extra-worker cost with k models minus that with k - 1 (the first model: minus the
runtime baseline). A runtime's first model in a worker pays for importing that runtime.

Run from the project root: ``.venv/bin/python ops/bench/memory.py [--synthetic-mb 300]``,
``.venv/bin/python ops/bench/memory.py --pool [--rounds 2] [--face-format tflite]``.
"""
from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: ``workers`` lives in the project root
    sys.path.insert(0, str(PROJECT_ROOT))

import numpy as np  # noqa: E402

from tests.support.memory import smaps_rollup, synthetic_onnx  # noqa: E402

MiB = 1024 * 1024
WORKER_COUNTS = (1, 2, 4)
EXTRA_WORKER_TARGET = (0.10, 30 * MiB)  # fraction of weight bytes, plus a constant
SWAP_TARGET_COPIES = 1.1


@dataclass(frozen=True)
class Model:
    label: str
    directory: Path
    kind: str  # "detection" (load_model) or "engine" (open_engine: not a detector)
    weight_bytes: int
    format: str  # "onnx" or "tflite"


def onnx_initializer_bytes(path: Path) -> int:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


# --- the spawned worker -------------------------------------------------------------------


def _load(directory: str, kind: str, shared: bool):
    from twinfer.engines import EngineOptions, open_engine
    from twinfer.loader import find_model_file, load_model

    options = EngineOptions(intra_op_threads=1, use_host_artifacts=shared)
    if kind == "detection":
        model = load_model(Path(directory), "bench", "1", options)
        model.warm_up()
        return model, model.engine.shared_weights
    engine = open_engine(find_model_file(Path(directory)), options)
    engine.run({t.name: np.ones([d or 1 for d in t.shape], t.dtype) for t in engine.signature.inputs})
    return engine, engine.shared_weights


def _worker(directories: list[str], kind: str, shared: bool, conn) -> None:
    """Load every directory in turn (two entries = a worker in the middle of a swap), report
    the pid, hold until told to exit. ``kind`` "baseline:<format>": import what a worker
    imports for that format and load nothing (the process's own cost)."""
    if kind.startswith("baseline:"):
        import twinfer.loader  # noqa: F401  (decoders, imaging, cv2, pillow)

        for fmt in kind.split(":", 1)[1].split("+"):  # "onnx", "tflite" or "onnx+tflite"
            if fmt == "onnx":
                import twinfer.engines.onnx  # noqa: F401
            else:
                import twinfer.engines.litert  # noqa: F401
        held = []
    else:
        held = [_load(d, kind, shared) for d in directories]
    gc.collect()
    conn.send((os.getpid(), all(flag for _, flag in held)))
    conn.recv()


@dataclass(frozen=True)
class Pool:
    pss: list[int]  # per worker
    private: list[int]  # Private_Clean + Private_Dirty per worker
    shared_flags: list[bool]

    @property
    def total(self) -> int:
        return sum(self.pss)


def run_pool(model: Model, shared: bool, workers: int, swap_dir: Path | None = None, baseline: bool = False) -> Pool:
    """``workers`` processes holding the model; with ``swap_dir`` the first also holds that
    one; ``baseline``: the same processes without any model."""
    kind = f"baseline:{model.format}" if baseline else model.kind
    per_worker = [[str(model.directory)] for _ in range(workers)]
    if swap_dir is not None:
        per_worker[0].append(str(swap_dir))
    return spawn_pool(model.label, per_worker, kind, shared)


def spawn_pool(label: str, per_worker: list[list[str]], kind: str, shared: bool) -> Pool:
    """One spawned process per entry of ``per_worker``, each loading those directories."""
    ctx = multiprocessing.get_context("spawn")
    started = []
    try:
        for directories in per_worker:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(directories, kind, shared, child), daemon=True)
            proc.start()
            started.append((proc, parent))
        reports = []
        for proc, parent in started:
            if not parent.poll(600):
                raise RuntimeError(f"{label}: a worker did not load in 600 s")
            reports.append(parent.recv())
        rollups = [smaps_rollup(pid) for pid, _ in reports]  # all alive and loaded
        return Pool(
            pss=[r["Pss"] for r in rollups],
            private=[r["Private_Clean"] + r["Private_Dirty"] for r in rollups],
            shared_flags=[flag for _, flag in reports],
        )
    finally:
        for proc, parent in started:
            try:
                parent.send("exit")
            except OSError:
                pass
        for proc, _ in started:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
                proc.join()


# --- preparing the models -------------------------------------------------------------------


def version_dir(root: Path, name: str, files: list[Path]) -> Path:
    directory = root / name / "1"
    directory.mkdir(parents=True)
    for path in files:
        shutil.copy2(path, directory / path.name)
    return directory


def prepare(directory: Path) -> None:
    from service.optimize import prepare_host_artifacts

    result = prepare_host_artifacts(directory)  # in a child, as the supervisor does it
    if not result.ok:
        raise SystemExit(f"could not prepare {directory}: {result.reason}")
    print(
        f"  prepared {directory.relative_to(directory.parents[2])}: {result.bytes / MiB:.1f} MiB of artifact files in "
        f"{result.seconds:.1f} s, outputs {'bit-identical' if result.bit_identical else f'max diff {result.max_abs_diff:.2g}'}",
        flush=True,
    )


def build_models(root: Path, synthetic_mb: int, with_tflite: bool) -> list[Model]:
    models = []
    demo = version_dir(root, "demo", [p for p in (PROJECT_ROOT / "models" / "default").iterdir() if p.is_file()])
    prepare(demo)
    models.append(Model("demo (ONNX)", demo, "detection", onnx_initializer_bytes(demo / "model.onnx"), "onnx"))
    synthetic = root / "synthetic" / "1"
    synthetic.mkdir(parents=True)
    weights = synthetic_onnx(synthetic / "model.onnx", synthetic_mb * 1_000_000)
    prepare(synthetic)
    models.append(Model(f"synthetic {synthetic_mb} MB (ONNX)", synthetic, "engine", weights, "onnx"))
    if with_tflite:
        fixtures = PROJECT_ROOT / "tests" / "fixtures" / "models"
        tflite = version_dir(root, "ssd-tflite", [fixtures / "ssd_mobilenetv2_oidv4_fp16.tflite", fixtures / "oidv4_labelmap.txt"])
        prepare(tflite)
        models.append(Model("SSD fp16 (TFLite)", tflite, "detection", tflite_weight_bytes(tflite), "tflite"))
    return models


def tflite_weight_bytes(directory: Path) -> int:
    """The XNNPACK packed-weight cache of a prepared .tflite: what each Interpreter would pack privately."""
    from twinfer.engines import runtime
    from twinfer.engines.artifacts import host_artifact_dir
    from twinfer.loader import find_model_file

    return (host_artifact_dir(find_model_file(directory)) / runtime("tflite").artifact_files["weight_cache"]).stat().st_size


def build_pool_models(root: Path, face_format: str) -> list[Model]:
    """The models a worker of ``--pool`` holds, in the order they are added: the demo SSD
    (ONNX, the bundled default), BlazeFace (a face model beside it), the SSD fp16 TFLite."""
    fixtures = PROJECT_ROOT / "tests" / "fixtures" / "models"
    demo = version_dir(root, "demo", [p for p in (PROJECT_ROOT / "models" / "default").iterdir() if p.is_file()])
    face = version_dir(root, f"face-{face_format}", [fixtures / f"blazeface_short_range.{face_format}"])
    (face / "labels.txt").write_text("face\n")
    tflite = version_dir(root, "ssd-tflite", [fixtures / "ssd_mobilenetv2_oidv4_fp16.tflite", fixtures / "oidv4_labelmap.txt"])
    models = []
    for label, directory, fmt in (("SSD demo (ONNX)", demo, "onnx"), (f"BlazeFace ({face_format})", face, face_format),
                                  ("SSD fp16 (TFLite)", tflite, "tflite")):
        prepare(directory)
        weights = onnx_initializer_bytes(find_one(directory, ".onnx")) if fmt == "onnx" else tflite_weight_bytes(directory)
        models.append(Model(label, directory, "detection", weights, fmt))
    return models


def find_one(directory: Path, suffix: str) -> Path:
    (path,) = [p for p in directory.iterdir() if p.suffix == suffix]
    return path


def second_version(model: Model) -> Path:
    """The same model as another version (its own files and artifact): a real rollout."""
    target = model.directory.parent / "2"
    if not target.exists():
        target.mkdir()
        for path in model.directory.iterdir():
            if path.is_file():
                shutil.copy2(path, target / path.name)
        prepare(target)
    return target


# --- report -------------------------------------------------------------------------------


def mib(value: float) -> str:
    return f"{value / MiB:.1f}"


def extra_worker(pools: dict[int, Pool]) -> float:
    """What the 4th worker costs over the 1st, per worker: (pool PSS at 4 - at 1) / 3."""
    return (pools[4].total - pools[1].total) / 3


def load_text() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def pool_mode(rounds: int, face_format: str) -> int:
    """Workers holding 1, 2 and 3 models (shared weights): per-worker PSS, the extra-worker
    cost per model count and each extra model's part of it against the target."""
    counts = (1, 2, 3)
    with tempfile.TemporaryDirectory(prefix="twinfer-memory-pool-") as tmp:
        models = build_pool_models(Path(tmp), face_format)
        for model in models:
            print(f"  {model.label}: weights {mib(model.weight_bytes)} MiB", flush=True)
        print(f"before measuring: {load_text()}", flush=True)
        formats = [sorted({m.format for m in models[:k]}) for k in counts]
        # samples[key][n] = pool PSS totals over rounds; key: ("baseline", formats) or ("models", k)
        samples: dict[tuple, dict[int, list[Pool]]] = {}
        loads = []
        for r in range(rounds):
            for n in WORKER_COUNTS:  # interleaved: every configuration once per round
                for fmts in sorted({tuple(f) for f in formats}):
                    pool = spawn_pool("baseline", [[] for _ in range(n)], "baseline:" + "+".join(fmts), True)
                    samples.setdefault(("baseline", fmts), {}).setdefault(n, []).append(pool)
                for k in counts:
                    started = time.monotonic()
                    directories = [str(m.directory) for m in models[:k]]
                    pool = spawn_pool(f"{k} models", [list(directories) for _ in range(n)], "detection", True)
                    if not all(pool.shared_flags):
                        raise SystemExit(f"{k} models, {n} workers: shared_weights {pool.shared_flags}")
                    samples.setdefault(("models", k), {}).setdefault(n, []).append(pool)
                    print(f"round {r + 1}/{rounds}: {k} model(s) x {n} worker(s): PSS per worker "
                          f"{' '.join(mib(p) for p in pool.pss)} MiB ({time.monotonic() - started:.0f} s)", flush=True)
            loads.append(os.getloadavg())

    def median_pool(key: tuple, n: int) -> Pool:
        """The round whose pool PSS is the median one (rounds = 2: the lower)."""
        pools = sorted(samples[key][n], key=lambda p: p.total)
        return pools[(len(pools) - 1) // 2]

    def median_extra(key: tuple) -> float:
        return statistics.median((a.total - b.total) / 3 for a, b in zip(samples[key][4], samples[key][1]))

    print(f"\nshared weights, intra-op threads 1, {rounds} interleaved round(s), medians; "
          f"{os.cpu_count()} cores; load average during: "
          + ", ".join("%.2f" % l[0] for l in loads) + f" (1 min, after each round); now {load_text()}")
    print(f"\n{'models in each worker':<58} {'N':>2} {'PSS per worker (MiB)':<28} {'private/worker':>14} {'pool PSS':>9}")
    for fmts in sorted({tuple(f) for f in formats}):
        for n in WORKER_COUNTS:
            pool = median_pool(("baseline", fmts), n)
            print(f"{'(runtime baseline: ' + '+'.join(fmts) + ' imported, no model)':<58} {n:>2} "
                  f"{' '.join(mib(p) for p in pool.pss):<28} {mib(sum(pool.private) / n):>14} {mib(pool.total):>9}")
    for k in counts:
        names = " + ".join(m.label for m in models[:k])
        for n in WORKER_COUNTS:
            pool = median_pool(("models", k), n)
            print(f"{names:<58} {n:>2} {' '.join(mib(p) for p in pool.pss):<28} "
                  f"{mib(sum(pool.private) / n):>14} {mib(pool.total):>9}")
    print("\nextra worker = (pool PSS of 4 workers - of 1 worker) / 3 (median over rounds); the model's part = "
          "extra worker with k models - with k - 1 (k = 1: - the runtime baseline);\n"
          "target per model: <= 10% of its weights + 30 MiB")
    print(f"\n{'k':>1} {'model added':<20} {'weights':>8} {'extra worker':>12} {'model part':>10} {'/weights':>8} "
          f"{'target':>8} {'ok':>3}")
    previous = None
    failures = 0
    for k in counts:
        model = models[k - 1]
        extra = median_extra(("models", k))
        if previous is None:
            part = extra - median_extra(("baseline", tuple(formats[0])))
        else:
            part = extra - previous
        previous = extra
        target = EXTRA_WORKER_TARGET[0] * model.weight_bytes + EXTRA_WORKER_TARGET[1]
        ok = part <= target
        failures += not ok
        print(f"{k:>1} {model.label:<20} {mib(model.weight_bytes):>4} MiB {mib(extra):>8} MiB {mib(part):>6} MiB "
              f"{part / model.weight_bytes:>8.2f} {mib(target):>4} MiB {'yes' if ok else 'NO':>3}")
    for k in counts[1:]:
        if formats[k - 1] != formats[k - 2]:  # model k brings a runtime the worker had not imported
            cost = median_extra(("baseline", tuple(formats[k - 1]))) - median_extra(("baseline", tuple(formats[k - 2])))
            print(f"(model {k} is the first {models[k - 1].format} one: of its part, {mib(cost)} MiB is importing that "
                  f"runtime, from the runtime baselines {'+'.join(formats[k - 1])} - {'+'.join(formats[k - 2])})")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic-mb", type=int, default=300, help="weights of the generated ONNX model (default 300)")
    parser.add_argument("--no-tflite", action="store_true", help="skip the TFLite model")
    parser.add_argument("--pool", action="store_true",
                        help="workers holding 1, 2 and 3 models at once (shared weights): cost of each extra model")
    parser.add_argument("--rounds", type=int, default=2, help="--pool: interleaved rounds, medians reported (default 2)")
    parser.add_argument("--face-format", choices=("tflite", "onnx"), default="tflite",
                        help="--pool: BlazeFace as TFLite (default) or ONNX")
    args = parser.parse_args(argv)
    if not Path("/proc/self/smaps_rollup").exists():
        print("needs Linux (/proc/<pid>/smaps_rollup)", file=sys.stderr)
        return 2
    import onnxruntime

    from twinfer.engines.artifacts import runtime_version

    print(
        f"onnxruntime {onnxruntime.__version__}, ai-edge-litert {runtime_version('tflite')}, "
        f"{os.cpu_count()} cores, intra-op threads 1 per worker",
        flush=True,
    )
    if args.pool:
        return pool_mode(max(1, args.rounds), args.face_format)
    with tempfile.TemporaryDirectory(prefix="twinfer-memory-") as tmp:
        models = build_models(Path(tmp), args.synthetic_mb, not args.no_tflite)
        summaries = []
        baselines = {}
        for fmt in sorted({m.format for m in models}):
            probe = next(m for m in models if m.format == fmt)
            baselines[fmt] = {n: run_pool(probe, False, n, baseline=True) for n in WORKER_COUNTS}
            print(
                f"runtime baseline ({fmt}: interpreter + numpy + cv2 + runtime imported, no model): PSS per worker "
                + ", ".join(f"N={n}: {mib(b.total / n)}" for n, b in baselines[fmt].items())
                + f" MiB; extra worker {mib((baselines[fmt][4].total - baselines[fmt][1].total) / 3)} MiB",
                flush=True,
            )
        print(f"\n{'model':<26} {'weights':>8} {'mode':<7} {'N':>2} {'PSS per worker (MiB)':<30} "
              f"{'private/worker':>14} {'pool PSS':>9}")
        for model in models:
            for shared in (False, True):
                mode = "shared" if shared else "naive"
                pools = {}
                for n in WORKER_COUNTS:
                    started = time.monotonic()
                    pool = pools[n] = run_pool(model, shared, n)
                    if any(flag != shared for flag in pool.shared_flags):
                        raise SystemExit(f"{model.label} {mode}: shared_weights {pool.shared_flags}")
                    print(
                        f"{model.label:<26} {mib(model.weight_bytes):>8} {mode:<7} {n:>2} "
                        f"{' '.join(mib(p) for p in pool.pss):<30} {mib(sum(pool.private) / n):>14} "
                        f"{mib(pool.total):>9}   ({time.monotonic() - started:.0f} s)",
                        flush=True,
                    )
                base = baselines[model.format]
                raw = (pools[4].total - pools[1].total) / 3
                extra = raw - (base[4].total - base[1].total) / 3
                same = run_pool(model, shared, 2, swap_dir=model.directory)
                other = run_pool(model, shared, 2, swap_dir=second_version(model))
                summaries.append((model, mode, raw, extra, pools, same, other))
        print("\nextra-worker cost of the model = [(pool PSS, 4 workers - 1 worker) - (same for the runtime "
              "baseline)] / 3;\n  target <= 10% of weights + 30 MiB ('raw' includes the bare worker process)")
        print("swap = pool of 2, one worker also holding a second model; overhead in model copies = "
              f"(pool PSS - pool PSS of 2) / weights; target <= {SWAP_TARGET_COPIES}")
        print(f"\n{'model':<26} {'mode':<7} {'raw':>9} {'extra/worker':>12} {'/weights':>9} {'target':>8} {'ok':>3}   "
              f"{'swap same copy':>14} {'swap new version':>16}")
        for model, mode, raw, extra, pools, same, other in summaries:
            target = EXTRA_WORKER_TARGET[0] * model.weight_bytes + EXTRA_WORKER_TARGET[1]
            same_copies = (same.total - pools[2].total) / model.weight_bytes
            other_copies = (other.total - pools[2].total) / model.weight_bytes
            print(
                f"{model.label:<26} {mode:<7} {mib(raw):>5} MiB {mib(extra):>8} MiB {extra / model.weight_bytes:>9.2f} "
                f"{mib(target):>4} MiB {'yes' if extra <= target else 'NO':>3}   "
                f"{same_copies:>9.2f} {'ok' if same_copies <= SWAP_TARGET_COPIES else 'NO':>4} "
                f"{other_copies:>11.2f} {'ok' if other_copies <= SWAP_TARGET_COPIES else 'NO':>4}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
