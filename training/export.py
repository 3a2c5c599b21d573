"""Write a model version into a TF Serving model repository, ``<base>/<model>/<version>/``, atomically."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from training.errors import VersionExistsError

SAVED_MODEL_FILE = "saved_model.pb"


def version_dir(base_path: Path, model_name: str, version: int) -> Path:
    if version < 0:
        raise ValueError(f"version must be >= 0, got {version}")
    if not model_name or "/" in model_name or model_name.startswith("."):
        raise ValueError(f"invalid model name {model_name!r}")
    return Path(base_path) / model_name / str(version)


def version_exists(base_path: Path, model_name: str, version: int) -> bool:
    """True when the version directory holds a SavedModel (a server would load it)."""
    return (version_dir(base_path, model_name, version) / SAVED_MODEL_FILE).is_file()


def write_version(base_path: Path, model_name: str, version: int, write: Callable[[Path], None]) -> Path:
    """Call ``write(staging_dir)`` to produce the SavedModel, then rename it to the version directory.

    The staging directory is a hidden sibling (``.tmp-<version>-<pid>``) that servers ignore, so a server
    watching the model directory never sees a half-written version; on failure it is removed. Raises
    :class:`VersionExistsError` if the version directory exists.
    """
    target = version_dir(base_path, model_name, version)
    if target.exists():
        raise VersionExistsError(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write(staging)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
