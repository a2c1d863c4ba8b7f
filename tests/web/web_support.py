"""Helpers shared by the web tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import re
from typing import Any

from werkzeug.test import Client, TestResponse

from conveyor import Conveyor
from conveyor.brokers import Lease, Outcome, WorkerInfo

TOKEN = "test-token-0123456789"
XSS = "<script>alert(1)</script>"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
#: A task name too long for the jobs list (shortened there, in full in its title).
LONG_TASK = "conveyor_tests.media.thumbnails.generate_thumbnail"


def make_app(url: str) -> Conveyor:
    app = Conveyor(url, max_payload=4096)

    @app.task(name="tests.add")
    def add(a: int, b: int = 1) -> int:
        return a + b

    @app.task(name="tests.echo", queue="media", retries=0)
    def echo(text: str) -> str:
        return text

    @app.task(name=XSS, queue=XSS, retries=0)
    def evil(text: str) -> str:
        return text

    @app.task(name=LONG_TASK, retries=0)
    def thumbnail(path: str) -> str:
        return path

    return app


class Browser(Client):
    """A client with a session cookie and the page's CSRF token."""

    csrf: str = ""


def csrf_of(response: TestResponse) -> str:
    found = re.search(r'<meta name="conveyor-csrf" content="([^"]*)">', response.get_data(as_text=True))
    assert found, "no CSRF meta tag"
    return found.group(1)


def settle(app: Conveyor, lease: Lease, state: str, result: Any = None, error: dict[str, Any] | None = None) -> None:
    data = app.serializer.dumps(result) if state == "succeeded" else None
    now = app.broker.clock()
    assert app.broker.ack([Outcome(lease.job_id, lease.token, state, result=data, error=error,
                                   started_at=now - 0.5, finished_at=now)]) == [True]


def worker(app: Conveyor, current: list[str] | None = None, hostname: str = "host-1") -> WorkerInfo:
    info = WorkerInfo(id="worker-1", hostname=hostname, pid=4242, queues=["default", "media"],
                      started_at=app.broker.clock() - 90, current=current or [], rss=50 * 2**20, processed=7)
    app.broker.heartbeat(info)
    return info


def start(app: Conveyor, lease: Lease) -> None:
    """Mark a leased job as really started (what a worker does when the task begins)."""
    app.broker.mark_started([(lease.job_id, lease.token, app.broker.clock())])


def reserve(app: Conveyor, queue: str = "default") -> Lease:
    """Lease the next job of ``queue`` without starting it: a *reserved* job (running, no ``started_at``)."""
    (lease,) = app.broker.fetch([queue], 1, 30.0, "test-consumer")
    record = app.broker.get(lease.job_id)
    assert record is not None and record.state == "running" and record.started_at is None
    return lease


def fail_once(app: Conveyor, queue: str = "default", *, retry_in: float = -1.0,
              error: dict[str, Any] | None = None) -> Lease:
    """Run the next job of ``queue`` and fail the attempt with a retry ``retry_in`` seconds from
    now (in the past by default: it can be fetched again at once)."""
    (lease,) = app.broker.fetch([queue], 1, 30.0, "test-consumer")
    start(app, lease)
    now = app.broker.clock()
    failure = error or {"type": "TimeoutError", "message": "the CDN was slow"}
    assert app.broker.ack([Outcome(lease.job_id, lease.token, "scheduled", error=failure, run_at=now + retry_in,
                                   started_at=now - 0.2, finished_at=now)]) == [True]
    return lease
