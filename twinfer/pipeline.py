"""One loaded model, ready to turn image bytes into its task's result.

The same object serves HTTP requests, validates a model during staging in the
supervisor and runs the in-process ceiling benchmark, so all three measure one path.
``detect`` is the detection route's path; ``predict`` answers every task; a chained model
(fed crops of a detector's boxes) is run by ``twinfer.chain``, through ``infer``.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from twinfer import imaging
from twinfer.decode_budget import DecodeBudget, decode_bytes
from twinfer.decoders.base import DecodeParams, Decoder, Detections, input_size
from twinfer.engines.base import Engine
from twinfer.quantized_io import dequantize
from twinfer.signature import ModelSignature
from twinfer.spec import ModelSpec
from twinfer.tasks import DETECTION


@dataclass(frozen=True)
class Timings:
    decode_ms: float
    inference_ms: float
    postprocess_ms: float
    total_ms: float


@dataclass(frozen=True)
class DetectionResult:
    header: imaging.ImageHeader
    detections: Detections
    timings: Timings


@dataclass(frozen=True)
class Prediction:
    """Any task's answer: ``result`` is the decoder's (``twinfer.tasks``), or a chain's
    crops (``twinfer.chain.CropResult``); ``timings_ms`` by stage, ``total`` last."""

    header: imaging.ImageHeader
    result: Any
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class PredictOptions:
    """What a request may change; None keeps the model's own setting."""

    threshold: float | None = None
    max_detections: int | None = None
    top_k: int | None = None


def whole_input(width: int, height: int) -> imaging.Geometry:
    """The geometry of a picture that is exactly the model's input."""
    return imaging.Geometry(image_width=width, image_height=height, decoded_width=width, decoded_height=height,
                            input_width=width, input_height=height, scale_x=1.0, scale_y=1.0, pad_x=0.0, pad_y=0.0)


class VisionModel:
    """Engine + preprocessing + decoder + labels for one model version, of any task.

    ``signature``: the engine's with a dynamic image size fixed (from an export's
    metadata); the engine's own by default."""

    def __init__(
        self,
        name: str,
        version: str,
        engine: Engine,
        decoder: Decoder,
        spec: ModelSpec,
        labels: list[str],
        label_offset: int,
        signature: ModelSignature | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.engine = engine
        self.decoder = decoder
        self.spec = spec
        self.labels = labels
        self.label_offset = label_offset
        self.input_width, self.input_height = input_size(signature or engine.signature, spec.input.layout)
        image_input = engine.signature.image_input
        self._input_name = image_input.name
        self._input_dtype = image_input.dtype
        self._input_quantization = image_input.quantization
        # Outputs a full-integer model gives as quantised integers, by position: made real
        # before the decoder reads them.
        self._quantized_outputs = [
            (i, out.quantization) for i, out in enumerate(engine.signature.outputs) if out.quantization is not None
        ]

    def label(self, class_id: int) -> str:
        index = class_id + self.label_offset
        return self.labels[index] if 0 <= index < len(self.labels) else f"class_{class_id}"

    @property
    def task(self) -> str:
        return self.spec.task

    def params(self, threshold: float | None, max_detections: int | None, top_k: int | None = None) -> DecodeParams:
        return DecodeParams(
            score_threshold=self.spec.score_threshold if threshold is None else threshold,
            iou_threshold=self.spec.iou_threshold,
            max_detections=self.spec.max_detections if max_detections is None else max_detections,
            top_k=self.spec.top_k if top_k is None else top_k,
        )

    def _feeds(self, pixels: np.ndarray, geometry: imaging.Geometry | None) -> dict[str, np.ndarray]:
        """Model-sized uint8 HWC pixels -> the model's input tensors."""
        tensor = imaging.to_tensor(pixels, self.spec.input, self._input_dtype, self._input_quantization)
        return {self._input_name: tensor, **self.decoder.extra_inputs(geometry)}

    def _forward(self, pixels: np.ndarray, geometry: imaging.Geometry | None) -> list[np.ndarray]:
        """Model-sized uint8 HWC pixels -> model outputs as real values."""
        outputs = self.engine.run(self._feeds(pixels, geometry))
        for index, quantization in self._quantized_outputs:
            outputs[index] = dequantize(outputs[index], quantization)
        return outputs

    def _pixels(
        self, data: bytes, max_pixels: int, budget: DecodeBudget | None
    ) -> tuple[imaging.ImageHeader, np.ndarray, imaging.Geometry]:
        """Image bytes -> model-sized pixels, decoded within ``budget`` when given."""
        header = imaging.read_header(data, max_pixels)
        content_w, content_h = imaging.content_size(header, self.spec.input, self.input_width, self.input_height)
        reduction = imaging.jpeg_reduction(header, content_w, content_h)
        cost = decode_bytes(header.format, header.width, header.height, reduction)
        what = f"this {header.width}x{header.height} {header.format}"
        with budget.reserve(cost, what) if budget is not None else contextlib.nullcontext():
            image = imaging.decode(data, header, reduction, self.spec.input.color)
            pixels, geometry = imaging.to_input(image, header, self.spec.input, self.input_width, self.input_height)
            del image  # the full-size picture is freed before its pixels are handed back
        return header, pixels, geometry

    def feeds(self, data: bytes, max_pixels: int) -> dict[str, np.ndarray]:
        """The input tensors a request with these image bytes gives the model: what a
        quantised variant is calibrated on (``service.quantize``)."""
        _, pixels, geometry = self._pixels(data, max_pixels, None)
        return self._feeds(pixels, geometry)

    def detect(
        self,
        data: bytes,
        max_pixels: int,
        threshold: float | None = None,
        max_detections: int | None = None,
        budget: DecodeBudget | None = None,
    ) -> DetectionResult:
        """Image bytes -> a detector's detections, with decode/inference/postprocess timings.
        With a ``budget`` the decode waits for its memory in it (the HTTP workers' concurrent
        requests)."""
        assert self.is_detector, f"detect() is a detector's; this is a {self.task} model: predict()"
        found = self.predict(data, max_pixels, PredictOptions(threshold, max_detections), budget)
        t = found.timings_ms
        return DetectionResult(found.header, found.result,
                               Timings(t["decode"], t["inference"], t["postprocess"], t["total"]))

    def predict(
        self, data: bytes, max_pixels: int, options: PredictOptions = PredictOptions(),
        budget: DecodeBudget | None = None,
    ) -> Prediction:
        """Image bytes -> the task's result on the whole picture, timed by stage (a chained
        model's request goes through ``twinfer.chain.predict_chained`` instead). With a
        ``budget`` the decode waits for its memory in it."""
        started = time.perf_counter()
        header, pixels, geometry = self._pixels(data, max_pixels, budget)
        decoded = time.perf_counter()
        outputs = self._forward(pixels, geometry)
        inferred = time.perf_counter()
        result = self.decoder.decode(outputs, geometry, self.params(options.threshold, options.max_detections,
                                                                    options.top_k))
        finished = time.perf_counter()
        return Prediction(header, result, {
            "decode": (decoded - started) * 1e3, "inference": (inferred - decoded) * 1e3,
            "postprocess": (finished - inferred) * 1e3, "total": (finished - started) * 1e3,
        })

    def infer(self, pixels: np.ndarray, placement: imaging.Placement, params: DecodeParams) -> Any:
        """Model-sized uint8 HWC pixels (in the model's colour order) -> the result, mapped
        back through ``placement`` (a ``Geometry``, or a chain's crop)."""
        geometry = placement if isinstance(placement, imaging.Geometry) else None
        return self.decoder.decode(self._forward(pixels, geometry), placement, params)

    def warm_up(self) -> Any:
        """One inference on a mid-grey picture, decoded as a request's would be: proves the
        model runs and its decoder reads its outputs, and primes its buffers."""
        pixels = np.full((self.input_height, self.input_width, 3), 128, dtype=np.uint8)
        geometry = whole_input(self.input_width, self.input_height)
        return self.decoder.decode(self._forward(pixels, geometry), geometry, self.params(None, None))

    @property
    def is_detector(self) -> bool:
        return self.task == DETECTION
