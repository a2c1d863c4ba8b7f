"""The app's ``max_payload`` reaches a paired broker: a job message over it, published by another
client onto the transport, is recorded as failed with the reason, as the stores refuse it."""

from __future__ import annotations

from pathlib import Path

import orjson

from conveyor import Conveyor
from conveyor.brokers.memory_transport import MemoryTransport
from conveyor.brokers.paired import PairedBroker
from conveyor.brokers.transport import Delivery


def _publish(transport: MemoryTransport, body: bytes) -> None:
    """A job message as another client publishes it (a delivery with a body and no job id)."""
    with transport._ready:
        transport._push(Delivery("", "default", 0, 0, 10**9, False, body))
        transport._ready.notify_all()


def test_a_job_message_over_the_apps_max_payload_is_failed_with_the_reason(tmp_path: Path) -> None:
    app = Conveyor("memory://", store=f"sqlite:///{tmp_path}/jobs.db", max_payload=200)
    broker = app.broker
    assert isinstance(broker, PairedBroker) and isinstance(broker.transport, MemoryTransport)
    assert broker.max_payload == 200
    assert broker.fork().max_payload == 200
    broker.open()
    try:
        body = orjson.dumps({"task": "anything", "args": ["x" * 300]})
        assert len(body) > 200
        _publish(broker.transport, body)
        assert broker.fetch(["default"], 10, 30.0, "c1") == []
        failed = broker.search_jobs(state="failed").jobs
        assert len(failed) == 1 and failed[0].error is not None
        assert failed[0].error["type"] == "PayloadTooLarge"
        assert "over the limit of 200 bytes" in failed[0].error["message"]
    finally:
        broker.close()


def test_a_job_message_within_the_apps_max_payload_is_run(tmp_path: Path) -> None:
    app = Conveyor("memory://", store=f"sqlite:///{tmp_path}/jobs.db", max_payload=200)
    broker = app.broker
    assert isinstance(broker, PairedBroker) and isinstance(broker.transport, MemoryTransport)
    broker.open()
    try:
        _publish(broker.transport, orjson.dumps({"task": "anything", "args": [1]}))
        leases = broker.fetch(["default"], 10, 30.0, "c1")
        assert [x.task for x in leases] == ["anything"]
    finally:
        broker.close()
