"""Bundle metadata validation and label files (plain and embedded in a .tflite)."""
from __future__ import annotations

import io
import shutil
import zipfile

import pytest

from twinfer.engines import EngineOptions
from twinfer.labels import embedded_tflite_labels, label_offset, parse_labels
from twinfer.loader import ModelLoadError, load_model
from twinfer.spec import InputSpec, ModelSpec, SpecError, apply_overrides

DEFAULTS = ModelSpec(decoder="ssd_anchors", input=InputSpec())


def test_overrides_apply_and_validate():
    spec = apply_overrides(
        DEFAULTS,
        {"input": {"color": "BGR", "resize": "letterbox", "normalize": {"mean": [1, 2, 3], "std": [4, 5, 6]}}, "score_threshold": 0.3},
    )
    assert spec.input.color == "BGR" and spec.input.resize == "letterbox"
    assert spec.input.mean == (1.0, 2.0, 3.0) and spec.score_threshold == 0.3
    for bad in (
        {"colour": "RGB"},
        {"input": {"layout": "HWC"}},
        {"input": {"normalize": "zero_to_two"}},
        {"input": {"normalize": {"mean": [0, 0, 0], "std": [1, 0, 1]}}},
        {"score_threshold": 2},
        {"max_detections": 0},
        {"decoder_options": []},
    ):
        with pytest.raises(SpecError):
            apply_overrides(DEFAULTS, bad)


def test_labels_keep_inner_placeholders_and_offset_only_a_leading_background():
    labels = parse_labels("???\nperson\nbicycle\n???\ncar\n\n")
    assert labels == ["???", "person", "bicycle", "???", "car"]
    assert label_offset(labels, model_counts_background=False) == 1
    assert label_offset(labels, model_counts_background=True) == 0
    assert label_offset(["person", "car"], model_counts_background=False) == 0


def _tflite_with_embedded_labels(models, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("labelmap.txt", "???\nperson\nbicycle\ncar\n")
    model = tmp_path / "ssd_mobilenet_v1_1_metadata_1.tflite"
    model.write_bytes((models / "ref_ssd_postprocess_300.tflite").read_bytes() + buffer.getvalue())
    return model


def test_tflite_metadata_labels_are_read_when_no_label_file(models, tmp_path):
    model_path = _tflite_with_embedded_labels(models, tmp_path)
    assert embedded_tflite_labels(model_path) == ["???", "person", "bicycle", "car"]
    loaded = load_model(tmp_path, "ref", "1", EngineOptions())
    assert loaded.spec.decoder == "tflite_ssd_postprocess"
    assert loaded.label(0) == "person" and loaded.label(2) == "car"


def test_directory_without_a_model_or_with_two_is_refused(models, tmp_path):
    with pytest.raises(ModelLoadError, match="exactly one"):
        load_model(tmp_path, "x", "1", EngineOptions())
    shutil.copy(models / "blazeface_short_range.onnx", tmp_path)
    shutil.copy(models / "blazeface_short_range.tflite", tmp_path)
    with pytest.raises(ModelLoadError, match="exactly one"):
        load_model(tmp_path, "x", "1", EngineOptions())


def test_garbage_model_file_is_a_load_error(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not a model at all")
    with pytest.raises(ModelLoadError, match="could not load"):
        load_model(tmp_path, "x", "1", EngineOptions())
    (tmp_path / "model.onnx").unlink()
    (tmp_path / "model.tflite").write_bytes(b"not a model at all")
    with pytest.raises(ModelLoadError, match="could not load"):
        load_model(tmp_path, "x", "1", EngineOptions())
