"""LiteRT (``ai-edge-litert``) engine; ``tflite-runtime`` 2.14 is frozen and breaks under numpy 2.

Two ways in, one interface:

* with a host artifact (``twinfer.engines.artifacts``): LiteRT's ``CompiledModel`` on
  the CPU (XNNPACK) with the XNNPACK weight cache file the supervisor built; XNNPACK maps
  the packed weights from it, so every worker shares one copy in the page cache. The
  ``Interpreter`` of ai-edge-litert 2.x has no weight-cache option, hence ``CompiledModel``;
* otherwise the ``Interpreter`` (XNNPACK packs the weights privately in each worker).

Names, order, shapes and dtypes of the signature are the interpreter's in both cases
(the artifact records them, with tensor indices to match ``CompiledModel``'s names).
"""
from __future__ import annotations

import ctypes
import gc
import importlib.metadata
import logging
import threading
from pathlib import Path
from typing import Mapping

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from twinfer.engines.artifacts import HostArtifact, find_host_artifact
from twinfer.engines.base import EngineOptions, Runtime
from twinfer.native_stderr import sorted_native_stderr
from twinfer.quantized_io import quantization_of
from twinfer.signature import ModelSignature, TensorInfo

log = logging.getLogger("twinfer.engines")

# The host artifact: XNNPACK's packed weights, mapped by every worker.
ARTIFACT_FILES = {"weight_cache": "xnnpack.cache"}


def _tensor_info(detail: dict) -> TensorInfo:
    shape = tuple(int(d) if d > 0 else None for d in detail["shape_signature"])
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    return TensorInfo(detail["name"], shape, dtype, quantization_of(dtype, scale, zero_point))


def describe_interpreter(interpreter: Interpreter) -> dict:
    """The interpreter's signature with tensor indices (and each tensor's quantization), as
    recorded in a host artifact."""

    def entries(details: list[dict]) -> list[dict]:
        return [
            {"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name, "index": int(d["index"]),
             "quantization": [t.quantization.scale, t.quantization.zero_point] if t.quantization else None}
            for t, d in ((_tensor_info(d), d) for d in details)
        ]

    return {"inputs": entries(interpreter.get_input_details()), "outputs": entries(interpreter.get_output_details())}


def _signature_from_record(record: dict) -> ModelSignature:
    def info(entry: dict) -> TensorInfo:
        dtype = np.dtype(entry["dtype"])
        if np.issubdtype(dtype, np.integer) and "quantization" not in entry:
            # Recorded before quantizations were: an integer tensor may be quantised, and
            # served as raw integers it would decode as garbage. The original model is used.
            raise ValueError(f"the artifact does not record the quantization of {entry['name']!r}")
        scale, zero_point = entry.get("quantization") or (0.0, 0)
        return TensorInfo(entry["name"], tuple(entry["shape"]), dtype, quantization_of(dtype, scale, zero_point))

    return ModelSignature(inputs=tuple(map(info, record["inputs"])), outputs=tuple(map(info, record["outputs"])))


def open_interpreter(model_path: Path, num_threads: int) -> Interpreter:
    """An ``Interpreter`` with its tensors allocated (its stderr lines sorted)."""
    with sorted_native_stderr("litert"):
        interpreter = Interpreter(model_path=str(model_path), num_threads=num_threads)
        interpreter.allocate_tensors()
    return interpreter


class _InterpreterRunner:
    """The original model through ``Interpreter`` (weights packed privately)."""

    def __init__(self, model_path: Path, options: EngineOptions) -> None:
        self._interpreter = open_interpreter(model_path, options.intra_op_threads)
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        self._input_index = {d["name"]: d["index"] for d in inputs}
        self._output_indices = [d["index"] for d in outputs]
        self.signature = ModelSignature(
            inputs=tuple(_tensor_info(d) for d in inputs),
            outputs=tuple(_tensor_info(d) for d in outputs),
        )

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        for name, array in feeds.items():
            self._interpreter.set_tensor(self._input_index[name], array)
        self._interpreter.invoke()
        return [self._interpreter.get_tensor(i) for i in self._output_indices]


_environment = None
_environment_lock = threading.Lock()


def shared_environment():
    """One LiteRT environment per process (it loads the accelerator registry once).

    Models run on the CPU (XNNPACK) only, so no vendor NPU compiler plugin or dispatch
    library is wanted. Left empty, both paths are auto-discovered under the wheel's
    ``vendors/`` and each plugin whose SDK is absent (OpenVINO, ...) logs a failed load
    that reads like a fault; a directory that does not exist makes LiteRT search none.

    The environment lives as long as the process: destroying it prints a line per
    accelerator at every exit, and a compiled model still alive during interpreter
    shutdown may use it. The operating system reclaims it with the process."""
    global _environment
    import ai_edge_litert
    from ai_edge_litert.compiled_model import CompiledModel  # noqa: F401  (loads the wrappers)
    from ai_edge_litert.environment import Environment

    no_plugins = str(Path(ai_edge_litert.__file__).parent / "vendors" / "none")
    with _environment_lock:
        if _environment is None:
            with sorted_native_stderr("litert"):
                _environment = Environment.create(compiler_plugin_path=no_plugins, dispatch_library_path=no_plugins)
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(_environment))  # never released, see above
        return _environment


def compile_on_cpu(model_path: Path, num_threads: int, weight_cache: Path):
    """A ``CompiledModel`` on XNNPACK with its packed weights in ``weight_cache``: read
    from it when the file is complete, written to it when it is empty."""
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import CpuOptions, Options

    options = Options(
        hardware_accelerators=HardwareAccelerator.CPU,
        cpu_options=CpuOptions(num_threads=num_threads, xnnpack_weight_cache_path=str(weight_cache)),
    )
    environment = shared_environment()
    with sorted_native_stderr("litert"):
        return CompiledModel.from_file(str(model_path), environment=environment, options=options)


class _Slot:
    """One signature tensor bound to a ``CompiledModel`` buffer."""

    def __init__(self, info: TensorInfo, shape: tuple[int, ...], dtype: np.dtype, buffer) -> None:
        self.info = info
        self.shape = shape
        self.dtype = dtype
        self.size = int(np.prod(shape, dtype=np.int64))
        self.buffer = buffer


class _CompiledRunner:
    """The model through ``CompiledModel`` with the XNNPACK weight cache (weights mapped)."""

    def __init__(self, model_path: Path, options: EngineOptions, cache_path: Path, record: dict) -> None:
        # The first buffer a process asks for sets a LiteRT environment of its own up, which logs.
        with sorted_native_stderr("litert"):
            self._open(model_path, options, cache_path, record)

    def _open(self, model_path: Path, options: EngineOptions, cache_path: Path, record: dict) -> None:
        if not cache_path.is_file():
            raise FileNotFoundError(f"XNNPACK weight cache {cache_path} is missing")
        self.signature = _signature_from_record(record)
        self._model = compile_on_cpu(model_path, options.intra_op_threads, cache_path)
        if self._model.get_num_signatures() < 1:
            raise ValueError("model has no signature")
        key = self._model.get_signature_by_index(0)["key"]
        names = self._model.get_signature_list()[key]
        # Tensor details before any buffer: asked afterwards, LiteRT 2.3 leaves outputs
        # whose shape is set at run time (TFLite_Detection_PostProcess) with 0-byte
        # buffers and then overruns them.
        input_details = self._model.get_input_tensor_details(key)
        output_details = self._model.get_output_tensor_details(key)
        input_buffers = self._model.create_input_buffers(0)
        output_buffers = self._model.create_output_buffers(0)
        self._inputs = self._bind(record["inputs"], self.signature.inputs, names["inputs"], input_details, input_buffers)
        self._outputs = self._bind(
            record["outputs"], self.signature.outputs, names["outputs"], output_details, output_buffers
        )
        self._input_by_name = {slot.info.name: slot for slot in self._inputs}

    @staticmethod
    def _bind(entries: list[dict], infos, names: list[str], details: dict, buffers: list) -> list[_Slot]:
        """Match the interpreter's tensors (by tensor index) with the signature's buffers."""
        if len(names) != len(entries) or len(buffers) != len(names):
            raise ValueError(f"CompiledModel signature has {len(names)} tensors, the interpreter {len(entries)}")
        by_index = {int(details[name]["index"]): (position, name) for position, name in enumerate(names)}
        slots = []
        for entry, info in zip(entries, infos):
            if entry["index"] not in by_index:
                raise ValueError(f"tensor {info.name!r} (index {entry['index']}) is not in the CompiledModel signature")
            position, name = by_index[entry["index"]]
            detail = details[name]
            shape = tuple(int(d) for d in detail["shape"])
            dtype = np.dtype(detail["dtype"])
            if dtype != info.dtype or len(shape) != len(info.shape) or any(
                want is not None and want != got for want, got in zip(info.shape, shape)
            ):
                raise ValueError(f"{info.name!r}: CompiledModel has {dtype}{list(shape)}, the interpreter {info.dtype}{list(info.shape)}")
            held = buffers[position].get_tensor_details()
            if tuple(int(d) for d in held["shape"]) != shape:
                raise ValueError(f"{info.name!r}: buffer shape {held['shape']} is not {list(shape)}")
            slots.append(_Slot(info, shape, dtype, buffers[position]))
        return slots

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        for name, array in feeds.items():
            slot = self._input_by_name.get(name)
            if slot is None:
                raise KeyError(f"model has no input {name!r}")
            array = np.asarray(array)
            if array.dtype != slot.dtype or array.size != slot.size:
                # The interpreter refuses these in set_tensor; a buffer write must not overrun.
                raise ValueError(f"input {name!r}: got {array.dtype}{list(array.shape)}, expected {slot.dtype}{list(slot.shape)}")
            slot.buffer.write(array)
        self._model.run_by_index(0, [s.buffer for s in self._inputs], [s.buffer for s in self._outputs])
        return [s.buffer.read(s.size, s.dtype).reshape(s.shape) for s in self._outputs]


class LiteRtEngine:
    """An interpreter (or compiled model) holds its tensors in place, so calls are
    serialised by a lock.

    ``artifact``: use this host artifact (the supervisor checks a candidate this way);
    by default the complete one for this host is found when ``options.use_host_artifacts``.
    A host artifact that fails to load falls back to the original model."""

    format = "tflite"

    def __init__(self, model_path: Path, options: EngineOptions, artifact: HostArtifact | None = None) -> None:
        if artifact is None and options.use_host_artifacts:
            artifact = find_host_artifact(model_path)
        self._runner: _InterpreterRunner | _CompiledRunner | None = None
        self.shared_weights = False
        self.artifact_dir: Path | None = None
        if artifact is not None:
            try:
                if not artifact.signature:
                    raise ValueError("the artifact records no signature")
                self._runner = _CompiledRunner(model_path, options, artifact.path("weight_cache"), artifact.signature)
                self.shared_weights = True
                self.artifact_dir = artifact.directory
            except Exception as exc:  # a bad artifact must never stop a worker from serving
                log.warning("could not open host artifact %s (%s); loading the original model", artifact.directory, exc)
                self._runner = None
        if self._runner is None:
            self._runner = _InterpreterRunner(model_path, options)
        self.signature = self._runner.signature
        self.metadata: dict[str, str] = {}
        self._lock = threading.Lock()

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            return self._runner.run(feeds)


def runtime_version() -> str:
    try:
        import ai_edge_litert

        return ai_edge_litert.__version__
    except AttributeError:
        return importlib.metadata.version("ai-edge-litert")


def build_host_artifact(model_path: Path, into: Path) -> dict:
    """Compiling the model with a cache path that does not exist yet makes XNNPACK pack
    the weights into that file (workers only ever open an existing, checked one). The
    marker records the interpreter's signature: ``CompiledModel`` names tensors its own way."""
    interpreter = open_interpreter(model_path, num_threads=1)
    record = describe_interpreter(interpreter)
    del interpreter
    cache = into / ARTIFACT_FILES["weight_cache"]
    builder = compile_on_cpu(model_path, 1, cache)
    del builder
    gc.collect()
    if not cache.is_file() or cache.stat().st_size == 0:
        raise RuntimeError("XNNPACK wrote no weight cache (no operator delegated to XNNPACK?)")
    return {"signature": record}


RUNTIME = Runtime(
    format="tflite", short_name="litert", version=runtime_version, engine=LiteRtEngine,
    artifact_files=ARTIFACT_FILES, build_artifact=build_host_artifact,
)
