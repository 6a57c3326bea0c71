"""KServe v2 / Open Inference Protocol against a real gunicorn pool (2 workers) started by the
real supervisor, driven by the real ``tritonclient[http]`` client. Raw outputs are checked
against onnxruntime run here on the same input; the image way in against ``POST /detect``."""
from __future__ import annotations

import base64
import gzip
import json
import socket
import struct
import time
import tomllib

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.paths import DEFAULT_MODEL, PROJECT_ROOT
from tests.support.service_process import ServiceProcess

MODEL, VERSION = "ssd-mobilenetv2-oidv4", "1.0.0"
INPUT, SHAPE = "normalized_input_image_tensor", [1, 300, 300, 3]
OUTPUTS = {"raw_outputs/box_encodings": [1, 1917, 4], "raw_outputs/class_predictions": [1, 1917, 24]}
LIMIT = 8 * 1024 * 1024  # random FP32 data in JSON takes ~5.5 MB
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    extra = {"TWINFER_MAX_BODY_BYTES": str(LIMIT)}
    with ServiceProcess.start(tmp_path_factory.mktemp("store"), workers=2, extra_env=extra) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(service):
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{service.port}", network_timeout=60.0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def tensor() -> np.ndarray:
    return np.random.default_rng(7).uniform(-1.0, 1.0, SHAPE).astype(np.float32)


@pytest.fixture(scope="module")
def reference(tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(DEFAULT_MODEL / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {INPUT: tensor})))


@pytest.fixture(scope="module")
def png(images) -> bytes:
    return (images / "chelsea.png").read_bytes()


def _raw_input(tensor: np.ndarray, binary: bool, datatype: str = "FP32") -> httpclient.InferInput:
    infer_input = httpclient.InferInput(INPUT, list(tensor.shape), datatype)
    infer_input.set_data_from_numpy(tensor, binary_data=binary)
    return infer_input


def _image_input(data: bytes) -> httpclient.InferInput:
    infer_input = httpclient.InferInput("image", [1], "BYTES")
    infer_input.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=True)
    return infer_input


def _status(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


def _v2_error(response: requests.Response, status: int) -> str:
    """The v2 error format: exactly ``{"error": message}``."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "reason"} and body["error"], body
    return body["error"]


def _infer_url(service, version: str | None = None) -> str:
    return f"{service.url}/v2/models/{MODEL}" + (f"/versions/{version}" if version else "") + "/infer"


# --- health and metadata ---------------------------------------------------------------------


@pytest.mark.processes
def test_server_live_ready_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert metadata == {"name": "twinfer", "version": pyproject["project"]["version"],
                        "extensions": ["binary_tensor_data", "model_repository"]}


@pytest.mark.processes
def test_tritonclient_lists_the_model_repository(client):
    index = client.get_model_repository_index()
    assert index == [{"name": MODEL, "version": "1.0.0", "state": "READY", "reason": ""}]
    assert client.is_model_ready(MODEL)


@pytest.mark.processes
def test_model_metadata_lists_raw_tensors_and_the_image_way_in(client):
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL and metadata["versions"] == [VERSION]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": INPUT, "datatype": "FP32", "shape": SHAPE}]
    assert metadata["outputs"] == [{"name": name, "datatype": "FP32", "shape": shape} for name, shape in OUTPUTS.items()]
    parameters = metadata["parameters"]
    assert (parameters["image_input"], parameters["image_input_datatype"], parameters["image_input_shape"]) == ("image", "BYTES", "[1]")
    assert (parameters["detections_output"], parameters["detections_output_datatype"]) == ("detections", "BYTES")
    assert parameters["detections_content_type"] == "application/json" and parameters["generation"] == 1
    assert client.get_model_metadata(MODEL, VERSION) == metadata
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, VERSION)


# --- raw tensors -----------------------------------------------------------------------------


@pytest.mark.processes
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_raw_tensors_match_onnxruntime(client, tensor, reference, binary):
    requested = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in OUTPUTS]
    result = client.infer(MODEL, [_raw_input(tensor, binary)], outputs=requested, request_id="raw-1")
    response = result.get_response()
    assert response["model_name"] == MODEL and response["model_version"] == VERSION and response["id"] == "raw-1"
    for output in response["outputs"]:
        assert ("binary_data_size" in output.get("parameters", {})) is binary
        assert ("data" in output) is not binary
    for name, shape in OUTPUTS.items():
        got = result.as_numpy(name)
        assert got.dtype == np.float32 and list(got.shape) == shape
        np.testing.assert_allclose(got, reference[name], **TOLERANCE)


@pytest.mark.processes
def test_raw_tensors_default_outputs_and_one_requested_output(client, tensor, reference):
    # No outputs named: tritonclient sets binary_data_output, every output comes back binary.
    result = client.infer(MODEL, [_raw_input(tensor, True)])
    assert [o["name"] for o in result.get_response()["outputs"]] == list(OUTPUTS)
    assert all(o["parameters"]["binary_data_size"] > 0 for o in result.get_response()["outputs"])
    for name in OUTPUTS:
        np.testing.assert_allclose(result.as_numpy(name), reference[name], **TOLERANCE)
    name = "raw_outputs/class_predictions"
    one = client.infer(MODEL, [_raw_input(tensor, True)], outputs=[httpclient.InferRequestedOutput(name, binary_data=True)])
    assert [o["name"] for o in one.get_response()["outputs"]] == [name]
    np.testing.assert_allclose(one.as_numpy(name), reference[name], **TOLERANCE)


@pytest.mark.processes
def test_gzip_and_deflate_request_bodies(client, tensor, reference):
    for algorithm in ("gzip", "deflate"):
        result = client.infer(MODEL, [_raw_input(tensor, True)], request_compression_algorithm=algorithm)
        for name in OUTPUTS:
            np.testing.assert_allclose(result.as_numpy(name), reference[name], **TOLERANCE)


@pytest.mark.processes
def test_nested_json_data_and_mixed_binary_and_json_outputs(service, tensor, reference):
    request = {
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": SHAPE, "data": tensor.tolist()}],  # nested
        "outputs": [{"name": "raw_outputs/box_encodings", "parameters": {"binary_data": True}},
                    {"name": "raw_outputs/class_predictions"}],
    }
    response = requests.post(_infer_url(service), data=json.dumps(request), timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/octet-stream"
    header_length = int(response.headers["Inference-Header-Content-Length"])
    head = json.loads(response.content[:header_length])
    assert "data" in head["outputs"][1] and head["outputs"][0]["parameters"]["binary_data_size"] == 1917 * 4 * 4
    result = httpclient.InferResult.from_response_body(response.content, header_length=header_length)
    for name in OUTPUTS:
        np.testing.assert_allclose(result.as_numpy(name), reference[name], **TOLERANCE)


# --- the image way in ------------------------------------------------------------------------


def _detect(service, png: bytes, threshold: float) -> dict:
    response = requests.post(service.url + "/detect", data=png, headers={"Content-Type": "image/png"},
                             params={"threshold": str(threshold)}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _assert_same_detections(got: dict, want: dict) -> None:
    assert got["model"] == want["model"] and got["image"] == want["image"]
    assert [d["label"] for d in got["detections"]] == [d["label"] for d in want["detections"]]
    for mine, theirs in zip(got["detections"], want["detections"]):
        assert mine["class_id"] == theirs["class_id"] and abs(mine["score"] - theirs["score"]) <= 1e-5
        for key in ("xmin", "ymin", "xmax", "ymax"):
            assert abs(mine["box"][key] - theirs["box"][key]) <= 1e-5


@pytest.mark.processes
def test_image_as_binary_bytes_equals_detect(client, service, png):
    requested = [httpclient.InferRequestedOutput("detections", binary_data=True)]
    result = client.infer(MODEL, [_image_input(png)], outputs=requested, parameters={"threshold": 0.3})
    output = result.get_output("detections")
    assert output["datatype"] == "BYTES" and output["shape"] == [1] and output["parameters"]["binary_data_size"] > 4
    detections = result.as_numpy("detections")
    assert detections.shape == (1,)
    document = json.loads(detections[0])
    assert document["detections"][0]["label"] == "Cat"
    _assert_same_detections(document, _detect(service, png, 0.3))


@pytest.mark.processes
def test_image_on_the_versioned_url_with_json_output(client, png):
    result = client.infer(MODEL, [_image_input(png)], model_version=VERSION,
                          outputs=[httpclient.InferRequestedOutput("detections", binary_data=False)],
                          parameters={"max_detections": 1})
    output = result.get_output("detections")
    assert "parameters" not in output and isinstance(output["data"][0], str)
    document = json.loads(output["data"][0])
    assert document["model"]["version"] == VERSION
    assert [d["label"] for d in document["detections"]] == ["Cat"]


@pytest.mark.processes
def test_image_as_base64_in_json(service, png):
    encoded = base64.b64encode(png).decode("ascii")
    for parameters in ({"content_type": "base64"}, None):
        tensor = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [encoded]}
        if parameters:
            tensor["parameters"] = parameters
        response = requests.post(_infer_url(service, VERSION), json={"id": "b64", "inputs": [tensor],
                                                                     "parameters": {"threshold": 0.3}}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["X-Model-Version"] == VERSION
        body = response.json()
        assert body["id"] == "b64" and body["model_name"] == MODEL
        (output,) = body["outputs"]
        assert output["name"] == "detections" and output["datatype"] == "BYTES" and output["shape"] == [1]
        document = json.loads(output["data"][0])
        assert document["detections"][0]["label"] == "Cat"
        _assert_same_detections(document, _detect(service, png, 0.3))


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.processes
def test_unknown_model_and_version_are_404(client, tensor, png):
    assert _status(lambda: client.get_model_metadata("no-such-model"))[0] == "404"
    assert _status(lambda: client.get_model_metadata(MODEL, "9.9.9"))[0] == "404"
    assert _status(lambda: client.infer("no-such-model", [_image_input(png)]))[0] == "404"
    status, message = _status(lambda: client.infer(MODEL, [_raw_input(tensor, True)], model_version="9.9.9"))
    assert status == "404" and "9.9.9" in message
    assert not client.is_model_ready("no-such-model") and not client.is_model_ready(MODEL, "9.9.9")
    # Beyond the implemented routes the v2 error format still holds.
    assert _status(lambda: client.get_model_config(MODEL))[0] == "404"


@pytest.mark.processes
def test_bad_tensors_are_400(client, tensor):
    bad_shape = tensor.reshape(1, 300, 900)
    status, message = _status(lambda: client.infer(MODEL, [_raw_input(bad_shape, True)]))
    assert status == "400" and "shape" in message
    status, message = _status(lambda: client.infer(MODEL, [_raw_input(tensor.astype(np.float64), True, "FP64")]))
    assert status == "400" and "datatype" in message
    status, message = _status(lambda: client.infer(MODEL, [_raw_input(tensor, False)],
                                                   outputs=[httpclient.InferRequestedOutput("nope")]))
    assert status == "400" and "nope" in message


@pytest.mark.processes
def test_garbage_image_bytes_are_400(client):
    status, message = _status(lambda: client.infer(MODEL, [_image_input(b"this is not an image")]))
    assert status == "400" and "not a readable image" in message
    status, _ = _status(lambda: client.infer(MODEL, [_image_input(b"")]))
    assert status == "400"


@pytest.mark.processes
def test_malformed_requests_are_400_in_the_v2_format(service, tensor):
    url = _infer_url(service)
    data = tensor.tobytes()
    header = json.dumps({"inputs": [{"name": INPUT, "datatype": "FP32", "shape": SHAPE,
                                     "parameters": {"binary_data_size": len(data)}}]}).encode()

    def post(body: bytes, header_length: int | str | None = None) -> requests.Response:
        headers = {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
        return requests.post(url, data=body, headers=headers, timeout=30)

    assert "malformed JSON" in _v2_error(post(b'{"inputs": ['), 400)
    assert "inputs" in _v2_error(post(b'{"inputs": []}'), 400)
    assert requests.post(url, data=header + data, headers={"Inference-Header-Content-Length": str(len(header))},
                         timeout=30).status_code == 200
    _v2_error(post(header + data[:-4], len(header)), 400)  # binary shorter than declared
    assert "belong to no input" in _v2_error(post(header + data + b"\0\0\0\0", len(header)), 400)
    _v2_error(post(header + data, len(header) + len(data) + 1), 400)  # header length past the body
    _v2_error(post(header + data, "abc"), 400)
    assert "Inference-Header-Content-Length" in _v2_error(post(header), 400)  # binary declared, no header
    missing = {"inputs": [{"name": "other", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    assert INPUT in _v2_error(requests.post(url, json=missing, timeout=30), 400)
    strings = {"inputs": [{"name": INPUT, "datatype": "FP32", "shape": [1, 1, 1, 3], "data": ["a", "b", "c"]}]}
    _v2_error(requests.post(url, json=strings, timeout=30), 400)
    unknown_type = {"inputs": [{"name": INPUT, "datatype": "FLOAT", "shape": SHAPE, "data": []}]}
    assert "datatype" in _v2_error(requests.post(url, json=unknown_type, timeout=30), 400)
    two_images = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["aGk=", "aGk="]}]}
    assert "one encoded image" in _v2_error(requests.post(url, json=two_images, timeout=30), 400)
    bad_threshold = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}],
                     "parameters": {"threshold": 2}}
    assert "threshold" in _v2_error(requests.post(url, json=bad_threshold, timeout=30), 400)
    _v2_error(requests.post(url, data=b"not gzip", headers={"Content-Encoding": "gzip"}, timeout=30), 400)
    _v2_error(requests.post(url, data=b"{}", headers={"Content-Encoding": "br"}, timeout=30), 415)


@pytest.mark.processes
def test_body_over_the_limit_is_413_from_content_length_without_reading_it(service):
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(
            f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000000000\r\n\r\n".encode() + b"{" * 1024
        )
        started = time.monotonic()
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
        reply = b"".join(chunks).decode("latin-1")
    assert reply.startswith("HTTP/1.1 413"), reply
    assert json.loads(reply.split("\r\n\r\n", 1)[1]).keys() == {"error", "reason"}
    assert time.monotonic() - started < 5


@pytest.mark.processes
def test_decompressed_body_over_the_limit_is_413(service):
    bomb = gzip.compress(b"\0" * (LIMIT + 1))
    assert len(bomb) < LIMIT // 100
    response = requests.post(_infer_url(service), data=bomb, headers={"Content-Encoding": "gzip"}, timeout=30)
    assert "limit" in _v2_error(response, 413)


@pytest.mark.processes
def test_unknown_v2_paths_answer_v2_404(service):
    for path in ("/v2/repository/models/x/load", f"/v2/models/{MODEL}/config", "/v2/nope"):
        _v2_error(requests.get(service.url + path, timeout=10), 404)


@pytest.mark.processes
def test_infer_requests_are_measured_by_route_template(client, service, png):
    client.infer(MODEL, [_image_input(png)])
    text = requests.get(service.url + "/metrics", timeout=10).text
    assert 'route="/v2/models/{name}/infer",status="200"' in text
    assert f'twinfer_inference_duration_seconds_count{{model="{MODEL}",version="{VERSION}"}}' in text


@pytest.mark.processes
def test_binary_bytes_framing_of_the_response(service, png):
    """The response framing tritonclient decodes, checked byte by byte."""
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 4 + len(png)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    response = requests.post(_infer_url(service), data=header + struct.pack("<I", len(png)) + png,
                             headers={"Inference-Header-Content-Length": str(len(header))}, timeout=30)
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    head = json.loads(response.content[:length])
    (output,) = head["outputs"]
    binary = response.content[length:]
    assert output["parameters"]["binary_data_size"] == len(binary)
    (size,) = struct.unpack_from("<I", binary)
    assert size == len(binary) - 4
    assert json.loads(binary[4:])["detections"][0]["label"] == "Cat"


# --- the codec alone (no service) ------------------------------------------------------------


def _envelope_budget():
    """What any request may hold beyond its tensors: enough for these small ones."""
    from workers.kserve.json_budget import JsonBudget

    return JsonBudget.for_inputs((), 0)


def _parsed(inputs: list[dict], **extra):
    from workers.kserve.codec import parse_request

    return parse_request(json.dumps({"inputs": inputs, **extra}).encode(), None, _envelope_budget())


@pytest.mark.parametrize(
    "datatype, shape, data, expected",
    [
        ("UINT8", [3], [0, 7, 255], np.array([0, 7, 255], np.uint8)),
        ("INT8", [1, 1], [[-128]], np.array([[-128]], np.int8)),
        ("INT64", [2], [2**63 - 1, -5], np.array([2**63 - 1, -5], np.int64)),
        ("BOOL", [2], [True, False], np.array([True, False])),
        ("FP16", [2], [1.5, 2], np.array([1.5, 2], np.float16)),
        ("FP32", [2, 2], [[1, 2.5], [3, 4]], np.array([[1, 2.5], [3, 4]], np.float32)),
        ("FP32", [2, 2], [1, 2.5, 3, 4], np.array([[1, 2.5], [3, 4]], np.float32)),
        ("FP32", [0, 3], [], np.zeros((0, 3), np.float32)),
    ],
)
def test_json_data_becomes_an_array_of_the_datatype(datatype, shape, data, expected):
    from workers.kserve.codec import to_array

    array = to_array(_parsed([{"name": "x", "datatype": datatype, "shape": shape, "data": data}]).inputs[0])
    assert array.dtype == expected.dtype and array.shape == expected.shape
    np.testing.assert_array_equal(array, expected)


@pytest.mark.parametrize(
    "datatype, shape, data, words",
    [
        ("UINT8", [2], [1, 256], "range"),
        ("UINT8", [2], [-1, 2], "range"),
        ("INT32", [2], [1.5, 2], "integers"),
        ("BOOL", [2], [1, 0], "true/false"),
        ("FP32", [2], ["1.0", "2.0"], "strings"),
        ("FP32", [2], [None, 1.0], "nulls"),
        ("FP32", [2, 2], [[1, 2], [3]], "regular"),
        ("FP32", [3], [1, 2], "elements"),
        ("FP32", [1], 1.0, "array"),
    ],
)
def test_bad_json_data_is_a_client_error(datatype, shape, data, words):
    from twinfer.errors import RequestError
    from workers.kserve.codec import to_array

    with pytest.raises(RequestError) as caught:
        to_array(_parsed([{"name": "x", "datatype": datatype, "shape": shape, "data": data}]).inputs[0])
    assert caught.value.status == 400 and words in caught.value.message


def test_binary_inputs_are_views_of_the_body_unless_misaligned():
    from workers.kserve.codec import parse_request, to_array

    values = np.arange(6, dtype=np.float32)
    for pad in range(4):  # the JSON header's length decides the alignment of what follows
        head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3],
                                       "parameters": {"binary_data_size": 24}}]}).encode() + b" " * pad
        body = head + values.tobytes()
        array = to_array(parse_request(body, str(len(head)), _envelope_budget()).inputs[0])
        np.testing.assert_array_equal(array, values.reshape(2, 3))
        assert array.flags.aligned
        shares = np.shares_memory(array, np.frombuffer(body, np.uint8))
        assert shares == (len(head) % 4 == 0), pad  # copied only when misaligned


def test_bytes_framing_and_response_encoding():
    from twinfer.errors import RequestError
    from workers.kserve.codec import OutputTensor, encode_response, split_bytes

    assert [bytes(e) for e in split_bytes(memoryview(b"\x02\x00\x00\x00hi\x00\x00\x00\x00"), "x")] == [b"hi", b""]
    for broken in (b"\x05\x00\x00\x00hi", b"\x02\x00"):
        with pytest.raises(RequestError):
            split_bytes(memoryview(broken), "x")
    array = np.arange(4, dtype=np.int64).reshape(2, 2)
    outputs = [(OutputTensor.of_array("a", array), True), (OutputTensor.of_bytes("b", [b"{}"]), False),
               (OutputTensor.of_bytes("c", [b"xy", b"z"]), True)]
    body, length = encode_response({"model_name": "m", "model_version": "1"}, outputs)
    result = httpclient.InferResult.from_response_body(body, header_length=length)
    np.testing.assert_array_equal(result.as_numpy("a"), array)
    assert result.get_output("b")["data"] == ["{}"]
    assert result.as_numpy("c").tolist() == [b"xy", b"z"]
    json_only, none = encode_response({"model_name": "m", "model_version": "1"}, outputs[1:2])
    assert none is None and json.loads(json_only)["outputs"][0]["data"] == ["{}"]


def test_compressed_bodies_are_bounded():
    import zlib

    from twinfer.errors import BodyTooLarge, RequestError, UnsupportedMediaType
    from workers.kserve.codec import inflate

    budget = _envelope_budget()
    data = b'{"inputs": []}'
    assert inflate(gzip.compress(data), "gzip", 100, budget, None) == data
    assert inflate(zlib.compress(data), "deflate", 100, budget, None) == data
    with pytest.raises(BodyTooLarge):
        inflate(gzip.compress(b"\0" * 101), "gzip", 100, budget, None)
    with pytest.raises(RequestError):
        inflate(gzip.compress(data)[:-6], "gzip", 100, budget, None)  # truncated
    with pytest.raises(UnsupportedMediaType):
        inflate(data, "br", 100, budget, None)


def test_a_compressed_json_flood_is_refused_in_its_first_piece():
    from twinfer.errors import JsonTooComplex
    from workers.kserve.codec import INFLATE_PIECE, inflate

    flood = gzip.compress(b'{"inputs": [' + b"[]," * (40 * INFLATE_PIECE) + b"[]]}")
    with pytest.raises(JsonTooComplex):  # not the body limit: counting stopped it long before
        inflate(flood, "gzip", 10 * INFLATE_PIECE, _envelope_budget(), None)
    head = b'{"inputs": []}'
    binary = head + b"[],{}," * INFLATE_PIECE  # tensor bytes after the JSON are not JSON
    assert inflate(gzip.compress(binary), "gzip", 10 * INFLATE_PIECE, _envelope_budget(), str(len(head))) == binary
