"""The contract every inference runtime meets."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from twinfer.signature import ModelSignature


@dataclass(frozen=True)
class EngineOptions:
    """Thread settings for one worker process.

    ``intra_op_threads`` defaults to cores // workers: each gunicorn worker runs one
    request at a time, so more threads than its share of cores only oversubscribes
    the CPU (ORT's own default, one thread per core, costs 20-90% more CPU per request
    under several workers).

    ``use_host_artifacts``: open the host artifact the supervisor prepared (weights
    memory-mapped, shared by every worker; see ``twinfer.engines.artifacts``) when there
    is a complete one; False always opens the original model file.
    """

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    use_host_artifacts: bool = True

    @staticmethod
    def for_pool(workers: int, cores: int | None = None) -> "EngineOptions":
        cores = cores or os.cpu_count() or 1
        return EngineOptions(intra_op_threads=max(1, cores // max(1, workers)))


class Engine(Protocol):
    """A loaded model that maps named input arrays to its outputs, in signature order."""

    format: str
    signature: ModelSignature
    shared_weights: bool  # True when loaded from a host artifact (weights mapped, shared)
    # Key/value metadata the runtime reports for the model (ONNX metadata_props);
    # LiteRT reports none (a .tflite's appended ZIP is read from the file).
    metadata: Mapping[str, str]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Runtime:
    """One inference runtime as a plugin: everything that differs between formats.

    Each runtime's module (``twinfer.engines.onnx``, ``twinfer.engines.litert``) defines
    one ``RUNTIME``; ``twinfer.engines`` imports a module only when a model of its format
    is opened, so a worker serving ONNX never loads LiteRT (and its memory)."""

    format: str  # "onnx": the manifest's and the twin's name for it
    short_name: str  # in host artifact keys: "ort"
    version: Callable[[], str]  # the runtime's version: a host artifact is valid only for it
    # engine(model_path, options, artifact=None): open the model (from the artifact when given)
    engine: Callable[..., Engine]
    artifact_files: Mapping[str, str]  # host artifact: role -> file name
    # build_artifact(model_path, into): write the artifact's files into ``into`` and return
    # extra fields for its ready marker. Supervisor only (service.optimize).
    build_artifact: Callable[[Path, Path], dict[str, Any]]
