"""The ``zmq://`` transport without worker processes: its URL, a second worker on a taken
address, a push with nobody listening (the outbox keeps the job), and ipc:// addresses."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from zmq_support import free_port

from conveyor import Conveyor
from conveyor.brokers.zmq import ZMQTransport
from conveyor.errors import BrokerError, ConfigError


def test_the_url_says_where_to_push_and_where_to_listen() -> None:
    one = ZMQTransport("zmq://127.0.0.1:5555?events=tcp://127.0.0.1:5556&hwm=50&resend_after=2.5").options
    assert one.push == ["tcp://127.0.0.1:5555"] and str(one.jobs) == "@tcp://127.0.0.1:5555"
    assert str(one.events) == "@tcp://127.0.0.1:5556" and (one.hwm, one.resend_after) == (50, 2.5)
    device = ZMQTransport("zmq://dev:5555?pull=tcp://dev:5556&events=>tcp://dev:5557").options
    assert str(device.jobs) == ">tcp://dev:5556" and str(device.events) == ">tcp://dev:5557"
    many = ZMQTransport("zmq://w1:5555,w2:5555?bind=tcp://0.0.0.0:5555").options
    assert many.push == ["tcp://w1:5555", "tcp://w2:5555"] and str(many.jobs) == "@tcp://0.0.0.0:5555"
    assert ZMQTransport("zmq:///run/conveyor/jobs.sock").options.push == ["ipc:///run/conveyor/jobs.sock"]
    with pytest.raises(ConfigError, match=r"bind= .*or pull="):
        _ = ZMQTransport("zmq://w1:5555,w2:5555").options.jobs
    for bad in ("zmq://", "zmq://host", "zmq://h:1?colour=red", "zmq://h:1?hwm=0", "zmq://h:1?resend_after=x"):
        with pytest.raises(ConfigError):
            ZMQTransport(bad)


def test_a_second_worker_on_a_taken_address_is_refused() -> None:
    url = f"zmq://127.0.0.1:{free_port()}"
    first = ZMQTransport(url)
    service = first.serve()
    try:
        with pytest.raises(BrokerError, match="cannot listen on"):
            ZMQTransport(url).serve()
    finally:
        service.close()


def test_a_push_with_no_worker_fails_at_once_and_the_outbox_keeps_the_job(tmp_path: Path) -> None:
    app = Conveyor(f"zmq://127.0.0.1:{free_port()}?send_timeout=0.2", store=f"sqlite:///{tmp_path}/jobs.db")

    @app.task
    def noop() -> None:
        return None

    app.open()
    try:
        first = noop.enqueue()  # a fresh socket waits send_timeout for a connection
        started = time.monotonic()
        second = noop.enqueue()
        assert time.monotonic() - started < 0.15  # then fails at once: nobody is connected
        assert {first.status, second.status} == {"queued"}
        kept = {d.job_id for d in app.store.outbox(10)}
        assert {first.id, second.id} <= kept
    finally:
        app.close()


def test_an_ipc_address_carries_deliveries(tmp_path: Path) -> None:
    url = f"zmq://{tmp_path}/jobs.sock"
    worker = ZMQTransport(url)
    service = worker.serve()
    try:
        # Another process pushes (this one would put into its own hub directly), and exits at once:
        # what it pushed still leaves.
        script = ("import sys; from conveyor.brokers import Dispatch; from conveyor.brokers.zmq import ZMQTransport; "
                  "ZMQTransport(sys.argv[1]).send([Dispatch('job-1', 'default', 3)])")
        subprocess.run([sys.executable, "-c", script, url], check=True, timeout=30)
        got = worker.receive(["default"], 10, 5.0)
        assert [(d.job_id, d.queue, d.priority) for d in got] == [("job-1", "default", 3)]
        worker.settle(got)
    finally:
        service.close()
