"""Prepare a model version's host artifact, so workers share its weights.

Run by the supervisor only (validation child, and at start-up for the active model);
workers never write under ``.host/``. See ``twinfer.engines.artifacts`` for the layout.

Format-agnostic: each runtime's plugin (``twinfer.engines.base.Runtime.build_artifact``)
writes its files (ONNX: the model optimised for this host with its weights in an external
file; TFLite: XNNPACK's packed-weight cache), and opens the result the way workers do.

The candidate is built in a temporary directory, loaded the way workers load it, and its
outputs compared with the original model's on the warm-up picture and on a fixed noise
picture (at most ``TOLERANCE`` apart, integer outputs equal); only then is the ``ready``
marker written and the directory renamed into place. Any failure leaves no artifact and
logs a warning: workers then load the original model, as before. Preparation never
fails staging, and it runs in a child process so a runtime that crashes (or the memory
a big model takes while being optimised) stays out of the caller.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from service.child import ChildTimeout, run_job
from twinfer.engines import EngineOptions, Runtime, format_of, runtime
from twinfer.engines.artifacts import (
    ArtifactError,
    HostArtifact,
    artifact_files,
    check_artifact,
    cpu_identity,
    file_sha256,
    fsync_dir,
    host_artifact_dir,
    host_key,
    runtime_version,
    write_ready_marker,
)
from twinfer.store_layout import HOST_DIR

log = logging.getLogger("twinfer.optimize")

TOLERANCE = 1e-5  # largest absolute difference accepted between original and prepared outputs
PREPARE_TIMEOUT = 900.0
_REFERENCE_OPTIONS = EngineOptions(intra_op_threads=1, use_host_artifacts=False)
_CANDIDATE_OPTIONS = EngineOptions(intra_op_threads=1)


class PrepareError(Exception):
    pass


@dataclass(frozen=True)
class PreparedArtifacts:
    """The outcome: ``directory`` is the host artifact workers will use, or None (``reason``)."""

    model_dir: str
    format: str | None
    key: str | None
    directory: str | None
    created: bool = False  # False: an existing complete artifact was kept
    bit_identical: bool | None = None
    max_abs_diff: float | None = None
    bytes: int | None = None  # size of the artifact's files
    seconds: float = 0.0
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.directory is not None


# --- the public entry points ---------------------------------------------------------


def prepare_host_artifacts(model_dir: Path, *, isolate: bool = True, timeout: float = PREPARE_TIMEOUT) -> PreparedArtifacts:
    """Make sure ``model_dir`` has a complete host artifact for this host; never raises.

    ``isolate`` runs the work in a fresh interpreter (``python -m service.optimize``)."""
    model_dir = Path(model_dir)
    result = _prepare(model_dir) if not isolate else _prepare_in_child(model_dir, timeout)
    if result.ok:
        log.info(
            "%s: host artifact %s %s (%s MB, outputs %s, %.1f s)",
            model_dir, result.directory, "prepared" if result.created else "present",
            (result.bytes or 0) // 1_000_000,
            "bit-identical" if result.bit_identical else f"max |diff| {result.max_abs_diff:.3g}", result.seconds,
        )
    else:
        log.warning(
            "no shared-weights artifact for %s: %s; workers load the original model (one copy of the weights each)",
            model_dir, result.reason,
        )
    return result


def _prepare_in_child(model_dir: Path, timeout: float) -> PreparedArtifacts:
    started = time.monotonic()
    try:
        done = run_job("service.optimize", [str(model_dir.resolve())], timeout)
        result = PreparedArtifacts(**done.verdict) if done.verdict is not None else None
        if result is None or done.returncode != 0:
            result = _failed(model_dir, started, f"preparation crashed ({done.crash_summary()})")
    except ChildTimeout as exc:
        result = _failed(model_dir, started, f"preparation {exc}")
    except TypeError as exc:
        result = _failed(model_dir, started, f"preparation gave no verdict: {exc}")
    if not result.ok:
        _remove_leftovers(model_dir)
    return result


def ensure_host_artifacts(model_dir: Path, *, isolate: bool = True) -> PreparedArtifacts:
    """Start-up: prepare the artifact when this host has no complete one (e.g. the image
    upgrade changed the runtime version, or the store moved to another CPU); a complete
    one is checked here, without starting a child. Never raises."""
    started = time.monotonic()
    try:
        from twinfer.loader import find_model_file

        model_path = find_model_file(Path(model_dir))
        target = host_artifact_dir(model_path)
        existing = check_artifact(target, model_path)
        check = existing.marker.get("check", {})
        return PreparedArtifacts(
            str(model_dir), existing.format, existing.key, str(existing.directory), created=False,
            bit_identical=check.get("bit_identical"), max_abs_diff=check.get("max_abs_diff"),
            bytes=_artifact_bytes(existing), seconds=round(time.monotonic() - started, 3),
        )
    except Exception:  # missing, stale or broken: prepared (or the reason logged) below
        return prepare_host_artifacts(model_dir, isolate=isolate)


# --- the work ----------------------------------------------------------------------


def _failed(model_dir: Path, started: float, reason: str, fmt: str | None = None, key: str | None = None) -> PreparedArtifacts:
    return PreparedArtifacts(str(model_dir), fmt, key, None, seconds=round(time.monotonic() - started, 3), reason=reason)


def _prepare(model_dir: Path) -> PreparedArtifacts:
    started = time.monotonic()
    fmt = key = None
    tmp: Path | None = None
    try:
        from twinfer.loader import find_model_file

        model_path = find_model_file(model_dir)
        fmt = format_of(model_path)
        plugin = runtime(fmt)
        key = host_key(fmt)
        target = host_artifact_dir(model_path)
        if target.is_dir():
            try:
                existing = check_artifact(target, model_path)
                check = existing.marker.get("check", {})
                return PreparedArtifacts(
                    str(model_dir), fmt, key, str(target), created=False,
                    bit_identical=check.get("bit_identical"), max_abs_diff=check.get("max_abs_diff"),
                    bytes=_artifact_bytes(existing), seconds=round(time.monotonic() - started, 3),
                )
            except ArtifactError as exc:
                log.info("rebuilding the host artifact %s: %s", target, exc)
                shutil.rmtree(target)  # unusable: workers would only warn about it on every load
        _make_host_root(model_dir)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        reference = plugin.engine(model_path, _REFERENCE_OPTIONS)
        feeds = comparison_feeds(model_dir, reference.signature)
        expected = [[np.array(o, copy=True) for o in reference.run(f)] for f in feeds]
        del reference
        gc.collect()
        extra = plugin.build_artifact(model_path, tmp)
        gc.collect()
        for name in plugin.artifact_files.values():
            _fsync(tmp / name)
        files = {name: {"size": (tmp / name).stat().st_size, "sha256": file_sha256(tmp / name)}
                 for name in plugin.artifact_files.values()}
        marker = {
            "format": fmt,
            "key": key,
            "runtime": runtime_version(fmt),
            "cpu": cpu_identity().splitlines(),
            "source": {"file": model_path.name, "size": model_path.stat().st_size, "sha256": file_sha256(model_path)},
            "files": files,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **extra,
        }
        max_diff, identical = _check_candidate(plugin, HostArtifact(fmt, tmp, key, marker), model_path, feeds, expected)
        marker["check"] = {"max_abs_diff": max_diff, "bit_identical": identical, "inputs": len(feeds), "tolerance": TOLERANCE}
        write_ready_marker(tmp, marker)
        check_artifact(tmp, model_path)  # exactly what a worker checks
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        tmp = None
        fsync_dir(target.parent)
        _drop_stale(target)
        seconds = round(time.monotonic() - started, 3)
        size = sum(f["size"] for f in files.values())
        return PreparedArtifacts(str(model_dir), fmt, key, str(target), True, identical, max_diff, size, seconds)
    except Exception as exc:  # never fail staging for this: the original model still serves
        return _failed(model_dir, started, f"{type(exc).__name__}: {exc}", fmt, key)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _make_host_root(model_dir: Path) -> None:
    """Create ``.host/`` without touching the version directory's mtime (the repository
    orders versions by it when pruning)."""
    root = model_dir / HOST_DIR
    if root.is_dir():
        return
    before = model_dir.stat()
    root.mkdir(exist_ok=True)
    os.utime(model_dir, ns=(before.st_atime_ns, before.st_mtime_ns))


def _drop_stale(target: Path) -> None:
    """Artifacts of other runtime versions or CPUs are never used again on this host."""
    for entry in target.parent.iterdir():
        if entry != target and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            log.info("removed stale host artifact %s", entry)


def _remove_leftovers(model_dir: Path) -> None:
    """A crashed preparation's temporary directory (the artifact itself is only renamed in
    once complete)."""
    root = model_dir / HOST_DIR
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.startswith(".") and ".tmp-" in entry.name:
                shutil.rmtree(entry, ignore_errors=True)


def _artifact_bytes(artifact: HostArtifact) -> int:
    return sum(artifact.path(role).stat().st_size for role in artifact_files(artifact.format))


def comparison_feeds(model_dir: Path, signature) -> list[dict[str, np.ndarray]]:
    """The warm-up picture (mid-grey) and a fixed noise picture, preprocessed as the
    served model preprocesses them; for a model the loader cannot serve (no image input,
    no decoder) fixed noise shaped by the signature."""
    from twinfer import imaging
    from twinfer.loader import ModelLoadError, load_model

    rng = np.random.default_rng(20240601)
    try:
        model = load_model(model_dir, "prepare", "0", _REFERENCE_OPTIONS)
    except (ModelLoadError, ValueError):
        model = None
    if model is None:
        feeds = []
        for _ in range(2):
            feed = {}
            for tensor in signature.inputs:
                shape = [d if d is not None else 1 for d in tensor.shape]
                if np.issubdtype(tensor.dtype, np.floating):
                    feed[tensor.name] = rng.uniform(-1.0, 1.0, shape).astype(tensor.dtype)
                else:
                    feed[tensor.name] = rng.integers(0, 4 if tensor.dtype != np.uint8 else 256, shape).astype(tensor.dtype)
            feeds.append(feed)
        return feeds
    width, height = model.input_width, model.input_height
    geometry = imaging.Geometry(
        image_width=width, image_height=height, decoded_width=width, decoded_height=height,
        input_width=width, input_height=height, scale_x=1.0, scale_y=1.0, pad_x=0.0, pad_y=0.0,
    )
    image = model.engine.signature.image_input
    feeds = []
    for pixels in (np.full((height, width, 3), 128, np.uint8), rng.integers(0, 256, (height, width, 3), dtype=np.uint8)):
        feed = {image.name: imaging.to_tensor(pixels, model.spec.input, image.dtype, image.quantization)}
        feed.update(model.decoder.extra_inputs(geometry))
        feeds.append(feed)
    del model
    gc.collect()
    return feeds


def _check_candidate(
    plugin: Runtime, artifact: HostArtifact, model_path: Path, feeds: list[dict], expected: list[list[np.ndarray]]
) -> tuple[float, bool]:
    """Load the candidate exactly as a worker does and compare its outputs."""
    before = {name: file_sha256(artifact.directory / name) for name in plugin.artifact_files.values()}
    engine = plugin.engine(model_path, _CANDIDATE_OPTIONS, artifact)
    if not engine.shared_weights:
        raise PrepareError("the prepared model did not load (see the warning above)")
    max_diff, identical = 0.0, True
    for feed, want in zip(feeds, expected):
        got = engine.run(feed)
        if len(got) != len(want):
            raise PrepareError(f"{len(got)} outputs, the original has {len(want)}")
        for index, (a, b) in enumerate(zip(want, got)):
            b = np.asarray(b)
            if a.shape != b.shape or a.dtype != b.dtype:
                raise PrepareError(f"output {index}: {b.dtype}{list(b.shape)}, the original {a.dtype}{list(a.shape)}")
            if np.array_equal(a, b, equal_nan=np.issubdtype(a.dtype, np.floating)):
                continue
            identical = False
            if not np.issubdtype(a.dtype, np.floating):
                raise PrepareError(f"output {index} (integer) differs from the original")
            diff = float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            if not np.isfinite(diff) or not np.array_equal(np.isnan(a), np.isnan(b)):
                raise PrepareError(f"output {index}: NaN/inf where the original has none")
            max_diff = max(max_diff, diff)
            if diff > TOLERANCE:
                raise PrepareError(f"output {index} differs from the original by {diff:.3g} (> {TOLERANCE})")
    del engine
    gc.collect()
    after = {name: file_sha256(artifact.directory / name) for name in before}
    if after != before:
        raise PrepareError("loading the prepared model modified its files (workers would write to them)")
    return max_diff, identical


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def main(argv: list[str] | None = None) -> int:
    """``python -m service.optimize <model dir>``: prepare, print one JSON line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m service.optimize <model dir>", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    result = _prepare(Path(args[0]))
    sys.stdout.flush()
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
