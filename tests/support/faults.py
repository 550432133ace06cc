"""Fault injection for the fault-matrix tests: a full disk at one named write (ENOSPC raised by the
call that would have put the file in place, or SQLite's SQLITE_FULL from one COMMIT), and helpers
that check what a fault left behind."""
from __future__ import annotations

import errno
import fnmatch
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite


@dataclass
class DiskFault:
    """Fails the first write matching `target` with a full disk; `fired` tells whether it did.

    kind "file": `target` is a glob on the final file name, failed at its `os.replace` (where every
    atomic write lands; the temp file then exists and must be cleaned up).
    kind "commit": `target` is a substring of a statement (or its arguments) inside the transaction
    whose COMMIT fails with "database or disk is full", like SQLite's when the file cannot grow.
    """

    kind: str
    target: str
    fired: bool = False
    _seen: dict = field(default_factory=dict)

    def install(self, monkeypatch) -> "DiskFault":
        if self.kind == "file":
            real = os.replace

            def replace(src, dst, *a, **kw):
                if not self.fired and fnmatch.fnmatch(Path(dst).name, self.target):
                    self.fired = True
                    raise OSError(errno.ENOSPC, "No space left on device", str(src))
                return real(src, dst, *a, **kw)

            monkeypatch.setattr(os, "replace", replace)
        else:
            real_exec = aiosqlite.Connection.execute

            async def execute(conn, sql, parameters=None):
                key = id(conn)
                if sql == "BEGIN IMMEDIATE":
                    self._seen[key] = False
                elif sql == "COMMIT" and self._seen.pop(key, False) and not self.fired:
                    self.fired = True
                    raise sqlite3.OperationalError("database or disk is full")
                elif key in self._seen and self.target in f"{sql} {parameters!r}":
                    self._seen[key] = True
                return await real_exec(conn, sql, parameters)

            monkeypatch.setattr(aiosqlite.Connection, "execute", execute)
        return self


def half_written(root: Path) -> list[Path]:
    """Temp files of atomic writes (`.NAME.XXXX.part.EXT`) and text-cache temps left under `root`."""
    return [p for p in Path(root).rglob("*") if p.is_file() and (".part" in p.name or p.suffix == ".tmp")]


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def job_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone():
            return []  # the database could not even be created
        return conn.execute("SELECT id, state, attempts FROM jobs ORDER BY id").fetchall()


def segment_rows(db: Path, job_id: int) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT idx, video_path, carry_path FROM segments WHERE job_id = ? ORDER BY idx",
                            (job_id,)).fetchall()
