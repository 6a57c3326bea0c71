"""A real full-integer .tflite (the demo SSD, uint8 in, int8 out) served like its fp16
original: same detections, through the interpreter and through the host artifact, and it
passes a verification set built from the fp16 model."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from service.optimize import prepare_host_artifacts
from service.variant_bundle import make_variant
from service.verification import Gate, verify
from tests.support.paths import IMAGES, MODELS
from tests.support.variants import PHOTOS, photos
from twinfer.engines import EngineOptions
from twinfer.engines.artifacts import find_host_artifact
from twinfer.loader import load_model
from twinfer.signature import Quantization

INT8 = MODELS / "ssd_mobilenetv2_oidv4_int8.tflite"
FP16 = MODELS / "ssd_mobilenetv2_oidv4_fp16.tflite"
PLAIN = EngineOptions(intra_op_threads=1, use_host_artifacts=False)


def model_dir(tmp: Path, model: Path) -> Path:
    directory = tmp / model.stem
    directory.mkdir()
    shutil.copyfile(model, directory / model.name)
    shutil.copyfile(MODELS / "oidv4_labelmap.txt", directory / "labelmap.txt")
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tflite")
    return {name: load_model(model_dir(tmp, path), name, "1", PLAIN) for name, path in (("int8", INT8), ("fp16", FP16))}


def test_the_signature_carries_the_quantization(models):
    signature = models["int8"].engine.signature
    image = signature.image_input
    assert image.dtype == np.uint8 and image.quantization == Quantization(pytest.approx(2 / 255), 127)
    assert [o.dtype for o in signature.outputs] == [np.int8, np.int8]
    assert all(o.quantization is not None for o in signature.outputs)
    assert models["int8"].spec.decoder == "ssd_anchors"  # detected from the shapes, as for fp16


@pytest.mark.parametrize("picture", PHOTOS)
def test_int8_detects_what_fp16_detects(models, picture):
    data = (IMAGES / picture).read_bytes()
    int8, fp16 = (models[name].detect(data, 50_000_000, threshold=0.3).detections for name in ("int8", "fp16"))
    assert int8.class_ids[:1].tolist() == fp16.class_ids[:1].tolist(), picture
    if len(fp16):
        assert abs(float(int8.scores[0]) - float(fp16.scores[0])) < 0.05
        assert np.abs(int8.boxes[0] - fp16.boxes[0]).max() < 0.03


def test_named_results_on_the_photos(models):
    found = {p: models["int8"].detect((IMAGES / p).read_bytes(), 50_000_000) for p in ("chelsea.png", "astronaut.png")}
    assert models["int8"].label(int(found["chelsea.png"].detections.class_ids[0])) == "Cat"
    assert models["int8"].label(int(found["astronaut.png"].detections.class_ids[0])) == "Person"


def test_the_host_artifact_serves_the_same_integers(tmp_path):
    directory = model_dir(tmp_path, INT8)
    assert prepare_host_artifacts(directory, isolate=False).ok
    artifact = find_host_artifact(directory / INT8.name)
    assert artifact is not None and artifact.signature["inputs"][0]["quantization"] == [pytest.approx(2 / 255), 127]
    shared = load_model(directory, "int8", "1", EngineOptions(intra_op_threads=1))
    plain = load_model(directory, "int8", "1", PLAIN)
    assert shared.engine.shared_weights and not plain.engine.shared_weights
    data = (IMAGES / "coffee.png").read_bytes()
    a, b = (m.detect(data, 50_000_000).detections for m in (shared, plain))
    assert a.class_ids.tolist() == b.class_ids.tolist() and np.allclose(a.scores, b.scores)


def test_an_artifact_recorded_before_quantizations_falls_back_to_the_interpreter(tmp_path, caplog):
    import json

    from twinfer.engines.artifacts import READY_MARKER

    directory = model_dir(tmp_path, INT8)
    assert prepare_host_artifacts(directory, isolate=False).ok
    artifact = find_host_artifact(directory / INT8.name)
    marker = json.loads((artifact.directory / READY_MARKER).read_text())
    for entry in marker["signature"]["inputs"] + marker["signature"]["outputs"]:
        del entry["quantization"]  # what an earlier release wrote
    (artifact.directory / READY_MARKER).write_text(json.dumps(marker))
    model = load_model(directory, "int8", "1", EngineOptions(intra_op_threads=1))
    assert not model.engine.shared_weights and "does not record the quantization" in caplog.text
    assert model.label(int(model.detect((IMAGES / "chelsea.png").read_bytes(), 50_000_000).detections.class_ids[0])) == "Cat"


def test_the_int8_tflite_passes_a_verification_set_built_from_fp16(tmp_path):
    variant = tmp_path / "variant"
    variant.mkdir()
    report = make_variant(model_dir(tmp_path, FP16), INT8, variant, photos(), precision="int8", quantize=None,
                          gate=Gate(), verification_pictures=4)
    assert report.agreement.f1 >= 0.95 and report.size_ratio < 0.6
    verified = verify(load_model(variant, "int8", "1", PLAIN), variant)  # the device's check, here
    assert verified.f1 >= 0.95 and verified.reference_detections >= 3


def test_a_normalisation_the_quantised_input_does_not_undo_is_named_at_load(tmp_path, caplog):
    directory = model_dir(tmp_path, INT8)
    load_model(directory, "int8", "1", PLAIN)
    assert "does not take the pixels as they are" not in caplog.text  # [-1, 1] by default: the raw pixel
    (directory / "twinfer.json").write_text('{"input": {"normalize": "none"}}')
    load_model(directory, "int8", "1", PLAIN)
    assert "input (scale 0.00784314, zero point 127) does not take the pixels as they are" in caplog.text
