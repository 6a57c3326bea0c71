"""glibc heap thresholds (twinfer/allocator.py): request buffers are reused, huge ones returned.

Each case runs in a fresh interpreter: thresholds are process-wide and depend on what the
process allocated before, which pytest's own process would blur.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.paths import PROJECT_ROOT
from twinfer import allocator

pytestmark = pytest.mark.processes  # every test here starts processes


# A gthread request in miniature: in a thread (its own malloc arena), allocate and touch
# the buffers a 640x480 request frees when it answers (decoded picture, resized copy, float
# input, the SSD model's 1917x601 float output), then free them; count page faults per
# round after a warm-up, and the RSS that two 20 MB pictures, one after the other, leave
# behind once freed (glibc left adaptive keeps the second on the heap). Transparent huge
# pages are off in the probe (numpy asks for them on big arrays): whether the kernel has
# a free 2 MiB page depends on the machine's load, and each one would hide 511 faults.
PROBE = r"""
import ctypes, json, resource, sys, threading
PR_SET_THP_DISABLE = 41
assert ctypes.CDLL(None).prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0
import numpy as np
setup = sys.argv[1]
if setup == "tuned":
    from twinfer import allocator
    assert allocator.tune_heap(), "mallopt refused"
elif setup == "mmap-only":  # the previous setting: trim threshold stays at 128 KiB
    ctypes.CDLL(None).mallopt(-3, 4 * 1024 * 1024)

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

def one_request():
    buffers = [np.ones(n, np.uint8) for n in (921_600, 270_000, 1_080_000, 4_606_668)]
    return sum(int(b[-1]) for b in buffers)

result = {}
def serve():
    for _ in range(20):
        one_request()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        one_request()
    result["faults_per_request"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 100
    base = rss()
    for _ in range(2):
        huge = np.ones(20 * 1024 * 1024, np.uint8)
        del huge
    result["rss_left_by_huge_mb"] = (rss() - base) / 2**20

thread = threading.Thread(target=serve)
thread.start()
thread.join()
print(json.dumps(result))
"""


def probe(setup: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in allocator.OPERATOR_VARIABLES and k != "GLIBC_TUNABLES"}
    environ.update(env, PYTHONPATH=str(PROJECT_ROOT))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, setup], env=environ, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout)


def test_tuned_heap_reuses_request_buffers_and_returns_a_huge_one():
    tuned = probe("tuned")
    assert tuned["faults_per_request"] < 20, tuned
    assert tuned["rss_left_by_huge_mb"] < 5, tuned


def test_the_two_ways_glibc_was_left_fail_the_probe():
    """The controls: the probe sees both problems the module's docstring describes."""
    mmap_only = probe("mmap-only")
    assert mmap_only["faults_per_request"] > 500, mmap_only
    adaptive = probe("adaptive")
    assert adaptive["rss_left_by_huge_mb"] > 10, adaptive


@pytest.mark.parametrize(
    "variable, value",
    [("MALLOC_TRIM_THRESHOLD_", "1048576"), ("MALLOC_MMAP_THRESHOLD_", "1048576"),
     ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576")],
)
def test_operator_settings_win(variable, value):
    assert allocator.operator_tuned({variable: value})
    code = "from twinfer import allocator; print(allocator.tune_heap())"
    environ = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), **{variable: value})
    done = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_no_operator_settings_by_default():
    assert not allocator.operator_tuned({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F", "PATH": "/bin"})
