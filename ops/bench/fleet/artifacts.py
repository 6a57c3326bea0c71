"""What the fleet downloads: the bundled SSD as bundle 1.0.0, a head-only fine-tune of it as
bundle 1.0.1, and the delta patch 1.0.0 -> 1.0.1.

The fine-tune multiplies every float initializer feeding a ``BoxPredictor_*`` node (the box
and class heads, about 9% of the weights) by ``1 + N(0, 0.01)``: the kind of update a fleet
gets most often, where a delta should pay. Both model files are written by the same
``onnx.save``, so the patch sees only the weights that changed, not a re-serialisation.
Bundles are built and checked by the project's own ``python -m service bundle``.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_MODEL = PROJECT_ROOT / "models" / "default"
HEAD_PREFIX = "BoxPredictor_"


@dataclass(frozen=True)
class Blob:
    """A file the blob store serves."""

    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class Artifacts:
    name: str
    base_version: str
    next_version: str
    base: Blob  # bundle 1.0.0
    full: Blob  # bundle 1.0.1
    patch: Blob | None  # delta 1.0.0 -> 1.0.1; None when service.update.delta is not there yet
    patch_missing_reason: str | None
    head_fraction: float  # share of the weight bytes the fine-tune changed


def _head_initializers(model: onnx.ModelProto) -> list[str]:
    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return sorted({x for n in model.graph.node if n.name.startswith(HEAD_PREFIX) for x in n.input if x in floats})


def write_models(base_dir: Path, next_dir: Path, seed: int = 0) -> float:
    """Write the original and the fine-tuned model (each beside the default's labels and
    metadata); returns the share of initializer bytes changed."""
    model = onnx.load(str(DEFAULT_MODEL / "model.onnx"))
    for directory in (base_dir, next_dir):
        directory.mkdir(parents=True, exist_ok=True)
        for extra in ("labels.txt", "twinfer.json"):
            shutil.copyfile(DEFAULT_MODEL / extra, directory / extra)
    onnx.save(model, str(base_dir / "model.onnx"))
    rng = np.random.default_rng(seed)
    by_name = {i.name: i for i in model.graph.initializer}
    changed = 0
    for name in _head_initializers(model):
        weights = numpy_helper.to_array(by_name[name])
        tuned = (weights * (1.0 + rng.normal(0.0, 0.01, weights.shape))).astype(weights.dtype)
        by_name[name].CopyFrom(numpy_helper.from_array(tuned, name))
        changed += weights.nbytes
    onnx.save(model, str(next_dir / "model.onnx"))
    total = sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer)
    return changed / total


def build_bundle(model_dir: Path, name: str, version: str, out: Path) -> Blob:
    """``python -m service bundle``: the operator's command, with the device's own checks."""
    command = [
        sys.executable, "-m", "service", "bundle", str(model_dir / "model.onnx"),
        "--labels", str(model_dir / "labels.txt"), "--metadata", str(model_dir / "twinfer.json"),
        "--name", name, "--version", version, "-o", str(out), "--json",
    ]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bundle {name} {version} failed:\n{done.stderr}")
    result = json.loads(done.stdout)
    return Blob(out, result["size"], result["sha256"])


def build_patch(base: Blob, full: Blob, out: Path) -> tuple[Blob | None, str | None]:
    """The delta with ``service.update.delta.build_patch``; (None, why) when it is not available."""
    from service.update.verify import file_digests

    try:
        from service.update.delta import build_patch as build
    except ImportError as exc:
        return None, f"service.update.delta is not importable ({exc})"
    build(base.path, full.path, out)
    return Blob(out, out.stat().st_size, file_digests(out)[0]), None


def build_artifacts(
    work: Path, name: str = "ssd-oidv4", base_version: str = "1.0.0", next_version: str = "1.0.1"
) -> Artifacts:
    fraction = write_models(work / base_version, work / next_version)
    base = build_bundle(work / base_version, name, base_version, work / f"{name}_{base_version}.zip")
    full = build_bundle(work / next_version, name, next_version, work / f"{name}_{next_version}.zip")
    patch, missing = build_patch(base, full, work / f"{name}_{base_version}_to_{next_version}.patch")
    return Artifacts(name, base_version, next_version, base, full, patch, missing, fraction)
