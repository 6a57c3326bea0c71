"""Host artifacts: weights prepared once by the supervisor and mapped (shared) by workers.

Real models (the bundled SSD MobileNetV2 ONNX, the TFLite fixtures) and, for the memory
test, a generated ONNX model with ~100 MB of MatMul weights in two real processes.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.optimize import TOLERANCE, ensure_host_artifacts, prepare_host_artifacts
from tests.support.memory import smaps_rollup, synthetic_onnx
from tests.support.paths import PROJECT_ROOT
from twinfer import imaging
from twinfer.engines import EngineOptions, artifacts, open_engine
from twinfer.engines.artifacts import READY_MARKER, find_host_artifact, host_artifact_dir, host_key
from twinfer.engines.litert import ARTIFACT_FILES as LITERT_FILES
from twinfer.engines.onnx import ARTIFACT_FILES as ONNX_FILES
from twinfer.loader import find_model_file, load_model

pytestmark = pytest.mark.processes  # every test here starts processes

ROOT = PROJECT_ROOT
MODELS = ROOT / "tests" / "fixtures" / "models"
IMAGES = ROOT / "tests" / "fixtures" / "images"
DEFAULT_MODEL = ROOT / "models" / "default"
MiB = 1024 * 1024
SHARED = EngineOptions(intra_op_threads=1)
NAIVE = EngineOptions(intra_op_threads=1, use_host_artifacts=False)

# name -> (model file, labels file or None)
CASES = {
    "ssd-onnx": (DEFAULT_MODEL / "model.onnx", DEFAULT_MODEL / "labels.txt"),
    "face-onnx": (MODELS / "blazeface_short_range.onnx", None),
    "yolov3-onnx": (MODELS / "ref_tiny_yolov3_11.onnx", None),
    "ssd-tflite": (MODELS / "ssd_mobilenetv2_oidv4_fp16.tflite", MODELS / "oidv4_labelmap.txt"),
    "face-tflite": (MODELS / "blazeface_short_range.tflite", None),
    "postprocess-tflite": (MODELS / "ref_ssd_postprocess_300.tflite", MODELS / "oidv4_labelmap.txt"),
}


def _version_dir(root: Path, case: str) -> Path:
    model, labels = CASES[case]
    directory = root / case / "1.0.0"
    directory.mkdir(parents=True)
    shutil.copy(model, directory / model.name)
    if labels is not None:
        shutil.copy(labels, directory / "labels.txt")
    if case == "ssd-onnx":
        shutil.copy(DEFAULT_MODEL / "twinfer.json", directory / "twinfer.json")
    return directory


def _feeds(model, picture: Path) -> dict[str, np.ndarray]:
    """What ``VisionModel.detect`` feeds the engine for ``picture``."""
    data = picture.read_bytes()
    header = imaging.read_header(data, 50_000_000)
    image = imaging.decode(data, header)
    pixels, geometry = imaging.to_input(image, header, model.spec.input, model.input_width, model.input_height)
    tensor = model.engine.signature.image_input
    feeds = {tensor.name: imaging.to_tensor(pixels, model.spec.input, tensor.dtype)}
    feeds.update(model.decoder.extra_inputs(geometry))
    return feeds


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every case staged and prepared once (the ONNX demo model through the child process
    the supervisor uses, the rest in-process)."""
    root = tmp_path_factory.mktemp("store")
    dirs = {}
    for case in CASES:
        directory = _version_dir(root, case)
        result = prepare_host_artifacts(directory, isolate=(case == "ssd-onnx"))
        assert result.ok, f"{case}: {result.reason}"
        assert result.created and result.max_abs_diff is not None and result.max_abs_diff <= TOLERANCE
        dirs[case] = directory
    return dirs


@pytest.mark.parametrize("case", list(CASES))
def test_artifact_is_prepared_and_loaded_with_shared_weights(prepared: dict[str, Path], case: str) -> None:
    directory = prepared[case]
    model_path = find_model_file(directory)  # the artifact under .host/ is not a second model file
    target = host_artifact_dir(model_path)
    assert target == directory / ".host" / host_key("onnx" if case.endswith("onnx") else "tflite")
    assert (target / READY_MARKER).is_file()
    marker = json.loads((target / READY_MARKER).read_text())
    assert marker["source"] == {"file": model_path.name, "size": model_path.stat().st_size, "sha256": _digest(model_path)}
    files = {p.name for p in target.iterdir()}
    if case.endswith("onnx"):
        assert files == {"model.optimized.onnx", "weights.bin", READY_MARKER}
    else:
        assert files == {"xnnpack.cache", READY_MARKER}
    engine = open_engine(model_path, SHARED)
    assert engine.shared_weights is True
    assert engine.artifact_dir == target
    assert open_engine(model_path, NAIVE).shared_weights is False


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_match_the_original_model(prepared: dict[str, Path], case: str, record_property) -> None:
    """Same pictures through the original and the prepared model: bit-identical here
    (ONNX: the same optimised graph and kernels; TFLite: the same XNNPACK kernels on the
    same packed weights); the contract is ``TOLERANCE`` (1e-5)."""
    directory = prepared[case]
    shared = load_model(directory, case, "1", SHARED)
    naive = load_model(directory, case, "1", NAIVE)
    assert shared.engine.shared_weights and not naive.engine.shared_weights
    assert shared.engine.signature == naive.engine.signature
    assert shared.spec == naive.spec
    worst, identical = 0.0, True
    for picture in ("chelsea.png", "astronaut.png", "grace_hopper.jpg"):
        feeds = _feeds(naive, IMAGES / picture)
        want, got = naive.engine.run(feeds), shared.engine.run(feeds)
        assert len(want) == len(got)
        for a, b in zip(want, got):
            assert a.shape == b.shape and a.dtype == b.dtype
            identical &= bool(np.array_equal(a, b))
            if a.size:
                worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
        data = (IMAGES / picture).read_bytes()
        a, b = naive.detect(data, 50_000_000).detections, shared.detect(data, 50_000_000).detections
        assert a.class_ids.tolist() == b.class_ids.tolist()
        assert np.allclose(a.scores, b.scores, rtol=0, atol=TOLERANCE) and np.allclose(a.boxes, b.boxes, rtol=0, atol=1e-4)
    record_property("bit_identical", identical)
    record_property("max_abs_diff", worst)
    assert worst <= TOLERANCE
    assert identical, f"{case}: outputs within {worst:.3g} but not bit-identical"


def test_workers_never_write_the_artifact(prepared: dict[str, Path]) -> None:
    """Loading (with another thread count than preparation used) and running leaves every
    artifact file as the supervisor wrote it; XNNPACK only reads its weight cache."""
    for case, directory in prepared.items():
        target = host_artifact_dir(find_model_file(directory))
        before = {p.name: (_digest(p), p.stat().st_mtime_ns) for p in target.iterdir()}
        model = load_model(directory, case, "1", EngineOptions(intra_op_threads=2))
        assert model.engine.shared_weights
        model.warm_up()
        del model
        assert {p.name: (_digest(p), p.stat().st_mtime_ns) for p in target.iterdir()} == before, case


def test_an_existing_artifact_is_kept_and_the_version_dir_mtime_is_untouched(tmp_path: Path) -> None:
    directory = _version_dir(tmp_path, "face-onnx")
    os.utime(directory, ns=(1_000_000_000, 1_000_000_000))
    first = prepare_host_artifacts(directory, isolate=False)
    assert first.ok and first.created
    assert directory.stat().st_mtime_ns == 1_000_000_000  # the repository prunes by this mtime
    again = ensure_host_artifacts(directory)
    assert again.ok and not again.created and again.directory == first.directory


def test_a_stale_key_is_not_used(prepared: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another ONNX Runtime version (an image upgrade) looks for another directory and
    loads the original; preparing then replaces the stale artifact."""
    directory = _version_dir(tmp_path, "face-onnx")
    assert prepare_host_artifacts(directory, isolate=False).ok
    model_path = find_model_file(directory)
    old_dir = host_artifact_dir(model_path)
    real = artifacts.runtime_version
    monkeypatch.setattr(artifacts, "runtime_version", lambda fmt: "1.31.0" if fmt == "onnx" else real(fmt))
    assert host_artifact_dir(model_path) != old_dir and "1.31.0" in host_key("onnx")
    assert find_host_artifact(model_path) is None
    assert open_engine(model_path, SHARED).shared_weights is False
    result = ensure_host_artifacts(directory, isolate=False)  # in-process: the patched version applies
    assert result.ok and result.created and "1.31.0" in result.key
    assert not old_dir.exists()  # other keys are never used on this host again
    monkeypatch.undo()


def test_a_marker_for_another_key_is_rejected(prepared: dict[str, Path], tmp_path: Path) -> None:
    """The directory name is not trusted alone: the marker names the key it was built for."""
    directory = _version_dir(tmp_path, "face-onnx")
    assert prepare_host_artifacts(directory, isolate=False).ok
    model_path = find_model_file(directory)
    marker_path = host_artifact_dir(model_path) / READY_MARKER
    marker = json.loads(marker_path.read_text())
    marker["key"] = "ort-1.31.0-x86_64-000000000000"
    marker_path.write_text(json.dumps(marker))
    assert find_host_artifact(model_path) is None
    assert open_engine(model_path, SHARED).shared_weights is False


def _break_missing_marker(target: Path) -> None:
    (target / READY_MARKER).unlink()


def _break_truncate_weights(target: Path) -> None:
    path = target / (ONNX_FILES["weights"] if (target / ONNX_FILES["weights"]).exists() else LITERT_FILES["weight_cache"])
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def _break_scramble_weights(target: Path) -> None:
    """Same size, other bytes: only the content hash can tell."""
    path = target / (ONNX_FILES["weights"] if (target / ONNX_FILES["weights"]).exists() else LITERT_FILES["weight_cache"])
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(size // 3)
        handle.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _break_marker_json(target: Path) -> None:
    (target / READY_MARKER).write_text('{"schema": 1, "form')


@pytest.mark.parametrize("case", ["ssd-onnx", "ssd-tflite"])
@pytest.mark.parametrize(
    "breakage", [_break_missing_marker, _break_truncate_weights, _break_scramble_weights, _break_marker_json]
)
def test_a_broken_artifact_falls_back_to_the_original(prepared: dict[str, Path], tmp_path: Path, case: str, breakage) -> None:
    directory = _version_dir(tmp_path, case)
    target = host_artifact_dir(find_model_file(directory))
    shutil.copytree(host_artifact_dir(find_model_file(prepared[case])), target)
    assert load_model(directory, case, "1", SHARED).engine.shared_weights  # the copy is good
    breakage(target)
    model = load_model(directory, case, "1", SHARED)
    assert model.engine.shared_weights is False
    reference = load_model(directory, case, "1", NAIVE)
    feeds = _feeds(reference, IMAGES / "chelsea.png")
    for a, b in zip(reference.engine.run(feeds), model.engine.run(feeds)):
        assert np.array_equal(a, b)
    # The supervisor's start-up check rebuilds it.
    result = ensure_host_artifacts(directory)
    assert result.ok and result.created
    assert load_model(directory, case, "1", SHARED).engine.shared_weights


def test_preparation_failure_leaves_no_artifact_and_never_raises(tmp_path: Path) -> None:
    directory = tmp_path / "bad" / "1"
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(b"not a model")
    result = prepare_host_artifacts(directory)  # in a child, as the supervisor runs it
    assert not result.ok and result.reason
    assert not (directory / ".host").exists() or not any((directory / ".host").iterdir())
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not prepare_host_artifacts(empty, isolate=False).ok


def test_validation_prepares_the_artifact(tmp_path: Path) -> None:
    from service.update.validation import validate_in_subprocess

    directory = _version_dir(tmp_path, "ssd-onnx")
    validated = validate_in_subprocess(directory, "ssd", "1.0.0")
    assert validated.shared_weights is True
    assert find_host_artifact(find_model_file(directory)) is not None


# --- two processes, one copy ---------------------------------------------------------------


def _hold(model_path: str, use_host_artifacts: bool, conn) -> None:
    """Spawned: load, run once, report, and hold the model until told to exit."""
    from twinfer.engines import EngineOptions, open_engine

    engine = open_engine(Path(model_path), EngineOptions(intra_op_threads=1, use_host_artifacts=use_host_artifacts))
    inputs = engine.signature.inputs
    engine.run({t.name: np.ones([d or 1 for d in t.shape], t.dtype) for t in inputs})
    conn.send((os.getpid(), engine.shared_weights))
    conn.recv()


def _measure(model_path: Path, use_host_artifacts: bool, processes: int) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    held, readings = [], []
    try:
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_hold, args=(str(model_path), use_host_artifacts, child), daemon=True)
            proc.start()
            held.append((proc, parent))
        for proc, parent in held:
            assert parent.poll(120), "a process did not load the model"
            pid, shared = parent.recv()
            readings.append({"pid": pid, "shared": shared})
        for reading in readings:  # every process alive and loaded: now read them all
            rollup = smaps_rollup(reading["pid"])
            reading["pss"] = rollup["Pss"]
            reading["private"] = rollup["Private_Clean"] + rollup["Private_Dirty"]
            reading["anonymous"] = rollup["Anonymous"]
    finally:
        for proc, parent in held:
            try:
                parent.send("exit")
            except (BrokenPipeError, OSError):
                pass
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    return readings


def test_two_processes_share_the_optimised_weights(tmp_path: Path) -> None:
    assert Path("/proc/self/smaps_rollup").exists(), "this measurement needs Linux /proc/<pid>/smaps_rollup"
    directory = tmp_path / "synthetic" / "1"
    directory.mkdir(parents=True)
    weights = synthetic_onnx(directory / "model.onnx", 100 * MiB)
    result = prepare_host_artifacts(directory)
    assert result.ok, result.reason
    model_path = directory / "model.onnx"
    # The runtime's own footprint (libraries, arenas, thread pools) for a tiny model.
    baseline = _measure(MODELS / "blazeface_short_range.onnx", False, 1)[0]

    shared = _measure(model_path, True, 2)
    naive = _measure(model_path, False, 2)
    assert all(r["shared"] for r in shared) and not any(r["shared"] for r in naive)
    report = {
        "weights_MiB": weights / MiB,
        "shared": [(round((r["private"] - baseline["private"]) / MiB, 1), round(r["pss"] / MiB, 1)) for r in shared],
        "naive": [(round((r["private"] - baseline["private"]) / MiB, 1), round(r["pss"] / MiB, 1)) for r in naive],
    }
    print("private MiB beyond the runtime baseline, PSS MiB:", report)
    for reading in shared:
        # Both map the same weights file: its pages are shared, not private.
        assert reading["private"] - baseline["private"] < 0.15 * weights, report
    for reading in naive:
        assert reading["private"] - baseline["private"] > 0.8 * weights, report
    # Two shared processes together cost about one copy of the weights; naive ones two.
    shared_pss = sum(r["pss"] for r in shared) - 2 * baseline["pss"]
    naive_pss = sum(r["pss"] for r in naive) - 2 * baseline["pss"]
    assert shared_pss < 1.3 * weights, report
    assert naive_pss > 1.6 * weights, report  # ~2 copies, less what ORT leaves unpaged
    assert naive_pss - shared_pss > 0.7 * weights, report  # sharing saves about one copy


def test_validation_verdict_is_recorded_and_invalidated_when_the_model_changes(tmp_path):
    """Re-activating a staged version skips validation only while the verdict matches."""
    from service.update.validation import recorded_verdict, validate_model_dir

    directory = tmp_path / "v1"
    shutil.copytree(DEFAULT_MODEL, directory)
    validated = validate_model_dir(directory, "ssd", "1", prepare=False)
    assert recorded_verdict(directory) == validated
    model = directory / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    assert recorded_verdict(directory) is None
