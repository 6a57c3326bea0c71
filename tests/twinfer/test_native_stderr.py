"""Native stderr is sorted, not swallowed (twinfer/native_stderr.py).

Each case runs in a fresh interpreter whose stderr the test reads: the window redirects
file descriptor 2 itself, which pytest's own capture would hide.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.paths import MODELS, PROJECT_ROOT
from twinfer.native_stderr import actionable_tail

pytestmark = pytest.mark.processes  # every test here starts processes

SETUP = """
import logging, os, sys, threading
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
from twinfer.native_stderr import sorted_native_stderr
"""


def run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run(
        [sys.executable, "-c", SETUP + code], env=env, capture_output=True, text=True, timeout=60, check=True
    )


def test_informational_lines_go_to_debug_and_errors_are_shown_as_written():
    done = run(
        """
with sorted_native_stderr("litert"):
    os.write(2, b"INFO: [environment.cc:36] Creating LiteRT environment with options\\n")
    os.write(2, b"WARNING: [npu_registry.cc:34] NPU accelerator could not be loaded and registered.\\n")
    os.write(2, b"ERROR: Didn't find op for builtin opcode 'FOO'\\n")
os.write(2, b"INFO: after the window\\n")
"""
    )
    assert done.stderr == "ERROR: Didn't find op for builtin opcode 'FOO'\nINFO: after the window\n"
    assert done.stdout.splitlines() == [
        "DEBUG twinfer.native: litert: INFO: [environment.cc:36] Creating LiteRT environment with options",
        "DEBUG twinfer.native: litert: WARNING: [npu_registry.cc:34] NPU accelerator could not be loaded and registered.",
    ]


def test_what_another_thread_logs_during_a_window_is_shown_afterwards_and_a_nested_window_is_one():
    done = run(
        """
logging.getLogger().handlers[0].setStream(sys.stderr)
log = logging.getLogger("twinfer.worker")
with sorted_native_stderr("litert"):
    with sorted_native_stderr("litert"):
        os.write(2, b"INFO: inner\\n")
    thread = threading.Thread(target=log.info, args=("served a request",))
    thread.start(), thread.join()
    os.write(2, b"INFO: outer\\n")
print("after", file=sys.stderr)
"""
    )
    assert done.stderr.splitlines() == [
        "DEBUG twinfer.native: litert: INFO: inner",
        "INFO twinfer.worker: served a request",  # in the order it was written
        "DEBUG twinfer.native: litert: INFO: outer",
        "after",
    ]


def test_opening_a_litert_model_prints_nothing_but_a_broken_one_still_raises():
    done = run(
        f"""
from pathlib import Path
from twinfer.engines.litert import open_interpreter
open_interpreter(Path({str(MODELS / 'blazeface_short_range.tflite')!r}), 1)
try:
    open_interpreter(Path({str(PROJECT_ROOT / 'README.md')!r}), 1)
except ValueError as exc:
    print("refused:", exc)
"""
    )
    assert done.stderr == ""
    assert "DEBUG twinfer.native: litert: INFO: Created TensorFlow Lite XNNPACK delegate for CPU." in done.stdout
    assert "refused: " in done.stdout


def test_a_crashed_childs_reason_skips_the_runtimes_informational_lines():
    stderr = b"Traceback (most recent call last):\nMemoryError\nINFO: [cpu_registry.cc:75] XNNPACK CPU accelerator registered.\n"
    assert actionable_tail(stderr, lines=2) == ["Traceback (most recent call last):", "MemoryError"]
