"""The admins' texts: /queue with the workers, and /stats (also `svibot stats`, in English)."""
from __future__ import annotations

from storage.models import Job, UsageReport
from storage.validate import excerpt
from storage.workers import WorkerStatus

from .i18n import Lines, Text, _, _n, _p


def queue_line(line: Text, job: Job) -> Text:
    """One job of /queue: its status line and whose it is."""
    return _("{line} (user {platform}:{user})", line=line, platform=job.platform, user=job.user_id)


def queue_text(lines: list[Text], workers_online: int, worker_lines: list[Text] = ()) -> Lines:
    head = [_("The queue is empty.")] if not lines else [_("Queue:"), *lines]
    tail = [Lines(["  ", w], sep="") for w in worker_lines]
    return Lines([*head, _("GPU workers online: {n}.", n=workers_online), *tail])


def stats_text(report: UsageReport) -> Lines:
    """/stats and `svibot stats`: usage over the report's days, oldest day first."""
    lines: list[Text | str] = [_n("Usage, last {n} day (UTC): stories / segments",
                                  "Usage, last {n} days (UTC): stories / segments", len(report.days))]
    lines += [f"  {d.date}: {d.stories} / {d.segments}" for d in report.days]
    lines.append(_("Active users: {users}. Queue now: {queued} queued, {running} running.",
                   users=report.active_users, queued=report.queued, running=report.running))
    lines.append(_("Median seconds per segment:") if report.seconds_per_segment
                 else _("Median seconds per segment: no segments yet."))
    lines += [_n("  {preset} / {recipe}: {median:g} s ({n} segment)",
                 "  {preset} / {recipe}: {median:g} s ({n} segments)", t.segments, preset=t.preset, recipe=t.recipe, median=float(t.median_s))
              for t in report.seconds_per_segment]
    lines.append(_("Failures:") if report.failures else _("Failures: none."))
    lines += [f"  {count} x {excerpt(reason, 80)}" for reason, count in report.failures]
    refused = sum(count for _reason, count in report.refusals)
    if refused:
        lines.append(_("Stories refused before queueing: {n} ({reasons})", n=refused,
                       reasons=", ".join(f"{reason}: {count}" for reason, count in report.refusals)))
    else:
        lines.append(_("Stories refused before queueing: 0."))
    return Lines(lines)


def worker_line(w: WorkerStatus) -> Text:
    """One worker for /queue: where it runs, on what, and what it is doing."""
    if not w.online:
        doing = _p("worker", "offline")
    elif w.job_id is None:
        doing = _p("worker", "idle")
    else:
        doing = _("job #{job}, segment {segment} of {segments}", job=w.job_id,
                  segment=min((w.segments_done or 0) + 1, w.num_segments or 1), segments=w.num_segments)
    budget = _(", {gib:g} GiB", gib=float(w.vram_gib)) if w.vram_gib else ""
    return _("{host} ({gpu}{budget}, {preset}): {doing}", host=w.host, gpu=w.gpu or _("unknown GPU"),
             budget=budget, preset=w.preset or _("any preset"), doing=doing)
