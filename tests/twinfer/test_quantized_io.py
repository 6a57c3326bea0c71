"""Pictures into, and outputs out of, full-integer models: the fast paths give exactly what
the general formula gives, and the general formula is the quantization's definition."""
from __future__ import annotations

import numpy as np
import pytest

from twinfer.quantized_io import dequantize, passes_through, quantization_of, quantize_pixels
from twinfer.signature import Quantization
from twinfer.spec import NORMALIZE_PRESETS

PIXELS = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
MINUS_ONE_TO_ONE = NORMALIZE_PRESETS["minus_one_to_one"]
ZERO_TO_ONE = NORMALIZE_PRESETS["zero_to_one"]


def by_definition(pixels: np.ndarray, normalize, dtype, q: Quantization) -> np.ndarray:
    """q = round(real / scale + zero_point), clipped to the integer type."""
    mean, std = (np.array(v, np.float64) for v in normalize)
    real = (pixels.astype(np.float64) - mean) / std
    info = np.iinfo(dtype)
    return np.clip(np.rint(real / q.scale + q.zero_point), info.min, info.max).astype(dtype)


@pytest.mark.parametrize(("normalize", "dtype", "quantization"), [
    (MINUS_ONE_TO_ONE, np.uint8, Quantization(1 / 128, 128)),  # TF detection zoo's uint8 SSDs
    (MINUS_ONE_TO_ONE, np.int8, Quantization(1 / 128, 0)),  # full-int8 converter output for [-1, 1]
    (ZERO_TO_ONE, np.int8, Quantization(1 / 255, -128)),  # full-int8 converter output for [0, 1]
    (ZERO_TO_ONE, np.uint8, Quantization(1 / 255, 0)),
    (MINUS_ONE_TO_ONE, np.int8, Quantization(0.0123, 3)),  # no shortcut: the general formula
    (((123.7, 116.3, 103.5), (58.4, 57.1, 57.4)), np.int8, Quantization(0.0187, -14)),  # ImageNet mean/std
])
def test_quantised_pictures_are_the_normalised_pixels_in_the_models_integers(normalize, dtype, quantization):
    got = quantize_pixels(PIXELS, *normalize, np.dtype(dtype), quantization)
    assert got.dtype == dtype and got.shape == PIXELS.shape
    want = by_definition(PIXELS, normalize, dtype, quantization)
    assert np.abs(got.astype(np.int16) - want.astype(np.int16)).max() <= 1  # a shortcut is at most a rounding off


def test_the_usual_pairs_cost_no_arithmetic():
    same = quantize_pixels(PIXELS, *MINUS_ONE_TO_ONE, np.dtype(np.uint8), Quantization(1 / 128, 128))
    assert same is PIXELS  # the pixels themselves
    shifted = quantize_pixels(PIXELS, *MINUS_ONE_TO_ONE, np.dtype(np.int8), Quantization(1 / 128, 0))
    assert np.shares_memory(shifted, PIXELS) is False and shifted[0, 0, 0] == -128 and shifted[-1, -1, 0] == 127


def test_outputs_come_back_as_real_values():
    q = Quantization(0.05, -3)
    assert dequantize(np.array([-3, 17, -128], np.int8), q).tolist() == pytest.approx([0.0, 1.0, -6.25])
    assert dequantize(np.array([-3], np.int8), q).dtype == np.float32


def test_only_integer_tensors_with_a_scale_are_quantised():
    assert quantization_of(np.dtype(np.int8), 0.5, 2) == Quantization(0.5, 2)
    assert quantization_of(np.dtype(np.uint8), 0.0, 0) is None  # raw pixels (the reference SSD's uint8 input)
    assert quantization_of(np.dtype(np.float32), 0.5, 2) is None
    assert quantization_of(np.dtype(np.int32), 0.0, 0) is None  # indices, counts


def test_pass_through_is_what_a_converters_full_integer_model_takes():
    assert passes_through(*MINUS_ONE_TO_ONE, np.dtype(np.uint8), Quantization(2 / 255, 127))  # TFLiteConverter's
    assert passes_through(*ZERO_TO_ONE, np.dtype(np.int8), Quantization(1 / 255, -128))
    assert not passes_through(*NORMALIZE_PRESETS["none"], np.dtype(np.uint8), Quantization(1 / 128, 128))
    assert not passes_through(*MINUS_ONE_TO_ONE, np.dtype(np.int16), Quantization(1 / 128, 0))
