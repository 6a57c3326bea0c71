"""The vision tasks a model can serve, and the result each one's decoders give.

``detection`` gives ``twinfer.decoders.base.Detections``; the other three are here. All
coordinates are normalised to the picture the client sent (x by its width, y by its
height), whatever the model's input size, letterbox or crop.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DETECTION, CLASSIFICATION, KEYPOINTS, SEGMENTATION = "detection", "classification", "keypoints", "segmentation"
TASKS = (DETECTION, CLASSIFICATION, KEYPOINTS, SEGMENTATION)


@dataclass(frozen=True)
class Classes:
    """The best classes, descending by score (softmax or sigmoid already applied)."""

    class_ids: np.ndarray  # (k,) int64
    scores: np.ndarray  # (k,) float32


@dataclass(frozen=True)
class Landmarks:
    """One instance's landmarks (a body, a hand, a face).

    ``points`` (K, 2) x, y normalised to the picture, unclipped; ``depth`` (K,) in picture
    widths relative to the model's reference point (MediaPipe's z), or None; ``visibility``
    and ``presence`` (K,) probabilities where the model gives them. ``label``/``label_score``:
    a per-instance class the model also gives (a hand's handedness)."""

    score: float
    points: np.ndarray
    depth: np.ndarray | None = None
    visibility: np.ndarray | None = None
    presence: np.ndarray | None = None
    label: str | None = None
    label_score: float | None = None

    def box(self) -> tuple[float, float, float, float]:
        """The points' bounding box, clipped to the picture: xmin, ymin, xmax, ymax."""
        low = np.clip(self.points.min(axis=0), 0.0, 1.0)
        high = np.clip(self.points.max(axis=0), 0.0, 1.0)
        return float(low[0]), float(low[1]), float(high[0]), float(high[1])


@dataclass(frozen=True)
class SegmentationMask:
    """A class id per pixel of the picture (0 = background for a one-channel model)."""

    class_map: np.ndarray  # (height, width) uint8, at the picture's size
    num_classes: int

    def coverage(self) -> np.ndarray:
        """(num_classes,) the fraction of the picture each class covers."""
        # OpenCV's histogram: 0.6 ms for a 1080p map where np.bincount takes 4 ms.
        counts = cv2.calcHist([self.class_map], [0], None, [self.num_classes], [0, self.num_classes]).ravel()
        return counts / max(1, self.class_map.size)
