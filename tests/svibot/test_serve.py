"""`svibot serve --telegram` as a real process: the composition root wires bot, queue and worker."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.fakes.scripted_worker import count_frames
from tests.fakes.telegram_api import FakeTelegram

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "examples" / "chelsea.jpg"
CHAT = USER = 4242


async def test_serve_telegram_with_worker_delivers_a_story_and_stops_cleanly(tmp_path):
    async with FakeTelegram() as fake:
        env = {**os.environ, "TELEGRAM_BOT_TOKEN": fake.token, "TELEGRAM_API_BASE_URL": fake.base_url,
               "SVIBOT_DATA_DIR": str(tmp_path / "data"), "SVIBOT_PRESET": "tiny",
               "SVIBOT_PROGRESS_INTERVAL": "0"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "svibot.cli", "serve", "--telegram", cwd=REPO, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            await fake.wait_for(lambda: fake.method_calls("getUpdates"), timeout=60, what="polling")
            fake.user_message(CHAT, USER, caption="/story walk | run", photo=PHOTO.read_bytes())
            await fake.wait_for(lambda: len(fake.sent_to(CHAT, "sendVideo")) == 3, timeout=90, what="the story")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert fake.token not in err.decode()  # PTB logs URLs that carry the token
    videos = fake.sent_to(CHAT, "sendVideo")
    assert [v.text for v in videos[:2]] == ["Segment 1/2: walk", "Segment 2/2: run"]
    assert videos[2].text.startswith("Your story (2 segments")
    frames = []
    for i, video in enumerate(videos):
        path = tmp_path / f"v{i}.mp4"
        path.write_bytes(video.data)
        frames.append(count_frames(path))
    assert frames == [13, 8, 21]


def test_serve_needs_a_platform_and_a_token(tmp_path):
    import subprocess
    env = {k: v for k, v in os.environ.items() if k not in ("TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN")}
    env["SVIBOT_DATA_DIR"] = str(tmp_path)
    none = subprocess.run([sys.executable, "-m", "svibot.cli", "serve"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert none.returncode == 2 and "--telegram and/or --discord" in none.stderr
    no_token = subprocess.run([sys.executable, "-m", "svibot.cli", "serve", "--discord"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
    assert no_token.returncode == 2 and "DISCORD_BOT_TOKEN is empty" in no_token.stderr
