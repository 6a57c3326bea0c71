"""Inference runtimes behind one small interface (``Engine``), chosen by file suffix."""
from __future__ import annotations

from pathlib import Path

from workers.engines.base import Engine, EngineOptions

ENGINE_FORMATS = {".onnx": "onnx", ".tflite": "tflite"}


def open_engine(model_path: Path, options: EngineOptions) -> Engine:
    """Open ``model_path`` with the runtime its suffix names."""
    suffix = model_path.suffix.lower()
    if suffix == ".onnx":
        from workers.engines.onnx import OnnxEngine

        return OnnxEngine(model_path, options)
    if suffix == ".tflite":
        from workers.engines.litert import LiteRtEngine

        return LiteRtEngine(model_path, options)
    raise ValueError(f"unsupported model file {model_path.name!r}: expected .onnx or .tflite")


__all__ = ["ENGINE_FORMATS", "Engine", "EngineOptions", "open_engine"]
