"""Getting the image bytes out of a request, within the size limit, without reading too much."""
from __future__ import annotations

from contextlib import contextmanager

import falcon
from gunicorn.http.errors import NoMoreData, ParseException

from twinfer.errors import BodyTooLarge, EmptyBody, MalformedBody, RequestError, UnsupportedMediaType

RAW_TYPES = ("image/", "application/octet-stream")


@contextmanager
def _http_framing():
    """gunicorn's errors for a broken body (chunk sizes, terminators, extensions, trailers,
    an early end) raised while the app reads it: the client's fault, a 400."""
    try:
        yield
    except (ParseException, NoMoreData) as exc:
        raise MalformedBody(f"the request body's HTTP framing is broken: {type(exc).__name__}: {exc}") from None


def read_bounded(stream, limit: int) -> bytes:
    with _http_framing():
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise BodyTooLarge(f"request body is over the limit of {limit} bytes")
    return data


def _check_declared_length(req: falcon.Request, limit: int) -> None:
    """413 from Content-Length, before a byte is read."""
    if req.content_length is not None and req.content_length > limit:
        raise BodyTooLarge(f"request body of {req.content_length} bytes is over the limit of {limit} bytes")


def _stream(req: falcon.Request):
    # Chunked bodies have no Content-Length; gunicorn's own stream ends at the last chunk.
    return req.stream if req.content_length is None else req.bounded_stream


def bounded_body(req: falcon.Request, limit: int) -> bytes:
    """The whole body as sent, within ``limit``."""
    _check_declared_length(req, limit)
    return read_bounded(_stream(req), limit)


def image_bytes(req: falcon.Request, limit: int) -> bytes:
    """Raw image body or the one file part of a multipart form (``POST /detect``)."""
    _check_declared_length(req, limit)
    content_type = (req.content_type or "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return _multipart_image(req, limit)
    if content_type and not content_type.startswith(RAW_TYPES):
        raise UnsupportedMediaType(
            f"content type {content_type!r} is not accepted: send image bytes (image/*, "
            "application/octet-stream) or multipart/form-data with one image part"
        )
    return read_bounded(_stream(req), limit)


def _multipart_image(req: falcon.Request, limit: int) -> bytes:
    with _http_framing():
        return _first_image_part(req, limit)


def _first_image_part(req: falcon.Request, limit: int) -> bytes:
    try:
        form = req.get_media()
        for part in form:
            part_type = (part.content_type or "").split(";")[0].strip().lower()
            if part.filename or part_type.startswith(RAW_TYPES):
                return read_bounded(part.stream, limit)
    except RequestError:
        raise
    except falcon.HTTPError as exc:  # malformed multipart framing
        raise RequestError(f"malformed multipart body: {exc.description or exc.title}") from None
    except UnicodeDecodeError:  # Falcon decodes a part's Content-Type as ASCII, its Content-Disposition as UTF-8
        raise RequestError("malformed multipart body: a part's headers are not ASCII (Content-Type) "
                           "or UTF-8 (Content-Disposition) text") from None
    raise EmptyBody("multipart form has no image part (a part with a filename or an image/* type)")
