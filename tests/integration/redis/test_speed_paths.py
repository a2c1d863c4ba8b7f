"""The Redis broker's fast paths behave like the general ones: blocking ``wait_for`` (Job.result),
the compact enqueue and ack formats, and the lease set's permanent sentinel member."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
import uuid_utils
from redis_support import REDIS_URL, message

from conveyor.brokers import Outcome
from conveyor.brokers.redis import CHUNK, RedisBroker
from conveyor.errors import BrokerError


def raw(broker: RedisBroker) -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


def test_wait_for_wakes_when_the_job_ends_not_at_a_poll(broker: RedisBroker) -> None:
    m = message()
    broker.enqueue([m])
    (lease,) = broker.fetch(["default"], 1, 30, "c1")
    ended = threading.Event()

    def finish() -> None:
        time.sleep(0.3)
        ended.set()
        broker.fork().ack([Outcome(m.id, lease.token, "succeeded", result=b"7", started_at=time.time(),
                                   finished_at=time.time())])

    threading.Thread(target=finish, daemon=True).start()
    record = broker.fork().wait_for(m.id, 10)
    assert ended.is_set()
    assert record is not None and record.state == "succeeded" and record.result == b"7"
    assert not raw(broker).exists(broker._base("default") + ":w:" + m.id)  # the waiter took its token
    assert not raw(broker).hgetall(broker._base("default") + ":waiters")


def test_wait_for_watches_waits_and_reads_in_one_round_trip(broker: RedisBroker) -> None:
    """The watch script, BLPOP and HGETALL pipelined: Redis runs each as soon as the one before
    returns (a blocked client's next commands wait for it)."""
    m = message()
    broker.enqueue([m])
    (lease,) = broker.fetch(["default"], 1, 30, "c1")
    waiter = broker.fork()
    waiter.wait_for(m.id, 0.01)  # connects and learns the job's queue
    calls: list[str] = []
    for name in ("exec", "stream"):
        real = getattr(waiter._link, name)
        setattr(waiter._link, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))

    def finish() -> None:
        time.sleep(0.2)
        broker.fork().ack([Outcome(m.id, lease.token, "succeeded", result=b"7", started_at=time.time(),
                                   finished_at=time.time())])

    threading.Thread(target=finish, daemon=True).start()
    record = waiter.wait_for(m.id, 10)
    assert record is not None and record.state == "succeeded" and record.result == b"7"
    assert calls == ["stream"]
    assert not raw(broker).hgetall(broker._base("default") + ":waiters")


def test_wait_for_a_finished_job_returns_at_once_and_leaves_nothing_behind(broker: RedisBroker) -> None:
    m = message()
    broker.enqueue([m])
    (lease,) = broker.fetch(["default"], 1, 30, "c1")
    broker.ack([Outcome(m.id, lease.token, "succeeded", result=b"7", started_at=time.time(), finished_at=time.time())])
    started = time.monotonic()
    record = broker.fork().wait_for(m.id, 10)
    assert time.monotonic() - started < 0.5  # the watch script wakes its own wait
    assert record is not None and record.state == "succeeded"
    assert not raw(broker).keys(broker._base("default") + ":w:*")
    assert not raw(broker).hgetall(broker._base("default") + ":waiters")


@pytest.mark.parametrize("how", ["fail", "cancel", "delete"])
def test_wait_for_wakes_on_every_ending(broker: RedisBroker, how: str) -> None:
    m = message(max_attempts=1)
    broker.enqueue([m])
    lease = broker.fetch(["default"], 1, 30, "c1")[0] if how == "fail" else None

    def end() -> None:
        time.sleep(0.2)
        other = broker.fork()
        if how == "fail":
            assert lease is not None
            other.ack([Outcome(m.id, lease.token, "failed", error={"type": "E", "message": "no"})])
        elif how == "cancel":
            other.cancel(m.id)
        else:
            other.delete(m.id)

    threading.Thread(target=end, daemon=True).start()
    started = time.monotonic()
    record = broker.fork().wait_for(m.id, 10)
    assert time.monotonic() - started < 0.9  # told, not found by the once-a-second look
    if how == "delete":
        assert record is None
    else:
        assert record is not None and record.state == ("failed" if how == "fail" else "cancelled")


def test_wait_for_times_out_and_leaves_no_waiter_behind(broker: RedisBroker) -> None:
    m = message()
    broker.enqueue([m])
    started = time.monotonic()
    record = broker.wait_for(m.id, 0.2)
    assert 0.15 < time.monotonic() - started < 2
    assert record is not None and record.state == "queued"
    assert not raw(broker).hgetall(broker._base("default") + ":waiters")
    assert broker.wait_for(str(uuid_utils.uuid7()), 0.1) is None


def test_several_waiters_of_one_job_are_all_woken(broker: RedisBroker) -> None:
    m = message()
    broker.enqueue([m])
    (lease,) = broker.fetch(["default"], 1, 30, "c1")
    results: list[str] = []

    def wait() -> None:
        record = broker.fork().wait_for(m.id, 10)
        results.append(record.state if record else "none")

    waiters = [threading.Thread(target=wait) for _ in range(3)]
    for t in waiters:
        t.start()
    time.sleep(0.3)
    started = time.monotonic()
    broker.ack([Outcome(m.id, lease.token, "succeeded", result=b"1", started_at=time.time(), finished_at=time.time())])
    for t in waiters:
        t.join(5)
    assert results == ["succeeded"] * 3
    assert time.monotonic() - started < 0.9


def test_compact_and_general_enqueue_formats_agree(broker: RedisBroker) -> None:
    plain = [message() for _ in range(5)]
    mixed = [message(), message(key="k1"), message(priority=3), message(run_at=time.time() + 60), message("other")]
    assert broker.enqueue(plain) == [m.id for m in plain]
    assert broker.enqueue(mixed) == [m.id for m in mixed]
    # again: existing ids come back as they are and create nothing, in both formats
    assert broker.enqueue([*plain[:2], message()])[:2] == [m.id for m in plain[:2]]
    assert broker.enqueue(mixed[:2])[:2] == [m.id for m in mixed[:2]]
    # the same id twice in one batch creates one job
    twin = message()
    assert broker.enqueue([twin, twin]) == [twin.id, twin.id]
    counts = broker.counts()
    assert counts["default"] == {"queued": 5 + 3 + 1 + 1, "scheduled": 1}
    assert counts["other"] == {"queued": 1}
    leased = broker.fetch(["default"], 100, 30, "c1")
    assert leased[0].job_id == mixed[2].id  # the priority 3 job first
    assert {lease.job_id for lease in leased} >= {m.id for m in plain}


def test_a_large_batch_is_streamed_in_chunks_and_stored_whole_once(broker: RedisBroker) -> None:
    n = 2 * CHUNK + 17  # three scripts, the last one short
    batch = [message() for _ in range(n)]
    before = [batch[0], batch[CHUNK], batch[-1]]  # already stored: a re-sent chunk's jobs
    assert broker.enqueue(before) == [m.id for m in before]
    client = raw(broker)
    feed = broker.prefix + ":feed"  # the change feed (a Stream): what came after the first enqueue
    start = client.xrevrange(feed, count=1)[0][0].decode()
    assert broker.enqueue(batch) == [m.id for m in batch]
    assert broker.counts()["default"] == {"queued": n}
    leased = broker.fetch(["default"], n + 10, 30, "c1")
    assert [lease.job_id for lease in leased] == [m.id for m in before] + [m.id for m in batch if m not in before]
    announced = []
    for _, fields in client.xrange(feed, min="(" + start):
        if fields[b"s"] == b"queued":
            announced += json.loads(fields[b"i"])
    assert sorted(announced) == sorted(m.id for m in batch if m not in before)  # one event per chunk


def test_a_streamed_batch_survives_lost_scripts_and_reports_a_refusal(broker: RedisBroker) -> None:
    client = raw(broker)
    client.script_flush()  # what a restart without persistence of scripts does
    batch = [message() for _ in range(CHUNK + 1)]
    assert broker.enqueue(batch) == [m.id for m in batch]
    assert broker.counts()["default"] == {"queued": CHUNK + 1}
    # a chunk Redis refuses (here: a key of the wrong type where the ready list goes) says why
    client.set("{" + broker.prefix + ":default}:ready:0", "not a list")
    with pytest.raises(BrokerError, match="refused the operation"):
        broker.enqueue([message() for _ in range(CHUNK + 1)])
    client.delete("{" + broker.prefix + ":default}:ready:0")
    assert broker.enqueue([message()])  # the connection is still in step


def test_plain_and_general_acks_in_one_batch(broker: RedisBroker) -> None:
    ms = [message() for _ in range(4)]
    broker.enqueue(ms)
    leases = broker.fetch(["default"], 4, 30, "c1")
    now = time.time()
    outcomes = [
        Outcome(leases[0].job_id, leases[0].token, "succeeded", result=b"1", started_at=now, finished_at=now + 0.5),
        Outcome(leases[1].job_id, leases[1].token, "failed", error={"type": "E", "message": "x"}, finished_at=now),
        Outcome(leases[2].job_id, leases[2].token + 1, "succeeded", result=b"2", started_at=now, finished_at=now),
        Outcome(leases[3].job_id, leases[3].token, "succeeded"),  # no result, no times: the general path
    ]
    assert broker.ack(outcomes) == [True, True, False, True]
    got = {r.id: r for r in broker.get_many([lease.job_id for lease in leases]) if r}
    first = got[leases[0].job_id]
    assert (first.state, first.result, first.started_at, first.finished_at) == ("succeeded", b"1", now, now + 0.5)
    assert got[leases[1].job_id].state == "failed"
    assert got[leases[2].job_id].state == "running"  # a stale token is refused
    assert got[leases[3].job_id].state == "succeeded"


def test_the_lease_set_sentinel_is_never_a_job(broker: RedisBroker) -> None:
    ms = [message(max_attempts=3) for _ in range(3)]
    broker.enqueue(ms)
    leases = broker.fetch(["default"], 3, 30, "c1")
    r = raw(broker)
    key = broker._base("default") + ":leases"
    assert r.object("encoding", key) == b"skiplist"
    assert r.zcard(key) == 4  # three leases and the sentinel
    assert {j.id for j in broker.list_jobs(state="running").jobs} == {m.id for m in ms}
    assert broker.release("c1", "stopped") == 3
    assert broker.fetch(["default"], 10, 30, "c2")
    broker.ack([Outcome(lease.job_id, lease.token, "succeeded") for lease in leases])  # stale: refused
    assert broker.recover() == 0
    assert r.zcard(key) == 4  # the re-leased three and the sentinel
