"""First start on an empty store: stage the bundled model and publish it.

This is the embedded default (no twin, no download): ``make run`` serves a real
detector out of the box. Every start also checks that every model of the manifest is
complete (a version damaged while the service was down is replaced by the newest complete
one of that model; a model with none left leaves the pool, the default falls back to
the bundled one) and makes sure each has its host artifact (weights shared by the
workers; ``service.optimize``).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from service.optimize import ensure_host_artifacts
from service.repository import ModelRepository, read_bundle_record
from service.update import failures
from service.update.validation import VERDICT_FILE, recorded_verdict, validate_model_dir
from twinfer.loader import ModelLoadError, find_model_file
from twinfer.manifest import Manifest, ModelEntry, publish, read_manifest, remove_stale_temp_files, unpublish

log = logging.getLogger("twinfer.supervisor")


def stage_directory(repo: ModelRepository, source: Path, name: str, version: str) -> ModelEntry:
    """Copy ``source`` into staging, validate it, promote it and publish it."""
    candidate = repo.copy_into_staging(source, f"{name}-{version}")
    try:
        validated = validate_model_dir(candidate, name, version)
        target = repo.promote(candidate, name, version)
    except BaseException:
        shutil.rmtree(candidate, ignore_errors=True)
        raise
    return publish(repo.store, name, version, repo.relative(target), validated.format, validated.decoder, default=True)


def version_problem(directory: Path, name: str, version: str) -> str | None:
    """Why a staged version cannot be served, or None when it is complete: its one model
    file is there and the validation verdict recorded beside it still describes that file.
    A version without a verdict (staged before verdicts were recorded) is validated now,
    which records one."""
    if not directory.is_dir():
        return f"{directory} does not exist"
    try:
        find_model_file(directory)
    except ModelLoadError as exc:
        return str(exc)
    if recorded_verdict(directory) is not None:
        return None
    if (directory / VERDICT_FILE).exists():
        return "the model file is not the one that passed validation (name or size changed)"
    try:
        validate_model_dir(directory, name, version)
    except Exception as exc:  # any failure means the version cannot be served
        return f"it does not validate: {exc}"
    return None


def _publish_staged(
    repo: ModelRepository, name: str, version: str, threshold: float | None = None, default: bool = True
) -> ModelEntry:
    """Publish a complete staged version (``version_problem`` said None: its verdict is there)."""
    directory = repo.version_dir(name, version)
    validated = recorded_verdict(directory) or validate_model_dir(directory, name, version)
    ensure_host_artifacts(directory)
    return publish(repo.store, name, version, repo.relative(directory), validated.format, validated.decoder, threshold,
                   default=default, variant=read_bundle_record(directory).get("variant"))


def _count_damaged() -> None:
    from service import metrics  # prometheus_client: imported once the multiprocess dir is set

    metrics.DOWNLOAD_FAILURES.labels(failures.DAMAGED_MODEL).inc()
    metrics.UPDATES.labels("failed").inc()


def _check_other_models(repo: ModelRepository, pool: Manifest, damaged: list[str] | None) -> None:
    """Every model besides the default: keep it when complete, else its newest complete
    version, else take it out of the pool."""
    for entry in [e for e in pool.models.values() if e.name != pool.default]:
        directory = entry.model_dir(repo.store)
        problem = version_problem(directory, entry.name, entry.version)
        if problem is None:
            ensure_host_artifacts(directory)
            continue
        log.error("model %s %s is damaged: %s", entry.name, entry.version, problem)
        _count_damaged()
        _drop_damaged(repo, directory)
        notes = [f"model {entry.name} {entry.version} was damaged: {problem}"]
        others = [(v, d) for n, v, d in reversed(repo.versions()) if n == entry.name]
        usable = next((v for v, d in others if version_problem(d, entry.name, v) is None), None)
        if usable is not None:
            _publish_staged(repo, entry.name, usable, entry.score_threshold, default=False)
            notes.append(f"serving {entry.name} {usable} instead")
        else:
            unpublish(repo.store, entry.name)
            notes.append(f"{entry.name} left the pool: no complete version of it is in the store")
        log.warning("; ".join(notes))
        if damaged is not None:
            damaged.extend(notes)


def _drop_damaged(repo: ModelRepository, directory: Path) -> None:
    """A damaged version is of no use and would shadow a fresh download of the same version."""
    if directory.is_dir() and repo.models in directory.parents:
        shutil.rmtree(directory, ignore_errors=True)
        if directory.parent != repo.models and directory.parent.is_dir() and not any(directory.parent.iterdir()):
            directory.parent.rmdir()


def ensure_active_model(
    repo: ModelRepository, default_dir: Path, name: str, version: str, damaged: list[str] | None = None
) -> ModelEntry:
    """Keep a manifest that names a complete model; otherwise publish the newest other
    complete version in the store, and failing that the bundled default.

    A damaged active version (its model file deleted or changed while the service was
    down: a disk error, someone cleaning up) is found here, before gunicorn starts,
    logged and counted (``twinfer_download_failures_total{reason="damaged_model"}`` and
    ``twinfer_model_updates_total{result="failed"}``, which fire the update-failed alert)
    and removed; the workers then load the version published instead. Each damaged
    version is described in ``damaged`` too, for the twin (which is not connected yet)."""
    removed = remove_stale_temp_files(repo.store)
    if removed:
        log.info("removed %d manifest temp file(s) left by an interrupted publish", len(removed))
    pool = read_manifest(repo.store)
    if pool is not None:
        _check_other_models(repo, pool, damaged)
    current = pool.default_entry if pool else None
    threshold = None
    if current is not None:
        directory = current.model_dir(repo.store)
        problem = version_problem(directory, current.name, current.version)
        if problem is None:
            log.info("serving %s %s (generation %d) from the store", current.name, current.version, current.generation)
            # Before gunicorn starts: after an image upgrade (another runtime version) or on
            # another CPU the host artifact is missing, and each worker would load its own copy.
            ensure_host_artifacts(directory)
            return current
        log.error(
            "the active model %s %s (generation %d) is damaged: %s; falling back to the newest complete version",
            current.name, current.version, current.generation, problem,
        )
        if damaged is not None:
            damaged.append(f"the active model {current.name} {current.version} was damaged: {problem}")
        _count_damaged()
        _drop_damaged(repo, directory)
        threshold = current.score_threshold
        held = set(pool.models) - {current.name} if pool else set()
        for other_name, other_version, other_dir in reversed(repo.versions()):
            if other_name in held:  # serving as another model of the pool
                continue
            other_problem = version_problem(other_dir, other_name, other_version)
            if other_problem is not None:
                log.error("staged model %s %s is damaged too: %s", other_name, other_version, other_problem)
                if damaged is not None:
                    damaged.append(f"staged model {other_name} {other_version} was damaged: {other_problem}")
                _drop_damaged(repo, other_dir)
                continue
            manifest = _publish_staged(repo, other_name, other_version, threshold)
            log.warning("published %s %s (generation %d) in place of the damaged %s %s",
                        other_name, other_version, manifest.generation, current.name, current.version)
            if damaged is not None:
                damaged.append(f"serving {other_name} {other_version} instead")
            return manifest
    if repo.has(name, version):
        problem = version_problem(repo.version_dir(name, version), name, version)
        if problem is None:
            manifest = _publish_staged(repo, name, version, threshold)
            log.info("published the bundled default %s %s (generation %d)", name, version, manifest.generation)
            return manifest
        log.error("the staged bundled default %s %s is damaged: %s; staging it again", name, version, problem)
        if damaged is not None:
            damaged.append(f"the bundled default {name} {version} was damaged: {problem}; staged it again")
        _drop_damaged(repo, repo.version_dir(name, version))
    manifest = stage_directory(repo, default_dir, name, version)
    log.info("published the bundled default %s %s (generation %d)", name, version, manifest.generation)
    return manifest
