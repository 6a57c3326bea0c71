"""ONNX Runtime (CPU) engine."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

from workers.engines.base import EngineOptions
from workers.signature import ModelSignature, TensorInfo

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def _tensor_info(arg: ort.NodeArg) -> TensorInfo:
    shape = tuple(dim if isinstance(dim, int) else None for dim in arg.shape)
    return TensorInfo(arg.name, shape, np.dtype(_ORT_TYPES.get(arg.type, np.float32)))


def session_options(options: EngineOptions) -> ort.SessionOptions:
    """Sequential execution with the pool's thread share; no spinning threads between
    requests, which would steal the other workers' cores."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


class OnnxEngine:
    """Thread-safe: ``InferenceSession.run`` may be called concurrently."""

    format = "onnx"

    def __init__(self, model_path: Path, options: EngineOptions) -> None:
        self._session = ort.InferenceSession(
            str(model_path), sess_options=session_options(options), providers=["CPUExecutionProvider"]
        )
        self.signature = ModelSignature(
            inputs=tuple(_tensor_info(a) for a in self._session.get_inputs()),
            outputs=tuple(_tensor_info(a) for a in self._session.get_outputs()),
        )

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, dict(feeds))
