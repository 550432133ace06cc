"""A PostgreSQL role for GPU workers on machines you trust less than the bots' host (a notebook, a
rented GPU): it may claim and run jobs and read and write their files, but not queue, delete or
rewrite jobs (prompts, settings, chats), and its events always go to the job's own chat (a trigger)."""
from __future__ import annotations

import re

from .errors import BadSetting

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Columns a worker writes while claiming, heartbeating, finishing and requeueing lost jobs.
WORKER_JOB_COLUMNS = ("state", "attempts", "lease_owner", "lease_host", "lease_pid", "lease_expires",
                      "started_at", "finished_at", "updated_at", "error", "final_path")


def worker_grants(role: str) -> list[str]:
    """The statements (run by the database owner) that give `role` exactly a worker's rights."""
    if not _IDENT.match(role):
        raise BadSetting(f"a role name must be a lower-case SQL identifier (letters, digits, _), not {role!r}")
    return [
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT ON svibot_schema, jobs, segments, events, workers, blobs, blob_chunks TO {role}",
        f"GRANT UPDATE ({', '.join(WORKER_JOB_COLUMNS)}) ON jobs TO {role}",
        f"GRANT INSERT ON segments, events TO {role}",
        f"GRANT INSERT, UPDATE, DELETE ON workers TO {role}",
        f"GRANT INSERT, DELETE ON blobs, blob_chunks TO {role}",
    ]
