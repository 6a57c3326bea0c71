"""HTTP/1.1 client steps the keep-alive tests share (``http.client``: one connection, reused
until an answer says ``Connection: close``, then reopened by the next request)."""
from __future__ import annotations

import http.client


def post_jpeg(conn: http.client.HTTPConnection, picture: bytes) -> http.client.HTTPResponse:
    """POST /detect with ``picture``; the answer is read, so the connection can be reused."""
    conn.request("POST", "/detect", body=picture, headers={"Content-Type": "image/jpeg"})
    answer = conn.getresponse()
    answer.read()
    return answer
