"""Ultralytics exports name their classes (and input size, task) themselves: ONNX in
``metadata_props``, TFLite in an appended ZIP. Real models with planted outputs, built
here with the same metadata keys and value formats Ultralytics' exporter writes."""
from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.support.onnx_models import planted_output_nodes
from tests.support.tflite_models import constant_output_tflite
from tests.support.waiting import wait_until
from twinfer.engines import EngineOptions
from twinfer.loader import ModelLoadError, load_model

SIZE = 64
NAMES = {0: "person", 1: "bicycle", 2: "car"}
# Planted candidates (cx, cy, w, h in input pixels), class, score; the rest faint noise.
PERSON = ((16.0, 16.0, 16.0, 16.0), 0, 0.9)
CAR = ((44.0, 40.0, 24.0, 16.0), 2, 0.8)
EXPECTED_BOXES = [[8 / 64, 8 / 64, 24 / 64, 24 / 64], [32 / 64, 32 / 64, 56 / 64, 48 / 64]]


def planted_v8(num: int = 64, box_scale: float = 1.0) -> np.ndarray:
    """[1, 4 + nc, N], YOLOv8's raw output, with PERSON and CAR in it (N = 64: over 1 KiB,
    so a host artifact stores it as external weights)."""
    rng = np.random.default_rng(0)
    rows = np.zeros((num, 4 + len(NAMES)), np.float32)
    rows[:, :2] = rng.uniform(8, 56, (num, 2))
    rows[:, 2:4] = rng.uniform(4, 16, (num, 2))
    rows[:, 4:] = rng.uniform(0.0, 0.05, (num, len(NAMES)))
    for row, (box, cls, score) in zip((2, 9), (PERSON, CAR)):
        rows[row, :4] = box
        rows[row, 4 + cls] = score
    rows[:, :4] *= box_scale
    return rows.T[np.newaxis].copy()


def ultralytics_metadata(**overrides) -> dict:
    """The dict Ultralytics' exporter builds (values before ONNX's str())."""
    meta = {
        "description": "Ultralytics YOLOv8n model trained on coco.yaml", "author": "Ultralytics",
        "date": "2026-01-05T10:00:00", "version": "8.3.0", "license": "AGPL-3.0 License",
        "docs": "https://docs.ultralytics.com", "stride": 32, "task": "detect", "batch": 1,
        "imgsz": [SIZE, SIZE], "names": NAMES,
    }
    meta.update(overrides)
    return meta


def yolo_onnx(path: Path, metadata: dict | None, height: int | str = SIZE, width: int | str = SIZE) -> None:
    """A YOLOv8-shaped ONNX model with the planted output; ``metadata`` as the exporter
    stores it (``meta.key, meta.value = k, str(v)``). A str side is a dynamic dim."""
    planted = planted_v8()
    nodes = planted_output_nodes(planted)
    graph = helper.make_graph(
        nodes, "main_graph",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(planted.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    if metadata is not None:
        helper.set_model_props(model, {k: v if isinstance(v, str) else str(v) for k, v in metadata.items()})
    onnx.checker.check_model(model)
    onnx.save(model, path)


def onnx_dir(tmp_path: Path, metadata: dict | None, **shape) -> Path:
    directory = tmp_path / "yolov8n"
    directory.mkdir()
    yolo_onnx(directory / "yolov8n.onnx", metadata, **shape)
    return directory


def picture(width: int = SIZE, height: int = SIZE) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    return encoded.tobytes()


def labelled(model, data: bytes | None = None) -> list[tuple[str, list[float]]]:
    found = model.detect(data or picture(), max_pixels=10**7, threshold=0.25).detections
    return [(model.label(int(c)), box) for c, box in zip(found.class_ids, found.boxes.tolist())]


def assert_planted(model, data: bytes | None = None) -> None:
    found = labelled(model, data)
    assert [label for label, _ in found] == ["person", "car"]
    np.testing.assert_allclose([box for _, box in found], EXPECTED_BOXES, atol=1e-5)


# --- ONNX -------------------------------------------------------------------------------------


def test_onnx_export_labels_detections_with_its_own_class_names(tmp_path):
    model = load_model(onnx_dir(tmp_path, ultralytics_metadata()), "yolov8n", "1", EngineOptions())
    assert model.spec.decoder == "yolo"
    assert model.labels == ["person", "bicycle", "car"] and model.label_offset == 0
    assert_planted(model)


def test_the_names_survive_the_host_artifact(tmp_path):
    """Workers open the supervisor's optimised copy, which must keep metadata_props."""
    from service.optimize import prepare_host_artifacts

    directory = onnx_dir(tmp_path, ultralytics_metadata())
    assert prepare_host_artifacts(directory, isolate=False).ok
    model = load_model(directory, "yolov8n", "1", EngineOptions(use_host_artifacts=True))
    assert model.engine.shared_weights is True
    assert_planted(model)


def test_other_exporters_metadata_is_not_read_as_ultralytics(tmp_path):
    meta = {"task": "object-detection", "imgsz": "[1, 1]", "author": "someone else"}
    model = load_model(onnx_dir(tmp_path, meta), "yolov8n", "1", EngineOptions())
    assert (model.input_width, model.input_height) == (SIZE, SIZE)
    assert [label for label, _ in labelled(model)] == ["class_0", "class_2"]


def test_without_metadata_the_labels_are_class_n(tmp_path):
    model = load_model(onnx_dir(tmp_path, None), "yolov8n", "1", EngineOptions())
    assert [label for label, _ in labelled(model)] == ["class_0", "class_2"]


def test_a_labels_file_beside_the_model_wins_over_the_embedded_names(tmp_path):
    directory = onnx_dir(tmp_path, ultralytics_metadata())
    (directory / "labels.txt").write_text("pedestrian\ncyclist\nautomobile\n", encoding="utf-8")
    model = load_model(directory, "yolov8n", "1", EngineOptions())
    assert [label for label, _ in labelled(model)] == ["pedestrian", "automobile"]


def test_a_first_class_named_background_is_not_skipped(tmp_path):
    """Embedded names are exactly the model's ids: no background offset guessing."""
    names = {0: "background", 1: "bicycle", 2: "car"}
    model = load_model(onnx_dir(tmp_path, ultralytics_metadata(names=names)), "yolov8n", "1", EngineOptions())
    assert [label for label, _ in labelled(model)] == ["background", "car"]


def test_dynamic_input_sides_take_their_size_from_imgsz(tmp_path):
    directory = onnx_dir(tmp_path, ultralytics_metadata(), height="height", width="width")
    model = load_model(directory, "yolov8n", "1", EngineOptions())
    assert (model.input_width, model.input_height) == (SIZE, SIZE)
    assert_planted(model)


def test_dynamic_input_without_imgsz_is_still_refused(tmp_path):
    meta = ultralytics_metadata()
    del meta["imgsz"]
    with pytest.raises(ModelLoadError, match="dynamic height or width"):
        load_model(onnx_dir(tmp_path, meta, height="height", width="width"), "yolov8n", "1", EngineOptions())


def test_imgsz_that_disagrees_with_a_fixed_input_is_ignored_with_a_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "twinfer.models")
    model = load_model(onnx_dir(tmp_path, ultralytics_metadata(imgsz=[640, 480])), "yolov8n", "1", EngineOptions())
    assert (model.input_width, model.input_height) == (SIZE, SIZE)
    assert "disagrees with the input shape" in caplog.text
    assert_planted(model)


@pytest.mark.parametrize("task", ["segment", "pose", "obb", "classify"])
def test_an_export_for_another_task_is_a_clear_load_error(tmp_path, task):
    directory = onnx_dir(tmp_path, ultralytics_metadata(task=task))
    with pytest.raises(ModelLoadError, match=f"Ultralytics '{task}' export.*only 'detect'"):
        load_model(directory, "yolov8n", "1", EngineOptions())
    # twinfer.json does not override it: a pose or obb head decoded as boxes is garbage.
    (directory / "twinfer.json").write_text(json.dumps({"decoder": "yolo"}), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="only 'detect'"):
        load_model(directory, "yolov8n", "1", EngineOptions())


HUGE = "{" + ", ".join(f"{i}: 'c{i}'" for i in range(10_001)) + "}"


@pytest.mark.parametrize(
    ("names", "reason"),
    [
        ("{0: 'person', 1: 'bicycle'", "not a Python literal"),
        ("__import__('os').system('false')", "not a Python literal"),
        ("{0: 'person', 2: 'car', 3: 'truck'}", "not 0..2"),
        ("{0: 'person', 1: 2, 2: 'car'}", "not a string"),
        ("{'a': 'person'}", "not an integer"),
        ("'person'", "mapping"),
        (HUGE, "more than"),
        ("[" * 200_000, "not a Python literal"),
    ],
    ids=["truncated", "expression", "gap", "number-name", "str-id", "scalar", "huge", "deep"],
)
def test_malformed_names_are_ignored_with_a_warning(tmp_path, caplog, names, reason):
    caplog.set_level(logging.WARNING, "twinfer.models")
    model = load_model(onnx_dir(tmp_path, ultralytics_metadata(names=names)), "yolov8n", "1", EngineOptions())
    assert "ignoring the Ultralytics metadata 'names'" in caplog.text and reason in caplog.text
    assert [label for label, _ in labelled(model)] == ["class_0", "class_2"]


@pytest.mark.parametrize("imgsz", ["[64, 64", "[0, 64]", "[64, 64, 64]", "'big'"])
def test_malformed_imgsz_is_ignored_with_a_warning(tmp_path, caplog, imgsz):
    caplog.set_level(logging.WARNING, "twinfer.models")
    model = load_model(onnx_dir(tmp_path, ultralytics_metadata(imgsz=imgsz)), "yolov8n", "1", EngineOptions())
    assert "ignoring the Ultralytics metadata 'imgsz'" in caplog.text
    assert_planted(model)


@pytest.mark.processes
def test_served_over_http_with_the_embedded_names(tmp_path):
    from falcon import testing

    from service.bootstrap import ensure_active_model
    from service.repository import ModelRepository
    from workers.app import create_app
    from workers.settings import WorkerSettings

    store = tmp_path / "store"
    repo = ModelRepository(store)
    repo.prepare()
    ensure_active_model(repo, onnx_dir(tmp_path, ultralytics_metadata()), "yolov8n", "1")
    client = testing.TestClient(create_app(WorkerSettings(
        store=store, max_body_bytes=1 << 20, max_image_pixels=10**7, engine=EngineOptions())))
    wait_until(lambda: client.simulate_get("/readyz").status_code == 200, "the model loaded", 60, 0.05)
    response = client.simulate_post("/detect", body=picture(), headers={"Content-Type": "image/png"},
                                    params={"threshold": "0.25"})
    assert response.status_code == 200, response.text
    detections = response.json["detections"]
    assert [(d["label"], d["class_id"]) for d in detections] == [("person", 0), ("car", 2)]


# --- TFLite -----------------------------------------------------------------------------------


def yolo_tflite(directory: Path) -> Path:
    """Ultralytics' TFLite layout: NHWC input, boxes divided by the input size."""
    directory.mkdir()
    path = directory / "yolov8n_float32.tflite"
    path.write_bytes(constant_output_tflite(planted_v8(box_scale=1 / SIZE), (1, SIZE, SIZE, 3)))
    return path


def test_tflite_export_with_metadata_json_keeps_its_names_and_normalised_boxes(tmp_path):
    path = yolo_tflite(tmp_path / "yolov8n")
    # As the exporter does it: json.dumps of the dict (int keys become strings), appended.
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", json.dumps(ultralytics_metadata(), indent=2))
    model = load_model(path.parent, "yolov8n", "1", EngineOptions())
    assert model.engine.format == "tflite" and model.spec.decoder == "yolo"
    assert model.spec.input.layout == "NHWC"
    assert model.spec.decoder_options == {"boxes": "normalized"}
    assert_planted(model)


def test_tflite_export_with_a_python_literal_metadata_file_keeps_its_names(tmp_path):
    """Exports written with tflite-support hold the dict as str(dict) in one text file."""
    path = yolo_tflite(tmp_path / "yolov8n")
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("temp_meta.txt", str(ultralytics_metadata()))
    model = load_model(path.parent, "yolov8n", "1", EngineOptions())
    assert model.labels == ["person", "bicycle", "car"]
    assert_planted(model)


def test_twinfer_json_decoder_options_win_over_the_tflite_default(tmp_path):
    path = yolo_tflite(tmp_path / "yolov8n")
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", json.dumps(ultralytics_metadata()))
    (path.parent / "twinfer.json").write_text(json.dumps({"decoder_options": {"boxes": "pixels", "variant": "v8"}}))
    model = load_model(path.parent, "yolov8n", "1", EngineOptions())
    assert model.spec.decoder_options == {"boxes": "pixels", "variant": "v8"}


def test_tflite_without_metadata_is_class_n(tmp_path):
    path = yolo_tflite(tmp_path / "yolov8n")
    model = load_model(path.parent, "yolov8n", "1", EngineOptions())
    assert model.spec.decoder_options == {}
    assert [label for label, _ in labelled(model)] == ["class_0", "class_2"]


def test_malformed_metadata_json_is_ignored_with_a_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "twinfer.models")
    path = yolo_tflite(tmp_path / "yolov8n")
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", '{"names": {"0": "person", ')
    model = load_model(path.parent, "yolov8n", "1", EngineOptions())
    assert "ignoring metadata.json" in caplog.text
    assert [label for label, _ in labelled(model)] == ["class_0", "class_2"]
