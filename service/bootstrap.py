"""First start on an empty store: stage the bundled model and publish it.

This is the embedded default (no twin, no download): ``make run`` serves a real
detector out of the box. Every start also makes sure the active model has its host
artifact (weights shared by the workers; ``service.optimize``).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from service.optimize import ensure_host_artifacts
from service.repository import ModelRepository
from service.staging import validate_model_dir
from workers.manifest import Manifest, publish, read_manifest

log = logging.getLogger("twinfer.supervisor")


def stage_directory(repo: ModelRepository, source: Path, name: str, version: str) -> Manifest:
    """Copy ``source`` into staging, validate it, promote it and publish it."""
    candidate = repo.copy_into_staging(source, f"{name}-{version}")
    try:
        validated = validate_model_dir(candidate, name, version)
        target = repo.promote(candidate, name, version)
    except BaseException:
        shutil.rmtree(candidate, ignore_errors=True)
        raise
    return publish(repo.store, name, version, repo.relative(target), validated.format, validated.decoder)


def ensure_active_model(repo: ModelRepository, default_dir: Path, name: str, version: str) -> Manifest:
    """Keep a manifest that names a complete model; otherwise publish the bundled default."""
    current = read_manifest(repo.store)
    if current is not None and current.model_dir(repo.store).is_dir():
        log.info("serving %s %s (generation %d) from the store", current.name, current.version, current.generation)
        # Before gunicorn starts: after an image upgrade (another runtime version) or on
        # another CPU the host artifact is missing, and each worker would load its own copy.
        ensure_host_artifacts(current.model_dir(repo.store))
        return current
    if repo.has(name, version):
        validated = validate_model_dir(repo.version_dir(name, version), name, version)
        manifest = publish(
            repo.store, name, version, repo.relative(repo.version_dir(name, version)), validated.format, validated.decoder
        )
    else:
        manifest = stage_directory(repo, default_dir, name, version)
    log.info("published the bundled default %s %s (generation %d)", name, version, manifest.generation)
    return manifest
