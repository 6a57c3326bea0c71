"""The contract every inference runtime meets."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Protocol

import numpy as np

from workers.signature import ModelSignature


@dataclass(frozen=True)
class EngineOptions:
    """Thread settings for one worker process.

    ``intra_op_threads`` defaults to cores // workers: each gunicorn worker runs one
    request at a time, so more threads than its share of cores only oversubscribes
    the CPU (ORT's own default, one thread per core, costs 20-90% more CPU per request
    under several workers).

    ``use_host_artifacts``: open the host artifact the supervisor prepared (weights
    memory-mapped, shared by every worker; see ``workers.engines.artifacts``) when there
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
