"""Fixtures shared by every test package: a real PostgreSQL server for the second queue backend, and two
settings that keep the CPU-bound tiny-preset runs cheap (one torch thread, a garbage collector that skips
what was alive before each test)."""
from __future__ import annotations

import asyncio
import gc
import os
import sys
import uuid

import pytest

from tests.support.postgres import PgServer, find_bindir

# One CPU thread per process for torch (and, through the environment, for every `svibot` process a test
# starts). The tiny preset's tensors are a few kilobytes, so a second thread only adds the cost of
# waking and syncing it: a tiny story ran about three times slower on two threads than on one on a
# two-core machine, worse while another process (a pytest-xdist worker) competes for the cores.
# A value set by the caller is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # already imported by a plugin: too late for the variable to count
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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



@pytest.fixture(autouse=True)
def _leave_survivors_out_of_gc():
    """Move what is alive when a test starts (imports, models, session fixtures) out of the cyclic
    garbage collector's reach; what each test makes is still collected. The engine runs `gc.collect()`
    after every segment; with torch, diffusers and transformers loaded (over 400,000 objects) each
    pass cost 0.1-0.25 s of CPU, as much as a tiny segment. Objects freed by reference counting,
    as nearly all are, are freed as usual."""
    gc.collect()
    gc.freeze()
