"""Image classifiers: one ``[1, C]`` output of class scores (logits or probabilities).

Matched when a model has exactly one output holding C > 1 values in a ``[1, C]`` or
``[1, 1, 1, C]`` / ``[1, C, 1, 1]`` shape; the answer is the ``top_k`` best classes.
``decoder_options.activation``: ``softmax`` (one class per picture), ``sigmoid``
(multi-label), ``none``, or ``auto`` (softmax unless the outputs already sum to 1).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from twinfer.decoders import activation
from twinfer.decoders.base import DecodeParams, layout_of
from twinfer.imaging import Placement
from twinfer.signature import ModelSignature
from twinfer.spec import NORMALIZE_PRESETS, InputSpec
from twinfer.tasks import CLASSIFICATION, Classes


def _class_count(signature: ModelSignature) -> int | None:
    if len(signature.outputs) != 1 or not any(i.rank == 4 for i in signature.inputs):
        return None
    shape = signature.outputs[0].shape
    if not shape or any(d is None for d in shape[1:]):
        return None
    spread = [d for d in shape[1:] if d != 1]
    return spread[0] if len(spread) == 1 and spread[0] > 1 and len(shape) in (2, 4) else None


class ClassificationDecoder:
    name: ClassVar[str] = "classification"
    task: ClassVar[str] = CLASSIFICATION
    counts_background: ClassVar[bool] = False
    default_labels: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def matches(cls, signature: ModelSignature) -> bool:
        return _class_count(signature) is not None

    @classmethod
    def default_input(cls, signature: ModelSignature) -> InputSpec:
        mean, std = NORMALIZE_PRESETS["zero_to_one"]
        return InputSpec(layout=layout_of(signature), color="RGB", resize="stretch", mean=mean, std=std)

    def __init__(self, signature: ModelSignature, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"activation"}
        if unknown:
            raise ValueError(f"unknown decoder_options {sorted(unknown)} for classification; known: activation")
        count = _class_count(signature)
        if count is None:
            raise ValueError("classification needs one output of C > 1 class scores ([1, C]) and a rank-4 image input")
        self.class_count = count
        self._activation = activation.activation_option(options)
        quantization = signature.outputs[0].quantization  # a full-integer model's dequantised scores
        self._step = quantization.scale if quantization is not None else 0.0

    def extra_inputs(self, geometry: Any) -> dict[str, np.ndarray]:
        return {}

    def decode(self, outputs: Sequence[np.ndarray], placement: Placement, params: DecodeParams) -> Classes:
        """The ``top_k`` classes scoring at least the threshold, best first."""
        scores = activation.apply(outputs[0].reshape(-1).astype(np.float32), self._activation, "softmax",
                                  step=self._step)
        k = min(params.top_k, scores.size)
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        best = best[scores[best] >= params.score_threshold]
        return Classes(best.astype(np.int64), scores[best])
