"""Hypothesis settings for the fuzz tests: bounded and reproducible in CI."""
from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings


def fuzz(examples: int, shrink: bool = False) -> settings:
    """Bounded, reproducible runs. Shrinking is off where one example costs an HTTP round
    trip or a ZIP on disk (it can take minutes): the failing example is reported as found."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        phases=phases,
        suppress_health_check=list(HealthCheck),
    )
