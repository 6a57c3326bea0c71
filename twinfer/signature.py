"""Tensor signatures of a loaded model, independent of the runtime that loaded it.

Decoders and preprocessing are chosen from these alone, so a bundle without metadata
still serves (the reference design's bundles carry none).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Quantization:
    """How an integer tensor holds real values: ``real = (q - zero_point) * scale``
    (per tensor, as TFLite's full-integer models quantise their inputs and outputs)."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor: name, shape (``None`` for a dynamic dim), dtype, and
    its quantization when the tensor holds quantised integers (None: the values are real)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    quantization: Quantization | None = None

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class ModelSignature:
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @property
    def image_input(self) -> TensorInfo:
        """The rank-4 input that takes the picture (models may have other inputs)."""
        for tensor in self.inputs:
            if tensor.rank == 4:
                return tensor
        raise ValueError("model has no rank-4 image input")
