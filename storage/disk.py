"""Free space on the data dir's disk: how much there is and how much a story needs to make progress."""
from __future__ import annotations

import shutil
from pathlib import Path

# Free space a data dir needs for a story to make progress: a segment's mp4 and carry latent, the
# stitched story, the database's growth and SQLite's journal, with room to spare (a 480p 81-frame
# segment is a few MB; the stitched story of 10 segments some tens of MB).
FREE_SPACE_NEEDED = 256 * 2**20


def free_space_needed() -> int:
    return FREE_SPACE_NEEDED


def free_bytes(path: object) -> int:
    """Free bytes on the disk holding `path` (its nearest existing parent); 0 if none can be found."""
    p = Path(str(path)).absolute()
    for candidate in (p, *p.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return 0
