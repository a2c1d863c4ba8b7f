"""The ``zmq://`` push, kept short and safe: a producer pushes while its Redis write is on its way
(a member's claim that comes before the write is visible is tried again for a moment), and pushes
to a hub on its own host through the hub's datagram socket instead of two ZeroMQ I/O threads."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pytest
import uuid_utils
import zmq
from zmq_support import free_port

from conveyor import Conveyor, Task
from conveyor.brokers import Dispatch, paired
from conveyor.brokers.zmq import HubService, ZMQTransport
from conveyor.brokers.zmq_hub import Hub, HubOptions
from conveyor.brokers.zmq_wire import Endpoint, decode_dispatches

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract Unix sockets: Linux only")


def _uuid7_at(seconds: float) -> str:
    """A UUIDv7 of that time (its first 48 bits are milliseconds since the epoch)."""
    hexed = f"{int(seconds * 1000):012x}" + "7abc8def0123456789ab"
    return f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"


def test_the_push_leaves_while_the_write_is_on_its_way_and_the_unmark_waits_for_it(
        worker_here: tuple[Conveyor, Task[[], None], HubService]) -> None:
    app, noop, service = worker_here
    noop.enqueue()  # loads the scripts and lists the queue
    link = app.store._link  # type: ignore[attr-defined]
    seen: list[str] = []
    real_stream, real_send = link.stream, app.broker.transport.send  # type: ignore[attr-defined]

    def stream(*args: Any, **kwargs: Any) -> Any:
        seen.append("write")
        try:
            return real_stream(*args, **kwargs)
        finally:
            seen.append("written")

    def send(dispatches: Any) -> None:
        seen.append("push")
        real_send(dispatches)

    link.stream = stream
    app.broker.transport.send = send  # type: ignore[attr-defined]
    job = noop.enqueue()
    assert seen == ["write", "push", "written"]  # one round trip, the push inside it
    assert job.status == "queued" and service.hub.depth() == 2


def test_a_claim_that_comes_before_the_write_is_tried_again(
        worker_here: tuple[Conveyor, Task[[], None], HubService]) -> None:
    """What the ordering allows: the delivery reached a member before Redis ran the write."""
    app, noop, service = worker_here
    message = noop.message((), {}, {})
    service.hub.put([Dispatch(message.id, "default", 0)])  # delivered, not yet written
    writer = threading.Timer(0.01, app.store.enqueue, ([message],))
    writer.start()
    try:
        leases = app.broker.fetch(["default"], 10, 30.0, "c1")
    finally:
        writer.join()
    assert [x.job_id for x in leases] == [message.id]


def test_a_write_that_lands_between_the_claim_and_the_look_is_claimed(
        worker_here: tuple[Conveyor, Task[[], None], HubService], monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim found no job, and the look at the store (``get_many``) finds it queued: written in
    between, it is claimed again, not dropped (and left for the resend look, seconds later)."""
    app, noop, service = worker_here
    message = noop.message((), {}, {})
    service.hub.put([Dispatch(message.id, "default", 0)])  # delivered, not yet written
    real_get_many = app.store.get_many

    def get_many(job_ids: Any) -> Any:
        app.store.enqueue([message])  # the write lands just now
        return real_get_many(job_ids)

    monkeypatch.setattr(app.store, "get_many", get_many)
    leases = app.broker.fetch(["default"], 10, 30.0, "c1")
    assert [x.job_id for x in leases] == [message.id]


def test_a_delivery_of_a_job_that_never_comes_is_dropped_after_a_moment(
        worker_here: tuple[Conveyor, Task[[], None], HubService], monkeypatch: pytest.MonkeyPatch) -> None:
    app, _, service = worker_here
    monkeypatch.setattr(paired, "WRITE_WAIT", 0.2)
    young, old = str(uuid_utils.uuid7()), _uuid7_at(time.time() - 3600)
    service.hub.put([Dispatch(old, "default", 0)])
    started = time.monotonic()
    assert app.broker.fetch(["default"], 10, 30.0, "c1") == []
    assert time.monotonic() - started < 0.15  # an old job's id: dropped at once (deleted, pruned)
    service.hub.put([Dispatch(young, "default", 0)])
    started = time.monotonic()
    assert app.broker.fetch(["default"], 10, 30.0, "c1") == []
    assert time.monotonic() - started >= 0.2  # a young one: tried again for WRITE_WAIT, then dropped
    assert service.hub.depth() == 0 and not app.broker._held  # type: ignore[attr-defined]


@linux_only
def test_a_producer_pushes_to_a_hub_on_its_host_through_a_datagram() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    hub = Hub(HubOptions(jobs=Endpoint(address, True)))  # another process's hub, as this one sees it
    hub.start()
    producer = ZMQTransport("zmq://" + address.removeprefix("tcp://"))
    producer.open()
    try:
        producer.send([Dispatch("job-1", "default", 0)])
        deadline = time.monotonic() + 5.0
        while hub.depth() < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert hub.depth() == 1 and hub.counters.received == 1
        assert producer._pusher.sock is None  # no ZeroMQ socket was needed
    finally:
        producer.close()
        hub.stop()


@linux_only
def test_with_no_hub_on_its_host_a_producer_pushes_over_zeromq() -> None:
    port = free_port()
    device = zmq.Context.instance().socket(zmq.PULL)  # a streamer device's input, or a worker elsewhere
    device.bind(f"tcp://127.0.0.1:{port}")
    producer = ZMQTransport(f"zmq://127.0.0.1:{port}?send_timeout=2")
    producer.open()
    try:
        producer.send([Dispatch("job-1", "default", 0)])
        assert producer._pusher.sock is not None
        assert device.poll(5000) and decode_dispatches(device.recv_multipart()) == [Dispatch("job-1", "default", 0)]
    finally:
        producer.close()
        device.close(0)
