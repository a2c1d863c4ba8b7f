"""A parked pool process takes its host's pushes itself, from the hub's datagram socket it
inherited (no wake-up of the hub's thread on the way), and tells the hub what it took: the hub
still puts back what a dead pool process held, and buffers what the process does not serve."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import orjson
import pytest

from conveyor.brokers import Dispatch, zmq_hub
from conveyor.brokers.zmq import HubService, ZMQTransport
from conveyor.brokers.zmq_wire import encode_dispatches
from conveyor.testing import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract Unix sockets: Linux only")


def _push_later(name: str | None, frame: bytes | list[Dispatch], after: float = 0.2) -> threading.Thread:
    """A producer on this host pushing ``frame`` at the hub's datagram socket ``name`` (as
    ``ZMQTransport.send`` does from another process) ``after`` seconds from now."""
    assert name is not None
    body = frame if isinstance(frame, bytes) else encode_dispatches(frame)

    def push() -> None:
        time.sleep(after)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(body, name)

    thread = threading.Thread(target=push)
    thread.start()
    return thread


def test_a_parked_pool_process_takes_a_local_push_itself_and_the_hub_learns_what_it_holds(
        hub_and_member: tuple[HubService, str, ZMQTransport]) -> None:
    service, members, member = hub_and_member
    hub = service.hub
    member._parent_hub()  # reads the hub's entry (this test process is not its pool process)
    assert member._ask(members, ["default"], 1, 0.0) == []  # the first request goes over the DEALER
    pusher = _push_later(hub.push_name, [Dispatch("job-1", "default", 0)])
    got = member._ask(members, ["default"], 1, 5.0)
    pusher.join()
    assert [d.job_id for d in got] == ["job-1"]
    wait_for(lambda: hub.held() == 1, 5.0, "the hub to learn what the member took")
    assert hub.counters.received == 0 and hub.counters.direct == 1  # its thread never read the push
    assert member._to_hub(b"settle", b"0.n", orjson.dumps([d.tag for d in got]))
    wait_for(lambda: hub.held() == 0, 5.0, "the settle")
    _push_later(hub.push_name, [Dispatch("job-2", "default", 0)], after=0.0).join()  # nobody parked: the hub reads
    wait_for(lambda: hub.depth() == 1, 5.0, "the hub to read pushes again")


def test_what_a_parked_pool_process_does_not_serve_goes_to_the_hub(
        hub_and_member: tuple[HubService, str, ZMQTransport]) -> None:
    service, members, member = hub_and_member
    hub = service.hub
    member._parent_hub()
    assert member._ask(members, ["default"], 1, 0.0) == []
    pushed = [Dispatch("job-a", "default", 0), Dispatch("job-b", "other", 0), Dispatch("job-c", "default", 0)]
    pusher = _push_later(hub.push_name, pushed)
    got = member._ask(members, ["default"], 1, 5.0)
    pusher.join()
    assert [d.job_id for d in got] == ["job-a"]
    wait_for(lambda: hub.depth("other") == 1 and hub.depth("default") == 1, 5.0, "the rest in the hub's buffer")
    assert hub.held() == 1
    assert [d.job_id for d in member._ask(members, ["default"], 5, 0.0)] == ["job-c"]


def test_a_job_message_taken_by_a_parked_pool_process_goes_to_the_hub(
        hub_and_member: tuple[HubService, str, ZMQTransport]) -> None:
    service, members, member = hub_and_member
    member._parent_hub()
    assert member._ask(members, ["default"], 1, 0.0) == []
    body = orjson.dumps({"task": "noop", "args": [], "queue": "default"})
    pusher = _push_later(service.hub.push_name, body)
    got = member._ask(members, ["default"], 1, 5.0)  # given back by the hub, as any job message
    pusher.join()
    assert [d.body for d in got] == [body] and service.hub.counters.messages == 1


@contextlib.contextmanager
def _parked_pool_process(service: HubService, url: str, then: str) -> Iterator[subprocess.Popen[str]]:
    """A process forked off this one (it inherits the hub's push socket, as a pool process does)
    that asks the hub once, then parks on the push socket and runs ``then``; killed at the end."""
    hub = service.hub
    assert hub.push_fd is not None
    script = ("import os, sys; from conveyor.brokers.zmq import ZMQTransport\n"
              "t = ZMQTransport(sys.argv[1]); t.open()\n"
              "assert t.receive(['default'], 1, 0.0) == []\n"
              "print('parked', flush=True)\n" + then)
    child = subprocess.Popen([sys.executable, "-c", script, url], stdout=subprocess.PIPE, text=True,
                             pass_fds=[hub.push_fd], env=dict(os.environ))
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "parked"
        wait_for(lambda: bool(hub._idle), 5.0, "the hub to know the process waits on the push socket")
        yield child
    finally:
        child.kill()
        child.communicate()


def test_a_pool_process_that_dies_holding_a_push_it_took_itself_has_it_put_back(
        hub_and_member: tuple[HubService, str, ZMQTransport]) -> None:
    service, _, member = hub_and_member
    hub = service.hub
    then = ("got = t.receive(['default'], 1, 10.0)\n"
            "print(','.join(d.job_id for d in got), flush=True); os._exit(0)  # before its claim\n")
    with _parked_pool_process(service, member.url, then) as child:
        _push_later(hub.push_name, [Dispatch("job-x", "default", 0)], after=0.0).join()
        assert child.stdout is not None and child.stdout.readline().strip() == "job-x"
        child.wait(10)
        wait_for(lambda: hub.depth() == 1, 5.0, "the dead process's delivery put back")
        assert hub.counters.direct == 1 and hub.counters.requeued_from_dead == 1 and hub.counters.received == 0


def test_a_notice_that_overtakes_its_request_leaves_the_hub_reading_the_push_socket(
        hub_and_member: tuple[HubService, str, ZMQTransport]) -> None:
    """Notices that need not wake the hub (what a member took, settles) go to a socket of their own,
    read first whenever the hub wakes: one can come before the request it ends."""
    service, members, member = hub_and_member
    hub = service.hub
    member._parent_hub()
    assert member._ask(members, ["default"], 1, 0.0) == []
    assert member._dealer is not None and member._answers is not None
    identity = member._dealer.get(0x05)  # ZMQ_ROUTING_ID
    assert member._to_hub(b"held", identity, orjson.dumps([7, [[-1, "job-h", "default", 0, 0]]]), quiet=True)
    ask = [7, ["default"], 1, 5.0, member._answers[1], 1]
    assert member._to_hub(b"take", identity, orjson.dumps(ask))
    wait_for(lambda: hub.held() == 1, 5.0, "the notice read when the request woke the hub")
    _push_later(hub.push_name, [Dispatch("job-1", "default", 0)], after=0.0).join()
    wait_for(lambda: hub.depth() == 1, 5.0, "the hub to read the push (the request was not parked)")


def test_a_pool_process_that_dies_waiting_on_the_push_socket_leaves_it_to_the_hub(
        hub_and_member: tuple[HubService, str, ZMQTransport]) -> None:
    service, _, member = hub_and_member
    hub = service.hub
    with _parked_pool_process(service, member.url, "t.receive(['default'], 1, 30.0)\n") as child:
        child.kill()
        child.wait(10)
        _push_later(hub.push_name, [Dispatch("job-y", "default", 0)], after=0.0).join()
        wait_for(lambda: hub.depth() == 1, 5.0, "the hub to read the push socket again")


def test_a_pool_process_that_parks_after_the_hub_buffered_a_push_gets_it_at_once(
        hub_and_member: tuple[HubService, str, ZMQTransport], monkeypatch: pytest.MonkeyPatch) -> None:
    """A push the hub read while no process waited on the socket is in its buffer: a process that
    parks then must wake the hub (its request is answered from the buffer), even though the hub
    had nothing for it a moment before."""
    service, members, member = hub_and_member
    hub = service.hub
    monkeypatch.setattr(zmq_hub, "TICK", 5.0)  # the hub's own wake-ups far apart
    time.sleep(0.3)  # the running loop takes the new tick
    member._parent_hub()
    assert member._ask(members, ["default"], 1, 0.0) == []  # the hub has nothing: drained
    _push_later(hub.push_name, [Dispatch("job-1", "default", 0)], after=0.0).join()
    wait_for(lambda: hub.depth() == 1, 2.0, "the hub to buffer the push")
    started = time.monotonic()
    got = member._ask(members, ["default"], 1, 3.0)
    assert [d.job_id for d in got] == ["job-1"] and time.monotonic() - started < 1.0
