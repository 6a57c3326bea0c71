"""``chain`` in ``twinfer.json``: this model is fed crops of another model's detections.

Example (MediaPipe's palm detector -> hand landmarks)::

    "chain": {"detector": "palm", "max_crops": 2, "min_score": 0.5,
              "crop": {"from": "box", "keypoints": [0, 2], "rotation": 90,
                       "scale": 2.6, "shift": [0, -0.5], "square": true}}

``detector`` names another model of the pool; its detections (optionally only those
whose label is in ``labels``, at least ``min_score``; the detector's own threshold
otherwise) are cropped from the original picture, best first, up to ``max_crops``.
The crop (MediaPipe's DetectionsToRects + RectTransformation) is the detection's box
(``from: box``), or a square centred on keypoint a with half-side |b - a| (``from:
keypoints``, MediaPipe's alignment points: the pose detector); ``rotation`` (degrees)
turns it so that the a -> b keypoint vector points that way (90: up); then it is
shifted by ``shift`` (fractions of its size, in its own frame), made square on its long
side (``square``) and scaled by ``scale``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from twinfer.spec import SpecError

MAX_CROPS_LIMIT = 32


@dataclass(frozen=True)
class CropSpec:
    origin: str = "box"  # "box" or "keypoints"
    keypoints: tuple[int, int] | None = None
    rotation: float | None = None  # target angle of the a -> b vector, degrees; None: upright crop
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    square: bool = False


@dataclass(frozen=True)
class ChainSpec:
    detector: str
    crop: CropSpec
    max_crops: int = 4
    labels: tuple[str, ...] | None = None
    min_score: float | None = None

    def keypoints_needed(self) -> int:
        """How many keypoints the detector must give per box (0: boxes are enough)."""
        return 0 if self.crop.keypoints is None else max(self.crop.keypoints) + 1


def _number(value: Any, key: str, low: float, high: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise SpecError(f"chain.{key} must be a number from {low} to {high}, got {value!r}")
    return float(value)


def _known(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(raw) - allowed
    if unknown:
        raise SpecError(f"unknown {where} keys: {', '.join(sorted(unknown))}; known: {', '.join(sorted(allowed))}")


def parse_crop(raw: Any) -> CropSpec:
    if not isinstance(raw, Mapping):
        raise SpecError("chain.crop must be an object")
    _known(raw, {"from", "keypoints", "rotation", "scale", "shift", "square"}, "chain.crop")
    origin = raw.get("from", "box")
    if origin not in ("box", "keypoints"):
        raise SpecError(f"chain.crop.from must be box or keypoints, got {origin!r}")
    keypoints = raw.get("keypoints")
    if keypoints is not None:
        if (not isinstance(keypoints, list) or len(keypoints) != 2 or len(set(keypoints)) != 2
                or not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < 64 for k in keypoints)):
            raise SpecError(f"chain.crop.keypoints must be two different keypoint indices, got {keypoints!r}")
        keypoints = (keypoints[0], keypoints[1])
    rotation = None if raw.get("rotation") is None else _number(raw["rotation"], "crop.rotation", -360, 360)
    if keypoints is None and (origin == "keypoints" or rotation is not None):
        raise SpecError("chain.crop.keypoints (two indices) is needed for from: keypoints and for rotation")
    shift = raw.get("shift", [0, 0])
    if not isinstance(shift, list) or len(shift) != 2:
        raise SpecError(f"chain.crop.shift must be [x, y], got {shift!r}")
    square = raw.get("square", False)
    if not isinstance(square, bool):
        raise SpecError(f"chain.crop.square must be true or false, got {square!r}")
    return CropSpec(origin, keypoints, rotation, _number(raw.get("scale", 1.0), "crop.scale", 0.1, 10.0),
                    (_number(shift[0], "crop.shift", -2, 2), _number(shift[1], "crop.shift", -2, 2)), square)


def chain_json(chain: ChainSpec) -> dict:
    """The chain as ``twinfer.json`` writes it (``parse_chain`` reads this back)."""
    crop = chain.crop
    return {"detector": chain.detector, "max_crops": chain.max_crops,
            "labels": None if chain.labels is None else list(chain.labels), "min_score": chain.min_score,
            "crop": {"from": crop.origin, "keypoints": None if crop.keypoints is None else list(crop.keypoints),
                     "rotation": crop.rotation, "scale": crop.scale, "shift": list(crop.shift), "square": crop.square}}


def parse_chain(raw: Any) -> ChainSpec:
    if not isinstance(raw, Mapping):
        raise SpecError("chain must be an object")
    _known(raw, {"detector", "crop", "max_crops", "labels", "min_score"}, "chain")
    detector = raw.get("detector")
    if not isinstance(detector, str) or not detector:
        raise SpecError("chain.detector must name the detector model (its name in the pool)")
    max_crops = raw.get("max_crops", 4)
    if not isinstance(max_crops, int) or isinstance(max_crops, bool) or not 1 <= max_crops <= MAX_CROPS_LIMIT:
        raise SpecError(f"chain.max_crops must be an integer 1..{MAX_CROPS_LIMIT}, got {max_crops!r}")
    labels = raw.get("labels")
    if labels is not None and (not isinstance(labels, list) or not labels
                               or not all(isinstance(label, str) for label in labels)):
        raise SpecError(f"chain.labels must be a non-empty list of the detector's labels, got {labels!r}")
    min_score = None if raw.get("min_score") is None else _number(raw["min_score"], "min_score", 0.0, 1.0)
    return ChainSpec(detector, parse_crop(raw.get("crop", {})), max_crops,
                     None if labels is None else tuple(labels), min_score)
