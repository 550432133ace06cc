"""Bad input is refused with a specific error naming the value and the limit, and nothing is queued."""
from __future__ import annotations

import hashlib
import io
import struct
import zlib

import pytest
from PIL import Image

from storage import CorruptDatabase, JobQueue, Limits, QueueConfig, WorkerId, parse_prompts
from storage.errors import (
    EmptyPrompt,
    NotAnImage,
    PhotoTooLarge,
    PhotoTooSmall,
    PromptTooLong,
    TooManySegments,
    TruncatedImage,
)
from tests.storage.conftest import new_job, png_bytes


def test_prompts_are_split_and_stripped():
    assert parse_prompts("  walk |run|  fly  ", Limits()) == ["walk", "run", "fly"]


@pytest.mark.parametrize("text", ["walk || run", "|", "", "   ", "walk |", None])
def test_empty_prompts_are_rejected(text):
    with pytest.raises(EmptyPrompt) as err:
        parse_prompts(text, Limits())
    assert "empty" in str(err.value)


def test_empty_prompt_error_names_which():
    with pytest.raises(EmptyPrompt, match=r"Prompt 2 of 3 is empty"):
        parse_prompts("walk || run", Limits())


def test_too_many_segments_names_count_and_limit():
    with pytest.raises(TooManySegments, match=r"11 segments; the limit is 10"):
        parse_prompts(" | ".join(f"p{i}" for i in range(11)), Limits())
    assert len(parse_prompts(" | ".join(f"p{i}" for i in range(3)), Limits(max_segments=3))) == 3


def test_prompt_too_long():
    with pytest.raises(PromptTooLong, match=r"Prompt 1 is 21 characters long; the limit is 20"):
        parse_prompts("x" * 21, Limits(max_prompt_chars=20))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a size; the pixel data is never needed to refuse it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


@pytest.mark.parametrize(
    "photo, error, message",
    [
        (b"%PDF-1.4 not a photo", NotAnImage, "not an image"),
        (b"", NotAnImage, "empty"),
        (_truncated_jpeg(), TruncatedImage, "truncated"),
        (png_bytes((40, 300)), PhotoTooSmall, "40x300"),
        (_png_header_only(8000, 6000), PhotoTooLarge, "48.0 MP"),
        (b"\xff" * (21 * 1024 * 1024), PhotoTooLarge, "21.0 MB; the limit is 20 MB"),
    ],
    ids=["pdf", "empty", "truncated", "small", "huge-pixels", "huge-bytes"],
)
async def test_bad_photos_are_refused_and_nothing_is_queued(make_queue, data_dir, limits, photo, error, message):
    q = await make_queue()
    with pytest.raises(error, match=message):
        await q.enqueue(new_job(photo=photo), limits)
    assert await q.list_jobs() == []
    kept = [p for p in data_dir.root.rglob("*") if p.is_file() and not p.name.startswith("queue.sqlite3")]
    assert kept == []


@pytest.mark.parametrize("prompts", [["walk", ""], [], [f"p{i}" for i in range(11)]])
async def test_bad_prompt_lists_queue_nothing(make_queue, limits, prompts):
    q = await make_queue()
    with pytest.raises((EmptyPrompt, TooManySegments)):
        await q.enqueue(new_job(prompts=prompts), limits)
    assert await q.list_jobs() == []


async def test_text_is_stored_verbatim(make_queue, limits):
    q = await make_queue()
    tricky = ["she said \"hi\" 'there'", "'); DROP TABLE jobs; --", "🐱 flies ✈️ over 東京"]
    job = await q.enqueue(new_job(prompts=tricky), limits)
    await q.close()
    q2 = await make_queue()
    assert (await q2.get_job(job.id)).prompts == tricky
    assert len(await q2.list_jobs()) == 1


async def test_same_photo_is_stored_once(make_sqlite_queue, limits):
    q = await make_sqlite_queue()
    a = await q.enqueue(new_job(), limits)
    b = await q.enqueue(new_job(), limits)
    assert a.photo_path == b.photo_path and a.photo_sha256 == b.photo_sha256


async def test_photo_reads_back_byte_for_byte(make_queue, limits):
    photo = png_bytes((80, 72), "teal")
    q = await make_queue()
    job = await q.enqueue(new_job(photo=photo), limits)
    assert job.photo_sha256 == hashlib.sha256(photo).hexdigest()
    assert (await q.local_file(job.photo_path)).read_bytes() == photo


async def test_not_sqlite_file_is_refused_and_left_alone(data_dir, clock):
    data_dir.root.mkdir(parents=True)
    data_dir.db_path.write_bytes(b"my precious notes, not a database" * 100)
    before = data_dir.db_path.read_bytes()
    with pytest.raises(CorruptDatabase, match="not an SQLite database"):
        await JobQueue.open(QueueConfig(db_path=data_dir.db_path), data_dir.photos, clock=clock)
    assert data_dir.db_path.read_bytes() == before


async def test_corrupt_sqlite_file_is_refused(data_dir, clock):
    data_dir.root.mkdir(parents=True)
    data_dir.db_path.write_bytes(b"SQLite format 3\x00" + b"\x13" * 4000)
    with pytest.raises(CorruptDatabase, match="not a usable svibot queue database"):
        await JobQueue.open(QueueConfig(db_path=data_dir.db_path), data_dir.photos, clock=clock)


async def test_other_programs_database_is_refused(data_dir, clock):
    import sqlite3
    data_dir.root.mkdir(parents=True)
    with sqlite3.connect(data_dir.db_path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(CorruptDatabase, match="another program"):
        await JobQueue.open(QueueConfig(db_path=data_dir.db_path), data_dir.photos, clock=clock)


async def test_schema_version_and_newer_database_refused(make_sqlite_queue, data_dir, clock):
    import sqlite3
    from storage.schema import SCHEMA_VERSION
    q = await make_sqlite_queue()
    assert await q.schema_version() == SCHEMA_VERSION
    await q.close()
    with sqlite3.connect(data_dir.db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(CorruptDatabase, match="newer than this svibot"):
        await JobQueue.open(QueueConfig(db_path=data_dir.db_path), data_dir.photos, clock=clock)


# -- hostile text and images ----------------------------------------------------------------------
@pytest.mark.parametrize("text", ["\u200b | \u200b", "\u200b\u200c\u2060\ufeff", "\x00\x07 | \u202e",
                                  "\u3164 | \u115f"])
def test_invisible_prompts_are_empty(text):
    with pytest.raises(EmptyPrompt, match="The story is empty"):
        parse_prompts(text, Limits())


def test_prompts_are_normalised_before_they_are_checked():
    decomposed = "cafe\u0301"  # e + combining acute: NFC makes it one character
    got = parse_prompts(f"{decomposed} \u200bopens | a\tcat\nruns\x07 | \u202eflies", Limits(max_prompt_chars=11))
    assert got == ["caf\u00e9 opens", "a cat runs", "flies"]
    assert len(got[0]) == 10  # counted after NFC, so it fits the limit of 11


def test_an_empty_part_in_a_long_story_quotes_only_an_excerpt():
    story = "x" * 1500 + " | | " + "y" * 1500
    with pytest.raises(EmptyPrompt) as err:
        parse_prompts(story, Limits(max_prompt_chars=2000))
    message = str(err.value)
    assert message.startswith("Prompt 2 of 3 is empty in 'xxx") and "\u2026'" in message
    assert len(message) < 200


async def test_a_decompression_bomb_is_refused_with_its_size(make_queue, limits):
    q = await make_queue()
    with pytest.raises(PhotoTooLarge, match=r"100000x100000 = 10000\.0 MP; the limit is 40 MP"):
        await q.enqueue(new_job(photo=_png_header_only(100000, 100000)), limits)
    assert await q.list_jobs() == []


async def test_the_stored_photo_is_named_by_its_content_not_by_what_the_sender_said(make_queue, limits):
    buf = io.BytesIO()
    Image.new("RGB", (80, 80), "teal").save(buf, "JPEG")
    q = await make_queue()
    job = await q.enqueue(new_job(photo=buf.getvalue()), limits)
    assert job.photo_path.endswith(".jpg")


def test_formats_whose_decoders_run_other_programs_are_refused():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n" + b"0 0 moveto\n" * 50
    with pytest.raises(NotAnImage, match="not an image I can read"):
        from storage.validate import check_photo
        check_photo(eps, Limits())


async def test_a_first_release_file_is_upgraded_in_place(data_dir, clock):
    import sqlite3
    from storage.schema import MIGRATIONS, SCHEMA_VERSION
    data_dir.root.mkdir(parents=True)
    with sqlite3.connect(data_dir.db_path) as db:
        for stmt in MIGRATIONS[0]:
            db.execute(stmt)
        db.execute("PRAGMA user_version = 1")
        db.execute("""INSERT INTO jobs (platform, chat_id, user_id, photo_path, photo_sha256, prompts, settings,
                                        created_at, updated_at)
                      VALUES ('cli', 'c', 'u', 'p.png', 'ab', '["walk"]', '{"preset": "q8_0"}', 1, 1)""")
    config = QueueConfig(db_path=data_dir.db_path)
    assert await JobQueue.upgrade(config, data_dir.photos) == (1, SCHEMA_VERSION)
    q = await JobQueue.open(config, data_dir.photos, clock=clock)
    try:
        w = WorkerId(owner="h:1:x", host="h", pid=1)
        assert await q.claim(w, presets={"q4_k_m"}) is None  # the preset column was filled in
        assert (await q.claim(w, presets={"q8_0"})).prompts == ["walk"]
    finally:
        await q.close()
