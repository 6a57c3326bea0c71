"""Inference runtimes as plugins behind one small interface (``Engine``), chosen by file suffix.

A runtime registers here with its suffix and its module; the module defines ``RUNTIME``
(``twinfer.engines.base.Runtime``): how to open a model, its version, and how the
supervisor builds its host artifact. Adding a runtime is one module and one row.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from twinfer.engines.base import Engine, EngineOptions, Runtime

# format -> (model file suffix, module defining RUNTIME); imported on first use.
_REGISTRY = {
    "onnx": (".onnx", "twinfer.engines.onnx"),
    "tflite": (".tflite", "twinfer.engines.litert"),
}
ENGINE_FORMATS = {suffix: fmt for fmt, (suffix, _) in _REGISTRY.items()}  # suffix -> format


def format_of(model_path: Path) -> str:
    """The format a model file's suffix names; ValueError for a file no runtime opens."""
    try:
        return ENGINE_FORMATS[model_path.suffix.lower()]
    except KeyError:
        known = " or ".join(ENGINE_FORMATS)
        raise ValueError(f"unsupported model file {model_path.name!r}: expected {known}") from None


def runtime(fmt: str) -> Runtime:
    try:
        module = _REGISTRY[fmt][1]
    except KeyError:
        raise ValueError(f"unknown model format {fmt!r}") from None
    return importlib.import_module(module).RUNTIME


def open_engine(model_path: Path, options: EngineOptions, artifact=None) -> Engine:
    """Open ``model_path`` with the runtime its suffix names (``artifact``: a host artifact to use)."""
    return runtime(format_of(model_path)).engine(model_path, options, artifact)


__all__ = ["ENGINE_FORMATS", "Engine", "EngineOptions", "Runtime", "format_of", "open_engine", "runtime"]
