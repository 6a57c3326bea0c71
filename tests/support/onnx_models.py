"""Tiny ONNX graphs for decoder tests, built with onnx.helper (no exporter needed)."""
from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper, numpy_helper


def planted_output_nodes(planted: np.ndarray, image: str = "images", output: str = "output0") -> list[NodeProto]:
    """Nodes giving ``output`` = ``planted`` whatever the image; the image still feeds the
    graph (times zero), so the runtime keeps the input and its shape."""
    return [
        helper.make_node("Constant", [], ["planted"], value=numpy_helper.from_array(planted, "planted_value")),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0.0, np.float32), "zero_value")),
        helper.make_node("ReduceMean", [image], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["planted", "nothing"], [output]),
    ]
