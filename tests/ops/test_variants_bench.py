"""The variants benchmark (ops/bench/variants.py) imports and explains how to run it."""
from __future__ import annotations

import pytest

from ops.bench import variants


def test_the_variants_benchmark_answers_help(capsys):
    with pytest.raises(SystemExit) as exited:
        variants.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert all(option in out for option in ("--rounds", "--duration", "--workers", "--json")), out
    assert "Run from the project root" in variants.__doc__
