"""Errors the engine raises on purpose; bad photos and settings reuse `storage.errors.InputError`."""
from __future__ import annotations

from storage.errors import SvibotError


class EngineError(SvibotError):
    """Base class for engine failures that are not the user's input."""


class Cancelled(EngineError):
    """`should_cancel` returned True between two denoising steps."""


class ModelFileMissing(EngineError, FileNotFoundError):
    """A model file is not in the cache and could not be fetched."""

    def __init__(self, repo: str, filename: str, reason: str = "") -> None:
        msg = f"model file {filename!r} from repo {repo!r} is not available"
        super().__init__(msg + (f": {reason}" if reason else ""))
        self.repo = repo
        self.filename = filename

    def __str__(self) -> str:  # OSError's own __str__ would print "[Errno None] None: <filename>"
        return str(self.args[0])


class InsufficientDisk(EngineError, OSError):
    """Not enough free disk for a preset's files; raised before any download starts."""

    def __init__(self, path: object, needed: int, free: int) -> None:
        super().__init__(
            f"not enough free disk under {path}: the preset needs {needed / 1e9:.2f} GB "
            f"({needed} bytes) but only {free / 1e9:.2f} GB ({free} bytes) is free"
        )
        self.needed = needed
        self.free = free


class LoraMismatch(EngineError, ValueError):
    """A LoRA file whose keys match no layer of the model it is loaded into."""
