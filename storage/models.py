"""Plain records the queue returns: jobs, segments, events, stats."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

PLATFORMS = ("telegram", "discord", "cli")
STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
EVENT_KINDS = ("position", "progress", "segment", "done", "failed", "cancelled")


@dataclass(frozen=True)
class NewJob:
    """What an adapter or the CLI hands to `enqueue`."""

    platform: str
    chat_id: str
    user_id: str
    photo: bytes
    prompts: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # platform extras (reply-to ids, guild, ...)


@dataclass(frozen=True)
class Job:
    id: int
    platform: str
    chat_id: str
    user_id: str
    photo_path: str
    photo_sha256: str
    prompts: list[str]
    settings: dict[str, Any]
    meta: dict[str, Any]
    state: str
    attempts: int
    cancel_requested: bool
    lease_owner: str | None
    lease_host: str | None
    lease_pid: int | None
    lease_expires: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    final_path: str | None
    status_message_id: str | None

    @property
    def num_segments(self) -> int:
        return len(self.prompts)

    @classmethod
    def from_row(cls, row: Any) -> "Job":
        d = dict(row)
        d["prompts"] = json.loads(d["prompts"])
        d["settings"] = json.loads(d["settings"])
        d["meta"] = json.loads(d["meta"])
        d["cancel_requested"] = bool(d["cancel_requested"])
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Segment:
    job_id: int
    index: int
    state: str  # "done" once recorded
    prompt: str
    video_path: str
    carry_path: str | None
    num_frames: int
    duration_s: float  # seconds of video
    gen_seconds: float  # wall time spent generating it

    @classmethod
    def from_row(cls, row: Any) -> "Segment":
        d = dict(row)
        d["index"] = d.pop("idx")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Event:
    id: int
    job_id: int
    platform: str
    chat_id: str
    kind: str
    payload: dict[str, Any]
    created_at: float
    delivered_at: float | None
    message_id: str | None

    @classmethod
    def from_row(cls, row: Any) -> "Event":
        d = dict(row)
        d["payload"] = json.loads(d["payload"])
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Stats:
    queued: int
    running: int
    seconds_per_segment: float | None  # mean of recent segments; None before the first one
    workers_online: int

    def eta_seconds(self, segments_ahead: int) -> float | None:
        if self.seconds_per_segment is None:
            return None
        return segments_ahead * self.seconds_per_segment


@dataclass(frozen=True)
class DayUsage:
    date: str  # UTC, YYYY-MM-DD
    stories: int  # jobs created that day
    segments: int  # segments finished that day


@dataclass(frozen=True)
class SegmentTiming:
    preset: str  # "default" for jobs that named none
    recipe: str
    segments: int
    median_s: float  # median wall seconds to generate one segment


@dataclass(frozen=True)
class UsageReport:
    """What admins see in /stats and `svibot stats`."""

    days: tuple[DayUsage, ...]
    seconds_per_segment: tuple[SegmentTiming, ...]
    failures: tuple[tuple[str, int], ...]  # (reason, jobs), most frequent first
    refusals: tuple[tuple[str, int], ...]  # (reason, stories refused before queueing)
    active_users: int  # distinct platform users with a story in the window
    queued: int  # now
    running: int  # now

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = dict(self.failures)
        d["refusals"] = dict(self.refusals)
        return d
