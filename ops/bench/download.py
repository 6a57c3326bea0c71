#!/usr/bin/env python3
"""What a flaky, metered link costs the downloader, measured on loopback.

1. Bytes re-sent after the connection drops at 50% of a 10 MiB bundle (ideal: 0).
2. Effective rate under a bandwidth cap, against the cap, for a few caps.

It drives ``service.update.fetch.download`` against the fault-injecting test file server
(``tests/support/http_server.py``). Run from the project root:
``.venv/bin/python ops/bench/download.py``.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from service.update.fetch import DownloadPolicy, download  # noqa: E402
from tests.support.http_server import FileServer  # noqa: E402

SIZE = 10 * 1024 * 1024


def resend_after_drop(tmp: Path) -> None:
    data = os.urandom(SIZE)
    with FileServer({"/bundle.zip": data}) as server:
        server.faults("/bundle.zip").drop_after = SIZE // 2
        result = download(server.url("/bundle.zip?sig=x"), tmp / "a.part", policy=DownloadPolicy(backoff_initial=0.05))
        assert (tmp / "a.part").read_bytes() == data
        resent = server.bytes_sent - SIZE
        print(
            f"drop at 50% of {SIZE} B: {len(server.requests)} requests, {server.bytes_sent} B sent, "
            f"re-sent {resent} B ({100 * resent / SIZE:.3f}%), resumed from {result.resumed_from}"
        )


def rate_under_cap(tmp: Path) -> None:
    for cap, size in ((100_000, 500_000), (250_000, 1_250_000), (1_000_000, 5_000_000)):
        with FileServer({"/b": os.urandom(size)}) as server:
            result = download(server.url("/b"), tmp / f"cap{cap}.part", policy=DownloadPolicy(rate_limit_bps=cap))
        rate = result.size / result.seconds
        print(f"cap {cap:>9,} B/s: {size:>9,} B in {result.seconds:.2f} s = {rate:>11,.0f} B/s ({100 * rate / cap:.1f}% of cap)")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        resend_after_drop(Path(tmp))
        rate_under_cap(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
