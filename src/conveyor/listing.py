"""What the command line prints about jobs, queues and workers: tables fitted to the terminal's
width (80 columns included) and the page of one job. Built from :mod:`conveyor.presentation`, the
same wording the dashboard uses; job data is always printed as text, never read as rich markup."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from .presentation import (
    display_state,
    error_label,
    format_duration,
    format_timestamp,
    relative_time,
    short_id,
    short_task,
    shown_progress,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from .brokers import JobRecord, QueueInfo, WorkerInfo

#: Spaces between two columns (the padding after a cell, and the table's blank column rule).
GAP = 2


@dataclass
class Col:
    """A column: its header, the narrowest it may get (never under the header), which columns give
    up width first (the highest ``give``; ties: the widest), whether its cells may wrap onto more
    lines (else they are cut with "…"), and whether it is dropped when even the narrowest columns
    do not fit (the optional ones go first, right to left)."""

    header: str
    least: int = 0
    give: int = 0
    wrap: bool = False
    optional: bool = False
    #: Makes a cell fit the column's final width (else it is cut with "…"): task names keep their function.
    shorten: Callable[[str, int], str] | None = None


def fit(columns: Sequence[Col], rows: Sequence[Sequence[str]], width: int) -> Table:
    """A borderless table of ``rows`` no wider than ``width``: columns as wide as their content,
    narrowed in their ``give`` order (down to their least width), then optional columns dropped."""
    from rich import box
    from rich.cells import cell_len
    from rich.table import Column, Table
    from rich.text import Text

    keep = list(range(len(columns)))
    header = [cell_len(c.header) for c in columns]
    least = [max(c.least, h) for c, h in zip(columns, header)]
    natural = [max([h, *(cell_len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def narrow(widths: dict[int, int], floor: list[int], over: int) -> int:
        """Narrow the columns that give first, a character at a time, down to ``floor``; return
        how many characters are still too many."""
        while over > 0:
            giving = [i for i in widths if widths[i] > floor[i]]
            if not giving:
                break
            widths[max(giving, key=lambda i: (columns[i].give, widths[i]))] -= 1
            over -= 1
        return over

    while True:
        widths = {i: natural[i] for i in keep}
        over = narrow(widths, least, sum(widths.values()) + GAP * (len(keep) - 1) - width)
        optional = [i for i in keep if columns[i].optional]
        if over <= 0 or not optional:
            break
        keep.remove(optional[-1])
    narrow(widths, header, over)  # still too wide (a very narrow terminal): below the least widths
    table = Table(*(Column(columns[i].header, width=widths[i], no_wrap=not columns[i].wrap,
                           overflow="fold" if columns[i].wrap else "ellipsis") for i in keep),
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, GAP - 1, 0, 0),
                  header_style="bold")
    for row in rows:
        cells = [(columns[i].shorten or _as_is)(row[i], widths[i]) for i in keep]
        table.add_row(*map(Text, cells))
    return table


def _initials(task: str) -> str:
    *module, function = task.split(".")
    return ".".join([*(m[:1] for m in module), function])


def _as_is(text: str, width: int) -> str:
    return text


def jobs_table(records: Sequence[JobRecord], width: int, now: float | None = None) -> Table:
    """The jobs list: short id, task, queue, state (``reserved``, ``failed, retry at …``), tries,
    age, run time, progress and the error."""
    now = time.time() if now is None else now
    rows = []
    for r in records:
        fraction, _ = shown_progress(r)
        took = None
        if r.started_at is not None:
            took = (r.finished_at if r.finished_at is not None else now) - r.started_at
        rows.append([short_id(r.id), r.task, r.queue, display_state(r), f"{r.attempts}/{r.max_attempts}",
                     relative_time(r.created_at, now), format_duration(took),
                     "" if fraction is None else f"{fraction:.0%}", error_text(r)])
    # A task name narrows down to its function's name after its module's initials (m.media.transcode
    # -> m.m.transcode); the error keeps a fifth of the width.
    task = min(28, max((len(_initials(r.task)) for r in records), default=0))
    columns = [Col("id", 8), Col("task", max(12, task), give=2, shorten=short_task),
               Col("queue", 6, give=1, optional=True), Col("state", 9, give=1, wrap=True), Col("tries"),
               Col("created", 9, wrap=True), Col("took", 6, optional=True), Col("done", optional=True),
               Col("error", min(40, max(12, width // 5)), give=3)]
    return fit(columns, rows, width)


def error_text(r: JobRecord) -> str:
    """The job's error in a line: ``Type: message``, after ``#N`` when it is an earlier attempt's."""
    label = error_label(r)
    if label is None or r.error is None:
        return ""
    text = f"{r.error.get('type')}: {r.error.get('message', '')}"
    if label == "error":
        return text
    attempt = label.rpartition(" ")[2]
    return f"#{attempt} {text}" if attempt.isdigit() else text


#: The columns of ``conveyor queues``: the stored states, with ``reserved`` taken out of ``running``.
QUEUE_STATES = ("queued", "scheduled", "reserved", "running", "succeeded", "failed", "cancelled")


def queue_counts(q: QueueInfo, reserved: int) -> dict[str, int]:
    """``q``'s counts as shown: ``running`` only what is executing, ``reserved`` the rest."""
    return {**q.counts, "reserved": reserved, "running": max(0, q.counts.get("running", 0) - reserved)}


def queues_table(queues: Sequence[QueueInfo], reserved: dict[str, int], width: int) -> Table:
    rows = [[q.name + (PAUSED if q.paused else ""),
             *(str(queue_counts(q, reserved.get(q.name, 0)).get(s, 0)) for s in QUEUE_STATES)] for q in queues]
    return fit([Col("queue", 8 + len(PAUSED), give=1, shorten=_queue_name), *(Col(s) for s in QUEUE_STATES)],
               rows, width)


PAUSED = " (paused)"


def _queue_name(text: str, width: int) -> str:
    """A queue's name cut to ``width``, keeping its "(paused)" mark."""
    if len(text) <= width:
        return text
    mark = PAUSED if text.endswith(PAUSED) else ""
    return text[:max(1, width - len(mark) - 1)] + "…" + mark


def workers_table(workers: Sequence[WorkerInfo], tasks: dict[str, str], width: int,
                  now: float | None = None) -> Table:
    """One row per consumer: host, pid, pool, queues, what it runs now (task and short id)."""
    now = time.time() if now is None else now
    rows = []
    for w in workers:
        doing = ", ".join(f"{short_task(tasks[i], 20) if i in tasks else '?'} {short_id(i)}" for i in w.current)
        rows.append([w.hostname, str(w.pid), w.pool, ",".join(w.queues), doing or "idle", str(w.processed),
                     str(w.failed), relative_time(w.last_seen, now)])
    columns = [Col("host", 8, give=1), Col("pid"), Col("pool"), Col("queues", 8, give=1, optional=True),
               Col("running now", 16, give=2, wrap=True), Col("done", optional=True), Col("failed", optional=True),
               Col("seen", optional=True)]
    return fit(columns, rows, width)


def print_job(console: Console, record: JobRecord, data: dict[str, Any], now: float | None = None) -> None:
    """One job, a field a line (fields without a value are left out), then its error's traceback
    with each of its lines kept whole (a narrow terminal folds it; it is never re-wrapped)."""
    from rich.text import Text

    now = time.time() if now is None else now

    def line(name: str, value: Any) -> None:
        if value is None or value == "":
            return
        shown = orjson.dumps(value, default=str).decode() if isinstance(value, (dict, list)) else str(value)
        console.print(Text(f"{name:>12} ", style="bold"), Text(shown), highlight=False)

    line("id", record.id)
    line("task", record.task)
    line("queue", record.queue)
    line("state", display_state(record))
    line("priority", record.priority or None)
    line("key", record.key)
    line("attempts", f"{record.attempts} of {record.max_attempts}")
    line("timeout", None if record.timeout is None else format_duration(record.timeout))
    for name in ("created_at", "run_at", "started_at", "finished_at"):
        value = getattr(record, name)
        if value is not None:
            line(name[:-3], f"{format_timestamp(value)} UTC ({relative_time(value, now)})")
    if record.started_at is not None and record.finished_at is not None:
        line("took", format_duration(record.finished_at - record.started_at))
    line("arguments", data["payload"])
    fraction, message = shown_progress(record)
    if fraction is not None:
        line("progress", f"{fraction:.0%} {message or ''}".rstrip())
    if record.state == "succeeded":
        line("result", "null" if data["result"] is None else data["result"])
    for entry in record.history:
        err = entry.get("error") or {}
        what = f": {err.get('type')}: {err.get('message')}" if err else ""
        when = format_timestamp(entry.get("at"), "?")
        line(f"attempt {entry.get('attempt')}", f"{entry.get('state')} at {when}{what}")
    label = error_label(record)
    if record.error and label:
        line(label, f"{record.error.get('type')}: {record.error.get('message', '')}")
        if record.error.get("traceback"):
            console.print(Text(record.error["traceback"].rstrip("\n")), soft_wrap=True, highlight=False)
