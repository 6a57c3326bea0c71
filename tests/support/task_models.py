"""Model directories for the task tests: the real MediaPipe models (``tests/fixtures/models``)
with the ``twinfer.json`` a chain needs, and small classifiers built with ``onnx.helper``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.support.paths import MODELS

# The chains of MediaPipe's graphs (README "Model bundles": chained models).
POSE_CHAIN = {"detector": "pose-detector", "max_crops": 4,
              "crop": {"from": "keypoints", "keypoints": [0, 1], "rotation": 90, "scale": 1.25, "square": True}}
FACE_MESH_CHAIN = {"detector": "face", "max_crops": 4,
                   "crop": {"keypoints": [0, 1], "rotation": 0, "scale": 1.5, "square": True}}


def mediapipe_tasks() -> dict[str, dict[str, bytes]]:
    """The MediaPipe fixtures as a pool: segmentation, and pose and face landmarks each fed
    by its detector (named as the chains name them)."""
    return {
        "selfie": model_files("mp_selfie_segmentation.tflite", labels=["background", "person"]),
        "pose-detector": model_files("mp_pose_detection.tflite"),
        "pose": model_files("mp_pose_landmark_full.tflite", {"chain": POSE_CHAIN}),
        "face": model_files("blazeface_short_range.tflite"),
        "mesh": model_files("mp_face_landmark.tflite", {"chain": FACE_MESH_CHAIN}),
    }


def model_files(model: str, metadata: dict | None = None, labels: list[str] | None = None,
                model_bytes: bytes | None = None) -> dict[str, bytes]:
    """A bundle's files: the model (a fixture by name, or given bytes), labels, twinfer.json."""
    files = {model: model_bytes if model_bytes is not None else (MODELS / model).read_bytes()}
    if labels is not None:
        files["labels.txt"] = ("\n".join(labels) + "\n").encode()
    if metadata is not None:
        files["twinfer.json"] = json.dumps(metadata).encode()
    return files


def model_dir(root: Path, name: str, files: dict[str, bytes]) -> Path:
    directory = root / name
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for file_name, data in files.items():
        (directory / file_name).write_bytes(data)
    return directory


def planted_classifier(logits: list[float], size: int = 32) -> bytes:
    """An NHWC image classifier whose logits are ``logits`` whatever the picture (a
    ReduceMean of the picture times 0 keeps the input in the graph)."""
    planted = numpy_helper.from_array(np.array([logits], dtype=np.float32), "planted")
    zero = numpy_helper.from_array(np.zeros((1, 1), dtype=np.float32), "zero")
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["planted", "nothing"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "planted", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, size, size, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, len(logits)])], [planted, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def colour_classifier(size: int = 32) -> bytes:
    """Three classes, red, green, blue: the logits are the crop's mean channel values (in
    0..1) times 20, so the answer says which colour the crop is mostly."""
    gain = numpy_helper.from_array(np.array([[20.0]], dtype=np.float32), "gain")
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["mean", "gain"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "colour", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, size, size, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], [gain])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
