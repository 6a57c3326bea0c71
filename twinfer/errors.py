"""Client errors raised on the request path, each with its HTTP status and a metrics reason.

The core raises them (a picture that does not decode is the client's fault, not a 500);
``workers.errors`` writes them into the one error document every route answers with.
"""
from __future__ import annotations


class RequestError(Exception):
    """A client error, answered with ``status`` and the error document; never a 500."""

    status: int = 400
    reason: str = "bad_request"
    retry_after: int | None = None  # seconds, sent as ``Retry-After``: the request may work if retried

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EmptyBody(RequestError):
    reason = "empty_body"


class NotAnImage(RequestError):
    reason = "not_an_image"


class CorruptImage(RequestError):
    reason = "corrupt_image"


class MalformedBody(RequestError):
    """The body's HTTP framing is broken (a bad chunk size or terminator): the rest of the
    connection cannot be read, so it is closed after the answer."""

    reason = "malformed_body"


class UnsupportedMediaType(RequestError):
    status = 415
    reason = "unsupported_media_type"


class BodyTooLarge(RequestError):
    status = 413
    reason = "body_too_large"


class ImageTooLarge(RequestError):
    status = 413
    reason = "image_too_large"


class JsonTooComplex(RequestError):
    """A JSON request with more values, arrays or strings than the model's inputs take,
    refused before it is parsed (``workers.kserve.json_budget``)."""

    status = 413
    reason = "json_too_complex"


class BadParameter(RequestError):
    reason = "bad_parameter"


class NoModel(RequestError):
    status = 503
    reason = "no_model"
    retry_after = 1


class DecodeBusy(RequestError):
    """The worker is decoding as many pixels as it may at once (``twinfer.decode_budget``)."""

    status = 503
    reason = "decode_busy"
    retry_after = 1


class ModelNotFound(RequestError):
    """A model name or version this server does not serve."""

    status = 404
    reason = "model_not_found"


class WrongTask(RequestError):
    """``/detect`` asked of a model that is not a detector (``/predict`` answers every task)."""

    status = 409
    reason = "wrong_task"


class ChainUnavailable(RequestError):
    """A chained model's detector is not loaded here (yet: it may be on its way)."""

    status = 503
    reason = "chain_unavailable"
    retry_after = 1


class ChainMisconfigured(RequestError):
    """A chained model's detector cannot feed it (not a detector, too few keypoints, other
    labels): no retry helps until the operator changes the pool, so no ``Retry-After``."""

    status = 503
    reason = "chain_misconfigured"
