"""svibot's durable job queue, input checks and data-dir files: where the bots and the engine meet."""
from .config import DataDir, Limits, QueueConfig, Quota
from .errors import (
    CorruptDatabase,
    DiskFull,
    InputError,
    JobNotFound,
    LeaseLost,
    NotAllowed,
    SvibotError,
)
from .models import Event, Job, NewJob, Segment, Stats
from .queue import JobQueue, WorkerId
from .validate import PhotoInfo, check_photo, check_photo_size, check_prompts, parse_prompts

__all__ = [
    "CorruptDatabase", "DataDir", "DiskFull", "Event", "InputError", "Job", "JobNotFound", "JobQueue",
    "LeaseLost", "Limits", "NewJob", "NotAllowed", "PhotoInfo", "QueueConfig", "Quota", "Segment", "Stats",
    "SvibotError", "WorkerId", "check_photo", "check_photo_size", "check_prompts", "parse_prompts",
]
