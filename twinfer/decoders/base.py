"""What every output decoder takes and returns.

A decoder turns a model's raw outputs into its task's result (``twinfer.tasks``): a
detector's ``Detections`` are boxes ``[xmin, ymin, xmax, ymax]`` normalised to the
*picture* (not the model input), scores, class ids and, for the families that regress
them, keypoints. Each family lives in its own module and says, from the signature alone,
whether it can read a model (``matches``) and how that model wants its pixels
(``default_input``). Decoders map their results to the picture through a ``Placement``:
the whole picture resized into the input (``twinfer.imaging.Geometry``) or a rotated crop
of it (``twinfer.crops.CropPlacement``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Protocol, Sequence

import cv2
import numpy as np

from twinfer.imaging import Geometry, Placement
from twinfer.signature import ModelSignature
from twinfer.spec import InputSpec


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # (N, 4) float32, xmin ymin xmax ymax normalised to the picture
    scores: np.ndarray  # (N,) float32, descending
    class_ids: np.ndarray  # (N,) int64, index into the labels file
    # (N, K, 2) float32 x, y normalised to the picture (not clipped), for the families that
    # regress keypoints with each box (BlazeFace, MediaPipe's pose and palm detectors).
    keypoints: np.ndarray | None = None
    # (N, 4) the boxes before clipping to the picture, where a family keeps them: a chain's
    # crop around a face at the edge is centred on the face, as MediaPipe's is.
    unclipped_boxes: np.ndarray | None = None

    @staticmethod
    def empty() -> "Detections":
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class DecodeParams:
    score_threshold: float
    iou_threshold: float
    max_detections: int
    top_k: int = 5  # classification: how many classes an answer lists


class Decoder(Protocol):
    name: ClassVar[str]
    task: ClassVar[str]  # one of ``twinfer.tasks.TASKS``
    # True when class id 0 is the background class and so lines up with a "???" first
    # label line; False when ids start at the first real class.
    counts_background: ClassVar[bool]
    # Labels used when a bundle carries no label file (a single-class family names its class).
    default_labels: ClassVar[tuple[str, ...]]

    @classmethod
    def matches(cls, signature: ModelSignature) -> bool:
        """True if the signature has this family's inputs and outputs."""
        ...

    @classmethod
    def default_input(cls, signature: ModelSignature) -> InputSpec:
        """The preprocessing this family's models are trained with."""
        ...

    def __init__(self, signature: ModelSignature, options: Mapping[str, Any]) -> None: ...

    def extra_inputs(self, geometry: Geometry | None) -> dict[str, np.ndarray]:
        """Inputs besides the picture (e.g. YOLOv3's ``image_shape``); ``geometry`` is None
        for a chain's crop (only classifiers and landmark models are chained: they have none)."""
        ...

    def decode(self, outputs: Sequence[np.ndarray], placement: Placement, params: DecodeParams) -> Any:
        """Real-valued outputs -> the task's result, in the picture's coordinates."""
        ...


def layout_of(signature: ModelSignature) -> str:
    """NCHW when the channel axis (size 1 or 3) comes before the spatial axes."""
    shape = signature.image_input.shape
    return "NCHW" if shape[1] in (1, 3) and shape[3] not in (1, 3) else "NHWC"


def input_size(signature: ModelSignature, layout: str) -> tuple[int, int]:
    """(width, height) of the image input."""
    shape = signature.image_input.shape
    height, width = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    if not height or not width:
        raise ValueError("image input has a dynamic height or width; give a fixed-size model")
    return int(width), int(height)


def per_anchor_output_dims(signature: ModelSignature) -> tuple[int | None, int | None] | None:
    """The last dims of two ``[1, A, n]`` outputs sharing A (anchor-based heads: SSD,
    BlazeFace), in output order; None if the model is not shaped that way."""
    outputs = signature.outputs
    if len(outputs) != 2 or any(o.rank != 3 for o in outputs) or not any(i.rank == 4 for i in signature.inputs):
        return None
    first, second = outputs
    if first.shape[1] is None or first.shape[1] != second.shape[1]:
        return None
    return first.shape[2], second.shape[2]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function; logits past +-80 (where it is 0 or 1 in float32) are clipped so
    ``exp`` never overflows."""
    return 1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))


NMS_CANDIDATES = 1000


def nms(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, params: DecodeParams, class_agnostic: bool = False,
    keypoints: np.ndarray | None = None,
) -> Detections:
    """Per-class non-maximum suppression (OpenCV's), keeping the best ``max_detections``.

    ``boxes`` are xyxy in any consistent unit; scores below the threshold are dropped
    first, and only the best ``NMS_CANDIDATES`` go into NMS. ``keypoints`` (N, K, 2), when
    given, follow their boxes.
    """
    keep = np.flatnonzero(scores >= params.score_threshold)
    if len(keep) > NMS_CANDIDATES:
        # NMS is quadratic: a client asking threshold=0 must not buy 300 ms of CPU.
        keep = keep[np.argpartition(-scores[keep], NMS_CANDIDATES)[:NMS_CANDIDATES]]
    boxes, scores, class_ids = boxes[keep], scores[keep], class_ids[keep]
    keypoints = None if keypoints is None else keypoints[keep]
    if len(scores) == 0:
        return Detections.empty()
    xywh = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    if class_agnostic:
        picked = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), params.score_threshold, params.iou_threshold)
    else:
        picked = cv2.dnn.NMSBoxesBatched(
            xywh.tolist(), scores.tolist(), class_ids.astype(np.int32).tolist(), params.score_threshold, params.iou_threshold
        )
    picked = np.asarray(picked, dtype=np.int64).reshape(-1)
    picked = picked[np.argsort(-scores[picked], kind="stable")][: params.max_detections]
    return Detections(boxes[picked].astype(np.float32), scores[picked].astype(np.float32),
                      class_ids[picked].astype(np.int64), None if keypoints is None else keypoints[picked])
