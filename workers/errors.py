"""The one error document every route answers with: ``{"error": message, "reason": reason}``
(for KServe v2 a superset of the protocol's ``{"error": message}``). The client errors
themselves (status and reason) are ``twinfer.errors``."""
from __future__ import annotations

import json
from http import HTTPStatus

import falcon


def error_document(reason: str, message: str) -> dict[str, str]:
    """The error document: the only place its shape is written."""
    return {"error": message, "reason": reason}


def error_document_bytes(reason: str, message: str) -> bytes:
    """The error document as sent where there is no app to send it (``workers.protocol_errors``)."""
    return json.dumps(error_document(reason, message)).encode()


def answer_error(resp: falcon.Response, status: int | str, reason: str, message: str) -> None:
    """Put the error document on ``resp``."""
    resp.status = status
    resp.media = error_document(reason, message)


def serialize_http_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    """Falcon's own errors (404 for an unknown path, 405 for a method a route lacks) in the
    same document, the reason named after the status (``not_found``, ``method_not_allowed``)."""
    reason = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    answer_error(resp, exc.status, reason, exc.description or exc.title)
