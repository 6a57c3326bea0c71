"""Fine-tuned and retrained variants of a real ONNX model, for delta-update tests and the delta bench.

A fine-tune moves weights by about 1% (w * (1 + N(0, 0.01)), float32); only the initializers it
touches change, the graph and every other byte of the protobuf stay the same.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

HEAD_PREFIX = "BoxPredictor_"  # the SSD MobileNetV2 detection head: box and class predictors


def head_initializers(model: onnx.ModelProto) -> set[str]:
    """Initializers read by the detection head's nodes (~9% of the demo model's weight bytes)."""
    names = {init.name for init in model.graph.initializer}
    head_nodes = (node for node in model.graph.node if node.name.startswith(HEAD_PREFIX))
    return {name for node in head_nodes for name in node.input if name in names}


def perturb(source: Path, out: Path, *, head_only: bool, seed: int = 0) -> None:
    """Save ``source`` with its head (or every float initializer) moved as a fine-tune would."""
    model = onnx.load(source)
    chosen = head_initializers(model) if head_only else {init.name for init in model.graph.initializer}
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        if init.name in chosen and init.data_type == onnx.TensorProto.FLOAT:
            weights = numpy_helper.to_array(init)
            moved = (weights * (1 + rng.normal(0, 0.01, weights.shape))).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(moved, init.name))
    onnx.save(model, out)
