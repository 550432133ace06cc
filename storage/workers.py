"""Who the workers are: lease owners, what each declares when it registers, and what `svibot workers`
and `/queue` show about them."""
from __future__ import annotations

import os
import socket
import uuid
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class WorkerId:
    """Who holds a lease: a unique owner string plus the host and pid, to spot dead workers."""

    owner: str
    host: str
    pid: int

    @classmethod
    def current(cls) -> "WorkerId":
        host, pid = socket.gethostname(), os.getpid()
        return cls(owner=f"{host}:{pid}:{uuid.uuid4().hex[:8]}", host=host, pid=pid)


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker declares about itself when it starts."""

    preset: str | None = None  # its default preset (jobs that name none get this one)
    gpu: str | None = None  # e.g. "Tesla T4", or "cpu"
    vram_gib: float | None = None  # the VRAM budget it plans with
    ram_gib: float | None = None  # the host-RAM budget it plans with


@dataclass(frozen=True)
class WorkerStatus:
    worker_id: str
    host: str
    pid: int
    preset: str | None
    gpu: str | None
    vram_gib: float | None
    ram_gib: float | None
    started_at: float
    seen_at: float
    online: bool
    job_id: int | None  # the job it holds a lease on, if any
    segments_done: int | None  # of that job
    num_segments: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def doing(self) -> str:
        if not self.online:
            return "offline"
        if self.job_id is None:
            return "idle"
        return f"job #{self.job_id}, segment {min((self.segments_done or 0) + 1, self.num_segments or 1)}" \
               f" of {self.num_segments}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
