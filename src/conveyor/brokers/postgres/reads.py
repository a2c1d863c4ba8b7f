"""Control and queries of the PostgreSQL store: cancel, retry, pause, purge, retention, records,
pages, counts, statistics, heartbeats and the change feed read from the database.

Mixed into :class:`~conveyor.brokers.postgres.PostgresBroker`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ...errors import JobNotFound
from ..records import Event, JobPage, JobRecord, WorkerInfo, logged_event

if TYPE_CHECKING:
    from ..records import Clock

#: The change log keeps no event older than this many seconds.
EVENT_AGE = 600.0
#: Rows one retention statement deletes at most (a short transaction each).
PRUNE_BATCH = 5000


class PostgresReads:
    """The control and read side of the PostgreSQL store."""

    if TYPE_CHECKING:
        clock: Clock
        q: dict[str, str]

        def _run(self, work: Any) -> Any: ...
        def _exec(self, name: str, params: dict[str, Any] | None = None, *, fetch: str = "all") -> Any: ...

    # -- control -----------------------------------------------------------------------------
    def cancel(self, job_id: str) -> str:
        row = self._exec("cancel", {"id": job_id, "now": self.clock()}, fetch="one")
        if row is None or row[0] is None:
            raise JobNotFound(job_id)
        return str(row[0])

    def retry(self, job_id: str) -> str:
        try:
            queued = self._exec("retry_by_hand", {"id": job_id, "now": self.clock()}, fetch="count")
        except psycopg.errors.UniqueViolation:
            raise ValueError(f"job {job_id}: another active job holds the same key") from None
        if queued:
            return "queued"
        row = self._exec("state_of", {"id": job_id}, fetch="one")
        if row is None:
            raise JobNotFound(job_id)
        raise ValueError(f"job {job_id} is {row[0]}; only failed or cancelled jobs can be retried")

    def delete(self, job_id: str) -> bool:
        return bool(self._exec("delete", {"id": job_id}, fetch="count"))

    def pause(self, queue: str) -> None:
        self._exec("pause", {"name": queue, "paused": True}, fetch="count")

    def resume(self, queue: str) -> None:
        self._exec("pause", {"name": queue, "paused": False}, fetch="count")

    def purge(self, queue: str | None, states: Iterable[str] = ("queued", "scheduled")) -> int:
        wanted = [s for s in states if s != "running"]
        if not wanted:
            return 0
        return int(self._exec("purge", {"states": wanted, "queue": queue}, fetch="count"))

    def prune(self, older_than: float) -> int:
        """Delete finished jobs older than ``older_than`` seconds in batches of
        :data:`PRUNE_BATCH`, each its own short transaction (the queue is never locked)."""
        cutoff = self.clock() - older_than
        total = 0

        def batch(conn: psycopg.Connection[Any]) -> int:
            with conn.transaction():
                conn.execute(self.q["quiet"])  # pruned rows are no news
                return conn.execute(self.q["prune_batch"], {"cutoff": cutoff,
                                                            "batch": PRUNE_BATCH}).rowcount

        while True:
            n = int(self._run(batch))
            total += n
            if n < PRUNE_BATCH:
                break
        self._exec("forget_workers", {"before": self.clock() - max(older_than, 3600.0)}, fetch="count")
        self._trim_changes()
        return total

    # -- records -----------------------------------------------------------------------------
    @staticmethod
    def _record(row: dict[str, Any]) -> JobRecord:
        row.pop("seq", None)
        row.pop("committed_at", None)
        row["history"] = row["history"] or []
        return JobRecord(**row)

    def _records(self, query: str, params: Any) -> list[JobRecord]:
        def work(conn: psycopg.Connection[Any]) -> list[JobRecord]:
            with conn.cursor(row_factory=dict_row) as cur:
                return [self._record(r) for r in cur.execute(query, params).fetchall()]

        return self._run(work)  # type: ignore[no-any-return]

    def get(self, job_id: str) -> JobRecord | None:
        found = self._records(self.q["get"], {"id": job_id})
        return found[0] if found else None

    def get_many(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        if not job_ids:
            return []
        by_id = {r.id: r for r in self._records(self.q["get_many"], {"ids": list(job_ids)})}
        return [by_id.get(j) for j in job_ids]

    def list_jobs(self, *, state: str | None = None, queue: str | None = None, task: str | None = None,
                  limit: int = 50, cursor: str | None = None, search: str | None = None,
                  since: float | None = None, until: float | None = None) -> JobPage:
        if limit <= 0:
            return JobPage([], None)
        where: list[str] = []
        params: dict[str, Any] = {"limit": limit + 1}
        for column, value in (("state", state), ("queue", queue), ("task", task)):
            if value is not None:
                where.append(f"{column} = %({column})s")
                params[column] = value
        if state == "running":
            where.append("lease_until IS NOT NULL")  # the same rows: lets the planner take conveyor_jobs_leases
        if cursor is not None:
            where.append("id < %(cursor)s")
            params["cursor"] = cursor
        if since is not None:
            where.append("created_at >= %(since)s")
            params["since"] = since
        if until is not None:
            where.append("created_at < %(until)s")
            params["until"] = until
        if search:
            # strpos over lower(): no LIKE wildcards to escape; the payload is JSON text (or pickle).
            where.append("(strpos(lower(convert_from(payload, 'UTF8')), %(search)s) > 0 "
                         "OR strpos(lower(error::text), %(search)s) > 0)")
            params["search"] = search.lower()
        table = self.q["get"].split(" WHERE ")[0]  # SELECT * FROM <schema>.conveyor_jobs
        query = table + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT %(limit)s"
        jobs = self._records(query, params)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return JobPage(jobs, jobs[-1].id if more and jobs else None)

    def find_by_key(self, key: str) -> JobRecord | None:
        found = self._records(self.q["find_by_key"], {"key": key})
        return found[0] if found else None

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for queue, state, n in self._exec("counts"):
            out.setdefault(queue, {})[state] = n
        return out

    def paused_queues(self) -> set[str]:
        return {r[0] for r in self._exec("paused")}

    def stats(self, since: float, bucket: float) -> list[dict[str, Any]]:
        if bucket <= 0:
            raise ValueError(f"bucket must be > 0 seconds, not {bucket}")
        rows = self._exec("stats", {"since": since, "bucket": bucket})
        return [{"queue": queue, "bucket": since + b * bucket, "succeeded": ok, "failed": failed,
                 "run_mean": run_mean, "run_p95": run_p95, "wait_mean": wait_mean}
                for queue, b, ok, failed, run_mean, run_p95, wait_mean in rows]

    # -- workers -----------------------------------------------------------------------------
    def heartbeat(self, worker: WorkerInfo) -> None:
        now = self.clock()
        self._exec("heartbeat", {"id": worker.id, "now": now, "info": Jsonb(asdict(worker) | {"last_seen": now})},
                   fetch="count")

    def unregister(self, worker_id: str) -> None:
        self._exec("unregister", {"id": worker_id}, fetch="count")

    def workers(self, max_age: float = 60.0) -> list[WorkerInfo]:
        return [WorkerInfo(**info) for (info,) in self._exec("workers", {"since": self.clock() - max_age})]

    # -- the change feed ---------------------------------------------------------------------
    def changes(self, after: str | None, limit: int = 500) -> tuple[list[Event], str]:
        """Changes logged by the database's triggers since the cursor.

        A cursor is ``"<snapshot>|<snapshot>|<tx>-<id>"``: the changes committed after the first
        snapshot and visible in the second, read up to that position (the last two parts are empty
        when the read was complete). Exact whatever order concurrent transactions commit in."""
        limit = max(0, limit)
        now_snapshot, now_xmax, trimmed = self._exec("change_bounds", fetch="one")
        if after is None:
            return [], f"{now_snapshot}||"
        parts = after.split("|")
        try:
            prev, cur, pos = parts
            prev_xmax = int(prev.split(":")[1])
            tx, ident = (int(x) for x in pos.split("-")) if pos else (0, 0)
        except ValueError:
            return self._reset(now_snapshot)
        if prev_xmax > int(now_xmax) or (trimmed is not None and int(trimmed.split("-")[0]) >= int(prev.split(":")[0])):
            return self._reset(now_snapshot)  # from the future, or older than what the log still holds
        try:
            rows = self._exec("changes", {"prev": prev, "cur": cur or None, "tx": str(tx), "id": ident,
                                          "limit": limit}) if limit else []
        except psycopg.DataError:
            return self._reset(now_snapshot)
        if not rows:
            return [], (after if not cur else f"{cur}||")
        seen = rows[0][0]
        events = [logged_event(f"{prev}|{seen}|{r[1]}-{r[2]}", *r[3:]) for r in rows]
        if len(rows) < limit:
            return events, f"{seen}||"
        return events, events[-1].id

    def _reset(self, now_snapshot: str) -> tuple[list[Event], str]:
        cursor = f"{now_snapshot}||"
        return [Event(cursor, "reset", {}, self.clock())], cursor

    def _trim_changes(self) -> None:
        self._exec("trim_changes", {"cutoff": self.clock() - EVENT_AGE}, fetch="count")


def _key(cursor: str) -> tuple[int, int]:
    tx, _, ident = cursor.partition("-")
    return int(tx), int(ident)

