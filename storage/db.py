"""The small interface the queue's verbs are written against, so one body of SQL serves both
SQLite (one machine) and PostgreSQL (many machines).

SQL is written with `?` placeholders; the PostgreSQL side numbers them. The few places where the
dialects differ are attributes of the `Database` (row locks, JSON length).
"""
from __future__ import annotations

import abc
import asyncio
import weakref
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

TOPICS = ("jobs", "events")  # "jobs": there may be work to claim; "events": the outbox has news


class Session(Protocol):
    """One connection, inside a transaction (`Database.tx`) or not (the `Database` itself)."""

    async def fetchone(self, sql: str, *args: Any) -> Any | None: ...

    async def fetchall(self, sql: str, *args: Any) -> list[Any]: ...

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; returns the number of rows it changed."""

    def notify(self, topic: str) -> None:
        """Wake the watchers of `topic` (in every process) once this transaction commits."""


class Watch:
    """A wake-up channel for one waiter. A notification that arrives while nobody waits is kept,
    so a waiter that polls, finds nothing and then waits never misses news sent in between."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def _wake(self) -> None:
        self._event.set()

    async def wait(self, timeout: float, stop: asyncio.Event | None = None) -> bool:
        """Wait for a notification, for `stop`, or `timeout` seconds (the polling fallback).
        True if a notification came."""
        waits = [asyncio.ensure_future(self._event.wait())]
        if stop is not None:
            waits.append(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        woken = self._event.is_set()
        self._event.clear()
        return woken


class Signals:
    """In-process fan-out from topics to watches. Watches are held weakly: dropping one unsubscribes."""

    def __init__(self) -> None:
        self._watches: dict[str, weakref.WeakSet[Watch]] = {t: weakref.WeakSet() for t in TOPICS}

    def watch(self, topic: str) -> Watch:
        if topic not in self._watches:
            raise ValueError(f"topic must be one of {TOPICS}, not {topic!r}")
        w = Watch()
        self._watches[topic].add(w)
        return w

    def wake(self, topics: Sequence[str]) -> None:
        for topic in topics:
            for w in list(self._watches[topic]):
                w._wake()


class BlobStore(abc.ABC):
    """A job's files (photo, segment videos, carry latents, the stitched story).

    Rows hold a reference string; `local(ref)` turns it into a file this process can read.
    """

    @abc.abstractmethod
    async def put_photo(self, s: Session, job_id: int, data: bytes, suffix: str) -> tuple[str, str]:
        """Keep a job's photo; returns (reference, sha256)."""

    @abc.abstractmethod
    async def put_file(self, s: Session, job_id: int, path: Path) -> str:
        """Keep a finished file of a job (already written at `path`); returns its reference."""

    @abc.abstractmethod
    async def local(self, ref: str, *, job_id: int | None = None) -> Path:
        """A local path holding the referenced file's bytes (kept for `job_id`, if given)."""


class Database(abc.ABC):
    """A connection (pool) plus the dialect details the queue's SQL needs."""

    kind: str  # "sqlite" or "postgresql"
    for_update: str  # appended to a SELECT that must lock its row for the transaction
    skip_locked: str  # appended to the claim's pick so competing claimers skip each other's rows
    blobs: BlobStore
    signals: Signals
    migrated_from: int  # the schema version found when this connection opened

    @abc.abstractmethod
    def json_len(self, column: str) -> str:
        """SQL for the length of the JSON array stored as text in `column`."""

    @abc.abstractmethod
    async def fetchone(self, sql: str, *args: Any) -> Any | None: ...

    @abc.abstractmethod
    async def fetchall(self, sql: str, *args: Any) -> list[Any]: ...

    @abc.abstractmethod
    def tx(self) -> AbstractAsyncContextManager[Session]:
        """A write transaction; commits when the block ends, rolls back on any error."""

    @abc.abstractmethod
    async def serialize(self, s: Session, key: str) -> None:
        """Make transactions that call this with the same `key` run one after another."""

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    def watch(self, topic: str) -> Watch:
        return self.signals.watch(topic)

