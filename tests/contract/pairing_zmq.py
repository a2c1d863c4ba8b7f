"""The ``zmq://`` transport on the contract suite's pairing axis: a hub of its own per test, bound
on a free local port (``serve()``: what a worker's supervisor does), paired with SQLite, Redis
and PostgreSQL. ``drop()`` stops the hub at teardown."""

from __future__ import annotations

import socket
from pathlib import Path

from conveyor.brokers.zmq import ZMQTransport

STORES = ("sqlite", "redis", "postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_transport(tmp_path: Path) -> ZMQTransport:
    transport = ZMQTransport(f"zmq://127.0.0.1:{free_port()}?events=tcp://127.0.0.1:{free_port()}")
    transport.serve()
    return transport
