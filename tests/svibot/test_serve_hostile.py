"""`svibot` as a real process under hostile conditions: a rejected token, SIGTERM with an upload
hanging, and a traceback Python prints itself; no secret reaches stderr in any form."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import DataDir, JobQueue, QueueConfig
from storage.redact import REDACTED
from tests.fakes.scripted_worker import ScriptedWorker
from tests.fakes.telegram_api import FakeTelegram
from tests.storage.test_redact import spellings

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "examples" / "chelsea.jpg"
CHAT = USER = 4242
TOKEN = "7712345678:AAHk3-q9Zr_5yXbLmN0pQw2eRtYuIoPaSdF"


def leaked(text: str, secret: str = TOKEN) -> list[str]:
    return [form for form, spelled in spellings(secret).items() if spelled in text]


async def serve(env: dict[str, str], *flags: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "svibot", "serve", "--telegram", *flags, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


@pytest.mark.parametrize("status, level", [(401, "INFO"), (404, "DEBUG")])
async def test_a_rejected_token_exits_with_one_clear_line_and_code_2(tmp_path, status, level):
    async with FakeTelegram(token=TOKEN) as fake:
        fake.get_me_status = status
        env = {**os.environ, "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE_URL": fake.base_url,
               "SVIBOT_DATA_DIR": str(tmp_path / "data"), "SVIBOT_LOG_LEVEL": level}
        proc = await serve(env, "--no-worker")
        _, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    stderr = err.decode()
    assert proc.returncode == 2, stderr
    line = "svibot: the Telegram token was rejected; check TELEGRAM_BOT_TOKEN"
    if level == "INFO":
        assert stderr == line + "\n"
    else:  # everything logged at DEBUG, and still no token in any form
        assert line + "\n" in stderr and "getMe" in stderr
    assert "Traceback" not in stderr and leaked(stderr) == []


async def test_sigterm_with_a_hanging_upload_ends_serve_in_time_and_the_segment_is_sent_at_the_next_start(tmp_path):
    data = DataDir(tmp_path / "data")
    async with FakeTelegram(token=TOKEN) as fake:
        env = {**os.environ, "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE_URL": fake.base_url,
               "SVIBOT_DATA_DIR": str(data.root)}
        proc = await serve(env, "--no-worker")  # the test plays the GPU worker on the same queue file
        try:
            await fake.wait_for(lambda: fake.method_calls("getUpdates"), timeout=90, what="polling")
            fake.user_message(CHAT, USER, caption="/story walk | run", photo=PHOTO.read_bytes())
            await fake.wait_for(lambda: fake.sent_to(CHAT, "sendMessage"), what="the queued reply")
            fake.hang_next("sendVideo")
            queue = await JobQueue.open(QueueConfig(db_path=data.db_path), data.photos)
            worker = ScriptedWorker(queue, data)
            job = await worker.claim()
            await worker.run_segments(job, range(1))
            await fake.wait_for(lambda: fake.method_calls("sendVideo"), what="the upload to start")
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
            stopped_after = time.monotonic() - signalled
        finally:
            if proc.returncode is None:
                proc.kill()
        assert proc.returncode == 0, err.decode()
        assert stopped_after < 20.0
        assert fake.sent_to(CHAT, "sendVideo") == []
        assert [e.kind for e in await queue.pending_events("telegram")].count("segment") == 1

        again = await serve(env, "--no-worker")
        try:
            await fake.wait_for(lambda: fake.sent_to(CHAT, "sendVideo"), timeout=90, what="the segment, resent")
            await worker.run_segments(job, range(1, 2))
            await worker.complete(job)
            await fake.wait_for(lambda: len(fake.sent_to(CHAT, "sendVideo")) == 3, what="the rest")
            await asyncio.sleep(0.5)
        finally:
            again.send_signal(signal.SIGTERM)
            _, err2 = await asyncio.wait_for(again.communicate(), timeout=60)
            await queue.close()
    assert [v.text for v in fake.sent_to(CHAT, "sendVideo")][:2] == ["Segment 1/2: walk", "Segment 2/2: run"]
    assert len(fake.sent_to(CHAT, "sendVideo")) == 3
    assert leaked(err.decode() + err2.decode()) == []


def test_a_traceback_python_prints_itself_is_redacted(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    # The data dir's path carries the token, so the uncaught OSError's message does too.
    env = {**os.environ, "TELEGRAM_BOT_TOKEN": TOKEN, "SVIBOT_DATA_DIR": str(blocker / f"bot{TOKEN}" / "data")}
    done = subprocess.run([sys.executable, "-m", "svibot", "jobs", "list"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "NotADirectoryError" in done.stderr
    assert f"bot{REDACTED}" in done.stderr and leaked(done.stderr) == []


def test_a_thread_that_dies_prints_a_redacted_traceback(capsys, monkeypatch):
    import threading

    from svibot import logs

    for hook in ("excepthook", "unraisablehook"):
        monkeypatch.setattr(sys, hook, getattr(sys, hook))
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    logs.setup("WARNING", {"TELEGRAM_BOT_TOKEN": TOKEN})

    def upload() -> None:
        raise ConnectionError(f"POST https://api.telegram.org/bot{TOKEN}/sendVideo timed out")

    thread = threading.Thread(target=upload, name="uploader")
    thread.start()
    thread.join()
    err = capsys.readouterr().err
    assert "Exception in thread uploader" in err and f"bot{REDACTED}/sendVideo" in err
    assert leaked(err) == []
