"""The memory budget: how many bytes of models one worker may hold, all models together.

Weights are memory-mapped and shared by the workers, so a model's cost is counted once
per host: the size of its model file (``weights_bytes``). A version replacing one of the
same name is counted instead of it (the swap holds both only for a moment, one worker at
a time). The updater checks a desired model twice: before the download with the twin's
``size`` (nothing is fetched for a model that cannot fit), and when it publishes, under
the manifest's lock, with the staged model's real size (two models arriving at once
cannot both squeeze in). A refusal names the numbers and leaves the pool as it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.update import failures
from service.update.failures import UpdateFailed
from twinfer.loader import ModelLoadError, find_model_file
from twinfer.manifest import Manifest

MIB = 1024 * 1024
SETTING = "TWINFER_MODEL_MEMORY_BUDGET"


def weights_bytes(directory: Path) -> int:
    """The bytes a loaded model maps: its model file (0 if the version is gone)."""
    try:
        return find_model_file(directory).stat().st_size
    except (FileNotFoundError, ModelLoadError):
        return 0


def _mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB"


@dataclass(frozen=True)
class MemoryBudget:
    limit: int | None  # bytes; None: no cap

    def check(self, store: Path, manifest: Manifest | None, name: str, version: str, size: int) -> None:
        """Raise ``memory_budget`` if ``name`` at ``size`` bytes does not fit beside the others."""
        if self.limit is None:
            return
        others = {
            entry.name: weights_bytes(entry.model_dir(store))
            for entry in (manifest.models.values() if manifest else ()) if entry.name != name
        }
        total = size + sum(others.values())
        if total <= self.limit:
            return
        held = ", ".join(f"{n} {_mib(b)}" for n, b in sorted(others.items())) or "none"
        raise UpdateFailed(
            failures.MEMORY_BUDGET,
            f"{name} {version} needs {_mib(size)} of weights; the other models serving hold "
            f"{_mib(sum(others.values()))} ({held}); together {_mib(total)}, over {SETTING} of {_mib(self.limit)}: "
            f"raise {SETTING} or remove a model (models.<name>: null)",
        )
