"""The route table: one list that the WSGI adapter routes with and the OpenAPI document is built
from, so the two cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass, field

from .handlers import FILTER_STATES


@dataclass(frozen=True)
class Param:
    """A query or path parameter."""

    name: str
    where: str = "query"
    type: str = "string"
    description: str = ""
    enum: tuple[str, ...] = ()
    required: bool = False


@dataclass(frozen=True)
class Route:
    """One method on one URL rule (werkzeug syntax: ``/api/jobs/<id>``).

    ``kind`` is ``api`` (JSON, in the OpenAPI document), ``metrics`` (also documented), ``page``
    (HTML), ``auth`` (login/logout) or ``static``. ``responses`` maps each status the route can
    answer to a component schema name (or None for a body that is not JSON).
    """

    rule: str
    method: str
    endpoint: str
    summary: str
    kind: str = "api"
    params: tuple[Param, ...] = ()
    body: str | None = None
    responses: dict[int, str | None] = field(default_factory=dict)

    @property
    def mutates(self) -> bool:
        return self.method not in ("GET", "HEAD", "OPTIONS")


FILTERS = (
    Param("state", enum=FILTER_STATES,
          description="Only jobs in this state; `reserved`: running jobs that have not started yet."),
    Param("queue", description="Only jobs of this queue."),
    Param("task", description="Only jobs of this task (its registered name)."),
    Param("search", description="Text in the job's arguments or error (any case)."),
    Param("since", description="Created at or after (Unix seconds or ISO 8601)."),
    Param("until", description="Created before (Unix seconds or ISO 8601)."),
)
JOB_ID = Param("id", where="path", required=True, description="The job's id.")
QUEUE = Param("name", where="path", required=True, description="The queue's name.")
# Statuses every authenticated API route can answer besides its own.
COMMON = {401: "Problem"}
MUTATION = {**COMMON, 403: "Problem"}

ROUTES: tuple[Route, ...] = (
    # -- JSON API ----------------------------------------------------------------------------------
    Route("/api/jobs", "POST", "api_enqueue",
          "Enqueue a job. A repeated Idempotency-Key (or an active job's key) returns the existing job with 200.",
          params=(Param("Idempotency-Key", where="header", description="Makes retries of this request safe."),),
          body="EnqueueRequest",
          responses={201: "Job", 200: "Job", 400: "Problem", 404: "Problem", 413: "Problem", 422: "Problem",
                     **MUTATION}),
    Route("/api/jobs", "GET", "api_list_jobs", "List jobs, newest first, filtered; pass cursor for the next page.",
          params=(*FILTERS, Param("limit", type="integer", description="Page size, 1..500 (default 50)."),
                  Param("cursor", description="From the previous page.")),
          responses={200: "JobPage", 422: "Problem", **COMMON}),
    Route("/api/jobs/bulk", "POST", "api_bulk",
          "Retry, cancel or delete the jobs given by ids or matching a filter (at most 10,000 per call).",
          body="BulkRequest", responses={200: "BulkResult", 400: "Problem", 413: "Problem", 422: "Problem",
                                          **MUTATION}),
    Route("/api/jobs/<id>", "GET", "api_get_job", "One job: arguments, result, error, attempts, progress.",
          params=(JOB_ID,), responses={200: "Job", 404: "Problem", **COMMON}),
    Route("/api/jobs/<id>", "DELETE", "api_delete_job", "Delete a job that is not running.",
          params=(JOB_ID,), responses={200: "Deleted", 404: "Problem", 409: "Problem", **MUTATION}),
    Route("/api/jobs/<id>/cancel", "POST", "api_cancel_job",
          "Cancel a job: a waiting one at once, a running one is asked to stop.",
          params=(JOB_ID,), responses={200: "Job", 404: "Problem", **MUTATION}),
    Route("/api/jobs/<id>/retry", "POST", "api_retry_job", "Run a failed or cancelled job again.",
          params=(JOB_ID,), responses={200: "Job", 404: "Problem", 409: "Problem", **MUTATION}),
    Route("/api/queues", "GET", "api_queues", "Every queue: depth by state and whether it is paused.",
          responses={200: "QueueList", **COMMON}),
    Route("/api/queues/<name>/pause", "POST", "api_pause_queue", "Stop handing out the queue's jobs.",
          params=(QUEUE,), responses={200: "QueueState", 422: "Problem", **MUTATION}),
    Route("/api/queues/<name>/resume", "POST", "api_resume_queue", "Hand out the queue's jobs again.",
          params=(QUEUE,), responses={200: "QueueState", 422: "Problem", **MUTATION}),
    Route("/api/queues/<name>/purge", "POST", "api_purge_queue",
          "Delete the queue's waiting jobs (or those in the given states; never running ones).",
          params=(QUEUE,), body="PurgeRequest",
          responses={200: "Purged", 400: "Problem", 413: "Problem", 422: "Problem", **MUTATION}),
    Route("/api/workers", "GET", "api_workers", "Workers heard from in the last minute.",
          responses={200: "WorkerList", **COMMON}),
    Route("/api/stats", "GET", "api_stats", "Finished jobs per queue per time bucket: counts, run and wait times.",
          params=(Param("since", description="Start (Unix seconds or ISO 8601; default an hour ago)."),
                  Param("bucket", type="integer", description="Bucket length in seconds, 1..86400 (default 60).")),
          responses={200: "Stats", 422: "Problem", **COMMON}),
    Route("/api/events", "GET", "api_events",
          "Server-Sent Events of job, queue and worker changes; resumes after Last-Event-ID.",
          params=(Param("kind", description="Comma-separated kinds to receive: job, queue, worker."),
                  Param("job", description="Only the events of this job."),
                  Param("Last-Event-ID", where="header", description="Resume after this event.")),
          responses={200: None, 422: "Problem", **COMMON}),
    Route("/api/openapi.json", "GET", "api_openapi", "This document.", responses={200: None, **COMMON}),
    Route("/metrics", "GET", "metrics", "Prometheus metrics of the store.", kind="metrics",
          responses={200: None, **COMMON}),
    # -- dashboard ---------------------------------------------------------------------------------
    Route("/", "GET", "page_overview", "Overview", kind="page"),
    Route("/jobs", "GET", "page_jobs", "Jobs", kind="page"),
    Route("/jobs/<id>", "GET", "page_job", "Job", kind="page"),
    Route("/failed", "GET", "page_failed", "Failed jobs", kind="page"),
    Route("/queues", "GET", "page_queues", "Queues", kind="page"),
    Route("/workers", "GET", "page_workers", "Workers", kind="page"),
    Route("/login", "GET", "login_form", "Log in", kind="auth"),
    Route("/login", "POST", "login", "Log in", kind="auth"),
    Route("/logout", "POST", "logout", "Log out", kind="auth"),
    Route("/static/<path:filename>", "GET", "static", "Static files", kind="static"),
)
