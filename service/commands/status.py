"""``python -m service status``: what the store says, for someone on the device.

Reads only files (the manifest's models, store/models, partial downloads per model, the
workers' state files, the local twin's reported ``model`` and ``models.<name>``), each
written atomically by the service, so it works while the service runs (nothing is locked
or changed) and when it does not.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from service.commands.status_text import render
from twinfer.decoders import task_of
from twinfer.store_layout import StoreLayout, store_from_env

NAME = "status"
HELP = "show every model of the pool, staged versions, downloads, workers and the twin's model states"
DESCRIPTION = (
    "Read the model store ($TWINFER_STORE, default ./var) and show every model of the manifest (name, version, "
    "generation, the default one marked *, whether its directory is present), the versions staged in "
    "store/models per model (sizes, which ones are served), partial downloads in store/staging/downloads "
    "(per model and version), the live workers (pid, each model's generation and version, loaded at, last "
    "error) and the local twin's reported `model` (the default model) and `models.<name>` states. Works "
    "whether the service runs or not; changes nothing. --json prints the same as one object: `models` lists "
    "the manifest's models, `active` is the default model's record."
)
EPILOG = (
    "examples:\n"
    "  python -m service status\n"
    "  TWINFER_STORE=/iotedge/storage python -m service status --json\n"
    "  docker exec twinfer python -m service status   # on an IoT Edge device (container = module name)"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, help="store directory (default: $TWINFER_STORE, else ./var)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON instead of tables (models: every model of the manifest; active: the "
                             "default model's)")

def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _tree_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # pruned meanwhile
                pass
    return total


def _entry_record(store: Path, entry, default: str | None) -> dict:
    return {
        "name": entry.name,
        "version": entry.version,
        "generation": entry.generation,
        "format": entry.format,
        "task": task_of(entry.decoder),
        "decoder": entry.decoder,
        "score_threshold": entry.score_threshold,
        "variant": entry.variant,
        "directory": entry.directory,
        "published_at": _iso(entry.published_at),
        "present": entry.model_dir(store).is_dir(),
        "default": entry.name == default,
    }


def _manifest(store: Path) -> tuple[dict | None, str | None]:
    """{"generation", "default", "models": [record, ...] (the default first)}, or an error."""
    from twinfer.manifest import read_manifest

    try:
        manifest = read_manifest(store)
        if manifest is None:
            return None, None
        records = [_entry_record(store, entry, manifest.default) for entry in manifest.models.values()]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        return None, f"manifest unreadable: {exc}"
    records.sort(key=lambda r: (not r["default"], r["name"]))
    return {"generation": manifest.generation, "default": manifest.default, "models": records}, None


def _versions(store: Path, served: dict[str, str]) -> list[dict]:
    """Every staged version; ``served``: directory -> model name, of the manifest's entries."""
    models = StoreLayout(store).models
    found = []
    try:
        name_dirs = sorted(p for p in models.iterdir() if p.is_dir())
    except FileNotFoundError:
        return found
    for name_dir in name_dirs:
        try:
            version_dirs = sorted(p for p in name_dir.iterdir() if p.is_dir())
        except FileNotFoundError:
            continue
        for version_dir in version_dirs:
            relative = version_dir.relative_to(store).as_posix()
            try:
                modified = version_dir.stat().st_mtime
            except FileNotFoundError:
                continue
            found.append({
                "name": name_dir.name,
                "version": version_dir.name,
                "directory": relative,
                "bytes": _tree_size(version_dir),
                "staged_at": _iso(modified),
                "active": relative in served,  # served by the manifest (the default model or another)
            })
    return found


def _download(part: Path, file: str, name: str | None, version: str | None) -> dict | None:
    try:
        have = part.stat().st_size
    except FileNotFoundError:
        return None
    total = None
    try:
        total = json.loads(Path(str(part) + ".json").read_text(encoding="utf-8")).get("total")
    except (OSError, ValueError, AttributeError):
        pass
    total = total if isinstance(total, int) and not isinstance(total, bool) else None
    return {
        "file": file,
        "name": name,
        "version": version,
        "bytes": have,
        "total": total,
        "percent": round(100.0 * have / total, 1) if total else None,
    }


def _downloads(store: Path, known_names: set[str]) -> list[dict]:
    """``downloads/<name>/<version>.part``, and the flat ``<name>-<version>.part`` of earlier
    releases (its name told apart from the version by the models the store knows, else None)."""
    downloads = StoreLayout(store).downloads
    found = []
    try:
        nested = sorted(downloads.glob("*/*.part"))
        flat = sorted(downloads.glob("*.part"))
    except OSError:
        return found
    for part in nested:
        found.append(_download(part, part.relative_to(downloads).as_posix(), part.parent.name, part.stem))
    for part in flat:
        stem = part.stem
        name = max((n for n in known_names if stem.startswith(n + "-") and len(stem) > len(n) + 1),
                   key=len, default=None)
        found.append(_download(part, part.name, name, stem[len(name) + 1:] if name else None))
    return [d for d in found if d is not None]


def _workers(store: Path, default: str | None) -> list[dict]:
    from twinfer.worker_state import read_states

    try:
        states = read_states(store)
    except (OSError, TypeError, ValueError):
        return []
    workers = []
    for state in states:
        models = [
            {"name": name, "generation": loaded.get("generation"), "version": loaded.get("version"),
             "loaded_at": _iso(loaded.get("loaded_at")), "shared_weights": loaded.get("shared_weights")}
            for name, loaded in sorted((state.models or {}).items()) if isinstance(loaded, dict)
        ]
        serving_default = next((m for m in models if m["name"] == default), {})
        error = state.last_error if isinstance(state.last_error, dict) else None
        workers.append({
            "pid": state.pid,
            # The default model's, as before the pool (a worker loading it shows None):
            "name": serving_default.get("name"),
            "generation": serving_default.get("generation"),
            "version": serving_default.get("version"),
            "loaded_at": serving_default.get("loaded_at"),
            "shared_weights": serving_default.get("shared_weights"),
            "models": models,
            "last_error": {**error, "at": _iso(error.get("at"))} if error else None,
        })
    return workers


def _model_state(model: dict) -> dict:
    return {
        "state": model.get("state"),
        "last_error": model.get("last_error"),
        "target": model.get("target"),
        "active": model.get("active"),
        "progress": model.get("progress"),
        "rollout": model.get("rollout"),
        "desired_version": model.get("desired_version"),
        "updated_at": model.get("updated_at"),
        "variant": model.get("variant"),
    }


def _reported(store: Path) -> dict | None:
    """The reported ``model`` (the default model: its fields at the top, as before the pool)
    and every ``models.<name>`` (a removed model's entry is null, or gone)."""
    from service.twin.local import REPORTED_FILE

    path = StoreLayout(store).twin / REPORTED_FILE
    try:
        reported = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"error": f"{path} unreadable: {exc}"}
    if not isinstance(reported, dict):
        return {"error": f"{path} does not hold an object"}
    model = reported.get("model") if isinstance(reported.get("model"), dict) else {}
    pool = reported.get("models") if isinstance(reported.get("models"), dict) else {}
    return {
        **_model_state(model),
        "latest_file_name": reported.get("LatestAIModelFileName"),
        "models": [{"name": name, **_model_state(value)} for name, value in sorted(pool.items())
                   if isinstance(value, dict)],
    }


def collect(store: Path) -> dict:
    manifest, manifest_error = _manifest(store)
    records = manifest["models"] if manifest else []
    default = manifest["default"] if manifest else None
    versions = _versions(store, {r["directory"]: r["name"] for r in records})
    for record in records:
        record["staged_versions"] = [v["version"] for v in versions if v["name"] == record["name"]]
    twin = _reported(store)
    known = {r["name"] for r in records} | {v["name"] for v in versions}
    known |= {m["name"] for m in (twin or {}).get("models", [])}
    return {
        "store": str(store),
        "store_exists": store.is_dir(),
        "checked_at": _iso(time.time()),
        "manifest_generation": manifest["generation"] if manifest else None,
        "default": default,
        "active": next((r for r in records if r["default"]), None),  # the default model's record
        "models": records,
        "manifest_error": manifest_error,
        "versions": versions,
        "downloads": _downloads(store, known),
        "workers": _workers(store, default),
        "twin": twin,
    }


def run(args: argparse.Namespace) -> int:
    store = args.store.resolve() if args.store else store_from_env()
    status = collect(store)
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0
