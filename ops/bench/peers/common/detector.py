"""The per-request work every peer does: the reference design's, or twinfer's own (``PEER_PIPELINE``).

twinfer (``twinfer.pipeline.VisionModel.detect`` with ``models/default``) does, per request:
read the image header, decode the JPEG with OpenCV (at 1/2, 1/4 or 1/8 scale when the 300x300
input is that much smaller: 1920x1080 is decoded at 1/2), stretch-resize to 300x300, BGR->RGB,
normalise to [-1, 1], ``InferenceSession.run``, decode the SSD box encodings against the
MediaPipe anchors, sigmoid, per-class NMS (``cv2.dnn.NMSBoxesBatched``), JSON.

Two pipelines, the same from ``session.run`` on (box decoding, NMS, JSON fields):

* ``reference`` (the default): the preprocessing the reference design (``../shared/seed``)
  writes, which is what a user porting it to a peer server writes: decode the whole picture
  (``cv2.imdecode(..., IMREAD_COLOR)``), BGR->RGB on the whole picture, ``cv2.resize`` to
  300x300, then ``astype(float32) / 127.5 - 1`` for this float model. This is the comparison
  the issue asks for: twinfer's own changes (reduced-scale decode, uint8 in-place steps)
  count as twinfer's.
* ``matched``: twinfer's preprocessing ported step for step, so only the serving layer
  differs (how much does each server add around the same work?).

It depends only on numpy, opencv, simplejpeg and onnxruntime (the peers' virtual environments may hold
numpy<2, so it does not import twinfer's package).
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import simplejpeg

INPUT_SIZE = 300  # the model's 300x300 RGB input
SCORE_THRESHOLD = 0.5  # models/default/twinfer.json
IOU_THRESHOLD = 0.5
MAX_DETECTIONS = 50
NMS_CANDIDATES = 1000  # twinfer.decoders.base.NMS_CANDIDATES
BOX_SCALES = (10.0, 10.0, 5.0, 5.0)  # y, x, h, w divisors (MediaPipe TensorsToDetections)
PIPELINES = ("reference", "matched")


def model_dir() -> Path:
    """``PEER_MODEL_DIR`` (set by run.py), else the project's bundled model."""
    default = Path(__file__).resolve().parents[4] / "models" / "default"
    return Path(os.environ.get("PEER_MODEL_DIR") or default)


def session_options(intra_op: int, inter_op: int) -> ort.SessionOptions:
    """twinfer's ``twinfer.engines.onnx.session_options``: sequential, no spinning threads."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = intra_op
    so.inter_op_num_threads = inter_op
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def new_session(path: Path | None = None) -> ort.InferenceSession:
    intra = int(os.environ.get("PEER_INTRA_OP_THREADS", "1"))
    inter = int(os.environ.get("PEER_INTER_OP_THREADS", "1"))
    return ort.InferenceSession(
        str(path or model_dir() / "model.onnx"),
        sess_options=session_options(intra, inter),
        providers=["CPUExecutionProvider"],
    )


def ssd_anchors() -> np.ndarray:
    """(1917, 4) float32 ``yc, xc, h, w``: MediaPipe's SsdAnchorsCalculator with the OIDv4 SSD
    options (300x300, 6 layers, scales 0.2..0.95, strides 16..512, reduced lowest layer),
    as ``twinfer.decoders.anchors.generate_anchors`` builds them."""
    num_layers, min_scale, max_scale = 6, 0.2, 0.95
    strides = (16, 32, 64, 128, 256, 512)
    ratios = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)

    def scale(i: int) -> float:
        return min_scale + (max_scale - min_scale) * i / (num_layers - 1)

    layers = []
    for layer in range(num_layers):  # every stride differs, so one layer per feature map
        s = scale(layer)
        if layer == 0:
            shapes = [(0.1, 1.0), (s, 2.0), (s, 0.5)]
        else:
            following = 1.0 if layer == num_layers - 1 else scale(layer + 1)
            shapes = [(s, r) for r in ratios] + [(math.sqrt(s * following), 1.0)]
        heights = [size / math.sqrt(r) for size, r in shapes]
        widths = [size * math.sqrt(r) for size, r in shapes]
        rows = cols = math.ceil(INPUT_SIZE / strides[layer])
        yc, xc = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij")
        grid = np.empty((rows, cols, len(heights), 4), dtype=np.float32)
        grid[..., 0] = yc[..., np.newaxis]
        grid[..., 1] = xc[..., np.newaxis]
        grid[..., 2] = np.asarray(heights)
        grid[..., 3] = np.asarray(widths)
        layers.append(grid.reshape(-1, 4))
    return np.concatenate(layers)


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's header without decoding; None if not a JPEG."""
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return width, height


def reduction_for(size: tuple[int, int] | None) -> int:
    """``twinfer.imaging.jpeg_reduction`` for a 300x300 stretched input."""
    if size is None:
        return 1
    width, height = size
    for factor in (8, 4, 2):
        if width // factor >= INPUT_SIZE and height // factor >= INPUT_SIZE:
            return factor
    return 1


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Detector:
    """One model: ``detect(bytes) -> dict`` (twinfer's response shape, minus the model block).

    ``per_request_session``: build a new ``InferenceSession`` for every call, as the
    reference design does; otherwise one session made here is reused. ``pipeline``: one of
    ``PIPELINES`` (default ``PEER_PIPELINE``, else ``reference``)."""

    def __init__(
        self, directory: Path | None = None, per_request_session: bool = False, pipeline: str | None = None
    ) -> None:
        pipeline = pipeline or os.environ.get("PEER_PIPELINE") or "reference"
        if pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}")
        self.preprocess = self.preprocess_reference if pipeline == "reference" else self.preprocess_matched
        directory = Path(directory or model_dir())
        self.model_path = directory / "model.onnx"
        self.labels = [line.strip() for line in (directory / "labels.txt").read_text().splitlines()]
        while self.labels and not self.labels[-1]:
            self.labels.pop()
        self.per_request_session = per_request_session
        self.session = None if per_request_session else new_session(self.model_path)
        anchors = ssd_anchors()
        y_scale, x_scale, h_scale, w_scale = BOX_SCALES
        self._anchor_center = anchors[:, 0:2]
        self._anchor_size = anchors[:, 2:4]
        self._center_gain = self._anchor_size / np.array([y_scale, x_scale], dtype=np.float32)
        self._size_gain = np.array([1.0 / h_scale, 1.0 / w_scale], dtype=np.float32)
        self._mean = np.float32(127.5)
        self._inv_std = np.float32(1.0 / 127.5)

    def _session(self) -> ort.InferenceSession:
        return new_session(self.model_path) if self.per_request_session else self.session

    def preprocess_reference(self, data: bytes) -> tuple[np.ndarray, int, int]:
        """The reference design's steps (seed ``detect_object``), then [-1, 1] floats."""
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags=cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError("body is not a decodable image")
        height, width = image.shape[:2]
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        rgb = cv2.resize(rgb, (INPUT_SIZE, INPUT_SIZE))
        tensor = np.expand_dims(rgb, axis=0).astype(np.float32) / 127.5 - 1.0
        return tensor, width, height

    def preprocess_matched(self, data: bytes) -> tuple[np.ndarray, int, int]:
        """twinfer's steps: image bytes -> [1,300,300,3] float32 in [-1,1], width, height.
        JPEGs are decoded by simplejpeg straight to RGB at the reduced scale, anything else
        by OpenCV (BGR, swapped after resizing)."""
        size = jpeg_size(data)
        factor = reduction_for(size)
        if size is not None:
            width, height = size
            rgb = simplejpeg.decode_jpeg(
                data, colorspace="RGB", min_width=math.ceil(width / factor), min_height=math.ceil(height / factor)
            )
            resized = cv2.resize(rgb, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
        else:
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError("body is not a decodable image")
            height, width = image.shape[:2]
            resized = cv2.resize(image, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
            cv2.cvtColor(resized, cv2.COLOR_BGR2RGB, dst=resized)
        tensor = resized.astype(np.float32)
        tensor -= self._mean
        tensor *= self._inv_std
        return np.ascontiguousarray(tensor[np.newaxis]), width, height

    def decode(self, encodings: np.ndarray, logits: np.ndarray):
        """Box encodings [A,4] + logits [A,C] -> (boxes xyxy normalised, scores, class ids)."""
        best = logits[:, 1:].argmax(axis=1)
        scores = sigmoid(logits[np.arange(len(best)), best + 1].astype(np.float64))
        keep = np.flatnonzero(scores >= SCORE_THRESHOLD)
        if keep.size > NMS_CANDIDATES:
            keep = keep[np.argpartition(-scores[keep], NMS_CANDIDATES)[:NMS_CANDIDATES]]
        if keep.size == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
        kept = encodings[keep]
        center = kept[:, 0:2] * self._center_gain[keep] + self._anchor_center[keep]
        half = np.exp(kept[:, 2:4] * self._size_gain) * self._anchor_size[keep] * 0.5
        boxes = np.hstack([(center - half)[:, ::-1], (center + half)[:, ::-1]])
        scores, class_ids = scores[keep], best[keep] + 1
        xywh = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
        picked = cv2.dnn.NMSBoxesBatched(
            xywh.tolist(), scores.tolist(), class_ids.astype(np.int32).tolist(), SCORE_THRESHOLD, IOU_THRESHOLD
        )
        picked = np.asarray(picked, dtype=np.int64).reshape(-1)
        picked = picked[np.argsort(-scores[picked], kind="stable")][:MAX_DETECTIONS]
        boxes = np.clip(boxes[picked].astype(np.float32), 0.0, 1.0)  # stretch: input-normalised = picture-normalised
        return boxes, scores[picked].astype(np.float32), class_ids[picked].astype(np.int64)

    def detect(self, data: bytes) -> dict:
        started = time.perf_counter()
        tensor, width, height = self.preprocess(data)
        decoded = time.perf_counter()
        session = self._session()
        box_out, logit_out = _output_order(session)
        outputs = session.run(None, {session.get_inputs()[0].name: tensor})
        inferred = time.perf_counter()
        boxes, scores, class_ids = self.decode(outputs[box_out][0], outputs[logit_out][0])
        finished = time.perf_counter()
        detections = []
        for (xmin, ymin, xmax, ymax), score, class_id in zip(boxes.tolist(), scores.tolist(), class_ids.tolist()):
            detections.append(
                {
                    "label": self.labels[class_id] if 0 <= class_id < len(self.labels) else f"class_{class_id}",
                    "class_id": class_id,
                    "score": round(score, 5),
                    "box": {
                        "xmin": round(xmin, 5),
                        "ymin": round(ymin, 5),
                        "xmax": round(xmax, 5),
                        "ymax": round(ymax, 5),
                    },
                    "box_px": {
                        "xmin": round(xmin * width, 1),
                        "ymin": round(ymin * height, 1),
                        "xmax": round(xmax * width, 1),
                        "ymax": round(ymax * height, 1),
                    },
                }
            )
        return {
            "image": {"width": width, "height": height},
            "detections": detections,
            "timing_ms": {
                "decode": round((decoded - started) * 1e3, 3),
                "inference": round((inferred - decoded) * 1e3, 3),
                "postprocess": round((finished - inferred) * 1e3, 3),
                "total": round((finished - started) * 1e3, 3),
            },
        }

    def detect_json(self, data: bytes) -> bytes:
        return json.dumps(self.detect(data), separators=(",", ":")).encode()


def _output_order(session: ort.InferenceSession) -> tuple[int, int]:
    """(box encodings, class logits) output positions: the one whose last dim is 4 holds boxes."""
    outputs = session.get_outputs()
    boxes = 0 if outputs[0].shape[-1] == 4 else 1
    return boxes, 1 - boxes
