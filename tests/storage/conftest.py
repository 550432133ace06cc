"""Queue fixtures. Every queue test takes `make_queue`, parametrized by `backend`: the same suite
runs on SQLite and on a real PostgreSQL server (tests/conftest.py starts it)."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from storage import DataDir, JobQueue, Limits, NewJob, QueueConfig


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def png_bytes(size: tuple[int, int] = (96, 64), color: str = "orange") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def new_job(prompts: list[str] | None = None, user: str = "u1", platform: str = "cli",
            photo: bytes | None = None) -> NewJob:
    return NewJob(platform=platform, chat_id="chat1", user_id=user, photo=png_bytes() if photo is None else photo,
                  prompts=["walk", "run", "fly"] if prompts is None else prompts, settings={"seed": 7})


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    return DataDir(tmp_path / "data")


@pytest.fixture
def database_url(backend, request) -> str | None:
    """None for SQLite (the data dir's file); a fresh PostgreSQL database's URL otherwise."""
    return request.getfixturevalue("pg_url") if backend == "postgresql" else None


@pytest.fixture
def queue_config(database_url, data_dir):
    """QueueConfig factory for this test's backend (keyword overrides go to QueueConfig)."""
    def _config(**overrides) -> QueueConfig:
        return QueueConfig(db_path=data_dir.db_path, database_url=database_url,
                           **{"lease_seconds": 10.0, "max_attempts": 3, **overrides})
    return _config


async def _opener(config_for, photos: Path, clock):
    opened: list[JobQueue] = []

    async def _make(**overrides) -> JobQueue:
        q = await JobQueue.open(config_for(**overrides), photos, clock=clock)
        opened.append(q)
        return q

    return _make, opened


async def _close_all(opened: list[JobQueue]) -> None:
    for q in opened:
        try:
            await q.close()
        except ValueError:  # already closed by the test
            pass


@pytest.fixture
async def make_queue(queue_config, data_dir, clock):
    """Opens queues on this test's backend (both backends run every test that takes it)."""
    make, opened = await _opener(queue_config, data_dir.photos, clock)
    yield make
    await _close_all(opened)


@pytest.fixture
async def make_sqlite_queue(data_dir, clock):
    """Opens queues on the data dir's SQLite file, for tests of SQLite-only features (snapshots, pragmas)."""
    def _config(**overrides) -> QueueConfig:
        return QueueConfig(db_path=data_dir.db_path, **{"lease_seconds": 10.0, "max_attempts": 3, **overrides})
    make, opened = await _opener(_config, data_dir.photos, clock)
    yield make
    await _close_all(opened)


@pytest.fixture
def limits() -> Limits:
    return Limits()
