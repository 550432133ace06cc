"""The one place where user input is checked, shared by the adapters, the CLI and the engine.

Every check raises a specific `InputError` that names the value and the limit. Error texts quote
at most a short excerpt of what the user sent, so a reply never grows with the input.
"""
from __future__ import annotations

import io
import unicodedata
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from .config import Limits
from .errors import (
    N_,
    EmptyPrompt,
    NotAnImage,
    PhotoTooLarge,
    PhotoTooSmall,
    PromptTooLong,
    TooManySegments,
    TruncatedImage,
)

SEPARATOR = "|"
EXCERPT_CHARS = 60
# Formats a phone or a camera sends (JPEG covers MPO). Recognised by their bytes, never by a name or a MIME type;
# others (EPS, PSD, ICO, ...) are refused: some decoders call out to other programs.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
            "TIFF": ".tiff"}
# Line breaks and tabs separate words; every other control or format character (zero-width
# spaces and joiners, bidi overrides, the BOM, soft hyphens) is dropped.
_SPACES = {"\t", "\n", "\r", "\v", "\f", "\x85", "\u2028", "\u2029"}
_DROPPED_CATEGORIES = ("Cc", "Cf", "Cs")
# Letters that render as nothing: a prompt made only of these is empty.
_BLANK_LETTERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`text` cut to `limit` characters, ending in an ellipsis when it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def normalize_prompt(text: str) -> str:
    """NFC, with line breaks and tabs as spaces and other control and zero-width characters removed."""
    out = []
    for ch in unicodedata.normalize("NFC", text):
        if ch in _SPACES:
            out.append(" ")
        elif unicodedata.category(ch) not in _DROPPED_CATEGORIES:
            out.append(ch)
    return "".join(out)


def is_blank(text: str) -> bool:
    """True when nothing in `text` would be visible: no letter, digit, punctuation or symbol."""
    return not any(unicodedata.category(ch)[0] in "LNPS" and ch not in _BLANK_LETTERS for ch in text)


def parse_prompts(text: str | None, limits: Limits) -> list[str]:
    """Normalize a story, then split it on `|` into stripped prompts, one per segment."""
    text = normalize_prompt(text or "")
    if is_blank(text.replace(SEPARATOR, "")):
        raise EmptyPrompt(N_('The story is empty. Write one prompt per segment, separated by "|", '
                             'for example: walk | run | fly'))
    return check_prompts(text.split(SEPARATOR), limits, source=text)


def check_prompts(prompts: list[str], limits: Limits, *, source: str | None = None) -> list[str]:
    """Normalize and strip each prompt and check the list against the limits; returns the clean list."""
    parts = [normalize_prompt(p).strip() for p in prompts]
    if not parts:
        raise EmptyPrompt(N_("The story has no prompts. Write one prompt per segment, e.g.: walk | run | fly"))
    empty = [i + 1 for i, p in enumerate(parts) if is_blank(p)]
    if empty:
        where = ", ".join(str(i) for i in empty)
        shown = normalize_prompt(source) if source is not None else " | ".join(parts)
        raise EmptyPrompt(
            N_('Prompt {where} of {total} is empty in {story!r}. '
               'Every segment needs some text between the "|" separators.'),
            where=where, total=len(parts), story=excerpt(shown.strip()))
    if len(parts) > limits.max_segments:
        raise TooManySegments(N_("The story has {count} segments; the limit is {limit}. Use fewer prompts."),
                              count=len(parts), limit=limits.max_segments)
    for i, p in enumerate(parts, start=1):
        if len(p) > limits.max_prompt_chars:
            raise PromptTooLong(N_("Prompt {index} is {length} characters long; the limit is {limit}."),
                                index=i, length=len(p), limit=limits.max_prompt_chars)
    return parts


@dataclass(frozen=True)
class PhotoInfo:
    width: int
    height: int
    format: str  # PIL format name, e.g. "JPEG"

    @property
    def suffix(self) -> str:
        """The file suffix for this format, e.g. ".jpg"."""
        return SUFFIXES.get(self.format, ".img")


def check_photo_size(num_bytes: int, limits: Limits) -> None:
    """Reject a photo by its byte size before downloading or reading it."""
    if num_bytes > limits.max_photo_bytes:
        raise PhotoTooLarge(
            N_("The photo is {size:.1f} MB; the limit is {limit:.0f} MB. Send a smaller or compressed photo."),
            size=num_bytes / 2**20, limit=limits.max_photo_bytes / 2**20)


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header of an image too big for `Image.open` (a decompression bomb).

    `Image.open` refuses such a file before it tells its size, so the format plugins read the
    header directly, as `Image.open` itself does before its size check.
    """
    Image.init()
    for fmt in IMAGE_FORMATS:
        factory, accept = Image.OPEN.get(fmt, (None, None))
        if factory is None or (accept is not None and accept(data[:16]) is not True):
            continue
        try:
            return factory(io.BytesIO(data), "").size
        except Exception:  # not this format after all; try the next
            continue
    return None


def _too_many_pixels(width: int, height: int, limits: Limits) -> PhotoTooLarge:
    return PhotoTooLarge(
        N_("The photo is {width}x{height} = {megapixels:.1f} MP; the limit is {limit:.0f} MP. Send a smaller photo."),
        width=width, height=height, megapixels=width * height / 1e6, limit=limits.max_photo_pixels / 1e6)


def check_photo(data: bytes, limits: Limits) -> PhotoInfo:
    """Check that `data` is a whole, decodable image of an acceptable size, by its bytes alone.

    The header is read first, so a 40+ MP image is refused (with its size) before it is decoded.
    """
    check_photo_size(len(data), limits)
    if not data:
        raise NotAnImage(N_("The file is empty; send a JPEG, PNG or WebP photo."))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            fmt = img.format or "unknown"
            width, height = img.size
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        size = _declared_size(data)
        if size is None:
            raise PhotoTooLarge(N_("The photo has too many pixels; the limit is {limit:.0f} MP. Send a smaller photo."),
                                limit=limits.max_photo_pixels / 1e6) from None
        raise _too_many_pixels(*size, limits) from None
    except UnidentifiedImageError:
        raise NotAnImage(N_("That file is not an image I can read; send a JPEG, PNG or WebP photo.")) from None
    except OSError as err:
        raise NotAnImage(N_("That file is not a readable image ({error})."), error=str(err)) from None
    if width * height > limits.max_photo_pixels:
        raise _too_many_pixels(width, height, limits)
    if min(width, height) < limits.min_photo_side:
        raise PhotoTooSmall(N_("The photo is {width}x{height}; each side must be at least {limit} px."),
                            width=width, height=height, limit=limits.min_photo_side)
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as full:
            full.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise TruncatedImage(N_("The photo is truncated or corrupt ({error}); send it again."),
                             error=str(err)) from None
    return PhotoInfo(width=width, height=height, format=fmt)
