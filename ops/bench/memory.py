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

Run from the project root: ``.venv/bin/python ops/bench/memory.py [--synthetic-mb 300]``.
"""
from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import shutil
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

        if kind == "baseline:onnx":
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
    ctx = multiprocessing.get_context("spawn")
    started = []
    try:
        for index in range(workers):
            directories = [str(model.directory)]
            if index == 0 and swap_dir is not None:
                directories.append(str(swap_dir))
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(directories, kind, shared, child), daemon=True)
            proc.start()
            started.append((proc, parent))
        reports = []
        for proc, parent in started:
            if not parent.poll(600):
                raise RuntimeError(f"{model.label}: a worker did not load in 600 s")
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
    from twinfer.engines import runtime
    from twinfer.engines.artifacts import host_artifact_dir
    from twinfer.loader import find_model_file

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
        cache = host_artifact_dir(find_model_file(tflite)) / runtime("tflite").artifact_files["weight_cache"]
        models.append(Model("SSD fp16 (TFLite)", tflite, "detection", cache.stat().st_size, "tflite"))
    return models


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic-mb", type=int, default=300, help="weights of the generated ONNX model (default 300)")
    parser.add_argument("--no-tflite", action="store_true", help="skip the TFLite model")
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
