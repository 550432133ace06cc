"""svibot's durable job queue, input checks and data-dir files: where the bots and the engine meet."""
from .config import DataDir, Limits, QueueConfig, Quota
from .errors import (
    CorruptDatabase,
    DatabaseUnavailable,
    DiskFull,
    InputError,
    JobNotFound,
    LeaseLost,
    NotAllowed,
    SchemaOutdated,
    SchemaTooNew,
    SvibotError,
)
from .models import Event, Job, NewJob, Segment, Stats
from .db import Watch
from .queue import JobQueue
from .workers import WorkerId, WorkerInfo, WorkerStatus
from .validate import PhotoInfo, check_photo, check_photo_size, check_prompts, parse_prompts

__all__ = [
    "CorruptDatabase", "DataDir", "DatabaseUnavailable", "DiskFull", "Event", "InputError", "Job",
    "JobNotFound", "JobQueue", "LeaseLost", "Limits", "NewJob", "NotAllowed", "PhotoInfo", "QueueConfig", "Quota",
    "SchemaOutdated", "SchemaTooNew", "Segment", "Stats", "SvibotError", "Watch", "WorkerId", "WorkerInfo",
    "WorkerStatus", "check_photo", "check_photo_size", "check_prompts", "parse_prompts",
]
