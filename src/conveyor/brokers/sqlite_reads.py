"""The queries of the SQLite store: records, pages, counts, statistics, the change feed and the
worker heartbeats. Mixed into :class:`~conveyor.brokers.sqlite.SQLiteBroker`, whose connections
and named queries they use; nothing here writes a job.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import orjson

from .named import read_blocks
from .records import Event, JobPage, JobRecord, WorkerInfo, logged_event

if TYPE_CHECKING:
    from .records import Clock

Q = read_blocks(__package__, "sqlite_schema.sql", "sqlite_queries.sql")
_JSON_FIELDS = ("error", "history")


class SQLiteReads:
    """The read side of the SQLite store."""

    if TYPE_CHECKING:
        clock: Clock

        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...

    # -- store queries -----------------------------------------------------------------------
    @staticmethod
    def _record(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> JobRecord:
        data = {d[0]: v for d, v in zip(cursor.description, row)}
        del data["seq"]
        data.pop("committed_at", None)
        for name in _JSON_FIELDS:
            data[name] = orjson.loads(data[name]) if data[name] is not None else None
        data["history"] = data["history"] or []
        data["cancel_requested"] = bool(data["cancel_requested"])
        return JobRecord(**data)

    def get(self, job_id: str) -> JobRecord | None:
        with self._read() as conn:
            cur = conn.execute(Q["get"], (job_id,))
            row = cur.fetchone()
            return None if row is None else self._record(cur, row)

    def list_jobs(self, *, state: str | None = None, queue: str | None = None, task: str | None = None,
                  limit: int = 50, cursor: str | None = None, search: str | None = None,
                  since: float | None = None, until: float | None = None) -> JobPage:
        if limit <= 0:
            return JobPage([], None)
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("state", state), ("queue", queue), ("task", task)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if cursor is not None:
            where.append("id < ?")
            params.append(cursor)
        if since is not None:
            where.append("created_at >= ?")
            params.append(since)
        if until is not None:
            where.append("created_at < ?")
            params.append(until)
        if search:
            # instr over lower(): no LIKE wildcards to escape; the payload is JSON text (or pickle).
            where.append("(instr(lower(CAST(payload AS TEXT)), ?) > 0 OR instr(lower(error), ?) > 0)")
            params += [search.lower(), search.lower()]
        sql = "SELECT * FROM conveyor_jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit + 1)
        with self._read() as conn:
            cur = conn.execute(sql, params)
            jobs = [self._record(cur, r) for r in cur.fetchall()]
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return JobPage(jobs, jobs[-1].id if more and jobs else None)

    def find_by_key(self, key: str) -> JobRecord | None:
        with self._read() as conn:
            cur = conn.execute(Q["find_by_key"], (key,))
            row = cur.fetchone()
            return None if row is None else self._record(cur, row)

    def stats(self, since: float, bucket: float) -> list[dict[str, Any]]:
        if bucket <= 0:
            raise ValueError(f"bucket must be > 0 seconds, not {bucket}")
        with self._read() as conn:
            rows = conn.execute(Q["stats"], {"since": since, "bucket": bucket}).fetchall()
        return [{"queue": queue, "bucket": since + b * bucket, "succeeded": ok, "failed": failed,
                 "run_mean": run_mean, "run_p95": run_p95, "wait_mean": wait_mean}
                for queue, b, ok, failed, run_mean, run_p95, wait_mean in rows]

    def changes(self, after: str | None, limit: int = 500) -> tuple[list[Event], str]:
        """New jobs (by seq) first, then logged changes. A cursor is ``"<log id>-<seq>"``."""
        limit = max(0, limit)
        with self._read() as conn:
            last_log, oldest_log, last_seq = conn.execute(Q["last_change"]).fetchone()
            if after is None:
                return [], f"{last_log}-{last_seq}"
            log_id, _, seq_text = after.partition("-")
            try:
                log_from, seq_from = int(log_id), int(seq_text)
            except ValueError:
                log_from = seq_from = -1
            # Garbled, from the future, or before what the log still holds: the caller must reload.
            if min(log_from, seq_from) < 0 or log_from > last_log or (oldest_log and log_from < oldest_log - 1):
                return [Event(f"{last_log}-{last_seq}", "reset", {}, self.clock())], f"{last_log}-{last_seq}"
            # The newest jobs were deleted: SQLite hands their seq out again, so look from there.
            seq_from = min(seq_from, last_seq)
            events: list[Event] = []
            for seq, at, *data in conn.execute(Q["new_jobs"], (seq_from, limit)).fetchall():
                seq_from = seq
                events.append(logged_event(f"{log_from}-{seq}", at, "job", *data))
            if len(events) < limit:
                for row in conn.execute(Q["changes"], (log_from, limit - len(events))).fetchall():
                    log_from = row[0]
                    events.append(logged_event(f"{log_from}-{seq_from}", *row[1:]))
        return events, f"{log_from}-{seq_from}"

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with self._read() as conn:
            for queue, state, n in conn.execute(Q["counts"]):
                out.setdefault(queue, {})[state] = n
        return out

    def paused_queues(self) -> set[str]:
        with self._read() as conn:
            return {r[0] for r in conn.execute(Q["paused"])}

    def heartbeat(self, worker: WorkerInfo) -> None:
        now = self.clock()
        info = orjson.dumps(asdict(worker) | {"last_seen": now}).decode()
        with self._write() as conn:
            conn.execute(Q["heartbeat"], (worker.id, now, info))

    def unregister(self, worker_id: str) -> None:
        with self._write() as conn:
            conn.execute(Q["unregister"], (worker_id,))

    def workers(self, max_age: float = 60.0) -> list[WorkerInfo]:
        with self._read() as conn:
            rows = conn.execute(Q["workers"], (self.clock() - max_age,)).fetchall()
        return [WorkerInfo(**orjson.loads(info)) for info, _ in rows]

