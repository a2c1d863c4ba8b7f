"""``Transport.serve``: the hook through which a worker's supervisor starts what a transport runs
for its pool (ZeroMQ's sockets), and closes it at shutdown."""

from __future__ import annotations

from collections.abc import Sequence

from conveyor.brokers.memory import MemoryBroker
from conveyor.brokers.memory_transport import MemoryTransport
from conveyor.brokers.paired import PairedBroker
from conveyor.brokers.store import Broker
from conveyor.worker.supervisor import _serve_sockets


class _Started:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _Serving(MemoryTransport):
    """A memory transport that records the call to its hook."""

    def __init__(self, url: str = "memory://") -> None:
        super().__init__(url)
        self.calls: list[tuple[Broker | None, list[str] | None]] = []
        self.started = _Started()

    def serve(self, broker: Broker | None = None, queues: Sequence[str] | None = None) -> _Started:
        self.calls.append((broker, None if queues is None else list(queues)))
        return self.started


def test_the_default_hook_starts_nothing() -> None:
    transport = MemoryTransport()
    assert transport.serve() is None
    assert transport.serve(PairedBroker(transport, MemoryBroker()), ["default"]) is None


def test_the_supervisor_serves_a_paired_brokers_transport_with_the_broker_and_queues() -> None:
    transport = _Serving()
    broker = PairedBroker(transport, MemoryBroker())
    started = _serve_sockets(broker, ["default", "mail"])
    assert started is transport.started
    assert transport.calls == [(broker, ["default", "mail"])]


def test_a_native_broker_has_nothing_to_serve() -> None:
    assert _serve_sockets(MemoryBroker(), ["default"]) is None
