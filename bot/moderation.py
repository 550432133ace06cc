"""The operator's blocked words: a story naming one is refused before anything is queued.

Matching is on whole words, ignoring case and accents: "Café" blocks "cafe" and "CAFÉ" but not
"cafeteria". An entry may be several words ("bad thing"); it then matches that phrase.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path


def fold(text: str) -> str:
    """Lower case without accents: NFKD splits "é" into "e" + a combining mark, which is dropped."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


@dataclass(frozen=True)
class BlockedWords:
    """Folded entries; empty blocks nothing."""

    words: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        alternatives = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in sorted(self.words, key=len, reverse=True))
        # \w-boundaries on both sides: a blocked word inside a longer word does not match.
        pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)") if self.words else None
        object.__setattr__(self, "_pattern", pattern)

    @classmethod
    def parse(cls, spec: str | None) -> "BlockedWords":
        """`SVIBOT_BLOCKED_WORDS`: a path to a file (one word or phrase a line, `#` starts a
        comment) or a comma-separated list. A value that looks like a path but is missing is an error."""
        spec = (spec or "").strip()
        if not spec:
            return cls()
        path = Path(spec).expanduser()
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            items = [line.split("#", 1)[0] for line in lines]
        elif "/" in spec or spec.endswith(".txt"):
            raise ValueError(f"SVIBOT_BLOCKED_WORDS is {spec!r}, which looks like a file path, but no such file exists")
        else:
            items = spec.split(",")
        words = {" ".join(fold(item).split()) for item in items}
        return cls(tuple(sorted(w for w in words if w)))

    def find(self, text: str) -> str | None:
        """The first blocked entry `text` contains as whole words, or None."""
        pattern = getattr(self, "_pattern")
        if pattern is None:
            return None
        match = pattern.search(fold(text))
        return None if match is None else " ".join(match.group(0).split())

    def __bool__(self) -> bool:
        return bool(self.words)
