"""Output decoders, one module per family, and auto-detection from the signature."""
from __future__ import annotations

from twinfer.decoders.base import DecodeParams, Decoder, Detections
from twinfer.decoders.blazeface import BlazeFaceDecoder
from twinfer.decoders.classification import ClassificationDecoder
from twinfer.decoders.landmarks import LandmarksDecoder
from twinfer.decoders.segmentation import SegmentationDecoder
from twinfer.decoders.ssd_anchors import SsdAnchorsDecoder
from twinfer.decoders.tflite_ssd import TfliteSsdPostprocessDecoder
from twinfer.decoders.yolo import YoloDecoder
from twinfer.decoders.yolov3 import YoloV3NmsDecoder
from twinfer.signature import ModelSignature

# Most specific first: detection tries them in this order.
DECODERS: dict[str, type[Decoder]] = {
    cls.name: cls
    for cls in (TfliteSsdPostprocessDecoder, YoloV3NmsDecoder, BlazeFaceDecoder, SsdAnchorsDecoder, YoloDecoder,
                LandmarksDecoder, SegmentationDecoder, ClassificationDecoder)
}


def detect_decoder(signature: ModelSignature, task: str | None = None) -> type[Decoder]:
    """The first family (of ``task``'s, when given) whose signature test accepts the model."""
    for cls in DECODERS.values():
        if (task is None or cls.task == task) and cls.matches(signature):
            return cls
    outputs = [(o.name, o.shape) for o in signature.outputs]
    if task is not None:
        families = [name for name, cls in DECODERS.items() if cls.task == task]
        raise ValueError(f"no {task} decoder ({', '.join(families)}) reads outputs {outputs}; "
                         "name one in twinfer.json (decoder, decoder_options)")
    raise ValueError(f"cannot tell the task and decoder from the model signature (outputs {outputs}); "
                     "name them in twinfer.json (task, decoder)")


def task_of(decoder: str) -> str | None:
    """The task a decoder family serves (None for a name this version does not know)."""
    cls = DECODERS.get(decoder)
    return cls.task if cls is not None else None


def decoder_by_name(name: str, task: str | None = None) -> type[Decoder]:
    try:
        cls = DECODERS[name]
    except KeyError:
        raise ValueError(f"unknown decoder {name!r}; known: {', '.join(DECODERS)}") from None
    if task is not None and cls.task != task:
        raise ValueError(f"decoder {name!r} is a {cls.task} decoder, but twinfer.json says task {task!r}")
    return cls


__all__ = ["DECODERS", "DecodeParams", "Decoder", "Detections", "decoder_by_name", "detect_decoder", "task_of"]
