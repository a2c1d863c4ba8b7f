"""The reads of a paired broker: the store's, as they are (mixed into
:class:`~conveyor.brokers.paired.PairedBroker`; a transport keeps no job history)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .records import Event, JobPage, JobQuery, JobRecord, WorkerInfo
from .store import JobStore


class PairedQueries:
    """Job reads, the change feed and worker records, answered by the paired store."""

    _store: JobStore

    def get(self, job_id: str) -> JobRecord | None:
        return self._store.get(job_id)

    def get_many(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        return self._store.get_many(job_ids)

    def wait_for(self, job_id: str, timeout: float | None) -> JobRecord | None:
        return self._store.wait_for(job_id, timeout)

    def list_jobs(self, *, state: str | None = None, queue: str | None = None, task: str | None = None,
                  limit: int = 50, cursor: str | None = None) -> JobPage:
        return self._store.list_jobs(state=state, queue=queue, task=task, limit=limit, cursor=cursor)

    def search_jobs(self, query: JobQuery | None = None, /, **filters: Any) -> JobPage:
        return self._store.search_jobs(query, **filters)

    def find_by_key(self, key: str) -> JobRecord | None:
        return self._store.find_by_key(key)

    def counts(self) -> dict[str, dict[str, int]]:
        return self._store.counts()

    def paused_queues(self) -> set[str]:
        return self._store.paused_queues()

    def stats(self, since: float, bucket: float) -> list[dict[str, Any]]:
        return self._store.stats(since, bucket)

    def changes(self, after: str | None, limit: int = 500) -> tuple[list[Event], str]:
        return self._store.changes(after, limit)

    def heartbeat(self, worker: WorkerInfo) -> None:
        self._store.heartbeat(worker)

    def unregister(self, worker_id: str) -> None:
        self._store.unregister(worker_id)

    def workers(self, max_age: float = 60.0) -> list[WorkerInfo]:
        return self._store.workers(max_age)
