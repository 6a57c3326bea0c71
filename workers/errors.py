"""Client errors raised on the request path, each with its HTTP status and a metrics reason,
and the one error document every route answers with: ``{"error": message, "reason": reason}``
(for KServe v2 a superset of the protocol's ``{"error": message}``)."""
from __future__ import annotations

from http import HTTPStatus

import falcon


def answer_error(resp: falcon.Response, status: int | str, reason: str, message: str) -> None:
    """Put the error document on ``resp``: the only place its shape is written."""
    resp.status = status
    resp.media = {"error": message, "reason": reason}


def serialize_http_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    """Falcon's own errors (404 for an unknown path, 405 for a method a route lacks) in the
    same document, the reason named after the status (``not_found``, ``method_not_allowed``)."""
    reason = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    answer_error(resp, exc.status, reason, exc.description or exc.title)


class RequestError(Exception):
    """A client error, answered with ``status`` and the error document; never a 500."""

    status: int = 400
    reason: str = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EmptyBody(RequestError):
    reason = "empty_body"


class NotAnImage(RequestError):
    reason = "not_an_image"


class CorruptImage(RequestError):
    reason = "corrupt_image"


class UnsupportedMediaType(RequestError):
    status = 415
    reason = "unsupported_media_type"


class BodyTooLarge(RequestError):
    status = 413
    reason = "body_too_large"


class ImageTooLarge(RequestError):
    status = 413
    reason = "image_too_large"


class BadParameter(RequestError):
    reason = "bad_parameter"


class NoModel(RequestError):
    status = 503
    reason = "no_model"


class ModelNotFound(RequestError):
    """A model name or version this server does not serve."""

    status = 404
    reason = "model_not_found"
