"""workers/openapi.json describes the API exactly as the Falcon app implements it.

No OpenAPI tooling is a dependency: the structure is checked here, and live responses
are validated with a small validator for the schema subset the document uses (type,
nullable, enum, properties, required, items, minimum, maximum, allOf, $ref). Objects are
checked strictly: an undocumented key in a response fails, as does a missing one.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.paths import IMAGES, PROJECT_ROOT
from tests.support.waiting import wait_until

DOCUMENT = PROJECT_ROOT / "workers" / "openapi.json"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SCHEMA_KEYS = {"type", "nullable", "enum", "properties", "required", "items", "minimum", "maximum", "$ref",
               "description", "format", "additionalProperties", "allOf"}
RAW_IMAGE_TYPES = {"image/jpeg", "image/png", "image/bmp", "image/webp", "application/octet-stream"}


@pytest.fixture(scope="module")
def doc() -> dict:
    return json.loads(DOCUMENT.read_text())


def resolve(doc: dict, node: dict) -> dict:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target = doc
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def validate(doc: dict, schema: dict, value, path: str = "$") -> None:
    """Raise AssertionError with the JSON path of the first mismatch."""
    schema = resolve(doc, schema)
    if value is None:
        assert schema.get("nullable") or None in schema.get("enum", ()), f"{path}: null not allowed"
        return
    kind = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    }
    if kind is not None:
        assert checks[kind](value), f"{path}: {value!r} is not {kind}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    if "minimum" in schema:
        assert value >= schema["minimum"], f"{path}: {value} < {schema['minimum']}"
    if "maximum" in schema:
        assert value <= schema["maximum"], f"{path}: {value} > {schema['maximum']}"
    if kind == "object" and "properties" in schema:
        missing = set(schema.get("required", ())) - set(value)
        assert not missing, f"{path}: missing {sorted(missing)}"
        extra = set(value) - set(schema["properties"])
        assert not extra, f"{path}: undocumented {sorted(extra)}"
        for key, item in value.items():
            validate(doc, schema["properties"][key], item, f"{path}.{key}")
    if kind == "array" and "items" in schema:
        for index, item in enumerate(value):
            validate(doc, schema["items"], item, f"{path}[{index}]")
    for part in schema.get("allOf", ()):  # a nullable reference: {"type", "nullable": true, "allOf": [{"$ref"}]}
        validate(doc, part, value, path)


def operations(doc: dict):
    for route, item in doc["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield route, method, operation


# --- the document on its own ------------------------------------------------------------------


def _walk(node, trail=()):
    if isinstance(node, dict):
        yield trail, node
        for key, value in node.items():
            yield from _walk(value, trail + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, trail + (index,))


def test_document_is_openapi_3_structure(doc):
    assert doc["openapi"].startswith("3.0.")
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["paths"] and all(route.startswith("/") for route in doc["paths"])
    ids = []
    for route, method, operation in operations(doc):
        ids.append(operation["operationId"])
        assert operation["summary"]
        assert operation["responses"], (route, method)
        for status, response in operation["responses"].items():
            assert status == "default" or (status.isdigit() and 100 <= int(status) < 600), (route, status)
            assert resolve(doc, response)["description"], (route, status)
        for parameter in operation.get("parameters", []):
            assert parameter["in"] in ("query", "header", "path", "cookie")
            assert parameter["name"] and parameter["schema"]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for trail, node in _walk(doc):
        if "$ref" in node:
            resolve(doc, node)  # every reference resolves
        if "schemas" in trail or trail[-1:] == ("schema",):
            if "type" in node or "$ref" in node or "allOf" in node:
                assert set(node) <= SCHEMA_KEYS, (trail, set(node) - SCHEMA_KEYS)
                if node.get("type") == "object" and "properties" in node:
                    assert set(node.get("required", ())) <= set(node["properties"]), trail


def test_detect_is_documented_as_implemented(doc):
    from twinfer.errors import ChainMisconfigured, ChainUnavailable, JsonTooComplex, RequestError, WrongTask
    from workers.inference import MAX_DETECTIONS_LIMIT
    from workers.protocol_errors import REASONS as PROTOCOL_REASONS

    detect = doc["paths"]["/detect"]["post"]
    content = detect["requestBody"]["content"]
    assert set(content) == RAW_IMAGE_TYPES | {"multipart/form-data"}
    parameters = {p["name"]: p for p in detect["parameters"]}
    assert set(parameters) == {"model", "threshold", "max_detections"}
    assert parameters["model"]["schema"] == {"type": "string"}
    assert parameters["threshold"]["schema"] == {"type": "number", "minimum": 0, "maximum": 1}
    assert parameters["max_detections"]["schema"] == {"type": "integer", "minimum": 1, "maximum": MAX_DETECTIONS_LIMIT}
    assert {"200", "400", "404", "413", "415", "503"} <= set(detect["responses"])
    error = resolve(doc, {"$ref": "#/components/schemas/Error"})
    assert error["required"] == ["error", "reason"]
    reasons = set(error["properties"]["reason"]["enum"])

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    assert PROTOCOL_REASONS <= reasons  # gunicorn's refusals, in the same document
    predict = doc["paths"]["/predict"]["post"]
    only = {JsonTooComplex: (), WrongTask: (detect,), ChainUnavailable: (predict,),  # the v2 routes parse JSON
            ChainMisconfigured: (predict,)}
    for cls in [RequestError, *subclasses(RequestError)]:
        assert cls.reason in reasons, cls
        for route in only.get(cls, (detect, predict)):
            response = route["responses"][str(cls.status)]
            assert resolve(doc, response["content"]["application/json"]["schema"]) is error
            assert f"`{cls.reason}`" in response["description"], (route["operationId"], cls.reason, cls.status)


def test_predict_documents_its_options_and_envelope(doc):
    from twinfer.chain_spec import MAX_CROPS_LIMIT
    from twinfer.spec import TOP_K_LIMIT
    from twinfer.tasks import TASKS
    from workers.predictions import MASK_FORMATS

    predict = doc["paths"]["/predict"]["post"]
    parameters = {p["name"]: p for p in predict["parameters"]}
    assert set(parameters) == {"model", "threshold", "max_detections", "top_k", "format", "max_crops"}
    assert parameters["top_k"]["schema"]["maximum"] == TOP_K_LIMIT
    assert parameters["max_crops"]["schema"]["maximum"] == MAX_CROPS_LIMIT
    assert tuple(parameters["format"]["schema"]["enum"]) == MASK_FORMATS
    envelope = resolve(doc, predict["responses"]["200"]["content"]["application/json"]["schema"])
    assert envelope["required"] == ["task", "model", "image", "timing_ms"]
    assert tuple(envelope["properties"]["task"]["enum"]) == TASKS


# --- the document against the app ------------------------------------------------------------


def _app(store: Path):
    from twinfer.engines import EngineOptions
    from workers.app import create_app
    from workers.settings import WorkerSettings

    return create_app(WorkerSettings(store=store, max_body_bytes=4 * 1024 * 1024, max_image_pixels=10**7,
                                     engine=EngineOptions()))


@pytest.fixture(scope="module")
def client(bootstrapped_store):
    from falcon import testing

    client = testing.TestClient(_app(bootstrapped_store))
    wait_until(lambda: client.simulate_get("/readyz").status_code == 200, "the model loaded", 60, 0.05)
    return client


def _routes(app) -> dict[str, object]:
    """Every URI template the router holds, with its resource."""
    found = {}
    nodes = list(app._router._roots)
    while nodes:
        node = nodes.pop()
        if node.resource is not None:
            found[node.uri_template] = node.resource
        nodes.extend(node.children)
    return found


@pytest.mark.processes
def test_every_route_is_documented_and_every_documented_route_exists(client, doc):
    app = client.app
    routes = _routes(app)
    assert set(routes) == set(doc["paths"])
    for route, item in doc["paths"].items():
        assert app._router.find(route) is not None, route
        resource = routes[route]
        implemented = {m for m in HTTP_METHODS if callable(getattr(resource, f"on_{m}", None))}
        documented = {m for m in item if m in HTTP_METHODS}
        # HTTP answers HEAD wherever GET is (RFC 9110): implied, not documented per route.
        assert ("head" in implemented) == ("get" in implemented), route
        assert implemented - {"head"} == documented, (route, implemented, documented)


def _check(doc: dict, route: str, method: str, result) -> None:
    """The status is documented for the operation and the body matches its schema."""
    responses = doc["paths"][route][method]["responses"]
    assert str(result.status_code) in responses, (route, result.status_code, result.text)
    response = resolve(doc, responses[str(result.status_code)])
    content_type = result.headers["content-type"]
    assert content_type in response["content"], (route, content_type)
    for header in response.get("headers", {}):
        assert header in result.headers, (route, header)
    if content_type == "application/json":
        validate(doc, response["content"][content_type]["schema"], result.json)


@pytest.mark.processes
def test_live_detect_response_matches_the_documented_schema(client, doc):
    result = client.simulate_post("/detect", body=(IMAGES / "chelsea.png").read_bytes(),
                                  headers={"Content-Type": "image/png"}, params={"threshold": "0.05"})
    assert result.status_code == 200, result.text
    body = result.json
    assert body["detections"] and body["detections"][0]["label"] == "Cat"
    scores = [d["score"] for d in body["detections"]]
    assert scores == sorted(scores, reverse=True)  # "highest score first", as documented
    _check(doc, "/detect", "post", result)
    validate(doc, {"$ref": "#/components/schemas/DetectResponse"}, body)


@pytest.mark.processes
def test_live_multipart_and_errors_match_the_documented_schemas(client, doc):
    boundary = "twinfer-test"
    image = (IMAGES / "grace_hopper.jpg").read_bytes()
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"g.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    multipart = client.simulate_post("/detect", body=form,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert multipart.status_code == 200, multipart.text
    _check(doc, "/detect", "post", multipart)
    named = client.simulate_post("/detect", body=image, headers={"Content-Type": "image/jpeg"},
                                 params={"model": V2_MODEL})
    assert named.status_code == 200 and named.json["model"]["name"] == V2_MODEL, named.text
    _check(doc, "/detect", "post", named)
    cases = [
        (b"not an image", "image/jpeg", {}, 400, "not_an_image"),
        (image, "image/jpeg", {"max_detections": "0"}, 400, "bad_parameter"),
        (b"--x\r\nnot a part", "multipart/form-data; boundary=x", {}, 400, "bad_request"),
        (b"x" * (4 * 1024 * 1024 + 1), "image/jpeg", {}, 413, "body_too_large"),
        (b'{"a": 1}', "application/json", {}, 415, "unsupported_media_type"),
        (image, "image/jpeg", {"model": "other"}, 404, "model_not_found"),
    ]
    for body, content_type, params, status, reason in cases:
        result = client.simulate_post("/detect", body=body, headers={"Content-Type": content_type}, params=params)
        assert (result.status_code, result.json["reason"]) == (status, reason), result.text
        _check(doc, "/detect", "post", result)


@pytest.mark.processes
def test_live_status_routes_match_the_documented_schemas(client, doc, monkeypatch, tmp_path):
    for route in ("/healthz", "/readyz", "/models", "/openapi.json"):
        result = client.simulate_get(route)
        assert result.status_code == 200, (route, result.text)
        _check(doc, route, "get", result)
    served = client.simulate_get("/openapi.json").json
    assert _without_security(served) == _without_security(doc)  # the file, as this service runs it
    assert not any(operation.get("security") for _, _, operation in operations(served))  # no token configured
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # the supervisor sets it for real workers
    metrics = client.simulate_get("/metrics")
    assert metrics.status_code == 200
    _check(doc, "/metrics", "get", metrics)


def _unloadable_store(store: Path) -> Path:
    """A store whose manifest names a model this worker cannot load (its directory is missing)."""
    from twinfer.manifest import publish

    publish(store, V2_MODEL, V2_VERSION, f"models/{V2_MODEL}/{V2_VERSION}", "onnx", "ssd_anchors")
    return store


@pytest.mark.parametrize("published", [False, True], ids=["no-manifest", "model-not-loaded"])
def test_responses_before_a_model_is_loaded_match_the_documented_503s(tmp_path, doc, published):
    from falcon import testing

    client = testing.TestClient(_app(_unloadable_store(tmp_path) if published else tmp_path))
    for route in ("/readyz", "/models"):
        result = client.simulate_get(route)
        assert result.status_code == 503
        assert result.json["loading"] == ([V2_MODEL] if published else []), result.text
        _check(doc, route, "get", result)
    result = client.simulate_post("/detect", body=b"x", headers={"Content-Type": "image/png"})
    assert (result.status_code, result.json["reason"]) == (503, "no_model")
    _check(doc, "/detect", "post", result)
    if published:
        named = client.simulate_post("/detect", body=b"x", headers={"Content-Type": "image/png"},
                                     params={"model": V2_MODEL})
        assert (named.status_code, named.json["reason"]) == (503, "no_model")
        _check(doc, "/detect", "post", named)


# --- KServe v2 / Open Inference Protocol -----------------------------------------------------

V2_MODEL, V2_VERSION = "ssd-mobilenetv2-oidv4", "1.0.0"


def _v2_infer(client, body: bytes, headers: dict | None = None, version: str | None = None, model: str = V2_MODEL):
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return client.simulate_post(path, body=body, headers=headers or {})


@pytest.mark.processes
def test_live_kserve_v2_responses_match_the_documented_schemas(client, doc):
    import base64
    import struct

    import numpy as np

    gets = [
        ("/v2", "/v2", 200), ("/v2/health/live", "/v2/health/live", 200), ("/v2/health/ready", "/v2/health/ready", 200),
        ("/v2/models/{name}", f"/v2/models/{V2_MODEL}", 200),
        ("/v2/models/{name}/versions/{version}", f"/v2/models/{V2_MODEL}/versions/{V2_VERSION}", 200),
        ("/v2/models/{name}/ready", f"/v2/models/{V2_MODEL}/ready", 200),
        ("/v2/models/{name}/versions/{version}/ready", f"/v2/models/{V2_MODEL}/versions/{V2_VERSION}/ready", 200),
        ("/v2/models/{name}", "/v2/models/other", 404),
        ("/v2/models/{name}/versions/{version}", f"/v2/models/{V2_MODEL}/versions/0.0.1", 404),
        ("/v2/models/{name}/ready", "/v2/models/other/ready", 404),
        ("/v2/models/{name}/versions/{version}/ready", f"/v2/models/{V2_MODEL}/versions/0.0.1/ready", 404),
    ]
    for route, path, status in gets:
        result = client.simulate_get(path)
        assert result.status_code == status, (path, result.text)
        _check(doc, route, "get", result)
    infer, versioned = "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"
    png = (IMAGES / "chelsea.png").read_bytes()
    image_json = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                         "data": [base64.b64encode(png).decode()]}]}).encode()
    result = _v2_infer(client, image_json)
    assert result.status_code == 200, result.text
    _check(doc, infer, "post", result)
    document = json.loads(result.json["outputs"][0]["data"][0])
    validate(doc, {"$ref": "#/components/schemas/DetectResponse"}, document)  # the element is /detect's document
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 4 + len(png)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    result = _v2_infer(client, header + struct.pack("<I", len(png)) + png,
                       {"Inference-Header-Content-Length": str(len(header))}, version=V2_VERSION)
    assert result.status_code == 200 and result.headers["content-type"] == "application/octet-stream"
    _check(doc, versioned, "post", result)
    length = int(result.headers["inference-header-content-length"])
    validate(doc, {"$ref": "#/components/schemas/V2InferenceResponse"}, json.loads(result.content[:length]))
    tensor = np.zeros((1, 300, 300, 3), dtype=np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": "normalized_input_image_tensor", "datatype": "FP32", "shape": [1, 300, 300, 3],
                                     "parameters": {"binary_data_size": len(tensor)}}]}).encode()
    result = _v2_infer(client, header + tensor, {"Inference-Header-Content-Length": str(len(header))})
    assert result.status_code == 200 and [o["name"] for o in result.json["outputs"]] == [
        "raw_outputs/box_encodings", "raw_outputs/class_predictions"]
    _check(doc, infer, "post", result)
    errors = [
        (_v2_infer(client, b"{"), 400),
        (_v2_infer(client, b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]}'), 400),
        (_v2_infer(client, image_json, model="other"), 404),
        (_v2_infer(client, b"x" * (4 * 1024 * 1024 + 1)), 413),
        (_v2_infer(client, b"{}", {"Content-Encoding": "br"}), 415),
    ]
    for result, status in errors:
        assert result.status_code == status, result.text
        assert set(result.json) == {"error", "reason"}
        _check(doc, infer, "post", result)
    unknown = client.simulate_post(f"/v2/repository/models/{V2_MODEL}/load")  # not a route: any other /v2 path
    assert unknown.status_code == 404
    validate(doc, {"$ref": "#/components/schemas/V2Error"}, unknown.json)


@pytest.mark.processes
def test_live_kserve_v2_repository_index_matches_the_documented_schema(client, doc):
    route = "/v2/repository/index"
    for body in (b"", b"{}", b'{"ready": true}', b'{"ready": false}'):
        result = client.simulate_post(route, body=body)
        assert result.status_code == 200, (body, result.text)
        assert result.json == [{"name": V2_MODEL, "version": V2_VERSION, "state": "READY", "reason": ""}]
        _check(doc, route, "post", result)
    for body, status in ((b"{", 400), (b"[]", 400), (b'{"ready": 1}', 400), (b" " * 4097, 413)):
        result = client.simulate_post(route, body=body)
        assert result.status_code == status and set(result.json) == {"error", "reason"}, (body, result.text)
        _check(doc, route, "post", result)
    assert client.simulate_get(route).status_code == 405  # POST only, as documented


def test_kserve_v2_before_a_model_is_loaded_matches_the_documented_503s(tmp_path, doc):
    from falcon import testing

    client = testing.TestClient(_app(_unloadable_store(tmp_path)))
    assert client.simulate_get("/v2/health/live").status_code == 200
    for route, path in (("/v2/health/ready", "/v2/health/ready"), ("/v2/models/{name}", f"/v2/models/{V2_MODEL}"),
                        ("/v2/models/{name}/ready", f"/v2/models/{V2_MODEL}/ready")):
        result = client.simulate_get(path)
        assert result.status_code == 503, (path, result.text)
        _check(doc, route, "get", result)
    result = _v2_infer(client, b'{"inputs": []}')
    assert result.status_code == 503 and set(result.json) == {"error", "reason"}
    _check(doc, "/v2/models/{name}/infer", "post", result)
    index = client.simulate_post("/v2/repository/index")
    assert [(m["name"], m["state"]) for m in index.json] == [(V2_MODEL, "UNAVAILABLE")], index.text
    _check(doc, "/v2/repository/index", "post", index)
    assert client.simulate_post("/v2/repository/index", body=b'{"ready": true}').json == []


def test_every_route_answers_errors_in_one_document(tmp_path, doc):
    """Falcon's own 404 and 405, a v2 path that does not exist and a route's own refusal:
    the same ``{"error", "reason"}`` (workers.errors.answer_error), each as documented."""
    from falcon import testing

    client = testing.TestClient(_app(tmp_path))  # empty store: no model needed to refuse
    answers = {
        "not_found": client.simulate_get("/no/such/path"),
        "method_not_allowed": client.simulate_delete("/detect"),
        "no_model": client.simulate_post("/detect", body=b"x", headers={"Content-Type": "image/png"}),
    }
    for reason, answer in answers.items():
        assert answer.json.keys() == {"error", "reason"} and answer.json["error"], answer.text
        assert answer.json["reason"] == reason
        validate(doc, {"$ref": "#/components/schemas/Error"}, answer.json)
    assert answers["method_not_allowed"].headers["allow"]
    v2 = client.simulate_get("/v2/repository/models")
    assert v2.status_code == 404 and v2.json["reason"] == "not_found"
    validate(doc, {"$ref": "#/components/schemas/V2Error"}, v2.json)


def _without_security(document: dict) -> dict:
    copy = json.loads(json.dumps(document))
    for _, _, operation in operations(copy):
        operation.pop("security", None)
    return copy


def test_served_document_asks_for_a_token_only_where_the_service_does(doc):
    from workers.resources.openapi import describe
    from workers.settings import AuthSettings

    token = ("t" * 40,)
    protected = {(route, method) for route, method, operation in operations(doc) if operation.get("security")}
    assert ("/detect", "post") in protected and ("/healthz", "get") not in protected
    open_service = describe(doc, AuthSettings())
    assert [op["security"] for _, _, op in operations(open_service) if op.get("security")] == []
    assert describe(doc, AuthSettings(tokens=token)) == doc
    private_metrics = describe(doc, AuthSettings(tokens=token, metrics_public=False))
    assert private_metrics["paths"]["/metrics"]["get"]["security"] == [{"bearerAuth": []}]
    assert doc["paths"]["/metrics"]["get"]["security"] == [{}, {"bearerAuth": []}]  # describe copied, not edited


@pytest.mark.processes
def test_every_request_example_is_a_request_the_service_answers(client, doc):
    """A client copying an example from the document gets a 200, not a 400."""
    import base64

    tried = 0
    for route, method, operation in operations(doc):
        example = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("example")
        if example is None:
            continue
        for tensor in example.get("inputs", ()):
            if tensor.get("parameters", {}).get("content_type") == "base64":
                for element in tensor["data"]:
                    base64.b64decode(element, validate=True)
        path = route.replace("{name}", V2_MODEL).replace("{version}", V2_VERSION)
        result = client.simulate_request(method.upper(), path, body=json.dumps(example).encode(),
                                         headers={"Content-Type": "application/json"})
        assert result.status_code == 200, (route, result.text)
        _check(doc, route, method, result)
        tried += 1
    assert tried >= 2


@pytest.fixture(scope="module")
def tasks_client(tmp_path_factory):
    """The app serving a model of every task beside the default detector, two of them chained."""
    from falcon import testing

    from service.bootstrap import ensure_active_model
    from service.repository import ModelRepository
    from tests.support.paths import DEFAULT_MODEL
    from tests.support.task_models import mediapipe_tasks, model_dir, model_files, planted_classifier
    from twinfer.manifest import publish

    store = tmp_path_factory.mktemp("tasks-store")
    ModelRepository(store).prepare()
    ensure_active_model(ModelRepository(store), DEFAULT_MODEL, "ssd-mobilenetv2-oidv4", "1.0.0")
    models = {**mediapipe_tasks(), "kind": model_files("c.onnx", labels=["a", "b", "c"],
                                                       model_bytes=planted_classifier([1.0, 3.0, 2.0]))}
    for name, files in models.items():
        directory = model_dir(store / "models" / name, "1", files)
        fmt = "onnx" if any(f.endswith(".onnx") for f in files) else "tflite"
        publish(store, name, "1", str(directory.relative_to(store)), fmt, "unused")
    client = testing.TestClient(_app(store))
    wait_until(lambda: client.simulate_get("/readyz").status_code == 200, "every model loaded", 60, 0.05)
    return client


@pytest.mark.processes
def test_live_predict_answers_of_every_task_and_the_models_listing_match_the_schemas(tasks_client, doc):
    astronaut = (IMAGES / "astronaut.png").read_bytes()
    tasks = {}
    for model, params in (("selfie", {}), ("selfie", {"format": "rle"}), ("pose", {}), ("mesh", {}), ("kind", {}),
                          ("face", {}), (None, {})):
        result = tasks_client.simulate_post("/predict", body=astronaut, headers={"Content-Type": "image/png"},
                                            params={**({"model": model} if model else {}), **params})
        assert result.status_code == 200, (model, result.text)
        _check(doc, "/predict", "post", result)
        tasks[model] = result.json["task"]
    assert tasks == {"selfie": "segmentation", "pose": "keypoints", "mesh": "keypoints", "kind": "classification",
                     "face": "detection", None: "detection"}
    wrong = tasks_client.simulate_post("/detect", body=astronaut, params={"model": "selfie"},
                                       headers={"Content-Type": "image/png"})
    assert wrong.status_code == 409
    _check(doc, "/detect", "post", wrong)
    listing = tasks_client.simulate_get("/models")
    _check(doc, "/models", "get", listing)
    chain = next(m for m in listing.json["models"] if m["name"] == "pose")["chain"]
    from tests.support.task_models import POSE_CHAIN
    from twinfer.chain_spec import parse_chain

    assert parse_chain(chain) == parse_chain(POSE_CHAIN)  # /models gives the chain as twinfer.json writes it
