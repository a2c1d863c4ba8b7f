"""What keeps a ``zmq://`` round trip short, and safe: a producer's outbox unmark rides on its next
Redis call instead of costing one of its own (yet a lost send is still resent), and a pool
process gets its hub's answers on a datagram socket (or over ZeroMQ when they do not fit one)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
import zmq
from zmq_support import free_port

from conveyor import Conveyor, Task
from conveyor.brokers import Dispatch
from conveyor.brokers.redis import pairing
from conveyor.brokers.zmq import HubService, ZMQTransport
from conveyor.testing import wait_for


def _round_trips(store: Any) -> list[str]:
    """Count the round trips to Redis through ``store``'s link (``exec``: one command; ``stream``:
    a pipeline; every other call of the link goes through one of them)."""
    calls: list[str] = []
    link = store._link
    for name in ("exec", "stream"):
        real = getattr(link, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        setattr(link, name, counted)
    return calls


def _marked(store: Any, queue: str = "default") -> list[str]:
    """Job ids still marked in the outbox of ``queue`` (its ready list and ``sending``), read raw."""
    base = store._base(queue)
    ready = store._link.exec("LRANGE", base + ":ready:0", 0, -1) or []
    sending = store._link.exec("ZRANGE", base + ":sending", 0, -1) or []
    return sorted(x.decode() for x in [*ready, *sending])


def test_an_enqueue_costs_one_round_trip_and_its_unmark_goes_with_the_next_call(
        worker_here: tuple[Conveyor, Task[[], None], HubService], monkeypatch: pytest.MonkeyPatch) -> None:
    app, noop, service = worker_here
    monkeypatch.setattr(pairing, "UNMARK_WITHIN", 0.5)  # time enough to look before the thread sends
    noop.enqueue()  # the first call loads scripts and lists the queue: not counted
    wait_for(lambda: _marked(app.store) == [], 5.0, "the first unmark sent alone")
    calls = _round_trips(app.store)
    first = noop.enqueue()
    assert calls == ["stream"]  # the write (the push is sent while it is on its way); the unmark waits
    assert _marked(app.store) == [first.id]
    del calls[:]
    second = noop.enqueue()  # carries the first's unmark
    assert calls == ["stream"]  # one pipeline: the unmark, then the write
    assert _marked(app.store) == [second.id]
    wait_for(lambda: _marked(app.store) == [], 5.0, "the unmark sent alone")  # no call came
    assert service.hub.depth() == 3  # every job was delivered once


def test_a_big_batch_is_unmarked_at_once_by_one_script_call(
        worker_here: tuple[Conveyor, Task[[], None], HubService], monkeypatch: pytest.MonkeyPatch) -> None:
    """Maintenance resending the outbox, or a bulk enqueue: two raw commands per job would cost the
    supervisor (which also serves the hub) more CPU than the round trip they save."""
    app, noop, _ = worker_here
    monkeypatch.setattr(pairing, "UNMARK_WITHIN", 5.0)  # a lazy unmark would still be waiting
    noop.enqueue()  # loads the scripts and lists the queue
    jobs = noop.enqueue_many([() for _ in range(pairing.LAZY_UNMARK_MAX + 1)])
    assert not set(_marked(app.store)) & {j.id for j in jobs}  # unmarked with the send, not later


def test_a_producer_that_dies_before_its_unmark_leaves_the_job_to_maintenance(redis_store: str) -> None:
    port = free_port()
    url = f"zmq://127.0.0.1:{port}"
    lost = zmq.Context.instance().socket(zmq.PULL)  # takes the push and never reads it: a worker that died
    lost.bind(f"tcp://127.0.0.1:{port}")
    try:
        script = ("import os, sys; from conveyor import Conveyor\n"
                  "app = Conveyor(sys.argv[1], store=sys.argv[2])\n"
                  "@app.task\ndef noop(): return None\n"
                  "print(noop.enqueue().id, flush=True); os._exit(0)  # before the unmark goes\n")
        out = subprocess.run([sys.executable, "-c", script, url, redis_store], check=True, timeout=60,
                             capture_output=True, text=True)
        job_id = out.stdout.strip()
    finally:
        lost.close(0)
    app = Conveyor(f"{url}?bind=tcp://127.0.0.1:{free_port()}", store=redis_store)  # a new worker
    service = app.broker.transport.serve(app.broker)  # type: ignore[attr-defined]
    app.open()
    try:
        assert job_id in _marked(app.store)
        app.broker.recover()  # maintenance: the outbox sends it again, here
        got = app.broker.transport.receive(["default"], 10, 1.0)
        assert [d.job_id for d in got] == [job_id]
    finally:
        app.close()
        service.close()


def test_a_job_unmarked_lazily_is_not_sent_again_while_its_delivery_waits(
        worker_here: tuple[Conveyor, Task[[], None], HubService], redis_store: str) -> None:
    app, noop, service = worker_here
    other = Conveyor(app.settings.url, store=redis_store)  # another process's maintenance
    other.open()
    try:
        job = noop.enqueue()
        wait_for(lambda: _marked(app.store) == [], 5.0, "the unmark sent alone")
        other.broker.recover()
        assert service.hub.depth() == 1 and service.hub.counters.duplicates == 0
        assert job.status == "queued"
    finally:
        other.close()


def test_a_pool_process_gets_its_answers_on_a_datagram_or_over_zeromq_when_too_big(
        hub_and_member: tuple[HubService, str, ZMQTransport]) -> None:
    service, members, member = hub_and_member
    service.hub.put([Dispatch("job-1", "default", 0)])
    started = time.monotonic()
    got = member._ask(members, ["default"], 10, 5.0)
    assert [d.job_id for d in got] == ["job-1"] and time.monotonic() - started < 2.0
    if sys.platform.startswith("linux"):
        assert member._answers is not None  # the answer's way
    parked = member._ask(members, ["default"], 10, 0.3)  # nothing: the hub answers when the wait ends
    assert parked == []
    many = [Dispatch(f"job-{i:05d}-{'x' * 40}", "default", 0) for i in range(2000)]  # ~150 kB answer
    service.hub.put(many)
    got = member._ask(members, ["default"], 5000, 5.0)
    assert len(got) == 2000
    service.hub.put([Dispatch("job-2", "default", 0)])
    assert [d.job_id for d in member._ask(members, ["default"], 10, 5.0)] == ["job-2"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract Unix sockets: Linux only")
def test_a_pool_process_sends_its_requests_and_notices_to_the_hub_as_datagrams(
        hub_and_member: tuple[HubService, str, ZMQTransport]) -> None:
    service, members, member = hub_and_member
    assert service.hub.member_name is not None
    member._parent_hub()  # reads the hub's entry (this test process is not its pool process)
    sent: list[tuple[bytes, bool]] = []
    real = member._to_hub

    def to_hub(kind: bytes, identity: bytes, body: bytes, quiet: bool = False) -> bool:
        done = real(kind, identity, body, quiet)
        sent.append((kind, done))
        return done

    member._to_hub = to_hub  # type: ignore[method-assign]
    service.hub.put([Dispatch("job-1", "default", 0), Dispatch("job-2", "default", 0)])
    first = member._ask(members, ["default"], 1, 5.0)
    assert [d.job_id for d in first] == ["job-1"] and sent == []  # the first request: over the DEALER
    second = member._ask(members, ["default"], 1, 5.0)
    assert [d.job_id for d in second] == ["job-2"] and sent == [(b"take", True)]
    assert service.hub.held() == 2
    assert member._to_hub(b"settle", b"0.n", orjson.dumps([d.tag for d in first + second]))
    wait_for(lambda: service.hub.held() == 0, 5.0, "the settle by datagram")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract Unix sockets: Linux only")
def test_a_malformed_datagram_to_the_hub_is_dropped_and_the_hub_goes_on() -> None:
    url = f"zmq://127.0.0.1:{free_port()}?events=tcp://127.0.0.1:{free_port()}"
    service = ZMQTransport(url).serve()
    assert service.hub.member_name is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        for junk in (b"no separators", b"take\0x\0not json", b"what\0x\0[]", b"events\0x\0[1, [2]]"):
            sock.sendto(junk, service.hub.member_name)
    try:
        time.sleep(0.2)
        assert service.hub.alive
    finally:
        service.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract Unix sockets: Linux only")
def test_a_pool_process_drops_a_malformed_datagram_and_still_gets_its_answer(
        hub_and_member: tuple[HubService, str, ZMQTransport]) -> None:
    service, members, member = hub_and_member
    assert member._ask(members, ["default"], 1, 0.0) == []  # makes its datagram socket
    assert member._answers is not None and member._answers[1] is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"not an answer", member._answers[1])
    service.hub.put([Dispatch("job-1", "default", 0)])
    assert [d.job_id for d in member._ask(members, ["default"], 1, 5.0)] == ["job-1"]
