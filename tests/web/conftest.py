"""Fixtures of the web tests: the web app over a real SQLite store and a real memory broker.

``app`` is a Conveyor app with a few tasks (one whose name, queue and arguments are an XSS
attempt); ``web`` its WSGI app with the token ``TOKEN``; ``api`` a client that sends the token
as a bearer; ``browser`` a client logged in with a session cookie, whose ``csrf`` is read from
the page like app.js does. Helpers live in ``web_support``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uuid_utils
from web_support import TOKEN, Browser, csrf_of, make_app, settle, start
from werkzeug.test import Client

from conveyor import Conveyor
from conveyor.testing import require_service
from conveyor.web import WSGIApplication, create_app


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("CONVEYOR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Conveyor]:
    store = None
    if request.param == "postgres":  # a schema of its own, migrated, dropped at teardown
        require_service(POSTGRES_URL, "PostgreSQL")
        from conveyor.brokers.postgres import PostgresBroker

        url = f"{POSTGRES_URL}?schema=web_{uuid_utils.uuid7().hex[-16:]}"
        store = PostgresBroker(url)
        store.migrate()
    else:
        url = f"sqlite:///{tmp_path}/web.db" if request.param == "sqlite" else "memory://"
    made = make_app(url)
    made.open()
    yield made
    made.close()
    if store is not None:
        store.drop()


@pytest.fixture
def web(app: Conveyor) -> Iterator[WSGIApplication]:
    made = create_app(app, token=TOKEN)
    made.sse_heartbeat = 0.2
    made.pump.interval = 0.05
    yield made
    made.close()


@pytest.fixture
def api(web: WSGIApplication) -> Client:
    return Client(web)


@pytest.fixture
def anonymous(web: WSGIApplication) -> Client:
    return Client(web)


@pytest.fixture
def browser(web: WSGIApplication) -> Browser:
    client = Browser(web)
    response = client.get(f"/login?token={TOKEN}")
    assert response.status_code == 303
    client.csrf = csrf_of(client.get("/"))
    assert client.csrf
    return client


@pytest.fixture
def run_job(app: Conveyor) -> Callable[..., str]:
    """Take the next job of ``queue`` and settle it: ``run_job("media", "failed", error=...)``."""

    def run(queue: str = "default", state: str = "succeeded", result: Any = None,
            error: dict[str, Any] | None = None, progress: float | None = None) -> str:
        (lease,) = app.broker.fetch([queue], 1, 30.0, "test-consumer")
        start(app, lease)
        if progress is not None:
            app.broker.progress(lease.job_id, lease.token, progress, "working")
        if state != "running":
            settle(app, lease, state, result, error)
        return lease.job_id

    return run
