"""Rotated crops of a picture around a detection (MediaPipe's region of interest), and the
way back from the crop to the picture.

``roi_for`` follows MediaPipe's DetectionsToRectsCalculator / AlignmentPointsRectsCalculator
and RectTransformationCalculator (``twinfer.chain_spec`` says what each option does);
``cut`` samples the rotated rectangle into the second model's input with one affine warp
(borders black, as MediaPipe's ImageToTensorCalculator pads); ``CropPlacement`` maps what
that model finds back to the picture, so landmarks come back in the picture's coordinates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from twinfer.chain_spec import CropSpec


@dataclass(frozen=True)
class Roi:
    """A rotated rectangle in picture pixels; ``rotation`` in radians, clockwise on screen."""

    x_center: float
    y_center: float
    width: float
    height: float
    rotation: float

    def crop_to_picture(self, input_width: int, input_height: int) -> np.ndarray:
        """The 2x3 affine matrix from input pixels of the crop to picture pixels."""
        cos, sin = math.cos(self.rotation), math.sin(self.rotation)
        w, h = self.width, self.height
        return np.array([
            [cos * w / input_width, -sin * h / input_height, self.x_center - cos * w / 2 + sin * h / 2],
            [sin * w / input_width, cos * h / input_height, self.y_center - sin * w / 2 - cos * h / 2],
        ], dtype=np.float64)


def _normalized_angle(angle: float) -> float:
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def roi_for(box: np.ndarray, keypoints: np.ndarray | None, spec: CropSpec, width: int, height: int) -> Roi:
    """The crop for one detection: ``box`` xmin, ymin, xmax, ymax and ``keypoints`` (K, 2),
    normalised to the picture of ``width`` x ``height`` pixels."""
    if spec.keypoints is not None and keypoints is not None:
        a = keypoints[spec.keypoints[0]] * (width, height)
        b = keypoints[spec.keypoints[1]] * (width, height)
    else:
        a = b = None
    if spec.origin == "keypoints" and a is not None:
        radius = float(np.hypot(*(b - a)))
        cx, cy, w, h = float(a[0]), float(a[1]), 2 * radius, 2 * radius
    else:
        cx, cy = float(box[0] + box[2]) / 2 * width, float(box[1] + box[3]) / 2 * height
        w, h = float(box[2] - box[0]) * width, float(box[3] - box[1]) * height
    rotation = 0.0
    if spec.rotation is not None and a is not None:
        rotation = _normalized_angle(math.radians(spec.rotation) - math.atan2(-(b[1] - a[1]), b[0] - a[0]))
    cos, sin = math.cos(rotation), math.sin(rotation)
    sx, sy = spec.shift
    cx += w * sx * cos - h * sy * sin
    cy += w * sx * sin + h * sy * cos
    if spec.square:
        w = h = max(w, h)
    return Roi(float(cx), float(cy), max(1.0, w * spec.scale), max(1.0, h * spec.scale), rotation)


def cut(pixels: np.ndarray, roi: Roi, picture_width: int, input_width: int, input_height: int) -> np.ndarray:
    """The ROI of ``pixels`` (the picture decoded, possibly smaller than ``picture_width``)
    sampled into an ``input_width`` x ``input_height`` crop."""
    matrix = roi.crop_to_picture(input_width, input_height) * (pixels.shape[1] / picture_width)
    return cv2.warpAffine(pixels, matrix, (input_width, input_height),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


@dataclass(frozen=True)
class CropPlacement:
    """Maps points normalised to a crop's input back to the picture (``imaging.Placement``)."""

    roi: Roi
    picture_width: int
    picture_height: int

    def points_to_image(self, points: np.ndarray) -> np.ndarray:
        matrix = self.roi.crop_to_picture(1, 1)  # normalised crop coordinates -> picture pixels
        xy = points.reshape(-1, 2).astype(np.float64)
        mapped = xy @ matrix[:, :2].T + matrix[:, 2]
        mapped /= (self.picture_width, self.picture_height)
        return mapped.astype(np.float32).reshape(points.shape)

    @property
    def depth_scale(self) -> float:
        return self.roi.width / self.picture_width
