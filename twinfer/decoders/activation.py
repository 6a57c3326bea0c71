"""Score activations a bundle may name (``decoder_options.activation``), and ``auto``.

Why ``auto``: a classifier or mask exported with its softmax or sigmoid gives
probabilities, one exported without gives logits, and the file rarely says which. ``auto``
takes outputs already in [0, 1] (summing to 1 for a softmax) as they are, else applies
the family's usual activation; a bundle that knows better names it.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from twinfer.decoders.base import sigmoid

ACTIVATIONS = ("auto", "softmax", "sigmoid", "none")


def activation_option(options: Mapping[str, Any], allowed: tuple[str, ...] = ACTIVATIONS) -> str:
    value = options.get("activation", "auto")
    if value not in allowed:
        raise ValueError(f"decoder_options.activation must be one of {', '.join(allowed)}, got {value!r}")
    return value


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return (shifted / shifted.sum(axis=axis, keepdims=True)).astype(np.float32)


def are_probabilities(values: np.ndarray) -> bool:
    return bool(values.size) and float(values.min()) >= 0.0 and float(values.max()) <= 1.0


def apply(values: np.ndarray, activation: str, usual: str, axis: int = -1, step: float = 0.0) -> np.ndarray:
    """``values`` with ``activation`` applied; ``auto`` means ``usual`` unless they already
    are probabilities (and, for a softmax, sum to 1 along ``axis`` within half a
    quantisation ``step`` per value: a uint8 softmax of 1001 classes sums to 0.996)."""
    if activation == "auto":
        summed = values.sum(axis=axis)
        tolerance = max(1e-3, values.shape[axis] * step / 2)
        ready = are_probabilities(values) and (usual != "softmax" or bool(np.allclose(summed, 1.0, atol=tolerance)))
        activation = "none" if ready else usual
    if activation == "softmax":
        return softmax(values, axis)
    if activation == "sigmoid":
        return sigmoid(values).astype(np.float32, copy=False)
    return values.astype(np.float32, copy=False)
