"""Fetch a preset's files into the huggingface_hub cache under the data dir, or find them there offline.

Free disk is checked against the preset's size before the first byte is fetched; a missing file or a
wrong filename becomes `ModelFileMissing` naming the repo and the file.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..errors import InsufficientDisk, ModelFileMissing
from .presets import FOLDER_PARTS, ModelFiles, Preset, get_preset

log = logging.getLogger(__name__)


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub import errors

    return (errors.LocalEntryNotFoundError, errors.EntryNotFoundError, errors.RepositoryNotFoundError,
            errors.RevisionNotFoundError, errors.HfHubHTTPError, errors.OfflineModeIsEnabled,
            errors.HFValidationError, OSError)


def fetch_part(part: str, repo: str, target: str, models_dir: Path, *, token: str | None = None,
               endpoint: str | None = None, local_only: bool = False) -> Path:
    """One file (or, for the text encoder and tokenizer, one folder) of a repo, resumable."""
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if part in FOLDER_PARTS:
            root = snapshot_download(repo_id=repo, allow_patterns=[f"{target}/*"], cache_dir=str(models_dir),
                                     token=token, endpoint=endpoint, local_files_only=local_only)
            path = Path(root) / target
            if not path.is_dir() or not any(path.iterdir()):
                raise ModelFileMissing(repo, target, "the folder is empty or absent in the repo")
            return path
        return Path(hf_hub_download(repo_id=repo, filename=target, cache_dir=str(models_dir), token=token,
                                    endpoint=endpoint, local_files_only=local_only))
    except ModelFileMissing:
        raise
    except OSError as err:
        from storage.files import is_disk_full

        if not is_disk_full(err):
            hint = "not in the local cache and downloads are off" if local_only else type(err).__name__
            raise ModelFileMissing(repo, target, f"{hint} ({err})") from err
        from storage.errors import DiskFull  # the hub removes its temp file; fetched files stay

        raise DiskFull(models_dir / target) from err
    except _hub_errors() as err:
        hint = ("not downloaded yet (`svibot download --preset NAME` fetches a preset's files)" if local_only
                else type(err).__name__)
        raise ModelFileMissing(repo, target, f"{hint} ({err})") from err


def local_preset_files(files: ModelFiles, models_dir: Path) -> dict[str, Path]:
    """Paths of every part already in the cache; the first missing one raises `ModelFileMissing`."""
    return {part: fetch_part(part, repo, target, Path(models_dir), local_only=True)
            for part, repo, target in files.items()}


def _cached(part: str, repo: str, target: str, models_dir: Path) -> bool:
    try:
        fetch_part(part, repo, target, models_dir, local_only=True)
        return True
    except ModelFileMissing:
        return False


def missing_parts(preset: Preset, files: ModelFiles, models_dir: Path) -> list[tuple[str, str, str, int]]:
    """(part, repo, file-or-folder, approximate bytes) of every part not yet in the cache."""
    return [(part, repo, target, int(preset.sizes.get(part, 0))) for part, repo, target in files.items()
            if not _cached(part, repo, target, Path(models_dir))]


def check_disk(preset: Preset, files: ModelFiles, models_dir: Path) -> int:
    """Raise `InsufficientDisk` unless the parts still to fetch fit; returns the bytes needed."""
    needed = int(sum(preset.sizes.get(part, 0) for part, repo, target in files.items()
                     if not _cached(part, repo, target, models_dir)))
    free = shutil.disk_usage(models_dir).free
    if needed > free:
        raise InsufficientDisk(models_dir, needed, free)
    return needed


def download_preset(preset: Preset | str, models_dir: Path, *, token: str | None = None,
                    endpoint: str | None = None, progress: bool = True,
                    file_overrides: tuple[tuple[str, str], ...] = (), local_only: bool = False) -> dict[str, Path]:
    """Download every file of `preset` (resumable, with progress bars); returns part -> local path.

    `token` defaults to `HF_TOKEN` from the environment, read at call time.
    """
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    preset = get_preset(preset) if isinstance(preset, str) else preset
    token = token or os.environ.get("HF_TOKEN") or None
    if preset.files is None:
        return {}  # built in code, nothing to fetch
    files = preset.files.with_overrides(file_overrides)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    needed = check_disk(preset, files, models_dir)
    log.info("preset %s: %.2f GB to fetch into %s", preset.name, needed / 1e9, models_dir)
    bars_were_off = are_progress_bars_disabled()
    (enable_progress_bars if progress else disable_progress_bars)()
    try:
        return {part: fetch_part(part, repo, target, models_dir, token=token, endpoint=endpoint,
                                 local_only=local_only)
                for part, repo, target in files.items()}
    finally:
        (disable_progress_bars if bars_were_off else enable_progress_bars)()
