"""``python -m service status``: what the store says, for someone on the device.

Reads only files (manifest, store/models, partial downloads, the workers' state files,
the local twin's reported properties), each written atomically by the service, so it
works while the service runs (nothing is locked or changed) and when it does not.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from twinfer.store_layout import StoreLayout, store_from_env

NAME = "status"
HELP = "show the active model, staged versions, downloads, workers and the twin's model state"
DESCRIPTION = (
    "Read the model store ($TWINFER_STORE, default ./var) and show the active model from the manifest, the "
    "versions staged in store/models (sizes, which one is active), partial downloads in "
    "store/staging/downloads, the live workers (pid, generation, version, loaded at, last error) and the local "
    "twin's reported `model` state. Works whether the service runs or not; changes nothing."
)
EPILOG = (
    "examples:\n"
    "  python -m service status\n"
    "  TWINFER_STORE=/iotedge/storage python -m service status --json\n"
    "  docker exec twinfer python -m service status   # on an IoT Edge device (container = module name)"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, help="store directory (default: $TWINFER_STORE, else ./var)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


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


def _manifest(store: Path) -> tuple[dict | None, str | None]:
    from twinfer.manifest import read_manifest

    try:
        manifest = read_manifest(store)
    except (OSError, ValueError, TypeError) as exc:
        return None, f"manifest unreadable: {exc}"
    if manifest is None:
        return None, None
    return {
        "name": manifest.name,
        "version": manifest.version,
        "generation": manifest.generation,
        "format": manifest.format,
        "decoder": manifest.decoder,
        "score_threshold": manifest.score_threshold,
        "directory": manifest.directory,
        "published_at": _iso(manifest.published_at),
        "present": manifest.model_dir(store).is_dir(),
    }, None


def _versions(store: Path, active_dir: str | None) -> list[dict]:
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
                "active": relative == active_dir,
            })
    return found


def _downloads(store: Path) -> list[dict]:
    downloads = StoreLayout(store).downloads
    found = []
    try:
        parts = sorted(downloads.glob("*.part"))
    except OSError:
        return found
    for part in parts:
        try:
            have = part.stat().st_size
        except FileNotFoundError:
            continue
        total = None
        try:
            total = json.loads(Path(str(part) + ".json").read_text(encoding="utf-8")).get("total")
        except (OSError, ValueError, AttributeError):
            pass
        found.append({
            "file": part.name,
            "bytes": have,
            "total": total if isinstance(total, int) else None,
            "percent": round(100.0 * have / total, 1) if isinstance(total, int) and total > 0 else None,
        })
    return found


def _workers(store: Path) -> list[dict]:
    from twinfer.worker_state import read_states

    try:
        states = read_states(store)
    except (OSError, TypeError, ValueError):
        return []
    return [
        {
            "pid": state.pid,
            "generation": state.generation,
            "name": state.name,
            "version": state.version,
            "loaded_at": _iso(state.loaded_at),
            "shared_weights": state.shared_weights,
            "last_error": {**state.last_error, "at": _iso(state.last_error.get("at"))} if state.last_error else None,
        }
        for state in states
    ]


def _reported(store: Path) -> dict | None:
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
    return {
        "state": model.get("state"),
        "last_error": model.get("last_error"),
        "target": model.get("target"),
        "progress": model.get("progress"),
        "rollout": model.get("rollout"),
        "desired_version": model.get("desired_version"),
        "updated_at": model.get("updated_at"),
        "latest_file_name": reported.get("LatestAIModelFileName"),
    }


def collect(store: Path) -> dict:
    manifest, manifest_error = _manifest(store)
    return {
        "store": str(store),
        "store_exists": store.is_dir(),
        "checked_at": _iso(time.time()),
        "active": manifest,
        "manifest_error": manifest_error,
        "versions": _versions(store, manifest["directory"] if manifest else None),
        "downloads": _downloads(store),
        "workers": _workers(store),
        "twin": _reported(store),
    }


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]


def render(status: dict) -> str:
    lines = [f"store      {status['store']}" + ("" if status["store_exists"] else "  (does not exist)")]
    active = status["active"]
    if status["manifest_error"]:
        lines.append(f"active     ? ({status['manifest_error']})")
    elif active is None:
        lines.append("active     none: nothing published yet (the service stages the bundled model at start)")
    else:
        threshold = active["score_threshold"] if active["score_threshold"] is not None else "bundle default"
        lines.append(f"active     {active['name']} {active['version']}  generation {active['generation']}  "
                     f"{active['format']}  decoder {active['decoder']}  threshold {threshold}")
        lines.append(f"published  {active['published_at']}" + ("" if active["present"] else
                                                              f"  (missing: {active['directory']})"))
    twin = status["twin"]
    if twin is not None:
        if "error" in twin:
            lines.append(f"twin       {twin['error']}")
        else:
            target = twin.get("target") or {}
            line = f"twin       state {twin['state'] or '?'}"
            if target:
                line += f"  target {target.get('name')} {target.get('version')}"
            if twin.get("desired_version") is not None:
                line += f"  desired $version {twin['desired_version']}"
            lines.append(line + f"  (reported {twin['updated_at'] or '?'})")
            progress, rollout = twin.get("progress"), twin.get("rollout")
            if progress:
                lines.append(f"download   {_size(progress.get('bytes'))} of {_size(progress.get('total'))}"
                             f"  {progress.get('percent')}%  {progress.get('rate_bps')} B/s"
                             f"  eta {progress.get('eta_s')} s")
            if rollout:
                lines.append(f"rollout    generation {rollout.get('generation')}: {rollout.get('workers_on_new')} of "
                             f"{rollout.get('workers')} workers  complete {rollout.get('complete')}")
            error = twin.get("last_error")
            if error:
                lines.append(f"last error {error.get('reason')}: {error.get('message')} (at {error.get('at')})")
    lines.append("")
    lines.append(f"staged versions ({len(status['versions'])})")
    if status["versions"]:
        lines += _table(
            ["", "NAME", "VERSION", "SIZE", "BYTES", "STAGED AT"],
            [["*" if v["active"] else "", v["name"], v["version"], _size(v["bytes"]), v["bytes"], v["staged_at"]]
             for v in status["versions"]],
        )
    lines.append("")
    lines.append(f"partial downloads ({len(status['downloads'])})")
    if status["downloads"]:
        lines += _table(
            ["FILE", "BYTES", "OF", "PERCENT"],
            [[d["file"], d["bytes"], d["total"] if d["total"] is not None else "?",
              d["percent"] if d["percent"] is not None else "?"] for d in status["downloads"]],
        )
    lines.append("")
    idle = "" if status["workers"] else ": the service is not serving"
    lines.append(f"workers ({len(status['workers'])} live){idle}")
    if status["workers"]:
        lines += _table(
            ["PID", "GENERATION", "VERSION", "LOADED AT", "LAST ERROR"],
            [[w["pid"], w["generation"] if w["generation"] is not None else "-", w["version"] or "-",
              w["loaded_at"] or "loading", _error_text(w["last_error"])] for w in status["workers"]],
        )
    return "\n".join(lines)


def _error_text(error: dict | None) -> str:
    if not error:
        return "-"
    return f"generation {error.get('generation')}: {error.get('message')} (at {error.get('at')})"


def run(args: argparse.Namespace) -> int:
    store = args.store.resolve() if args.store else store_from_env()
    status = collect(store)
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0
