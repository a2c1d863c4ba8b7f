"""A consumer's heartbeat and its acks never deadlock on PostgreSQL.

The heartbeat thread extends the held leases, and held leases include finished jobs whose ack the
acker thread may be sending at that moment. Two transactions updating the same rows in different
orders deadlock; PostgreSQL aborts one after ``deadlock_timeout`` (1 s), and an aborted ack makes
its jobs run again. Seen in the peer benchmark's drain ("ack of 40 job(s) failed: deadlock
detected"). The fix: the runner leaves jobs waiting for their ack out of its extends, and the
store's extend skips rows another transaction holds instead of waiting for them. The extend does
not wait for the ack either: a running job's lease stays fresh while an ack waits for a connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest
import uuid_utils
from pg_support import migrated_store

from conveyor import Conveyor
from conveyor.brokers import Message, Outcome
from conveyor.brokers.postgres import PostgresBroker
from conveyor.brokers.records import ExtendResult
from conveyor.worker.runner import Runner

PAYLOAD = b'{"args":[],"kwargs":{}}'


class OverlapRecordingBroker(PostgresBroker):
    """The real store, which also records whether an extend ever named a job of the ack in flight,
    and how many extends ran while an ack was in flight (they may: on other rows)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.acking: set[str] = set()
        self.overlaps = 0
        self.beside_acks = 0
        self.extends = 0

    def fork(self) -> OverlapRecordingBroker:
        return self

    def ack(self, outcomes: Sequence[Outcome]) -> list[bool]:
        self.acking = {o.job_id for o in outcomes}
        try:
            time.sleep(0.01)  # widen the window an extend could fall into
            return super().ack(outcomes)
        finally:
            self.acking = set()

    def extend(self, leases: Sequence[tuple[str, int]], lease: float) -> ExtendResult:
        acking = self.acking
        if acking:
            self.beside_acks += 1
            self.overlaps += bool(acking & {job_id for job_id, _ in leases})
        self.extends += 1
        return super().extend(leases, lease)


@pytest.fixture
def broker() -> Iterator[OverlapRecordingBroker]:
    with migrated_store(OverlapRecordingBroker, "writes") as made:
        yield made


def test_a_heartbeat_never_extends_the_leases_of_the_ack_in_flight(broker: OverlapRecordingBroker) -> None:
    app = Conveyor("memory://")
    runner = Runner(app, broker, app.settings, "consumer-1")
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.is_set():
            runner.beat()

    beating = threading.Thread(target=heartbeat)
    beating.start()
    try:
        for _ in range(20):
            broker.enqueue([Message(id=str(uuid_utils.uuid7()), task="t", queue="default", payload=PAYLOAD)
                            for _ in range(50)])
            leases = broker.fetch(["default"], 50, 30.0, "consumer-1")
            runner.hold(leases)
            runner.shed()
            for lease in reversed(leases[10:]):  # finished in another order than they were leased
                runner.add_ack(Outcome(lease.job_id, lease.token, "succeeded", result=b"null"))
            runner.flush_acks()  # the ten first still run: the heartbeat extends them meanwhile
            for lease in leases[:10]:
                runner.add_ack(Outcome(lease.job_id, lease.token, "succeeded", result=b"null"))
            runner.flush_acks()
    finally:
        stop.set()
        beating.join()
    assert broker.extends > 0
    assert broker.overlaps == 0  # never a job of the ack in flight
    assert broker.beside_acks > 0  # yet extends did not wait for the acks
    assert broker.counts() == {"default": {"succeeded": 1000}}
