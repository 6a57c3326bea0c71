"""Resumable downloads against a real HTTP server on 127.0.0.1 that drops, stalls and lies."""
from __future__ import annotations

import json
import logging
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path

import pytest

from service.update import fetch
from service.update.fetch import DownloadError, DownloadPolicy, download
from service.update.http_answers import redact_url
from tests.support.http_server import FileServer
from tests.support.paths import PROJECT_ROOT
from tests.support.waiting import wait_until

MiB = 1024 * 1024
POLICY = DownloadPolicy(connect_timeout=2.0, read_timeout=2.0, progress_interval=60.0)
PATH = "/models/bundle.zip"
SECRET = "s3cr3t-T0KEN"
SECRET_URL_QUERY = f"?sv=2024-11-04&sig={SECRET}"


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def sidecar(part: Path) -> Path:
    return Path(str(part) + ".json")


def leaks_secret(err: BaseException, caplog: pytest.LogCaptureFixture) -> bool:
    text = str(err) + "".join(traceback.format_exception(err)) + caplog.text
    return SECRET in text or "sig=" in text


@pytest.fixture
def part(tmp_path: Path) -> Path:
    return tmp_path / "bundle.zip.part"


@pytest.fixture
def delays() -> list[float]:
    """Injected as ``sleep``: records the backoff instead of waiting."""
    return []


@pytest.fixture(autouse=True)
def fetch_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="twinfer.fetch")


class Killed(Exception):
    """Raised from ``on_bytes``: the process dies right after a chunk hit the disk."""


def kill_at(offset: int):
    received = 0

    def on_bytes(n: int) -> None:
        nonlocal received
        received += n
        if received >= offset:
            raise Killed()

    return on_bytes


def test_redact_url_keeps_host_and_path_and_hides_query_and_credentials():
    assert redact_url("https://acct.blob.core.windows.net/models/a.zip?sv=1&sig=SECRET") == (
        "https://acct.blob.core.windows.net/models/a.zip?<redacted>"
    )
    assert redact_url("http://user:pw@host:8080/a.zip") == "http://host:8080/a.zip"


def test_complete_download_in_one_request(part, delays):
    data = payload(MiB + 123)
    with FileServer({PATH: data}) as server:
        result = download(server.url(PATH + SECRET_URL_QUERY), part, expected_size=len(data), policy=POLICY,
                          sleep=delays.append)
        etag = server.etag(PATH)
        assert [(r.status, r.headers.get("Range")) for r in server.requests] == [(200, None)]
    assert part.read_bytes() == data
    assert not sidecar(part).exists()
    assert (result.path, result.size, result.transferred, result.resumed_from, result.restarts, result.etag) == (
        part, len(data), len(data), 0, 0, etag
    )
    assert delays == []


def test_drop_at_half_resumes_from_the_byte_it_stopped_at(part, delays, caplog):
    data = payload(10 * MiB)
    with FileServer({PATH: data}) as server:
        server.faults(PATH).drop_after = len(data) // 2
        result = download(server.url(PATH + SECRET_URL_QUERY), part, policy=POLICY, sleep=delays.append)
        resent = server.bytes_sent - len(data)
        requests = [(r.status, r.headers.get("Range"), r.headers.get("If-Range"), r.body_bytes)
                    for r in server.requests]
        etag = server.etag(PATH)
    print(f"\n10 MiB, connection dropped at 50%: {resent} bytes sent twice ({server.bytes_sent} sent in all)")
    assert resent < 2 * POLICY.chunk_size
    assert requests == [(200, None, None, len(data) // 2), (206, f"bytes={len(data) // 2}-", etag, len(data) // 2)]
    assert part.read_bytes() == data
    assert (result.transferred, result.restarts) == (len(data), 0)
    assert len(delays) == 1 and 0 <= delays[0] <= POLICY.backoff_initial
    assert "retrying in" in caplog.text and not leaks_secret(Exception(), caplog)


def test_attempts_that_make_progress_do_not_use_up_max_attempts(part, delays):
    data = payload(MiB)
    with FileServer({PATH: data}) as server:
        server.faults(PATH).drop_after = 200 * 1024
        server.faults(PATH).drop_every = True
        download(server.url(PATH), part, policy=DownloadPolicy(max_attempts=2), sleep=delays.append)
        assert len(server.requests) == 6  # 5 x 200 KiB + 24 KiB, no byte twice
        assert server.bytes_sent == len(data)
    assert part.read_bytes() == data


def test_resume_after_cancel_needs_only_the_part_file_and_its_sidecar(part, delays):
    data = payload(4 * MiB)
    cancel = threading.Event()

    def cancel_at_half(n: int, seen=[0]) -> None:
        seen[0] += n
        if seen[0] >= len(data) // 2:
            cancel.set()

    with FileServer({PATH: data}) as server:
        server.faults(PATH).throttle_bps = 8 * MiB
        url = server.url(PATH + SECRET_URL_QUERY)
        with pytest.raises(DownloadError) as failed:
            download(url, part, policy=POLICY, on_bytes=cancel_at_half, cancel=cancel, sleep=delays.append)
        assert (failed.value.reason, failed.value.retryable) == ("cancelled", False)
        have = part.stat().st_size
        state = sidecar(part).read_text()
        assert json.loads(state) == {"url": server.url(PATH), "etag": server.etag(PATH), "total": len(data)}
        assert SECRET not in state

        server.faults(PATH).throttle_bps = None
        result = download(url, part, policy=POLICY, sleep=delays.append)  # a fresh call: no state but the files
        resume = server.requests[-1]
    assert len(data) // 2 <= have < len(data)
    assert (resume.status, resume.headers["Range"], resume.body_bytes) == (206, f"bytes={have}-", len(data) - have)
    assert (result.resumed_from, result.transferred, result.restarts) == (have, len(data) - have, 0)
    assert part.read_bytes() == data and not sidecar(part).exists()


CHILD = (
    "import sys; from pathlib import Path; from service.update.fetch import download; download(sys.argv[1], Path(sys.argv[2]))"
)


@pytest.mark.processes
def test_resume_after_the_process_is_killed(part):
    data = payload(3 * MiB)
    with FileServer({PATH: data}) as server:
        server.faults(PATH).throttle_bps = 2 * MiB
        child = subprocess.Popen([sys.executable, "-c", CHILD, server.url(PATH + SECRET_URL_QUERY), str(part)],
                                 cwd=PROJECT_ROOT)
        wait_until(lambda: part.exists() and part.stat().st_size >= MiB, "1 MiB downloaded", 20, interval=0.02)
        child.kill()
        assert child.wait() == -9
        have = part.stat().st_size
        server.faults(PATH).throttle_bps = None
        result = download(server.url(PATH + SECRET_URL_QUERY), part, policy=POLICY)
        resume = server.requests[-1]
    assert MiB <= have < len(data)
    assert (resume.headers["Range"], resume.body_bytes) == (f"bytes={have}-", len(data) - have)
    assert (result.resumed_from, result.transferred) == (have, len(data) - have)
    assert part.read_bytes() == data


def test_an_expired_sas_keeps_the_part_for_a_refreshed_token_to_resume(part, delays):
    data = payload(2 * MiB)
    with FileServer({PATH: data}) as server:
        with pytest.raises(Killed):
            download(server.url(PATH + "?sig=old"), part, policy=POLICY, on_bytes=kill_at(MiB), sleep=delays.append)
        have = part.stat().st_size
        server.faults(PATH).statuses = [403]
        with pytest.raises(DownloadError) as failed:
            download(server.url(PATH + "?sig=old"), part, policy=POLICY, sleep=delays.append)
        assert failed.value.reason == "forbidden" and part.stat().st_size == have
        result = download(server.url(PATH + "?sig=new"), part, policy=POLICY, sleep=delays.append)
        assert server.requests[-1].headers["Range"] == f"bytes={have}-"
    assert result.resumed_from == have and part.read_bytes() == data


def test_a_part_file_of_another_url_is_discarded(part, delays):
    first, second = payload(MiB, seed=1), payload(MiB, seed=2)
    with FileServer({"/a.zip": first, "/b.zip": second}) as server:
        with pytest.raises(Killed):
            download(server.url("/a.zip"), part, policy=POLICY, on_bytes=kill_at(MiB // 2), sleep=delays.append)
        result = download(server.url("/b.zip"), part, policy=POLICY, sleep=delays.append)
        assert [r.headers.get("Range") for r in server.requests_for("/b.zip")] == [None]
    assert (result.resumed_from, result.transferred) == (0, MiB)
    assert part.read_bytes() == second


def test_blob_replaced_mid_download_restarts_and_ends_with_the_new_content(part, delays):
    old, new = payload(2 * MiB, seed=1), payload(3 * MiB, seed=2)
    with FileServer({PATH: old}) as server:
        old_etag = server.etag(PATH)
        server.faults(PATH).replace_after = 800 * 1024
        server.faults(PATH).replacement = new
        result = download(server.url(PATH), part, policy=POLICY, sleep=delays.append)
        requests = [(r.status, r.headers.get("If-Range")) for r in server.requests]
        assert result.etag == server.etag(PATH) != old_etag
    assert requests == [(200, None), (200, old_etag)]  # If-Range failed: the server sent the new blob whole
    assert part.read_bytes() == new
    assert (result.restarts, result.size, result.transferred) == (1, len(new), 800 * 1024 + len(new))


def test_a_new_etag_on_a_206_restarts_even_if_the_server_ignores_if_range(part, delays):
    old, new = payload(2 * MiB, seed=1), payload(2 * MiB, seed=2)
    with FileServer({PATH: old}) as server:
        faults = server.faults(PATH)
        faults.replace_after, faults.replacement, faults.honor_if_range = MiB, new, False
        result = download(server.url(PATH), part, policy=POLICY, sleep=delays.append)
        statuses = [r.status for r in server.requests]
    assert statuses == [200, 206, 200]  # the 206 of the new blob is refused, then the new blob from byte 0
    assert part.read_bytes() == new and result.restarts == 1


@pytest.fixture
def ceiling_jitter(monkeypatch):
    """Full jitter at its upper bound, so the growth of the bounds is visible; records the bounds."""
    bounds: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        bounds.append((low, high))
        return high

    monkeypatch.setattr(fetch.random, "uniform", uniform)
    return bounds


def test_server_errors_are_retried_with_exponential_backoff(part, delays, ceiling_jitter, caplog):
    data = payload(100_000)
    policy = DownloadPolicy(backoff_initial=1.0, backoff_max=6.0)
    with FileServer({PATH: data}) as server:
        server.faults(PATH).statuses = [500, 503, 500, 502, 500, 200]
        download(server.url(PATH + SECRET_URL_QUERY), part, policy=policy, sleep=delays.append)
        assert [r.status for r in server.requests] == [500, 503, 500, 502, 500, 200]
    assert delays == [1.0, 2.0, 4.0, 6.0, 6.0]
    assert ceiling_jitter == [(0, 1.0), (0, 2.0), (0, 4.0), (0, 6.0), (0, 6.0)]
    assert part.read_bytes() == data
    assert caplog.text.count("retrying in") == 5 and "HTTP 503" in caplog.text
    assert not leaks_secret(Exception(), caplog)


def test_full_jitter_stays_within_its_bounds(part, delays):
    with FileServer({PATH: b"x" * 1000}) as server:
        server.faults(PATH).statuses = [500] * 7
        download(server.url(PATH), part, policy=DownloadPolicy(backoff_initial=0.5, backoff_max=8.0),
                 sleep=delays.append)
    bounds = [min(8.0, 0.5 * 2**n) for n in range(7)]
    assert len(delays) == 7
    assert all(0 <= d <= b for d, b in zip(delays, bounds))
    assert delays != bounds  # really random, not the ceiling


def test_retry_after_is_honoured_on_429_and_503(part, delays, ceiling_jitter):
    with FileServer({PATH: b"x" * 1000}) as server:
        server.faults(PATH).statuses = [(503, {"Retry-After": "3"}), (429, {"Retry-After": "1.5"}),
                                        (429, {"Retry-After": "3600"}), 200]
        download(server.url(PATH), part, policy=DownloadPolicy(backoff_max=60.0), sleep=delays.append)
    assert delays == [3.0, 1.5, 60.0]  # capped at backoff_max
    assert ceiling_jitter == []


def test_cancel_interrupts_a_backoff_wait(part):
    cancel = threading.Event()
    with FileServer({PATH: b"x" * 1000}) as server:
        server.faults(PATH).statuses = [500] * 5
        threading.Timer(0.2, cancel.set).start()
        started = time.monotonic()
        with pytest.raises(DownloadError) as failed:  # real sleep: 10-20 s of backoff ahead
            download(server.url(PATH), part, policy=DownloadPolicy(backoff_initial=20.0), cancel=cancel)
    assert failed.value.reason == "cancelled" and time.monotonic() - started < 2.0


def test_gives_up_after_max_attempts_without_progress(part, delays):
    with FileServer({PATH: b"x" * 1000}) as server:
        server.faults(PATH).statuses = [500] * 10
        with pytest.raises(DownloadError) as failed:
            download(server.url(PATH), part, policy=DownloadPolicy(max_attempts=3), sleep=delays.append)
        assert len(server.requests) == 3
    assert (failed.value.reason, failed.value.retryable) == ("http_error", True)
    assert "3 attempts without progress" in str(failed.value) and "HTTP 500" in str(failed.value)
    assert len(delays) == 2


def test_unreachable_server_is_a_retryable_network_error_without_the_query(part, delays, caplog):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: connection refused
    with pytest.raises(DownloadError) as failed:
        download(f"http://127.0.0.1:{port}{PATH}{SECRET_URL_QUERY}", part, policy=DownloadPolicy(max_attempts=2),
                 sleep=delays.append)
    assert (failed.value.reason, failed.value.retryable) == ("network", True)
    assert "ConnectionError" in str(failed.value)
    assert not leaks_secret(failed.value, caplog)
    assert len(delays) == 1


@pytest.mark.parametrize(("status", "reason"), [(401, "forbidden"), (403, "forbidden"), (404, "not_found")])
def test_refusals_fail_fast_without_leaking_the_sas_token(part, delays, caplog, status, reason):
    with FileServer({PATH: b"x" * 1000}) as server:
        server.faults(PATH).statuses = [status]
        with pytest.raises(DownloadError) as failed:
            download(server.url(PATH + SECRET_URL_QUERY), part, policy=POLICY, sleep=delays.append)
        assert len(server.requests) == 1
    assert (failed.value.reason, failed.value.retryable) == (reason, False)
    assert f"HTTP {status}" in str(failed.value) and PATH in str(failed.value)
    assert not leaks_secret(failed.value, caplog)
    assert delays == []


def test_unknown_path_is_not_found(part, delays):
    with FileServer({}) as server, pytest.raises(DownloadError) as failed:
        download(server.url("/missing.zip"), part, policy=POLICY, sleep=delays.append)
    assert failed.value.reason == "not_found"


def test_a_stall_longer_than_the_read_timeout_is_retried(part, delays):
    data = payload(MiB)
    with FileServer({PATH: data}) as server:
        server.faults(PATH).stall_after = 300_000
        server.faults(PATH).stall_seconds = 10.0
        started = time.monotonic()
        download(server.url(PATH), part, policy=DownloadPolicy(read_timeout=0.3), sleep=delays.append)
        elapsed = time.monotonic() - started
        assert [r.headers.get("Range") for r in server.requests] == [None, "bytes=300000-"]
    assert part.read_bytes() == data
    assert 0.3 <= elapsed < 3.0 and len(delays) == 1


def test_bandwidth_cap_holds_the_average_rate(part):
    data, cap = payload(400_000), 200_000
    with FileServer({PATH: data}) as server:
        started = time.monotonic()
        result = download(server.url(PATH), part, policy=DownloadPolicy(rate_limit_bps=cap))
        elapsed = time.monotonic() - started
    rate = len(data) / elapsed
    print(f"\n400 kB at a cap of {cap} B/s: {elapsed:.2f} s, {rate:.0f} B/s = {rate / cap:.1%} of the cap")
    assert elapsed >= 1.8
    assert 0.9 * cap <= rate <= 1.1 * cap
    assert part.read_bytes() == data and result.seconds <= elapsed


def _little_space(free: int):
    def disk_usage(path):
        return shutil._ntuple_diskusage(10**12, 10**12 - free, free)

    return disk_usage


def test_no_space_before_starting_writes_nothing_and_sends_nothing(part, delays, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", _little_space(MiB))
    with FileServer({PATH: b"x" * 1000}) as server:
        with pytest.raises(DownloadError) as failed:
            download(server.url(PATH), part, policy=POLICY, sleep=delays.append)
        assert server.requests == []
    assert (failed.value.reason, failed.value.retryable) == ("no_space", False)
    assert "reserve" in str(failed.value)
    assert list(part.parent.iterdir()) == []


def test_no_space_for_the_announced_size_writes_nothing(part, delays, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", _little_space(1000 + MiB))
    with FileServer({PATH: payload(2 * MiB)}) as server:
        with pytest.raises(DownloadError) as failed:
            download(server.url(PATH), part, policy=DownloadPolicy(min_free_bytes=1000), sleep=delays.append)
        assert len(server.requests) == 1
    assert failed.value.reason == "no_space" and f"{2 * MiB} bytes to go" in str(failed.value)
    assert list(part.parent.iterdir()) == []


def test_a_server_size_other_than_expected_is_a_size_mismatch(part, delays):
    with FileServer({PATH: payload(1000)}) as server:
        with pytest.raises(DownloadError) as failed:
            download(server.url(PATH), part, expected_size=1001, policy=POLICY, sleep=delays.append)
        assert len(server.requests) == 1
    assert (failed.value.reason, failed.value.retryable) == ("size_mismatch", False)
    assert "1000" in str(failed.value) and "1001" in str(failed.value)
    assert list(part.parent.iterdir()) == []


def test_a_body_longer_than_expected_is_cut_off_as_a_size_mismatch(part, delays):
    with FileServer({PATH: payload(MiB)}) as server:
        server.faults(PATH).chunked = True  # no Content-Length: the client learns the size by reading
        with pytest.raises(DownloadError) as failed:
            download(server.url(PATH), part, expected_size=100_000, policy=POLICY, sleep=delays.append)
    assert failed.value.reason == "size_mismatch"
    assert list(part.parent.iterdir()) == []


@pytest.mark.parametrize("range_at_end", [206, 416])
def test_a_complete_part_file_is_not_requested_again(part, delays, range_at_end):
    data = payload(MiB)
    with FileServer({PATH: data}) as server:
        server.faults(PATH).range_at_end = range_at_end  # 206: Azurite's answer to bytes=<size>-
        with pytest.raises(Killed):  # dies after the last byte was written, before cleaning up
            download(server.url(PATH), part, policy=POLICY, on_bytes=kill_at(len(data)), sleep=delays.append)
        assert sidecar(part).exists()
        requests = len(server.requests)
        result = download(server.url(PATH), part, policy=POLICY, sleep=delays.append)
        assert len(server.requests) == requests
    assert (result.size, result.transferred, result.resumed_from) == (len(data), 0, len(data))
    assert part.read_bytes() == data and not sidecar(part).exists()


@pytest.mark.parametrize("range_at_end", [206, 416])
def test_a_complete_part_of_unknown_size_is_confirmed_by_a_bodiless_range_answer(part, delays, range_at_end):
    data = payload(MiB)
    with FileServer({PATH: data}) as server:
        server.faults(PATH).chunked = True
        server.faults(PATH).range_at_end = range_at_end
        with pytest.raises(Killed):
            download(server.url(PATH), part, policy=POLICY, on_bytes=kill_at(len(data)), sleep=delays.append)
        assert json.loads(sidecar(part).read_text())["total"] is None
        result = download(server.url(PATH), part, policy=POLICY, sleep=delays.append)
        last = server.requests[-1]
    assert (last.status, last.headers["Range"], last.body_bytes) == (range_at_end, f"bytes={len(data)}-", 0)
    assert (result.size, result.transferred) == (len(data), 0)
    assert part.read_bytes() == data


def test_progress_callbacks_and_log_lines_carry_sane_numbers(part, caplog):
    data = payload(600_000)
    reports, counted = [], []
    with FileServer({PATH: data}) as server:
        server.faults(PATH).throttle_bps = 1_000_000
        download(server.url(PATH + SECRET_URL_QUERY), part, policy=DownloadPolicy(progress_interval=0.1),
                 on_progress=reports.append, on_bytes=counted.append)
    assert sum(counted) == len(data)
    assert 3 <= len(reports) <= 10  # one per 0.1 s of ~0.6 s, plus the final one
    assert [r.received for r in reports] == sorted(r.received for r in reports)
    assert all(r.total == len(data) and 0 < r.rate_bps < 2_000_000 for r in reports)
    assert all(r.eta_seconds is not None and r.eta_seconds < 5 for r in reports)
    assert (reports[-1].received, reports[-1].eta_seconds) == (len(data), 0.0)
    lines = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert len(lines) == len(reports) - 1 and "%" in lines[0] and f"of {len(data)} bytes" in lines[0]
    assert not leaks_secret(Exception(), caplog)


RANGED = DownloadPolicy(connect_timeout=2.0, read_timeout=2.0, progress_interval=60.0, range_bytes=256 * 1024)


def test_ranged_transfer_asks_for_bounded_ranges_and_sends_every_byte_once(part, delays):
    data = payload(MiB + 1000)
    with FileServer({PATH: data}) as server:
        result = download(server.url(PATH), part, expected_size=len(data), policy=RANGED, sleep=delays.append)
        etag = server.etag(PATH)
        requests = [(r.status, r.headers.get("Range"), r.headers.get("If-Range")) for r in server.requests]
        sent = server.bytes_sent
    step = RANGED.range_bytes
    assert requests == [(206, f"bytes=0-{step - 1}", None)] + [
        (206, f"bytes={i * step}-{min((i + 1) * step, len(data)) - 1}", etag) for i in range(1, 5)
    ]
    assert part.read_bytes() == data and sent == len(data)
    assert (result.transferred, result.restarts, result.etag) == (len(data), 0, etag)
    assert delays == []


def test_a_range_cut_short_is_retried_from_the_byte_it_stopped_at(part, delays):
    data = payload(MiB)
    with FileServer({PATH: data}) as server:
        server.faults(PATH).drop_after = 100 * 1024  # every response dies after 100 KiB
        server.faults(PATH).drop_every = True
        download(server.url(PATH), part, policy=replace(RANGED, max_attempts=2), sleep=delays.append)
        ranges = [r.headers.get("Range") for r in server.requests]
        sent = server.bytes_sent
    assert part.read_bytes() == data and sent == len(data)  # no byte sent twice
    # each retry asks for a whole range again, from the first byte it does not have
    assert ranges[:3] == ["bytes=0-262143", "bytes=102400-364543", "bytes=204800-466943"]


def test_a_server_without_range_support_still_completes_in_ranged_mode(part, delays):
    data = payload(600 * 1024)
    with FileServer({PATH: data}) as server:
        server.faults(PATH).ignore_range = True
        download(server.url(PATH), part, policy=RANGED, sleep=delays.append)
        statuses = [r.status for r in server.requests]
    assert part.read_bytes() == data and statuses == [200]


def test_the_deadline_pauses_the_transfer_and_keeps_the_part_file_to_resume(part, delays):
    data = payload(2 * MiB)
    with FileServer({PATH: data}) as server:
        server.faults(PATH).throttle_bps = 2 * MiB  # ~1 s for the whole blob
        with pytest.raises(DownloadError) as caught:
            download(server.url(PATH), part, policy=RANGED, deadline=time.monotonic() + 0.3)
        paused_at = part.stat().st_size
        assert caught.value.reason == "window_closed" and caught.value.retryable
        assert 0 < paused_at < len(data) and sidecar(part).exists()
        server.faults(PATH).throttle_bps = None
        result = download(server.url(PATH), part, policy=RANGED, sleep=delays.append)
    assert part.read_bytes() == data and result.resumed_from == paused_at


def test_a_deadline_already_passed_sends_no_request(part, delays):
    with FileServer({PATH: payload(1000)}) as server:
        with pytest.raises(DownloadError) as caught:
            download(server.url(PATH), part, policy=RANGED, deadline=time.monotonic() - 1)
        assert server.requests == [] and caught.value.reason == "window_closed"
