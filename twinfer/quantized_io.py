"""Real values into and out of full-integer models (int8 / uint8 inputs and outputs).

A full-integer TFLite model takes its picture as quantised integers and gives quantised
outputs: ``real = (q - zero_point) * scale`` per tensor. Pictures go in as the model's
preprocessing (``mean``/``std``) followed by that quantization; outputs come back as real
values before any decoder sees them, so decoders never care how a model was quantised.
ONNX QDQ models keep float inputs and outputs and never get here.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from twinfer.signature import Quantization

# A picture goes in unchanged (uint8) or shifted by 128 (int8) when the quantization
# undoes the normalisation to within these: 1% of scale, half a step of offset.
_SCALE_TOLERANCE = 0.01
_OFFSET_TOLERANCE = 0.5


def quantization_of(dtype: np.dtype, scale: float, zero_point: int) -> Quantization | None:
    """A tensor's quantization as a runtime reports it; None for real-valued tensors (and
    for integer tensors without a scale: indices, counts, raw-pixel inputs)."""
    if not np.issubdtype(dtype, np.integer) or not scale or scale <= 0:
        return None
    return Quantization(float(scale), int(zero_point))


def dequantize(array: np.ndarray, quantization: Quantization) -> np.ndarray:
    """Quantised integers -> float32 real values."""
    real = array.astype(np.float32)
    real -= np.float32(quantization.zero_point)
    real *= np.float32(quantization.scale)
    return real


def _gain_offset(
    mean: tuple[float, float, float], std: tuple[float, float, float], quantization: Quantization
) -> tuple[np.ndarray, np.ndarray]:
    """``q = p * gain + offset`` per channel: ``gain = 1 / (std * scale)``,
    ``offset = zero_point - mean * gain``."""
    gain = np.array([1.0 / (s * quantization.scale) for s in std], np.float32)
    return gain, np.array([quantization.zero_point - m * g for m, g in zip(mean, gain)], np.float32)


@lru_cache(maxsize=64)  # asked on every request of a quantised model: the same few arguments
def passes_through(
    mean: tuple[float, float, float], std: tuple[float, float, float], dtype: np.dtype, quantization: Quantization
) -> bool:
    """True when the quantised picture is the pixel itself (uint8) or the pixel - 128 (int8):
    the input's quantization undoes the normalisation, as a converter's full-integer model's does."""
    gain, offset = _gain_offset(mean, std, quantization)
    shift = {np.dtype(np.uint8): 0.0, np.dtype(np.int8): -128.0}.get(np.dtype(dtype))
    return (shift is not None and bool(np.all(np.abs(gain - 1.0) <= _SCALE_TOLERANCE))
            and bool(np.all(np.abs(offset - shift) <= _OFFSET_TOLERANCE)))


def quantize_pixels(
    pixels: np.ndarray,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    dtype: np.dtype,
    quantization: Quantization,
) -> np.ndarray:
    """uint8 pixels -> the integers the model expects for ``(pixels - mean) / std``.

    ``q = p / (std * scale) + zero_point - mean / (std * scale)``: for the usual pairs
    (``[-1, 1]`` with scale 1/128 and zero point 128 or 0) that is the pixel itself, or the
    pixel - 128, which costs nothing; any other pair is computed in float32 and rounded."""
    if passes_through(mean, std, dtype, quantization):
        return pixels if dtype == np.uint8 else (pixels ^ np.uint8(0x80)).view(np.int8)  # p - 128 in 8 bits
    gain, offset = _gain_offset(mean, std, quantization)
    info = np.iinfo(dtype)
    real = pixels.astype(np.float32) * gain + offset
    np.rint(real, out=real)
    np.clip(real, info.min, info.max, out=real)
    return real.astype(dtype)
