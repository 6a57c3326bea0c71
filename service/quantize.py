"""Operator side: an fp32 ONNX model -> its int8 variant, by ONNX Runtime's static quantisation.

Runs where bundles are built (``bundle --quantize int8``), never on a device: ONNX
Runtime's quantisation tools need the ``onnx`` package, which the device image does not
ship (``pip install '.[quantize]'`` or ``requirements-operator.txt``).

Calibration pictures go through the device's own preprocessing (``VisionModel.feeds``:
the same decode, resize, colour order and normalisation a request gets), so the ranges the
calibrator sees are the ranges the device will feed. The defaults are ONNX Runtime's advice
for CNNs on CPUs: QDQ format, per-channel int8 weights, uint8 activations, min-max
calibration after ``quant_pre_process`` (shape inference and graph optimisation), and
7-bit weights (``reduce_range``): with full 8-bit weights the demo SSD lost 2 of its 3
detections on an AVX2 CPU without VNNI (ONNX Runtime's VPMADDUBSW kernels saturate) and
kept all 3 with 7-bit ones, at the same speed; a fleet whose CPUs all have VNNI may use
``full_range``. Devices check either way (``service.verification``).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:  # bundle's --help and option defaults need none of these
    import numpy as np

    from twinfer.pipeline import VisionModel

FORMATS = ("qdq", "qoperator")
TYPES = ("uint8", "int8")
METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_MAX_PIXELS = 50_000_000


class QuantizeError(Exception):
    """The model could not be quantised; the message says why."""


@dataclass(frozen=True)
class QuantizeOptions:
    """ONNX Runtime's usual knobs (``onnxruntime.quantization.quantize_static``)."""

    quant_format: str = "qdq"
    per_channel: bool = True
    activation_type: str = "uint8"
    weight_type: str = "int8"
    calibrate_method: str = "minmax"
    reduce_range: bool = True  # 7-bit weights: right on CPUs without VNNI too (see above)
    exclude_nodes: tuple[str, ...] = ()  # nodes kept in float (e.g. an accuracy-critical head)


def _calibration_reader(feeds: "Sequence[dict[str, np.ndarray]]"):
    from onnxruntime.quantization import CalibrationDataReader

    class Pictures(CalibrationDataReader):
        """The calibration pictures' input tensors, one dict per picture."""

        def __init__(self) -> None:
            self._next: "Iterator[dict[str, np.ndarray]]" = iter(feeds)

        def get_next(self) -> "dict[str, np.ndarray] | None":
            return next(self._next, None)

        def rewind(self) -> None:
            self._next = iter(feeds)

    return Pictures()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantiser logs every rescaled weight at INFO on the root logger and
    prints calibration progress on stdout (where ``bundle --json`` writes): warnings only,
    and its prints to stderr."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        root.setLevel(level)


def quantize_onnx(reference: "VisionModel", model_path: Path, out: Path, pictures: Sequence[bytes],
                  options: QuantizeOptions = QuantizeOptions()) -> None:
    """Write the int8 model of ``model_path`` (loaded as ``reference``) to ``out``,
    calibrated on ``pictures`` (encoded images)."""
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise QuantizeError(f"quantisation needs the onnx package ({exc}); it is an operator tool, not in the "
                            f"device image: pip install -r requirements-operator.txt") from None
    if not pictures:
        raise QuantizeError("no calibration pictures")
    feeds = [reference.feeds(picture, CALIBRATION_MAX_PIXELS) for picture in pictures]
    with tempfile.TemporaryDirectory(prefix="twinfer-quantize-") as work, _quiet():
        prepared = Path(work) / "prepared.onnx"
        try:
            # No symbolic shape inference: it needs sympy and serves dynamic (transformer) shapes.
            quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared), str(out), _calibration_reader(feeds),
                quant_format=QuantFormat.QDQ if options.quant_format == "qdq" else QuantFormat.QOperator,
                per_channel=options.per_channel,
                activation_type=QuantType.QUInt8 if options.activation_type == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QUInt8 if options.weight_type == "uint8" else QuantType.QInt8,
                calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                  "percentile": CalibrationMethod.Percentile}[options.calibrate_method],
                reduce_range=options.reduce_range,
                nodes_to_exclude=list(options.exclude_nodes),
            )
        except Exception as exc:  # ONNX Runtime's and onnx's own errors: the operator reads the message
            raise QuantizeError(f"ONNX Runtime could not quantise {model_path.name}: {exc}") from exc
