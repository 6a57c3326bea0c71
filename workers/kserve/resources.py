"""Falcon resources of the KServe v2 / Open Inference Protocol (``/v2/...``).

The models are those of the manifest, each under its name at its active version (the
routes without ``/versions/{version}`` mean that version too); any other name or version
is a 404. ``POST /v2/repository/index`` lists them (Triton's model repository extension). Errors are the protocol's ``{"error": "<message>"}`` (plus ``reason``)
with the same statuses as ``/detect`` (400, 413, 415, 503), plus 404. What runs the
model is ``workers.inference``, shared with ``/detect``; this module speaks the protocol.

``POST .../infer`` takes either the model's raw input tensors (and answers its raw
outputs), or one BYTES input ``image`` holding an encoded picture, which runs the same
pipeline as ``POST /detect`` and answers its JSON document as the BYTES output
``detections``.
"""
from __future__ import annotations

import logging

import falcon
import orjson

from twinfer import __version__
from twinfer.errors import NoModel, RequestError
from workers.errors import answer_error
from workers.holder import ModelHolder, ServingModel
from workers.inference import DetectOptions, InferenceHandler
from workers.kserve import DETECTIONS_OUTPUT, EXTENSIONS, IMAGE_INPUT, SERVER_NAME
from workers.kserve.codec import (
    BYTES,
    HEADER_LENGTH,
    InferenceRequest,
    OutputTensor,
    RequestedOutput,
    datatype_of,
    decode_base64,
    dims,
    encode_response,
    inflate,
    json_strings,
    parse_request,
    split_bytes,
    to_array,
)
from workers.kserve.json_budget import JsonBudget
from workers.resources.body import bounded_body

log = logging.getLogger("twinfer.worker")
PLATFORMS = {"onnx": "onnxruntime_onnx", "tflite": "tensorflow_lite"}
BINARY_CONTENT_TYPE = "application/octet-stream"


def _json(resp: falcon.Response, document: dict, status: int = 200) -> None:
    resp.status = status
    resp.media = document


def not_found_sink(req: falcon.Request, resp: falcon.Response, **params) -> None:
    """Any other path under ``/v2`` (``.../config``, ``/v2/repository/models/...``, ...)."""
    answer_error(resp, 404, "not_found", f"no KServe v2 endpoint {req.method} {req.path} here")


# --- server ----------------------------------------------------------------------------------


class ServerMetadataResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _json(resp, {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)})


class ServerLiveResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _json(resp, {"live": True})


class ServerReadyResource:
    """200 once this worker has loaded every model of the manifest, else 503."""

    def __init__(self, holder: ModelHolder) -> None:
        self._holder = holder

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ready = self._holder.current is not None and not self._holder.missing()
        _json(resp, {"ready": ready}, 200 if ready else 503)


class RepositoryIndexResource:
    """``POST /v2/repository/index``: every model of the manifest, ``READY`` once loaded in
    this worker, else ``LOADING`` (or ``UNAVAILABLE`` with the load error); ``{"ready":
    true}`` in the body lists the ready ones only, as Triton does."""

    def __init__(self, holder: ModelHolder) -> None:
        self._holder = holder

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = bounded_body(req, 4096)
        try:
            ask = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            raise RequestError("the body is a JSON object, e.g. {\"ready\": true}, or empty") from None
        if not isinstance(ask, dict) or not isinstance(ask.get("ready", False), bool):
            raise RequestError("the body is a JSON object whose \"ready\" is true or false")
        holder = self._holder
        error = holder.state.last_error or {}
        index = []
        for name in sorted(set(holder.manifest.models if holder.manifest else ()) | set(holder.models)):
            serving = holder.models.get(name)
            if serving is not None:
                index.append({"name": name, "version": serving.manifest.version, "state": "READY", "reason": ""})
            elif not ask.get("ready"):
                failed = error.get("model") == name
                index.append({"name": name, "version": holder.manifest.models[name].version,
                              "state": "UNAVAILABLE" if failed else "LOADING",
                              "reason": error.get("message", "") if failed else "loading in this worker"})
        resp.status = 200
        resp.content_type = falcon.MEDIA_JSON
        resp.data = orjson.dumps(index)


# --- model -----------------------------------------------------------------------------------


def model_metadata(serving: ServingModel) -> dict:
    """The model's raw tensors as ``inputs``/``outputs`` (what generic v2 clients feed), its
    task and, for a detector, the image way in (``image`` BYTES [1] -> ``detections`` BYTES
    [1]) in ``parameters`` (scalar values, as the protocol's parameters are)."""
    model, manifest = serving.model, serving.manifest
    signature = model.engine.signature

    def tensors(infos) -> list[dict]:
        return [{"name": t.name, "datatype": datatype_of(t.dtype), "shape": dims(t.shape)} for t in infos]

    image_way = {
        "image_input": IMAGE_INPUT,
        "image_input_datatype": BYTES,
        "image_input_shape": "[1]",
        "detections_output": DETECTIONS_OUTPUT,
        "detections_output_datatype": BYTES,
        "detections_output_shape": "[1]",
        "detections_content_type": "application/json",
    } if model.is_detector else {}  # other tasks: raw tensors here, their answer on /predict
    return {
        "name": manifest.name,
        "versions": [manifest.version],
        "platform": PLATFORMS.get(manifest.format, manifest.format),
        "inputs": tensors(signature.inputs),
        "outputs": tensors(signature.outputs),
        "parameters": {
            **image_way,
            "generation": manifest.generation,
            "task": model.task,
            "decoder": model.spec.decoder,
        },
    }


class ModelMetadataResource:
    """``GET /v2/models/{name}[/versions/{version}]``."""

    def __init__(self, inference: InferenceHandler) -> None:
        self._inference = inference

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, version: str | None = None) -> None:
        _json(resp, model_metadata(self._inference.current(req, name, version)))


class ModelReadyResource:
    """``GET /v2/models/{name}[/versions/{version}]/ready``: 200 for the loaded model, 404
    for any other, 503 (``ready: false``) while this worker has none."""

    def __init__(self, inference: InferenceHandler) -> None:
        self._inference = inference

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, version: str | None = None) -> None:
        try:
            self._inference.current(req, name, version)
        except NoModel:
            _json(resp, {"name": name, "ready": False}, 503)
            return
        _json(resp, {"name": name, "ready": True})


# --- inference -------------------------------------------------------------------------------


def read_body(req: falcon.Request, limit: int, budget: JsonBudget) -> bytes:
    """The whole body within ``limit``, decompressed (within ``limit`` and ``budget`` too)
    when it has a ``Content-Encoding``."""
    body = bounded_body(req, limit)
    coding = (req.get_header("Content-Encoding") or "identity").strip().lower()
    return body if coding == "identity" else inflate(body, coding, limit, budget, req.get_header(HEADER_LENGTH))


class InferResource:
    """``POST /v2/models/{name}[/versions/{version}]/infer``."""

    def __init__(self, inference: InferenceHandler) -> None:
        self._inference = inference

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str, version: str | None = None) -> None:
        limit = self._inference.max_body_bytes
        expected = JsonBudget.for_inputs(self._inference.current(req, name, version).model.engine.signature.inputs, limit)
        body = read_body(req, limit, expected)  # before taking the model: a slow upload holds no swap
        with self._inference.serving(req, name, version) as serving:  # a swap meanwhile waits for this request
            signature = serving.model.engine.signature
            # counted again against the model that serves it (a swap may have changed its inputs)
            request = parse_request(body, req.get_header(HEADER_LENGTH), JsonBudget.for_inputs(signature.inputs, limit))
            if any(t.name == IMAGE_INPUT for t in request.inputs) and all(i.name != IMAGE_INPUT for i in signature.inputs):
                outputs = self._detect(serving, request)
            else:
                outputs = self._run(serving, request)
        manifest = serving.manifest
        head = {"model_name": manifest.name, "model_version": manifest.version}
        if request.id is not None:
            head["id"] = request.id
        data, header_length = encode_response(head, outputs)
        resp.data = data
        if header_length is None:
            resp.content_type = falcon.MEDIA_JSON
        else:
            resp.content_type = BINARY_CONTENT_TYPE
            resp.set_header(HEADER_LENGTH, str(header_length))
        resp.set_header("X-Model-Version", manifest.version)

    def _detect(self, serving: ServingModel, request: InferenceRequest) -> list[tuple[OutputTensor, bool]]:
        """The image way in: the /detect pipeline, its JSON document as ``detections``."""
        if len(request.inputs) != 1:
            raise RequestError(f"input {IMAGE_INPUT!r} (an encoded image) is sent alone, without other inputs")
        tensor = request.inputs[0]
        if tensor.datatype != BYTES:
            raise RequestError(f"input {IMAGE_INPUT!r} must be BYTES (the encoded image), got {tensor.datatype}")
        if list(tensor.shape) != [1]:
            raise RequestError(f"input {IMAGE_INPUT!r} holds one encoded image: shape [1], got {list(tensor.shape)}")
        if tensor.raw is not None:
            elements = split_bytes(tensor.raw, tensor.name)
        else:
            content_type = tensor.parameters.get("content_type", "base64")
            if content_type != "base64":
                raise RequestError(
                    f"input {IMAGE_INPUT!r} in JSON carries the image base64-encoded (content_type 'base64'), "
                    f"got content_type {content_type!r}; or send it as binary data"
                )
            elements = [decode_base64(text, tensor.name) for text in json_strings(tensor)]
        if len(elements) != 1:
            raise RequestError(f"input {IMAGE_INPUT!r}: shape [1] takes one element, the data holds {len(elements)}")
        wanted = request.outputs or [RequestedOutput(DETECTIONS_OUTPUT, request.binary_default)]
        if [o.name for o in wanted] != [DETECTIONS_OUTPUT]:
            raise RequestError(f"the image way in has one output, {DETECTIONS_OUTPUT!r}; asked for {[o.name for o in wanted]}")
        params = request.parameters
        options = DetectOptions.parse(params.get("threshold"), params.get("max_detections"), "parameters.")
        # bytes(): the decoders take bytes (Pillow's header probe would copy a view anyway).
        document = orjson.dumps(self._inference.detect(serving, bytes(elements[0]), options))
        return [(OutputTensor.of_bytes(DETECTIONS_OUTPUT, [document]), wanted[0].binary)]

    def _run(self, serving: ServingModel, request: InferenceRequest) -> list[tuple[OutputTensor, bool]]:
        """The raw way in: the model's input tensors in, its output tensors out."""
        engine = serving.model.engine
        inputs = {t.name: t for t in engine.signature.inputs}
        output_names = [t.name for t in engine.signature.outputs]
        feeds = {}
        for tensor in request.inputs:
            info = inputs.get(tensor.name)
            if info is None:
                raise RequestError(
                    f"model {serving.manifest.name!r} has no input {tensor.name!r}; its inputs are {list(inputs)} "
                    f"(or send one BYTES input {IMAGE_INPUT!r} holding an encoded image)"
                )
            expected = datatype_of(info.dtype)
            if tensor.datatype != expected:
                raise RequestError(f"input {tensor.name!r}: datatype {tensor.datatype}, the model takes {expected}")
            if len(tensor.shape) != len(info.shape) or any(
                want is not None and want != got for want, got in zip(info.shape, tensor.shape)
            ):
                raise RequestError(f"input {tensor.name!r}: shape {list(tensor.shape)}, the model takes {dims(info.shape)}")
            feeds[tensor.name] = to_array(tensor)
        missing = [name for name in inputs if name not in feeds]
        if missing:
            raise RequestError(f"missing input(s) {missing}; the model takes {list(inputs)}")
        wanted = request.outputs or [RequestedOutput(name, request.binary_default) for name in output_names]
        unknown = [o.name for o in wanted if o.name not in output_names]
        if unknown:
            raise RequestError(f"model {serving.manifest.name!r} has no output(s) {unknown}; its outputs are {output_names}")
        arrays = self._inference.run(serving, feeds)
        by_name = dict(zip(output_names, arrays))
        return [(OutputTensor.of_array(o.name, by_name[o.name]), o.binary) for o in wanted]
