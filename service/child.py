"""Run one supervisor job in a fresh interpreter and read its verdict.

Validating a downloaded model and preparing its host artifact load model runtimes that
may crash, hang or take a big model's memory; a child process keeps all of that out of
the supervisor. Each job prints its verdict as its last JSON line on stdout; what it
printed on stderr is kept only as far as an operator can act on it.

Jobs run at a lower CPU priority (``JOB_NICENESS``): a gateway serves while it updates,
and on two cores an update's validation and host-artifact build would otherwise take a
core from the workers at saturation (``ops/bench/model_pool.py``).
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

from service.settings import PROJECT_ROOT
from twinfer.native_stderr import actionable_tail

JOB_NICENESS = 5
# ``python -c`` then ``-m``'s own semantics: the job's ``__main__`` with the job's arguments.
_NICE_THEN_RUN = "import os, runpy, sys; os.nice({n}); runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"


class ChildTimeout(Exception):
    """The job did not finish in time (the child was killed)."""


@dataclass(frozen=True)
class ChildOutcome:
    returncode: int
    verdict: dict | None  # the last JSON object printed on stdout; None: the job printed none
    stderr_tail: tuple[str, ...]  # the lines of stderr worth showing (``actionable_tail``)

    def crash_summary(self) -> str:
        return f"exit {self.returncode}: {' | '.join(self.stderr_tail)}"


def run_job(module: str, args: list[str], timeout: float) -> ChildOutcome:
    """``python -m module *args``, niced, with the package importable (a checkout or an install)."""
    command = [sys.executable, "-c", _NICE_THEN_RUN.format(n=JOB_NICENESS), module, *args]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout, cwd=PROJECT_ROOT)
    except subprocess.TimeoutExpired:
        raise ChildTimeout(f"did not finish in {timeout:.0f} s") from None
    verdict = None
    for line in reversed(done.stdout.decode(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                verdict = json.loads(line)
            except json.JSONDecodeError:
                pass
            break
    return ChildOutcome(done.returncode, verdict if isinstance(verdict, dict) else None,
                        tuple(actionable_tail(done.stderr)))
