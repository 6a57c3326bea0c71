"""What an HTTP answer says about a download, and URLs with their credentials cut out.

``service.update.fetch`` decides what to do; these read the answer: where a range starts
and how big the blob is, how long a server asks us to wait, the body as it arrives. A
blob URL's query is a SAS token, so no URL reaches a log line, an error message or the
download's sidecar with it.
"""
from __future__ import annotations

import email.utils
import re
import time
from typing import Iterator
from urllib.parse import urlsplit

import requests

QUERY_IN_TEXT = re.compile(r"\?[^\s'\"<>)]*")


def base_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # user:password@ is a credential too
    return f"{parts.scheme}://{host}{parts.path}"


def redact_url(url: str) -> str:
    """``scheme://host/path``, with ``?<redacted>`` standing for the query (the SAS token)."""
    return base_url(url) + ("?<redacted>" if urlsplit(url).query else "")


def scrub(exc: BaseException) -> str:
    """requests and urllib3 put the full URL in their messages: cut every query out."""
    return f"{type(exc).__name__}: {QUERY_IN_TEXT.sub('?<redacted>', str(exc))}"


def retry_after(response: requests.Response) -> float | None:
    if response.status_code not in (429, 503):
        return None
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000); ``*`` total -> None."""
    match = re.fullmatch(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", (value or "").strip())
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def body_chunks(response: requests.Response, size: int) -> Iterator[bytes]:
    """Raw body bytes (no decoding: sizes and ranges are of the stored blob) as they arrive.

    ``read1`` returns what the socket has instead of waiting for ``size`` bytes, so a read
    timeout loses nothing already received (``stream`` would drop a partial chunk).
    """
    raw = response.raw
    if raw.chunked:
        yield from raw.stream(size, decode_content=False)
        return
    while chunk := raw.read1(size, decode_content=False):
        yield chunk


def content_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value and value.isdigit() and "Transfer-Encoding" not in response.headers else None
