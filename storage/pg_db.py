"""PostgreSQL behind the `Database` interface (asyncpg): a small connection pool for the verbs, and
one extra connection that LISTENs so idle workers and the bots wake up when there is news.

If the listening connection drops, waiters fall back to polling until it is back.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg

from .db import TOPICS, Database, Session, Signals
from .dburl import PgTarget, parse_database_url
from .errors import DatabaseFull, DatabaseUnavailable
from .pg_blobs import PgBlobs
from .pg_schema import migrate, read_version
from .redact import REDACTED

log = logging.getLogger(__name__)

CHANNELS = {topic: f"svibot_{topic}" for topic in TOPICS}
_TOPIC_OF = {channel: topic for topic, channel in CHANNELS.items()}
CONNECT_TIMEOUT_S = 15.0
_RELISTEN_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # back-off while the listening connection is down


@functools.lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """`?` placeholders become `$1, $2, ...` (question marks inside quoted literals are left alone)."""
    out, n = [], 0
    for i, part in enumerate(re.split(r"('(?:[^']|'')*')", sql)):
        if i % 2:  # a quoted literal
            out.append(part)
            continue
        pieces = part.split("?")
        for piece in pieces[:-1]:
            n += 1
            out.append(f"{piece}${n}")
        out.append(pieces[-1])
    return "".join(out)


def _rowcount(status: str) -> int:
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class _PgSession:
    def __init__(self, con: asyncpg.Connection) -> None:
        self._con = con
        self.topics: list[str] = []

    async def fetchone(self, sql: str, *args: Any) -> Any | None:
        return await self._con.fetchrow(numbered(sql), *args)

    async def fetchall(self, sql: str, *args: Any) -> list[Any]:
        return await self._con.fetch(numbered(sql), *args)

    async def execute(self, sql: str, *args: Any) -> int:
        return _rowcount(await self._con.execute(numbered(sql), *args))

    def notify(self, topic: str) -> None:
        if topic not in self.topics:
            self.topics.append(topic)


class PgDatabase(Database):
    kind = "postgresql"
    # NO KEY UPDATE: the events and segments inserted meanwhile take KEY SHARE locks on their job
    # (the foreign key check), which a plain FOR UPDATE would conflict with and deadlock on.
    for_update = " FOR NO KEY UPDATE"
    skip_locked = " FOR NO KEY UPDATE SKIP LOCKED"

    def __init__(self, pool: asyncpg.Pool, target: PgTarget, cache_root: Path, *, listen: bool) -> None:
        self._pool = pool
        self.target = target
        self.blobs = PgBlobs(self, cache_root)
        self.signals = Signals()
        self._listener: asyncio.Task | None = asyncio.create_task(self._listen_forever()) if listen else None
        self.listening = asyncio.Event()  # set while LISTEN is active
        self.listener_pid: int | None = None  # the server process of the LISTEN connection

    @classmethod
    async def open(cls, url: str, cache_root: Path, *, migrate_schema: bool = True,
                   listen: bool = True, pool_size: int = 4) -> "PgDatabase":
        target = parse_database_url(url)
        pool = await _connect(target, lambda **kw: asyncpg.create_pool(min_size=1, max_size=pool_size, **kw))
        try:
            async with pool.acquire() as con:
                try:
                    before, _ = await migrate(con, target.safe, allow=migrate_schema)
                except asyncpg.DiskFullError as err:
                    raise DatabaseFull(target.safe, _server_says(err)) from err
        except BaseException:
            await pool.close()
            raise
        opened = cls(pool, target, cache_root, listen=listen)
        opened.migrated_from = before
        return opened

    def json_len(self, column: str) -> str:
        return f"json_array_length({column}::json)"

    async def fetchone(self, sql: str, *args: Any) -> Any | None:
        try:  # a read can need disk too (a sort or hash spilling to temp files)
            return await self._pool.fetchrow(numbered(sql), *args)
        except asyncpg.DiskFullError as err:
            raise DatabaseFull(self.target.safe, _server_says(err)) from err

    async def fetchall(self, sql: str, *args: Any) -> list[Any]:
        try:
            return await self._pool.fetch(numbered(sql), *args)
        except asyncpg.DiskFullError as err:
            raise DatabaseFull(self.target.safe, _server_says(err)) from err

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Session]:
        async with self._pool.acquire() as con:
            session = _PgSession(con)
            try:
                async with con.transaction():
                    yield session
                    for topic in session.topics:  # delivered to every listener when the commit lands
                        await con.execute("SELECT pg_notify($1, '')", CHANNELS[topic])
            except asyncpg.DiskFullError as err:  # the server's disk: same outcome as a full data dir
                raise DatabaseFull(self.target.safe, _server_says(err)) from err
        self.signals.wake(session.topics)  # this process's watchers need not wait for the round trip

    async def serialize(self, s: Session, key: str) -> None:
        # Read committed lets two transactions both count before either inserts; a lock per key
        # held until commit makes the second one count after the first one's insert.
        await s.execute("SELECT pg_advisory_xact_lock(hashtext(?))", key)

    async def schema_version(self) -> int:
        async with self._pool.acquire() as con:
            return await read_version(con)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except asyncio.CancelledError:
                pass
        await self._pool.close()

    async def _listen_forever(self) -> None:
        failures = 0
        while True:
            lost = asyncio.Event()
            con: asyncpg.Connection | None = None
            try:
                con = await _connect(self.target, asyncpg.connect)
                con.add_termination_listener(lambda _con: lost.set())
                for channel in CHANNELS.values():
                    await con.add_listener(channel, self._on_notify)
                self.listener_pid = con.get_server_pid()
                self.listening.set()
                if failures:  # news may have been sent while we were deaf: look once
                    self.signals.wake(TOPICS)
                failures = 0
                await lost.wait()
                log.warning("lost the LISTEN connection to %s; polling until it is back", self.target.safe)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - any failure here only costs latency
                log.warning("cannot LISTEN on %s (%s); polling meanwhile", self.target.safe, err)
            finally:
                self.listening.clear()
                if con is not None and not con.is_closed():
                    await con.close(timeout=5)
            failures += 1
            await asyncio.sleep(_RELISTEN_S[min(failures - 1, len(_RELISTEN_S) - 1)])

    def _on_notify(self, _con: Any, _pid: int, channel: str, _payload: str) -> None:
        topic = _TOPIC_OF.get(channel)
        if topic is not None:
            self.signals.wake([topic])


async def _connect(target: PgTarget, make: Any) -> Any:
    """Connect (a pool or one connection), turning failures into messages without the password."""
    kwargs: dict[str, Any] = {"dsn": target.url, "timeout": CONNECT_TIMEOUT_S,
                              "server_settings": {"application_name": "svibot"}}
    if target.ssl is not None:
        kwargs["ssl"] = target.ssl
    try:
        return await make(**kwargs)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as err:
        detail = str(err)
        password = _password(target.url)
        if password:
            detail = detail.replace(password, REDACTED)
        raise DatabaseUnavailable(
            f"cannot connect to the database at {target.safe}: {type(err).__name__}: {detail}") from None


def _server_says(err: asyncpg.PostgresError) -> str:
    """The server's message for SQLSTATE 53100, e.g. `could not extend file "base/16384/16402": No
    space left on device` (PostgreSQL's md.c; elog.c maps ENOSPC to disk_full)."""
    return f"SQLSTATE {err.sqlstate}: {getattr(err, 'message', None) or str(err).splitlines()[0]}"


def _password(url: str) -> str | None:
    try:
        p = urlsplit(url).password
    except ValueError:
        return None
    return unquote(p) if p else None
