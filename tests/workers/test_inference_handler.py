"""workers.inference: the options both transports parse, and which model a request gets."""
from __future__ import annotations

import pytest
from falcon.testing import create_req

from twinfer.engines import EngineOptions
from twinfer.errors import BadParameter, ModelNotFound, NoModel
from workers.inference import MAX_DETECTIONS_LIMIT, DetectOptions, InferenceHandler
from workers.settings import WorkerSettings


@pytest.mark.parametrize(("threshold", "max_detections", "expected"), [
    (None, None, DetectOptions()),
    ("0.25", "7", DetectOptions(0.25, 7)),  # a query string
    (0.25, 7, DetectOptions(0.25, 7)),  # v2 parameters (JSON numbers)
    ("1", str(MAX_DETECTIONS_LIMIT), DetectOptions(1.0, MAX_DETECTIONS_LIMIT)),
])
def test_options_from_either_transport(threshold, max_detections, expected):
    assert DetectOptions.parse(threshold, max_detections) == expected


@pytest.mark.parametrize(("threshold", "max_detections", "message"), [
    ("high", None, "parameters.threshold must be a number between 0 and 1, got 'high'"),
    (True, None, "parameters.threshold must be a number between 0 and 1, got True"),
    (1.5, None, "parameters.threshold must be between 0 and 1, got 1.5"),
    (None, "0", "parameters.max_detections must be an integer 1..1000, got '0'"),
    (None, 2.0, "parameters.max_detections must be an integer 1..1000, got 2.0"),
    (None, False, "parameters.max_detections must be an integer 1..1000, got False"),
])
def test_bad_options_name_the_field_as_the_client_wrote_it(threshold, max_detections, message):
    with pytest.raises(BadParameter) as caught:
        DetectOptions.parse(threshold, max_detections, "parameters.")
    assert caught.value.message == message


class _Entry:
    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version


class _Serving:
    def __init__(self, name: str, version: str) -> None:
        self.manifest = _Entry(name, version)


class _Holder:
    """The pool as workers.holder.ModelHolder shows it to the handler."""

    def __init__(self, models: dict, default: str | None, loading: list[str] = ()):
        self.models, self.default, self._loading = models, default, list(loading)

    def serving_now(self, name=None):
        return self.models.get(name if name is not None else self.default or "")

    def missing(self):
        return self._loading


def test_the_model_a_request_names_must_be_one_of_the_pool(tmp_path):
    settings = WorkerSettings(store=tmp_path, max_body_bytes=10**6, max_image_pixels=10**7, engine=EngineOptions())
    holder = _Holder({"face": _Serving("face", "2"), "ssd": _Serving("ssd", "1")}, "face", loading=["pose"])
    handler = InferenceHandler(holder, settings)
    req = create_req()
    assert handler.current(req).manifest.name == "face" and req.context.model == "face"
    assert handler.current(req, "ssd").manifest.version == "1" and req.context.model == "ssd"
    assert handler.current(req, "face", "2").manifest.version == "2"
    with pytest.raises(ModelNotFound, match=r"unknown model 'body'; this server serves \['face', 'ssd'\]"):
        handler.current(create_req(), "body")
    with pytest.raises(ModelNotFound, match="model 'face' has no version '1'; the active version is '2'"):
        handler.current(create_req(), "face", "1")
    with pytest.raises(NoModel, match="'pose' loaded in this worker yet"):
        handler.current(create_req(), "pose")
    with pytest.raises(NoModel, match="no model loaded"):
        InferenceHandler(_Holder({}, None), settings).current(create_req())
