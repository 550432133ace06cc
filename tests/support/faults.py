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


class Both:
    """Two faults at once, e.g. a file write and then the pause that reports it (on a really full
    disk the pause's commit does not fit either). Reads as the first one in the matrix."""

    def __init__(self, first: DiskFault, then: DiskFault) -> None:
        self.first, self.then = first, then
        self.kind, self.target = first.kind, first.target

    def install(self, monkeypatch) -> "Both":
        self.first.install(monkeypatch)
        self.then.install(monkeypatch)
        return self

    @property
    def fired(self) -> bool:
        return self.first.fired and self.then.fired


# What safetensors (Rust) raises when the kernel answers ENOSPC: measured on a full tmpfs
# (tests/faults/test_tmpfs.py checks the real one).
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


@dataclass
class TextCacheFull(DiskFault):
    """Turns on the prompt-embedding cache (only real presets have one) and fails its first write the
    way a full disk does: half the file reaches the temp name, then safetensors raises."""

    kind: str = "safetensors"
    target: str = "*.safetensors"

    def install(self, monkeypatch) -> "TextCacheFull":
        import safetensors.torch as st
        from safetensors import SafetensorError

        import engine.worker as worker_mod
        from engine.models.text_cache import TextCache

        load, save = worker_mod.load_models, st.save_file

        def load_models(config):
            models = load(config)
            monkeypatch.setattr(models, "text_cache", TextCache(Path(config.cache_dir) / "text", "tiny@test"))
            return models

        def save_file(tensors, filename, metadata=None):
            if self.fired:
                return save(tensors, filename, metadata)
            self.fired = True
            data = st.save(tensors, metadata)
            Path(filename).write_bytes(data[: len(data) // 2])
            raise SafetensorError(SAFETENSORS_FULL)

        monkeypatch.setattr(worker_mod, "load_models", load_models)
        monkeypatch.setattr(st, "save_file", save_file)
        return self


class FullFile:
    """A binary file that takes `room` more bytes, then fails like the kernel on a full disk: the
    write that crosses the limit stores what fits and raises ENOSPC."""

    def __init__(self, f, room: int) -> None:
        self._f, self.room = f, room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self._f.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)
