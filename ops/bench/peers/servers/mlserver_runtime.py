"""Seldon MLServer custom runtime: JPEG in as a BYTES (base64) input, detections out as a BYTES
(JSON string) output.

run.py writes ``settings.json`` (host 127.0.0.1, ports, ``parallel_workers: 2``, ``debug: false``)
and ``detector/model-settings.json`` (``implementation: servers.mlserver_runtime.DetectorRuntime``)
and runs ``mlserver start <that folder>``. Each of the 2 inference workers loads its own
``InferenceSession`` in ``load``; the main process parses HTTP/JSON and dispatches to them.

The request a client sends (what ``mlserver.codecs.Base64Codec.encode_input`` builds)::

    {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                 "parameters": {"content_type": "base64"}, "data": ["<base64 JPEG>"]}]}

MLServer's REST API has no binary tensor extension (SeldonIO/MLServer#324), so base64 in JSON
is the realistic body.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.detector import Detector  # noqa: E402
from mlserver import MLModel  # noqa: E402
from mlserver.codecs import Base64Codec, StringCodec  # noqa: E402
from mlserver.types import InferenceRequest, InferenceResponse  # noqa: E402


class DetectorRuntime(MLModel):
    async def load(self) -> bool:
        self._detector = Detector()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = Base64Codec.decode_input(payload.inputs[0])
        documents = [self._detector.detect_json(image).decode() for image in images]
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[StringCodec.encode_output("detections", documents)],
        )
