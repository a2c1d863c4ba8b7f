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
