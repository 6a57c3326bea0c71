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
        "decoder": entry.decoder,
        "score_threshold": entry.score_threshold,
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


def _or(value, missing: str = "-") -> str:
    return missing if value is None else str(value)


def _target(model: dict) -> str:
    target = model.get("target") or {}
    return f"{target.get('name')} {target.get('version')}" if target else "-"


def _twin_lines(twin: dict) -> list[str]:
    lines = []
    line = f"twin       model (the default): state {twin['state'] or '?'}"
    if twin.get("target"):
        line += f"  target {_target(twin)}"
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
    pool = twin.get("models") or []
    lines.append("")
    lines.append(f"twin models ({len(pool)} reported under models.<name>)")
    if pool:
        rows = []
        for m in pool:
            progress, rollout, error = m.get("progress") or {}, m.get("rollout") or {}, m.get("last_error")
            active = m.get("active") or {}
            rows.append([
                m["name"], m["state"] or "?", f"{active.get('version')} gen {active.get('generation')}" if active
                else "-", _target(m), _or(m.get("desired_version")),
                f"{progress.get('percent')}%" if progress else "-",
                f"{rollout.get('workers_on_new')}/{rollout.get('workers')}" if rollout else "-",
                _or(m.get("updated_at"), "?"),
                f"{error.get('reason')}: {error.get('message')}" if error else "-",
            ])
        lines += _table(["NAME", "STATE", "ACTIVE", "TARGET", "DESIRED $VERSION", "DOWNLOAD", "ROLLOUT",
                         "REPORTED AT", "LAST ERROR"], rows)
    return lines


def _worker_rows(worker: dict) -> list[list[str]]:
    error = worker["last_error"]
    rows = []
    for m in worker["models"]:
        mine = error if error and error.get("model") == m["name"] else None
        rows.append([worker["pid"], m["name"], _or(m["generation"]), _or(m["version"]),
                     m["loaded_at"] or "loading", _error_text(mine)])
    if error and error.get("model") not in {m["name"] for m in worker["models"]}:
        rows.append([worker["pid"], error.get("model") or "?", "-", "-", "not loaded", _error_text(error)])
    if not rows:
        rows.append([worker["pid"], "-", "-", "-", "loading", "-"])
    return rows


def render(status: dict) -> str:
    lines = [f"store      {status['store']}" + ("" if status["store_exists"] else "  (does not exist)")]
    active = status["active"]
    if status["manifest_error"]:
        lines.append(f"default    ? ({status['manifest_error']})")
    elif not status["models"]:
        lines.append("default    none: nothing published yet (the service stages the bundled model at start)")
    elif active is None:
        lines.append(f"default    none: the manifest names {status['default']!r}, which it does not hold")
    else:
        threshold = active["score_threshold"] if active["score_threshold"] is not None else "bundle default"
        lines.append(f"default    {active['name']} {active['version']}  generation {active['generation']}  "
                     f"{active['format']}  decoder {active['decoder']}  threshold {threshold}")
        lines.append(f"published  {active['published_at']}" + ("" if active["present"] else
                                                              f"  (missing: {active['directory']})"))
    if status["models"]:
        lines.append("")
        lines.append(f"models ({len(status['models'])} in the manifest, generation {status['manifest_generation']};"
                     f" * the default model)")
        lines += _table(
            ["", "NAME", "VERSION", "GENERATION", "FORMAT", "DECODER", "THRESHOLD", "PUBLISHED AT", "PRESENT",
             "STAGED"],
            [["*" if m["default"] else "", m["name"], m["version"], m["generation"], m["format"], m["decoder"],
              _or(m["score_threshold"], "bundle"), m["published_at"],
              "yes" if m["present"] else f"MISSING {m['directory']}", ", ".join(m["staged_versions"]) or "-"]
             for m in status["models"]],
        )
    twin = status["twin"]
    if twin is not None:
        lines.append("")
        lines += [f"twin       {twin['error']}"] if "error" in twin else _twin_lines(twin)
    lines.append("")
    lines.append(f"staged versions ({len(status['versions'])}; * served)")
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
            ["MODEL", "VERSION", "FILE", "BYTES", "OF", "PERCENT"],
            [[_or(d["name"], "?"), _or(d["version"], "?"), d["file"], d["bytes"], _or(d["total"], "?"),
              _or(d["percent"], "?")] for d in status["downloads"]],
        )
    lines.append("")
    idle = "" if status["workers"] else ": the service is not serving"
    lines.append(f"workers ({len(status['workers'])} live){idle}")
    if status["workers"]:
        lines += _table(["PID", "MODEL", "GENERATION", "VERSION", "LOADED AT", "LAST ERROR"],
                        [row for w in status["workers"] for row in _worker_rows(w)])
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
