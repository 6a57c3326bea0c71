"""What a native library writes to stderr while it loads a model, sorted before it is shown.

LiteRT writes straight to file descriptor 2 (C ``stderr``), bypassing Python logging:
"Created TensorFlow Lite XNNPACK delegate", an INFO line per accelerator it registers,
"NPU/GPU accelerator could not be loaded" on a CPU-only device. An operator reads those
as faults, and LiteRT 2.x offers no way to quiet them. So the calls that print are run
inside :func:`sorted_native_stderr`: descriptor 2 points at a temporary file for the
duration, then the file is read back and each line either logged at debug (the
non-actionable lines, :func:`is_actionable`) or written to the real stderr unchanged,
so a real error ("ERROR: Didn't find op ...", a corrupt model) is still shown as printed.

Another thread that writes to stderr during the window is not lost: its lines are held
in the file and shown, unchanged, when the window closes (a model load: milliseconds to
a second). Windows are serialised by a lock because descriptor 2 is process-wide. What
a crash inside the window printed is lost with the process.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from typing import Iterator

log = logging.getLogger("twinfer.native")

STDERR = 2
# What says nothing an operator can act on; anything else is shown as printed. LiteRT's
# and TFLite's informational level starts a line with this (this project's own log lines
# start with a time or "INFO twinfer", so a line another thread logs is never taken).
INFORMATIONAL = "INFO: "
# Warnings that only say the device has no NPU or GPU: models run on the CPU here.
ACCELERATOR_ABSENT = ("NPU accelerator could not be loaded", "GPU accelerator could not be loaded")

_window = threading.Lock()
_inside = threading.local()


def is_actionable(line: str) -> bool:
    return not (line.startswith(INFORMATIONAL) or any(absent in line for absent in ACCELERATOR_ABSENT))


def actionable_tail(stderr: bytes, lines: int = 3) -> list[str]:
    """The last lines a crashed child printed, without the runtime's informational ones:
    what an operator is shown as the reason."""
    return [line for line in stderr.decode(errors="replace").strip().splitlines() if is_actionable(line)][-lines:]


@contextlib.contextmanager
def sorted_native_stderr(source: str) -> Iterator[None]:
    """Run the body with descriptor 2 captured, then log or show what was written.

    ``source`` names the library in the debug lines ("litert"). A window opened inside
    another (same thread) is part of it."""
    if getattr(_inside, "open", False):
        yield
        return
    with _window, tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        saved = os.dup(STDERR)
        os.dup2(held.fileno(), STDERR)
        _inside.open = True
        try:
            yield
        finally:
            _inside.open = False
            sys.stderr.flush()
            os.dup2(saved, STDERR)
            os.close(saved)
            held.seek(0)
            for raw in held:
                line = raw.decode(errors="replace").rstrip("\n")
                if is_actionable(line):
                    os.write(STDERR, raw)
                else:
                    log.debug("%s: %s", source, line)
