"""Queue fixtures. Every queue test takes `make_queue`, so a second backend can run the same suite
by adding one more parameter here."""
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


@pytest.fixture(params=["sqlite"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    return DataDir(tmp_path / "data")


@pytest.fixture
async def make_queue(backend, data_dir, clock):
    opened: list[JobQueue] = []

    async def _make(**overrides) -> JobQueue:
        cfg = QueueConfig(db_path=data_dir.db_path, **{"lease_seconds": 10.0, "max_attempts": 3, **overrides})
        q = await JobQueue.open(cfg, data_dir.photos, clock=clock)
        opened.append(q)
        return q

    yield _make
    for q in opened:
        try:
            await q.close()
        except ValueError:  # already closed by the test
            pass


@pytest.fixture
def limits() -> Limits:
    return Limits()
