"""The tasks benchmark (ops/bench/tasks.py) imports, explains how to run it, and builds
its four-face picture and its pool from the fixtures."""
from __future__ import annotations

import pytest

from ops.bench import tasks


def test_the_tasks_benchmark_answers_help(capsys):
    with pytest.raises(SystemExit) as exited:
        tasks.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert all(option in out for option in ("--rounds", "--duration", "--workers", "--json")), out
    assert "Run from the project root" in tasks.__doc__


def test_the_benchmark_measures_every_task_of_its_pool():
    pool = tasks.pool_contents()
    assert set(tasks.TASKS) == {*pool, tasks.DEFAULT} - {"pose-detector"}
