"""A bounded soak: many users' stories through the real PTB client, the fake Bot API and a fast
scripted worker, with 429s, 5xx answers and dropped connections injected all along. Every segment
and every stitched story must arrive exactly once, and the process's memory must stay flat."""
from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import psutil

from bot.config import BotConfig
from tests.fakes.scripted_worker import ScriptedWorker

from .conftest import png_bytes

USERS, STORIES, SEGMENTS, FRAMES = 20, 5, 2, 5
FAULTS = {  # per method: HTTP statuses (0: a dropped connection) injected at random calls
    "sendVideo": [429, 500, 502, 0], "editMessageText": [429, 502, 0], "getUpdates": [502, 0], "sendMessage": [429],
}
FAULT_RATE = 0.05  # one call in twenty of those methods fails
RSS_GROWTH_LIMIT = 24 * 1024 * 1024  # after the first wave; an unbounded cache of 100 stories would pass it


def render_of(worker: ScriptedWorker, caption: str) -> Path:
    """The clip the worker copied for this caption: per segment index, one for the stitched story."""
    if caption.startswith("Your story"):
        return worker._renders[(FRAMES * SEGMENTS, 7)]
    index = int(caption.split()[1].split("/")[0]) - 1  # "Segment 2/2: ..."
    return worker._renders[(FRAMES, index)]


def chat_of(user: int) -> int:
    return 5000 + user  # private chats: Telegram's per-group limit does not apply


async def test_soak_every_story_delivered_exactly_once_under_chat_api_faults(
        fake_telegram, start_bot, queue, data_dir):
    fake = fake_telegram
    started = time.monotonic()
    await start_bot(BotConfig(max_active_jobs=STORIES, stories_per_day=STORIES, poll_interval_s=0.05,
                              retry_base_s=0.05))
    worker = ScriptedWorker(queue, data_dir, num_steps=1, frames_per_segment=FRAMES, reuse_renders=True)
    await worker.online()
    stop = asyncio.Event()

    async def work() -> None:
        while not stop.is_set():
            job = await queue.claim(worker.id)
            if job is None:
                await asyncio.sleep(0.02)
                continue
            await worker.run_segments(job, range(job.num_segments))
            await worker.complete(job)

    fake.random_faults(FAULT_RATE, FAULTS, seed=14)
    tasks = [asyncio.create_task(work())]
    photo = png_bytes()
    rss: list[int] = []
    try:
        for wave in range(STORIES):  # each wave: one story per user, all delivered before the next
            for user in range(USERS):
                fake.user_message(chat_of(user), 100 + user, photo=photo,
                                  caption=f"/story u{user}w{wave}a | u{user}w{wave}b")
            want = (wave + 1) * USERS * (SEGMENTS + 1)
            try:
                await fake.wait_for(lambda: len(fake.method_calls("sendVideo")) >= want
                                    and len(fake.sent) >= want + (wave + 1) * USERS, timeout=90,
                                    what=f"wave {wave} delivered")
            except AssertionError:
                states = collections.Counter(j.state for j in await queue.list_jobs(limit=1000))
                kinds = collections.Counter(e.kind for e in await queue.pending_events("telegram", 1000))
                raise AssertionError(f"wave {wave}: jobs {dict(states)}, pending events {dict(kinds)}, "
                                     f"videos {len(fake.method_calls('sendVideo'))}/{want}, "
                                     f"messages {len(fake.sent)}") from None
            for _ in range(200):
                if not await queue.pending_events("telegram"):
                    break
                await asyncio.sleep(0.05)
            rss.append(psutil.Process().memory_info().rss)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    wall = time.monotonic() - started

    # Exactly once: each segment by its unique caption, the stitched stories by count, per chat.
    duplicates = lost = 0
    jobs = {j.id: j for j in await queue.list_jobs(limit=1000)}
    assert len(jobs) == USERS * STORIES and {j.state for j in jobs.values()} == {"done"}
    for user in range(USERS):
        videos = fake.sent_to(chat_of(user), "sendVideo")
        got = collections.Counter(v.text for v in videos)
        want = collections.Counter(f"Segment {k + 1}/{SEGMENTS}: u{user}w{w}{'ab'[k]}"
                                   for w in range(STORIES) for k in range(SEGMENTS))
        want[f"Your story ({SEGMENTS} segments, 1 s)"] = STORIES
        duplicates += sum((got - want).values())
        lost += sum((want - got).values())
        assert all(v.data == render_of(worker, v.text).read_bytes() for v in videos)  # the right clip
        replies = fake.sent_to(chat_of(user), "sendMessage")
        assert [m.text.startswith("Queued: job #") for m in replies] == [True] * STORIES  # one status message each
    pending = await queue.pending_events("telegram")
    deliveries = len(fake.method_calls("sendVideo")) - sum(1 for m, _ in fake.rejected if m == "sendVideo")
    retries = len(fake.rejected)
    growth = max(rss[1:]) - rss[0]
    print(f"\nsoak: {USERS} users x {STORIES} stories x {SEGMENTS} segments in {wall:.1f} s: "
          f"stories={len(jobs)} deliveries={deliveries} (videos) retries={retries} "
          f"({dict(collections.Counter(f'{m}:{s}' for m, s in fake.rejected))}) duplicates={duplicates} "
          f"lost={lost} pending={len(pending)} rss_after_warmup={rss[0] / 2**20:.0f} MiB "
          f"growth={growth / 2**20:.1f} MiB")
    assert duplicates == 0 and lost == 0 and not pending
    assert deliveries == USERS * STORIES * (SEGMENTS + 1)
    assert retries >= 10 and {s for _, s in fake.rejected} >= {429, 0}  # the faults really happened
    assert growth < RSS_GROWTH_LIMIT, [r / 2**20 for r in rss]
