"""The benchmarks of several models, variants and tasks (ops/bench/memory.py --pool,
model_pool.py, variants.py, tasks.py) import and explain how to run them."""
from __future__ import annotations

import pytest

from ops.bench import memory, model_pool, tasks, variants

SERVED = ["--rounds", "--duration", "--workers", "--json"]


@pytest.mark.parametrize(("script", "options"), [(memory, ["--pool", "--rounds", "--face-format", "--synthetic-mb"]),
                                                 (model_pool, ["--swaps", "--rounds", "--steady", "--add-rounds"]),
                                                 (variants, SERVED), (tasks, SERVED)])
def test_the_benchmarks_answer_help(script, options, capsys):
    with pytest.raises(SystemExit) as exited:
        script.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert all(option in out for option in options), out
    assert "Run from the project root" in script.__doc__
