"""LiteRT (``ai-edge-litert``) engine; ``tflite-runtime`` 2.14 is frozen and breaks under numpy 2."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Mapping

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from workers.engines.base import EngineOptions
from workers.signature import ModelSignature, TensorInfo


def _tensor_info(detail: dict) -> TensorInfo:
    shape = tuple(int(d) if d > 0 else None for d in detail["shape_signature"])
    return TensorInfo(detail["name"], shape, np.dtype(detail["dtype"]))


class LiteRtEngine:
    """An interpreter holds its tensors in place, so calls are serialised by a lock."""

    format = "tflite"

    def __init__(self, model_path: Path, options: EngineOptions) -> None:
        self._interpreter = Interpreter(model_path=str(model_path), num_threads=options.intra_op_threads)
        self._interpreter.allocate_tensors()
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        self._input_index = {d["name"]: d["index"] for d in inputs}
        self._output_indices = [d["index"] for d in outputs]
        self.signature = ModelSignature(
            inputs=tuple(_tensor_info(d) for d in inputs),
            outputs=tuple(_tensor_info(d) for d in outputs),
        )
        self._lock = threading.Lock()

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            for name, array in feeds.items():
                self._interpreter.set_tensor(self._input_index[name], array)
            self._interpreter.invoke()
            return [self._interpreter.get_tensor(i) for i in self._output_indices]
