"""The /predict documents: a mask's PNG and RLE encode exactly the class map."""
from __future__ import annotations

import base64
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from twinfer.tasks import SegmentationMask
from workers.predictions import mask_document


def _model(labels):
    return SimpleNamespace(label=lambda c: labels[c])


def _decode_rle(counts: list[int], height: int, width: int) -> np.ndarray:
    flat = np.zeros(height * width, np.uint8)
    position, value = 0, 0
    for run in counts:
        flat[position:position + run] = value
        position, value = position + run, 1 - value
    return flat.reshape(width, height).T


def test_png_and_rle_give_back_the_class_map_and_the_coverage_adds_up():
    rng = np.random.default_rng(0)
    class_map = np.zeros((37, 53), np.uint8)
    class_map[5:20, 10:40] = 1
    class_map[0, 0] = 2  # a run that starts at the first pixel
    class_map[rng.integers(0, 37, 30), rng.integers(0, 53, 30)] = 2
    mask = SegmentationMask(class_map, 3)
    labels = ["background", "person", "dog"]
    png = mask_document(mask, _model(labels), "png")
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(png["mask"]["data"]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert (decoded == class_map).all() and (png["mask"]["width"], png["mask"]["height"]) == (53, 37)
    assert sum(c["coverage"] for c in png["classes"]) == pytest.approx(1.0, abs=1e-4)
    assert [c["label"] for c in png["classes"]] == labels
    rle = mask_document(mask, _model(labels), "rle")["mask"]
    assert [run["class_id"] for run in rle["runs"]] == [1, 2]  # background is what no run covers
    for run in rle["runs"]:
        assert (_decode_rle(run["counts"], 37, 53) == (class_map == run["class_id"])).all()
        assert sum(run["counts"]) == 37 * 53

