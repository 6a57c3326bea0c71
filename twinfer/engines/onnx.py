"""ONNX Runtime (CPU) engine.

With a host artifact (``twinfer.engines.artifacts``) it opens the model the supervisor
optimised for this host, with optimisations disabled: ONNX Runtime maps its external
weights file (initializers and pre-packed weights), so every worker shares one copy in
the page cache. Otherwise it opens the original with ``ORT_ENABLE_ALL`` and each worker
holds its own copy.
"""
from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

from twinfer.engines.artifacts import HostArtifact, find_host_artifact
from twinfer.engines.base import EngineOptions, Runtime
from twinfer.signature import ModelSignature, TensorInfo

log = logging.getLogger("twinfer.engines")

# The host artifact: the model optimised for this host, its weights in an external file.
ARTIFACT_FILES = {"model": "model.optimized.onnx", "weights": "weights.bin"}
MIN_EXTERNAL_INITIALIZER_BYTES = 1024  # smaller initializers stay inline in the graph

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


def session_options(options: EngineOptions, prepared: bool = False) -> ort.SessionOptions:
    """Sequential execution with the pool's thread share; no spinning threads between
    requests, which would steal the other workers' cores.

    ``prepared``: the model is a host artifact, already optimised for this host; running
    the optimisers again would rewrite (and copy) the mapped weights."""
    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL if prepared else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


class OnnxEngine:
    """Thread-safe: ``InferenceSession.run`` may be called concurrently.

    ``artifact``: open this host artifact (the supervisor checks a candidate this way);
    by default the complete one for this host is found when ``options.use_host_artifacts``.
    A host artifact that fails to load falls back to the original model."""

    format = "onnx"

    def __init__(self, model_path: Path, options: EngineOptions, artifact: HostArtifact | None = None) -> None:
        if artifact is None and options.use_host_artifacts:
            artifact = find_host_artifact(model_path)
        self._session: ort.InferenceSession | None = None
        self.shared_weights = False
        self.artifact_dir: Path | None = None
        if artifact is not None:
            try:
                self._session = ort.InferenceSession(
                    str(artifact.path("model")),
                    sess_options=session_options(options, prepared=True),
                    providers=["CPUExecutionProvider"],
                )
                self.shared_weights = True
                self.artifact_dir = artifact.directory
            except Exception as exc:  # a bad artifact must never stop a worker from serving
                log.warning("could not open host artifact %s (%s); loading the original model", artifact.directory, exc)
        if self._session is None:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=session_options(options), providers=["CPUExecutionProvider"]
            )
        self.signature = ModelSignature(
            inputs=tuple(_tensor_info(a) for a in self._session.get_inputs()),
            outputs=tuple(_tensor_info(a) for a in self._session.get_outputs()),
        )
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, dict(feeds))


def build_host_artifact(model_path: Path, into: Path) -> dict:
    """ONNX Runtime optimises the model once for this host (``ORT_ENABLE_ALL``) and saves
    it with its initializers, and the weights its kernels pre-pack, in an external file
    that workers then map. No extra marker fields."""
    so = session_options(EngineOptions(intra_op_threads=1, use_host_artifacts=False))  # ORT_ENABLE_ALL
    so.log_severity_level = 3  # the "hardware specific optimizations" warning is the point here
    so.optimized_model_filepath = str(into / ARTIFACT_FILES["model"])
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", ARTIFACT_FILES["weights"])
    so.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", str(MIN_EXTERNAL_INITIALIZER_BYTES)
    )
    so.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    session = ort.InferenceSession(str(model_path), sess_options=so, providers=["CPUExecutionProvider"])
    del session
    gc.collect()
    for name in ARTIFACT_FILES.values():
        if not (into / name).is_file():
            raise RuntimeError(f"ONNX Runtime wrote no {name} (no initializer of {MIN_EXTERNAL_INITIALIZER_BYTES} bytes "
                               f"or more?)")
    return {}


RUNTIME = Runtime(
    format="onnx", short_name="ort", version=lambda: ort.__version__, engine=OnnxEngine,
    artifact_files=ARTIFACT_FILES, build_artifact=build_host_artifact,
)
