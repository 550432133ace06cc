"""The one place where user input is checked, shared by the adapters, the CLI and the engine.

Every check raises a specific `InputError` that names the value and the limit.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from .config import Limits
from .errors import (
    EmptyPrompt,
    NotAnImage,
    PhotoTooLarge,
    PhotoTooSmall,
    PromptTooLong,
    TooManySegments,
    TruncatedImage,
)

SEPARATOR = "|"


def parse_prompts(text: str | None, limits: Limits) -> list[str]:
    """Split a story on `|` into stripped prompts, one per segment."""
    if text is None or not text.strip():
        raise EmptyPrompt(
            'The story is empty. Write one prompt per segment, separated by "|", '
            'for example: walk | run | fly'
        )
    return check_prompts(text.split(SEPARATOR), limits, source=text)


def check_prompts(prompts: list[str], limits: Limits, *, source: str | None = None) -> list[str]:
    """Strip each prompt and check the list against the limits; returns the stripped list."""
    parts = [p.strip() for p in prompts]
    if not parts:
        raise EmptyPrompt("The story has no prompts. Write one prompt per segment, e.g.: walk | run | fly")
    empty = [i + 1 for i, p in enumerate(parts) if not p]
    if empty:
        where = ", ".join(str(i) for i in empty)
        shown = source if source is not None else " | ".join(parts)
        raise EmptyPrompt(
            f"Prompt {where} of {len(parts)} is empty in {shown!r}. "
            'Every segment needs some text between the "|" separators.'
        )
    if len(parts) > limits.max_segments:
        raise TooManySegments(
            f"The story has {len(parts)} segments; the limit is {limits.max_segments}. "
            "Use fewer prompts."
        )
    for i, p in enumerate(parts, start=1):
        if len(p) > limits.max_prompt_chars:
            raise PromptTooLong(
                f"Prompt {i} is {len(p)} characters long; the limit is {limits.max_prompt_chars}."
            )
    return parts


@dataclass(frozen=True)
class PhotoInfo:
    width: int
    height: int
    format: str  # PIL format name, e.g. "JPEG"


def check_photo_size(num_bytes: int, limits: Limits) -> None:
    """Reject a photo by its byte size before downloading or reading it."""
    if num_bytes > limits.max_photo_bytes:
        raise PhotoTooLarge(
            f"The photo is {num_bytes / 2**20:.1f} MB; the limit is "
            f"{limits.max_photo_bytes / 2**20:.0f} MB. Send a smaller or compressed photo."
        )


def check_photo(data: bytes, limits: Limits) -> PhotoInfo:
    """Check that `data` is a whole, decodable image of an acceptable size.

    The header is read first, so a 40+ MP image is refused before it is decoded.
    """
    check_photo_size(len(data), limits)
    if not data:
        raise NotAnImage("The file is empty; send a JPEG, PNG or WebP photo.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            width, height = img.size
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise NotAnImage("That file is not an image I can read; send a JPEG, PNG or WebP photo.") from None
    except OSError as err:
        raise NotAnImage(f"That file is not a readable image ({err}).") from None
    if width * height > limits.max_photo_pixels:
        raise PhotoTooLarge(
            f"The photo is {width}x{height} = {width * height / 1e6:.1f} MP; the limit is "
            f"{limits.max_photo_pixels / 1e6:.0f} MP."
        )
    if min(width, height) < limits.min_photo_side:
        raise PhotoTooSmall(
            f"The photo is {width}x{height}; each side must be at least {limits.min_photo_side} px."
        )
    try:
        with Image.open(io.BytesIO(data)) as full:
            full.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise TruncatedImage(f"The photo is truncated or corrupt ({err}); send it again.") from None
    return PhotoInfo(width=width, height=height, format=fmt)
