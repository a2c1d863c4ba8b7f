"""Contract: acks, extending and recovering leases, release, progress and fencing tokens."""

from __future__ import annotations

import threading
from collections.abc import Callable

from conveyor.brokers import Broker, Lease, Message, Outcome
from conveyor.testing import FakeClock

LEASE = 30.0
Make = Callable[..., Message]


def lease_one(broker: Broker, make: Make, consumer: str = "c1", lease: float = LEASE, **fields: object) -> Lease:
    m = make(**fields)
    broker.enqueue([m])
    (leased,) = broker.fetch([m.queue], 1, lease, consumer)
    assert leased.job_id == m.id
    return leased


def expire_and_refetch(broker: Broker, clock: FakeClock, first: Lease) -> Lease:
    """The zombie scenario: ``first``'s lease runs out, recover() re-queues, another consumer fetches."""
    clock.advance(first.deadline - clock() + 1)
    assert broker.recover() == 1
    (second,) = broker.fetch([first.queue], 1, LEASE, "c2")
    assert second.job_id == first.job_id
    return second


def succeeded(lease: Lease, result: bytes | None = b'{"ok":true}', **fields: object) -> Outcome:
    return Outcome(lease.job_id, lease.token, "succeeded", result=result, **fields)  # type: ignore[arg-type]


# -- ack ------------------------------------------------------------------------------------------
def test_ack_succeeded_stores_the_result(broker: Broker, make: Make, clock: FakeClock) -> None:
    lease = lease_one(broker, make)
    started = clock()
    clock.advance(2)
    assert broker.ack([succeeded(lease, started_at=started, finished_at=clock())]) == [True]
    record = broker.get(lease.job_id)
    assert record is not None
    assert record.state == "succeeded"
    assert record.result == b'{"ok":true}'
    assert record.started_at == started
    assert record.finished_at == clock()
    assert record.lease_until is None and record.consumer is None
    assert record.attempts == 1
    assert record.history == []
    assert broker.fetch(["default"], 10, LEASE, "c1") == []


def test_ack_without_finished_at_uses_now(broker: Broker, make: Make, clock: FakeClock) -> None:
    lease = lease_one(broker, make)
    clock.advance(3)
    assert broker.ack([succeeded(lease, result=None)]) == [True]
    record = broker.get(lease.job_id)
    assert record is not None
    assert (record.state, record.finished_at, record.result) == ("succeeded", clock(), None)


def test_ack_with_a_stale_token_is_refused(broker: Broker, make: Make, clock: FakeClock) -> None:
    first = lease_one(broker, make, max_attempts=3)
    second = expire_and_refetch(broker, clock, first)
    assert second.token != first.token
    assert second.attempt == 2
    # The zombie wakes up and reports: refused, and the newer run is untouched.
    assert broker.ack([succeeded(first, result=b'"zombie"')]) == [False]
    record = broker.get(first.job_id)
    assert record is not None
    assert (record.state, record.token, record.consumer) == ("running", second.token, "c2")
    assert record.result is None
    assert record.lease_until == second.deadline
    assert broker.ack([succeeded(second, result=b'"fresh"')]) == [True]
    assert broker.get(first.job_id).result == b'"fresh"'  # type: ignore[union-attr]


def test_stale_failure_does_not_touch_the_newer_run(broker: Broker, make: Make, clock: FakeClock) -> None:
    first = lease_one(broker, make, max_attempts=3)
    second = expire_and_refetch(broker, clock, first)
    error = {"type": "RuntimeError", "message": "zombie"}
    assert broker.ack([Outcome(first.job_id, first.token, "failed", error=error)]) == [False]
    assert broker.ack([Outcome(first.job_id, first.token, "scheduled", error=error, run_at=clock())]) == [False]
    record = broker.get(first.job_id)
    assert record is not None
    assert (record.state, record.token, record.error) == ("running", second.token, None)
    assert [entry["state"] for entry in record.history] == ["lost"]


def test_ack_of_an_already_acked_lease_is_refused(broker: Broker, make: Make, clock: FakeClock) -> None:
    lease = lease_one(broker, make)
    assert broker.ack([succeeded(lease, result=b"1")]) == [True]
    finished = broker.get(lease.job_id).finished_at  # type: ignore[union-attr]
    clock.advance(5)
    assert broker.ack([succeeded(lease, result=b"2")]) == [False]
    assert broker.ack([Outcome(lease.job_id, lease.token, "failed", error={"type": "X"})]) == [False]
    record = broker.get(lease.job_id)
    assert record is not None
    assert (record.state, record.result, record.finished_at, record.error) == ("succeeded", b"1", finished, None)


def test_the_same_lease_twice_in_one_batch_is_accepted_once(broker: Broker, make: Make) -> None:
    lease = lease_one(broker, make)
    assert broker.ack([succeeded(lease, result=b"1"), succeeded(lease, result=b"2")]) == [True, False]
    assert broker.get(lease.job_id).result == b"1"  # type: ignore[union-attr]


def test_ack_of_an_unknown_job_is_refused(broker: Broker) -> None:
    assert broker.ack([Outcome("no-such-job", 1, "succeeded")]) == [False]
    assert broker.ack([]) == []


def test_one_ack_call_settles_a_mixed_batch(broker: Broker, make: Make, clock: FakeClock) -> None:
    broker.enqueue([make(max_attempts=3) for _ in range(4)])
    a, b, c, d = broker.fetch(["default"], 4, LEASE, "c1")
    error = {"type": "ValueError", "message": "bad"}
    outcomes = [
        succeeded(a),
        Outcome(b.job_id, b.token, "failed", error=error),
        Outcome(c.job_id, c.token, "scheduled", error=error, run_at=clock() + 10),
        Outcome(d.job_id, d.token + 1, "succeeded"),  # not the current token
    ]
    assert broker.ack(outcomes) == [True, True, True, False]
    states = [broker.get(x.job_id).state for x in (a, b, c, d)]  # type: ignore[union-attr]
    assert states == ["succeeded", "failed", "scheduled", "running"]


# -- extend ---------------------------------------------------------------------------------------
def test_extend_pushes_the_deadline(broker: Broker, make: Make, clock: FakeClock) -> None:
    lease = lease_one(broker, make, lease=10)
    clock.advance(8)
    result = broker.extend([(lease.job_id, lease.token)], 30)
    assert result.lost == set() and result.cancel_requested == set()
    assert broker.get(lease.job_id).lease_until == clock() + 30  # type: ignore[union-attr]
    clock.advance(20)  # past the first deadline, before the new one
    assert broker.recover() == 0
    assert broker.get(lease.job_id).state == "running"  # type: ignore[union-attr]
    assert broker.ack([succeeded(lease)]) == [True]


def test_an_extended_lease_still_expires_without_heartbeats(broker: Broker, make: Make, clock: FakeClock) -> None:
    lease = lease_one(broker, make, lease=10, max_attempts=2)
    broker.extend([(lease.job_id, lease.token)], 30)
    clock.advance(29)
    assert broker.recover() == 0
    clock.advance(2)
    assert broker.recover() == 1
    assert broker.get(lease.job_id).state == "queued"  # type: ignore[union-attr]


def test_extend_with_a_stale_token_reports_it_lost(broker: Broker, make: Make, clock: FakeClock) -> None:
    first = lease_one(broker, make, max_attempts=3)
    second = expire_and_refetch(broker, clock, first)
    clock.advance(1)
    result = broker.extend([(first.job_id, first.token)], LEASE)
    assert result.lost == {first.job_id}
    assert broker.get(second.job_id).lease_until == second.deadline  # type: ignore[union-attr]
    assert broker.extend([(second.job_id, second.token)], LEASE).lost == set()
    record = broker.get(second.job_id)
    assert record is not None
    assert (record.token, record.lease_until) == (second.token, clock() + LEASE)


def test_extend_of_a_finished_or_unknown_job_reports_it_lost(broker: Broker, make: Make) -> None:
    lease = lease_one(broker, make)
    broker.ack([succeeded(lease)])
    result = broker.extend([(lease.job_id, lease.token), ("no-such-job", 1)], LEASE)
    assert result.lost == {lease.job_id, "no-such-job"}
    assert broker.get(lease.job_id).lease_until is None  # type: ignore[union-attr]


# -- recover and release --------------------------------------------------------------------------
def test_an_expired_lease_comes_back_to_the_queue(broker: Broker, make: Make, clock: FakeClock) -> None:
    lease = lease_one(broker, make, lease=10, max_attempts=3)
    clock.advance(5)
    assert broker.recover() == 0
    assert broker.get(lease.job_id).state == "running"  # type: ignore[union-attr]
    clock.advance(6)  # the consumer was killed: no more heartbeats
    assert broker.recover() == 1
    record = broker.get(lease.job_id)
    assert record is not None
    assert (record.state, record.attempts, record.lease_until, record.consumer) == ("queued", 1, None, None)
    assert record.error is None
    (entry,) = record.history
    assert entry["attempt"] == 1 and entry["state"] == "lost" and entry["at"] == clock()
    assert entry["error"]["type"] == "LeaseExpired"
    (again,) = broker.fetch(["default"], 1, LEASE, "c2")
    assert again.job_id == lease.job_id
    assert again.attempt == 2
    assert again.token > lease.token


def test_recover_fails_a_job_out_of_attempts(broker: Broker, make: Make, clock: FakeClock) -> None:
    first = lease_one(broker, make, max_attempts=2)
    second = expire_and_refetch(broker, clock, first)
    clock.advance(LEASE + 1)
    assert broker.recover() == 1
    record = broker.get(second.job_id)
    assert record is not None
    assert record.state == "failed"
    assert record.attempts == 2
    assert record.error is not None and record.error["type"] == "LeaseExpired"
    assert record.finished_at == clock()
    assert record.lease_until is None
    assert [(e["attempt"], e["state"], e["error"]["type"]) for e in record.history] == [
        (1, "lost", "LeaseExpired"), (2, "lost", "LeaseExpired")]
    assert broker.fetch(["default"], 10, LEASE, "c1") == []
    assert broker.counts() == {"default": {"failed": 1}}


def test_recover_leaves_live_leases_alone(broker: Broker, make: Make, clock: FakeClock) -> None:
    old = lease_one(broker, make, lease=10)
    clock.advance(5)
    young = lease_one(broker, make, lease=10)
    clock.advance(6)
    assert broker.recover() == 1
    assert broker.get(old.job_id).state == "failed"  # type: ignore[union-attr]
    assert broker.get(young.job_id).state == "running"  # type: ignore[union-attr]


def test_release_hands_back_only_that_consumers_jobs(broker: Broker, make: Make, clock: FakeClock) -> None:
    broker.enqueue([make(max_attempts=3) for _ in range(4)])
    mine = broker.fetch(["default"], 2, LEASE, "a")
    theirs = broker.fetch(["default"], 2, LEASE, "b")
    assert broker.release("a", "worker stopped") == 2
    for lease in mine:
        record = broker.get(lease.job_id)
        assert record is not None
        assert (record.state, record.attempts, record.consumer) == ("queued", 1, None)
        assert record.history[-1]["error"] == {"type": "WorkerLost", "message": "worker stopped"}
    for lease in theirs:
        record = broker.get(lease.job_id)
        assert record is not None
        assert (record.state, record.token, record.consumer) == ("running", lease.token, "b")
    again = broker.fetch(["default"], 10, LEASE, "c")
    assert sorted(x.job_id for x in again) == sorted(x.job_id for x in mine)
    assert all(x.attempt == 2 for x in again)
    assert broker.release("nobody", "gone") == 0


def test_release_fails_a_job_out_of_attempts(broker: Broker, make: Make) -> None:
    lease = lease_one(broker, make, consumer="a", max_attempts=1)
    assert broker.release("a", "worker crashed") == 1
    record = broker.get(lease.job_id)
    assert record is not None
    assert record.state == "failed"
    assert record.error == {"type": "WorkerLost", "message": "worker crashed"}


# -- progress -------------------------------------------------------------------------------------
def test_progress_is_stored(broker: Broker, make: Make, clock: FakeClock) -> None:
    lease = lease_one(broker, make)
    clock.advance(1)
    assert broker.progress(lease.job_id, lease.token, 0.5, "msg") is True
    record = broker.get(lease.job_id)
    assert record is not None
    assert (record.progress, record.progress_message) == (0.5, "msg")
    assert broker.progress(lease.job_id, lease.token, None, None) is True
    assert broker.get(lease.job_id).progress is None  # type: ignore[union-attr]


def test_progress_with_a_stale_token_is_refused(broker: Broker, make: Make, clock: FakeClock) -> None:
    first = lease_one(broker, make, max_attempts=3)
    second = expire_and_refetch(broker, clock, first)
    assert broker.progress(second.job_id, second.token, 0.25, "fresh") is True
    assert broker.progress(first.job_id, first.token, 0.9, "zombie") is False
    record = broker.get(first.job_id)
    assert record is not None
    assert (record.progress, record.progress_message) == (0.25, "fresh")
    broker.ack([succeeded(second)])
    assert broker.progress(second.job_id, second.token, 1.0, "late") is False
    assert broker.progress("no-such-job", 1, 0.1, None) is False


# -- fencing under concurrency --------------------------------------------------------------------
def test_concurrent_consumers_never_get_the_same_job(broker: Broker, make: Make) -> None:
    job_ids = broker.enqueue([make() for _ in range(500)])
    taken: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def consume(name: str) -> None:
        own = broker.fork()
        try:
            start.wait()
            while True:
                leases = own.fetch(["default"], 7, LEASE, name)
                if not leases:
                    return
                taken.extend(lease.job_id for lease in leases)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            if own is not broker:
                own.close()

    threads = [threading.Thread(target=consume, args=(f"c{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert not any(t.is_alive() for t in threads)
    assert len(taken) == len(set(taken)) == 500
    assert set(taken) == set(job_ids)


def test_concurrent_acks_of_one_lease_accept_exactly_one(broker: Broker, make: Make) -> None:
    lease = lease_one(broker, make)
    results: list[bool] = []
    start = threading.Barrier(4)

    def ack(n: int) -> None:
        own = broker.fork()
        try:
            start.wait()
            results.extend(own.ack([succeeded(lease, result=str(n).encode())]))
        finally:
            if own is not broker:
                own.close()

    threads = [threading.Thread(target=ack, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == [False, False, False, True]
