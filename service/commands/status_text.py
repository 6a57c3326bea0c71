"""``status``'s human output: the dictionary ``service.commands.status.collect`` reads from
the store, as aligned text for someone on the device (``--json`` prints the dictionary)."""
from __future__ import annotations


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
    if twin.get("variant"):
        lines += _variant_lines(twin["variant"])
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


def _variant_lines(variant: dict) -> list[str]:
    """Which of the twin's variants was chosen, on what CPU, and what was passed over."""
    verification = variant.get("verification") or {}
    checked = f"  verified here: F1 {verification.get('f1')}" if verification else ""
    lines = [f"variant    {variant.get('name') or '-'}{checked}  ({variant.get('cpu')})"]
    for rejected in variant.get("rejected") or []:
        lines.append(f"  rejected {rejected.get('variant')}: {rejected.get('reason')}: {rejected.get('message')}")
    lines += [f"  skipped  {s.get('variant')}: {s.get('why')}" for s in variant.get("skipped") or []]
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
        variant = f"  variant {active['variant']}" if active["variant"] else ""
        lines.append(f"default    {active['name']} {active['version']}  generation {active['generation']}  "
                     f"{active['format']}{variant}  {active['task']} ({active['decoder']})  threshold {threshold}")
        lines.append(f"published  {active['published_at']}" + ("" if active["present"] else
                                                              f"  (missing: {active['directory']})"))
    if status["models"]:
        lines.append("")
        lines.append(f"models ({len(status['models'])} in the manifest, generation {status['manifest_generation']};"
                     f" * the default model)")
        lines += _table(
            ["", "NAME", "VERSION", "GENERATION", "FORMAT", "TASK", "DECODER", "THRESHOLD", "PUBLISHED AT",
             "PRESENT", "STAGED"],
            [["*" if m["default"] else "", m["name"], m["version"], m["generation"], m["format"], m["task"], m["decoder"],
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
