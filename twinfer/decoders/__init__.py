"""Output decoders, one module per family, and auto-detection from the signature."""
from __future__ import annotations

from twinfer.decoders.base import DecodeParams, Decoder, Detections
from twinfer.decoders.blazeface import BlazeFaceDecoder
from twinfer.decoders.ssd_anchors import SsdAnchorsDecoder
from twinfer.decoders.tflite_ssd import TfliteSsdPostprocessDecoder
from twinfer.decoders.yolo import YoloDecoder
from twinfer.decoders.yolov3 import YoloV3NmsDecoder
from twinfer.signature import ModelSignature

# Most specific first: detection tries them in this order.
DECODERS: dict[str, type[Decoder]] = {
    cls.name: cls
    for cls in (TfliteSsdPostprocessDecoder, YoloV3NmsDecoder, BlazeFaceDecoder, SsdAnchorsDecoder, YoloDecoder)
}


def detect_decoder(signature: ModelSignature) -> type[Decoder]:
    """The first family whose signature test accepts the model."""
    for cls in DECODERS.values():
        if cls.matches(signature):
            return cls
    raise ValueError(
        "cannot tell the decoder from the model signature "
        f"(outputs {[(o.name, o.shape) for o in signature.outputs]}); name one in twinfer.json"
    )


def decoder_by_name(name: str) -> type[Decoder]:
    try:
        return DECODERS[name]
    except KeyError:
        raise ValueError(f"unknown decoder {name!r}; known: {', '.join(DECODERS)}") from None


__all__ = ["DECODERS", "DecodeParams", "Decoder", "Detections", "decoder_by_name", "detect_decoder"]
