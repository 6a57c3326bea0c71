"""Memory fixtures shared by the shared-weights test and ops/bench/memory.py: a synthetic
ONNX model with a chosen amount of weights, and a process's smaps_rollup figures."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def synthetic_onnx(path: Path, weight_bytes: int, dim: int = 1024, seed: int = 0) -> int:
    """A chain of MatMuls with [dim, dim] float32 weights (4 MiB each); returns the weight bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    count = max(1, weight_bytes // (dim * dim * 4))
    rng = np.random.default_rng(seed)
    initializers, nodes, previous = [], [], "x"
    for i in range(count):
        weight = (rng.standard_normal((dim, dim), dtype=np.float32) / np.sqrt(dim)).astype(np.float32)
        initializers.append(numpy_helper.from_array(weight, f"w{i}"))
        output = "y" if i == count - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [output]))
        previous = output
    graph = helper.make_graph(
        nodes, "synthetic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, dim])], initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return count * dim * dim * 4


def smaps_rollup(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                values[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return values
