"""gunicorn's answers to requests it cannot parse, in the one error document.

gunicorn refuses a malformed request line or header block, an unknown ``Expect`` or
transfer coding, or oversized headers before the app sees the request, with an HTML page
(and a 501 for a transfer coding it does not know). These map each of its client errors
to a status and a reason, so every answer of the service is ``{"error", "reason"}`` JSON
and nothing a client sends gets a 5xx (``JsonProtocolErrors`` writes them, in both worker classes).
"""
from __future__ import annotations

import ssl
from http import HTTPStatus

from gunicorn import util
from gunicorn.http import errors as parse

from workers.errors import error_document_bytes

# A message quotes what the client sent (a request line, a header): this much of it.
MESSAGE_LIMIT = 200

_ANSWERS: tuple[tuple[tuple[type[BaseException], ...], int, str], ...] = (
    ((parse.LimitRequestLine,), 414, "uri_too_long"),
    ((parse.LimitRequestHeaders,), 431, "headers_too_large"),
    ((parse.ExpectationFailed,), 417, "expectation_failed"),
    # RFC 9112 6.1 says a server SHOULD answer an unknown transfer coding with 501; it is
    # the client's request that is wrong here, and a 5xx would page the operator for it.
    ((parse.UnsupportedTransferCoding,), 400, "unsupported_transfer_coding"),
    ((parse.ForbiddenProxyRequest, ssl.SSLError), 403, "forbidden"),
    (
        (
            parse.InvalidRequestLine, parse.InvalidRequestMethod, parse.InvalidHTTPVersion, parse.InvalidHeader,
            parse.InvalidHeaderName, parse.ObsoleteFolding, parse.InvalidSchemeHeaders, parse.InvalidProxyLine,
            parse.InvalidProxyHeader, parse.InvalidChunkSize, parse.ChunkMissingTerminator,
            parse.InvalidChunkExtension, parse.InvalidH2CPreface,
        ),
        400,
        "malformed_request",
    ),
)

REASONS = frozenset(reason for _, _, reason in _ANSWERS)  # for the OpenAPI document's list


def protocol_error(exc: BaseException) -> tuple[int, str] | None:
    """The status and reason for a request gunicorn could not parse; ``None`` for anything
    else (the app's own fault, e.g. a bad response header, stays gunicorn's 500)."""
    if isinstance(exc, (parse.InvalidResponseHeader, parse.InvalidResponseHeaderName)):
        return None
    for kinds, status, reason in _ANSWERS:
        if isinstance(exc, kinds):
            return status, reason
    return None


def error_response(status: int, reason: str, exc: BaseException) -> bytes:
    """The whole HTTP answer, connection closed after it (the stream cannot be trusted)."""
    message = str(exc) or type(exc).__name__
    if len(message) > MESSAGE_LIMIT:
        message = message[:MESSAGE_LIMIT] + "..."
    body = error_document_bytes(reason, f"malformed request: {message}")
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class JsonProtocolErrors:
    """gunicorn's answer to a request it cannot parse, as the service's JSON error
    document and never a 5xx (``workers.protocol_errors``); anything else as gunicorn has it."""

    def handle_error(self, req, client, addr, exc):
        answer = protocol_error(exc)
        if answer is None:
            return super().handle_error(req, client, addr, exc)
        self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
        try:
            util.write_nonblock(client, error_response(*answer, exc))
        except OSError:
            self.log.debug("Failed to send error message.")
