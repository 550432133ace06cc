"""Fixtures for the bot tests: a fresh queue, the fake Telegram server, and a bot runner."""
from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import pytest
from PIL import Image

from bot.config import BotConfig, TelegramConfig
from bot.telegram import run_telegram
from storage import DataDir, Job, JobQueue, QueueConfig
from storage.redact import forget_secret
from tests.fakes.scripted_worker import ScriptedWorker
from tests.fakes.telegram_api import FakeTelegram


def png_bytes(size: tuple[int, int] = (96, 64), color: str = "orange") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


async def recorded_job(queue: JobQueue, job_id: int, timeout: float = 20.0) -> Job:
    """The job once the bot has stored its status message's id. The bot stores it right after the
    platform answers the send, so a test that already sees the message on the fake server can be a
    moment early, longer on a loaded machine."""
    deadline = time.monotonic() + timeout
    while (job := await queue.get_job(job_id)).status_message_id is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return job


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    return DataDir(tmp_path / "data")


@pytest.fixture
async def queue(data_dir: DataDir):
    q = await JobQueue.open(QueueConfig(db_path=data_dir.db_path), data_dir.photos)
    yield q
    await q.close()


@pytest.fixture
def worker(queue: JobQueue, data_dir: DataDir) -> ScriptedWorker:
    return ScriptedWorker(queue, data_dir)


@pytest.fixture
async def fake_telegram():
    fake = FakeTelegram()
    await fake.start()
    yield fake
    await fake.stop()
    forget_secret(fake.token)


class TelegramBotRunner:
    """Runs `run_telegram` as a task against the fake server; can stop and start it again."""

    def __init__(self, fake: FakeTelegram, queue: JobQueue, data_dir: DataDir, bot_config: BotConfig,
                 **telegram: object) -> None:
        self.fake = fake
        self.queue = queue
        self.data_dir = data_dir
        self.bot_config = bot_config
        settings = {"edit_interval_s": 0.2, "poll_timeout_s": 1, **telegram}
        self.config = TelegramConfig(token=fake.token, api_base_url=fake.base_url, **settings)
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        polls = len(self.fake.method_calls("getUpdates"))
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            run_telegram(self.config, self.bot_config, self.queue, self.data_dir, self._stop))
        await self.fake.wait_for(lambda: len(self.fake.method_calls("getUpdates")) > polls or self._task.done(),
                                 what="the bot to start polling")
        if self._task.done():
            self._task.result()  # raise the start-up error

    async def stop(self) -> None:
        if self._task is None:
            return
        self._stop.set()
        await asyncio.wait_for(self._task, timeout=15)
        self._task = None


@pytest.fixture
async def start_bot(fake_telegram: FakeTelegram, queue: JobQueue, data_dir: DataDir):
    """`await start_bot(BotConfig(...))` starts a bot; every bot started is stopped at teardown."""
    runners: list[TelegramBotRunner] = []

    async def start(bot_config: BotConfig | None = None, **telegram: object) -> TelegramBotRunner:
        bot_config = bot_config or BotConfig(poll_interval_s=0.05)
        runner = TelegramBotRunner(fake_telegram, queue, data_dir, bot_config, **telegram)
        runners.append(runner)
        await runner.start()
        return runner

    yield start
    for runner in runners:
        await runner.stop()
