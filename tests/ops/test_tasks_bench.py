"""The tasks benchmark (ops/bench/tasks.py) measures every task of the pool it serves."""
from __future__ import annotations

from ops.bench import tasks


def test_the_benchmark_measures_every_task_of_its_pool():
    pool = tasks.pool_contents()
    assert set(tasks.TASKS) == {*pool, tasks.DEFAULT} - {"pose-detector"}
