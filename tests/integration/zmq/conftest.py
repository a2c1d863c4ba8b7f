"""Fixtures of the ``zmq://`` integration tests (helpers in ``zmq_support``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from zmq_support import Project, free_port, store_url

from conveyor import Conveyor, Task
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.zmq import HubService, ZMQTransport


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The job store of the project: a SQLite file, or a Redis key prefix of its own."""
    return store_url(request.param, tmp_path)


@pytest.fixture
def ports() -> tuple[int, int]:
    """Free local ports: jobs, events."""
    return free_port(), free_port()


@pytest.fixture
def project(tmp_path: Path, store: str, ports: tuple[int, int]) -> Iterator[Project]:
    """A project on ``zmq://127.0.0.1:JOBS?events=tcp://127.0.0.1:EVENTS&resend_after=2``; its
    workers and devices are SIGKILLed at teardown, its Redis keys deleted."""
    jobs, events = ports
    made = Project(tmp_path, f"zmq://127.0.0.1:{jobs}?events=tcp://127.0.0.1:{events}&resend_after=2", store)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def redis_store(tmp_path: Path) -> Iterator[str]:
    """A Redis key prefix of its own, deleted at teardown."""
    url = store_url("redis", tmp_path)
    yield url
    store = RedisBroker(url)
    try:
        store.open()
        keys = list(store._link.client().scan_iter(match=f"*{store.prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            store._link.exec("DEL", *keys[i:i + 500])
    finally:
        store.close()


@pytest.fixture
def worker_here(redis_store: str) -> Iterator[tuple[Conveyor, Task[[], None], HubService]]:
    """An app on ``zmq://`` + Redis, a ``noop`` task, and a worker's hub in this process (nothing
    claims: what is sent stays in its buffer)."""
    app = Conveyor(f"zmq://127.0.0.1:{free_port()}", store=redis_store)

    @app.task
    def noop() -> None:
        return None

    service = app.broker.transport.serve()  # type: ignore[attr-defined]
    app.open()
    try:
        yield app, noop, service
    finally:
        app.close()
        service.close()


@pytest.fixture
def hub_and_member() -> Iterator[tuple[HubService, str, ZMQTransport]]:
    """A hub served here, its members' address, and a transport asking it as its pool process would."""
    url = f"zmq://127.0.0.1:{free_port()}"
    service = ZMQTransport(url).serve()
    members = service.hub.options.members
    assert members is not None
    member = ZMQTransport(url)
    member.open()
    try:
        yield service, members, member
    finally:
        member.close()
        service.close()
