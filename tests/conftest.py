"""Fixtures shared by every test package: a real PostgreSQL server for the second queue backend."""
from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from tests.support.postgres import PgServer, find_bindir


@pytest.fixture(scope="session")
def pg_server():
    """One server per test session; each test gets its own database from `pg_url`."""
    bindir = find_bindir()
    if bindir is None:
        reason = ("no PostgreSQL server binaries (initdb, pg_ctl) found under /usr/lib/postgresql/*/bin "
                  "or on PATH; install them with `apt-get install postgresql`")
        if os.environ.get("SVIBOT_REQUIRE_POSTGRES"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = PgServer(bindir).start()
    yield server
    server.stop()


async def _admin(server: PgServer, sql: str) -> None:
    import asyncpg

    con = await asyncpg.connect(server.url())
    try:
        await con.execute(sql)
    finally:
        await con.close()


@pytest.fixture
def pg_url(pg_server):
    """A URL to a fresh, empty database, dropped after the test (even with connections left open)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(pg_server, f'CREATE DATABASE "{name}"'))
    yield pg_server.url(name)
    asyncio.run(_admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
