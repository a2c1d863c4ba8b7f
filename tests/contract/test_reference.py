"""Contract: the memory broker is the reference. After the same operations at the same (fake) times,
every broker keeps the same records as a MemoryBroker, field by field (tokens are opaque, not compared).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from conveyor.brokers import Broker, Message, Outcome
from conveyor.brokers.memory import MemoryBroker
from conveyor.testing import FakeClock

Make = Callable[..., Message]
ERROR = {"type": "ValueError", "message": "boom"}


def scenario(broker: Broker, clock: FakeClock, messages: list[Message]) -> None:
    """Every path a job can take, applied in the same order to any broker."""
    broker.enqueue(messages[:6])
    broker.enqueue(messages[6:])
    ok, fail, again, back, cancel_me, lost = broker.fetch(["default"], 6, 10, "c1")
    done, dead = broker.fetch(["kept"], 2, 10, "c1")
    clock.advance(1)
    broker.progress(ok.job_id, ok.token, 0.5, "half")
    broker.cancel(cancel_me.job_id)
    broker.ack([
        Outcome(ok.job_id, ok.token, "succeeded", result=b"1", started_at=clock() - 1, finished_at=clock()),
        Outcome(fail.job_id, fail.token, "failed", error=ERROR),
        Outcome(dead.job_id, dead.token, "failed", error=ERROR, finished_at=clock() - 0.5),
        Outcome(again.job_id, again.token, "scheduled", error=ERROR, run_at=clock() + 5),
        Outcome(back.job_id, back.token, "queued"),
    ])
    broker.extend([(lost.job_id, lost.token)], 3)
    clock.advance(4)
    broker.recover()  # lost: expired
    broker.cancel(messages[7].id)  # a queued job
    clock.advance(3)
    broker.fetch(["default", "other"], 3, 10, "c2")
    broker.release("c2", "stopping")
    broker.retry(fail.job_id)
    broker.fetch(["other"], 5, 10, "c3")
    clock.advance(100)
    broker.ack([Outcome(done.job_id, done.token, "succeeded", result=b"2")])  # its lease ran out, not recovered
    broker.recover()  # cancel_me: expired with a cancel request
    broker.prune(older_than=50)
    broker.fetch(["default"], 2, 10, "c4")


def records(broker: Broker, ids: list[str]) -> list[dict[str, Any] | None]:
    out: list[dict[str, Any] | None] = []
    for record in broker.get_many(ids):
        if record is None:
            out.append(None)
            continue
        data = asdict(record)
        del data["token"]
        out.append(data)
    return out


def test_every_broker_keeps_the_same_records_as_the_reference(
    broker: Broker, make: Make, clock: FakeClock
) -> None:
    start = clock()
    messages = [make(max_attempts=2, priority=10 - i) for i in range(6)] + [
        make(key="k", priority=3),
        make(),
        make(queue="other", run_at=clock() + 8, max_attempts=1, timeout=2.5),
        make(queue="other", key="k2"),
        make(queue="kept", key="k3"),
        make(queue="kept"),
    ]
    scenario(broker, clock, messages)
    reference_clock = FakeClock(start)
    reference = MemoryBroker(clock=reference_clock)
    scenario(reference, reference_clock, messages)
    ids = [m.id for m in messages]
    assert records(broker, ids) == records(reference, ids)
    assert broker.counts() == reference.counts()
    assert [j.id for j in broker.list_jobs().jobs] == [j.id for j in reference.list_jobs().jobs]
