"""Contract: retries, dead letters, retry by hand, hand back, cancellation and unique keys."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import uuid_utils

from conveyor.brokers import Broker, Lease, Message, Outcome
from conveyor.errors import JobNotFound
from conveyor.testing import FakeClock

LEASE = 30.0
ERROR = {"type": "ValueError", "message": "boom", "traceback": "Traceback ..."}
Make = Callable[..., Message]


def fetch(broker: Broker, limit: int = 100) -> list[Lease]:
    return broker.fetch(["default"], limit, LEASE, "c1")


def lease_one(broker: Broker, make: Make, **fields: object) -> Lease:
    m = make(**fields)
    broker.enqueue([m])
    (leased,) = fetch(broker, 1)
    assert leased.job_id == m.id
    return leased


def state_of(broker: Broker, job_id: str) -> str:
    record = broker.get(job_id)
    assert record is not None
    return record.state


# -- retry outcome --------------------------------------------------------------------------------
def test_a_retry_is_scheduled_and_fetched_after_the_delay(broker: Broker, make: Make, clock: FakeClock) -> None:
    lease = lease_one(broker, make, max_attempts=3)
    outcome = Outcome(lease.job_id, lease.token, "scheduled", error=ERROR, run_at=clock() + 5)
    assert broker.ack([outcome]) == [True]
    record = broker.get(lease.job_id)
    assert record is not None
    assert record.state == "scheduled"
    assert record.run_at == clock() + 5
    assert (record.lease_until, record.consumer, record.finished_at) == (None, None, None)
    assert record.error == ERROR
    assert record.attempts == 1
    assert [(e["attempt"], e["state"], e["error"]) for e in record.history] == [(1, "scheduled", ERROR)]
    assert fetch(broker) == []
    clock.advance(4)
    assert fetch(broker) == []
    clock.advance(2)
    (again,) = fetch(broker)
    assert again.job_id == lease.job_id
    assert again.attempt == 2
    second = dict(ERROR, message="boom again")
    broker.ack([Outcome(again.job_id, again.token, "scheduled", error=second, run_at=clock() + 5)])
    history = broker.get(lease.job_id).history  # type: ignore[union-attr]
    assert [(e["attempt"], e["error"]["message"]) for e in history] == [(1, "boom"), (2, "boom again")]


def test_a_retry_without_run_at_is_due_at_once(broker: Broker, make: Make) -> None:
    lease = lease_one(broker, make, max_attempts=3)
    assert broker.ack([Outcome(lease.job_id, lease.token, "scheduled", error=ERROR)]) == [True]
    (again,) = fetch(broker)
    assert (again.job_id, again.attempt) == (lease.job_id, 2)


def test_a_retried_job_keeps_its_unique_key(broker: Broker, make: Make, clock: FakeClock) -> None:
    lease = lease_one(broker, make, key="k", max_attempts=3)
    broker.ack([Outcome(lease.job_id, lease.token, "scheduled", error=ERROR, run_at=clock() + 60)])
    assert broker.enqueue([make(key="k")]) == [lease.job_id]


# -- dead letters and retry by hand ---------------------------------------------------------------
def test_a_failed_outcome_is_a_dead_letter(broker: Broker, make: Make, clock: FakeClock) -> None:
    lease = lease_one(broker, make, max_attempts=1)
    clock.advance(1)
    assert broker.ack([Outcome(lease.job_id, lease.token, "failed", error=ERROR)]) == [True]
    record = broker.get(lease.job_id)
    assert record is not None
    assert (record.state, record.error, record.finished_at, record.lease_until) == ("failed", ERROR, clock(), None)
    assert [(e["attempt"], e["state"]) for e in record.history] == [(1, "failed")]
    clock.advance(3600)
    broker.recover()
    assert fetch(broker) == []
    assert state_of(broker, lease.job_id) == "failed"
    assert broker.counts() == {"default": {"failed": 1}}


def test_retry_by_hand_puts_a_dead_letter_back(broker: Broker, make: Make, clock: FakeClock) -> None:
    lease = lease_one(broker, make, max_attempts=2)
    broker.ack([Outcome(lease.job_id, lease.token, "failed", error=ERROR)])
    clock.advance(10)
    assert broker.retry(lease.job_id) == "queued"
    record = broker.get(lease.job_id)
    assert record is not None
    assert (record.state, record.attempts, record.error, record.finished_at) == ("queued", 0, None, None)
    assert len(record.history) == 1  # the earlier failure stays on record
    (again,) = fetch(broker)
    assert (again.job_id, again.attempt) == (lease.job_id, 1)
    assert again.token > lease.token


def test_retry_by_hand_of_a_cancelled_job(broker: Broker, make: Make) -> None:
    m = make()
    broker.enqueue([m])
    broker.cancel(m.id)
    assert broker.retry(m.id) == "queued"
    assert [x.job_id for x in fetch(broker)] == [m.id]


@pytest.mark.parametrize("state", ["queued", "scheduled", "running", "succeeded"])
def test_retry_by_hand_refuses_active_and_succeeded_jobs(
    broker: Broker, make: Make, clock: FakeClock, state: str
) -> None:
    m = make(run_at=clock() + 60 if state == "scheduled" else None)
    broker.enqueue([m])
    if state in ("running", "succeeded"):
        (lease,) = fetch(broker)
        if state == "succeeded":
            broker.ack([Outcome(lease.job_id, lease.token, "succeeded")])
    assert state_of(broker, m.id) == state
    with pytest.raises(ValueError):
        broker.retry(m.id)
    assert state_of(broker, m.id) == state


def test_retry_by_hand_refuses_when_another_active_job_holds_the_key(broker: Broker, make: Make) -> None:
    lease = lease_one(broker, make, key="k")
    broker.ack([Outcome(lease.job_id, lease.token, "failed", error=ERROR)])
    newer = make(key="k")
    assert broker.enqueue([newer]) == [newer.id]
    with pytest.raises(ValueError):
        broker.retry(lease.job_id)
    assert state_of(broker, lease.job_id) == "failed"


def test_retry_and_cancel_of_an_unknown_job_raise_job_not_found(broker: Broker) -> None:
    missing = str(uuid_utils.uuid7())
    with pytest.raises(JobNotFound):
        broker.retry(missing)
    with pytest.raises(JobNotFound):
        broker.cancel(missing)


# -- hand back ------------------------------------------------------------------------------------
def test_a_handed_back_job_is_queued_without_counting_the_attempt(broker: Broker, make: Make) -> None:
    lease = lease_one(broker, make, max_attempts=1)
    assert broker.ack([Outcome(lease.job_id, lease.token, "queued")]) == [True]
    record = broker.get(lease.job_id)
    assert record is not None
    assert (record.state, record.attempts, record.lease_until, record.consumer) == ("queued", 0, None, None)
    assert record.finished_at is None and record.error is None
    (again,) = fetch(broker)
    assert (again.job_id, again.attempt) == (lease.job_id, 1)
    assert broker.ack([Outcome(lease.job_id, lease.token, "succeeded")]) == [False]  # the old lease is gone
    assert broker.ack([Outcome(again.job_id, again.token, "succeeded")]) == [True]


def refusal(worker_ids: list[str], since: float) -> dict[str, object]:
    return {"type": "UnknownTask", "message": "no task 'tests.noop' here", "refused_by": worker_ids, "since": since}


def test_a_hand_back_with_run_at_waits_in_the_schedule_uncounted(
        broker: Broker, make: Make, clock: FakeClock) -> None:
    lease = lease_one(broker, make, max_attempts=1)
    first = clock()
    error = refusal(["w1"], first)
    assert broker.ack([Outcome(lease.job_id, lease.token, "queued", run_at=clock() + 5, error=error)]) == [True]
    record = broker.get(lease.job_id)
    assert record is not None
    assert (record.state, record.attempts, record.run_at) == ("scheduled", 0, clock() + 5)
    assert (record.lease_until, record.consumer, record.finished_at) == (None, None, None)
    assert record.error == error  # the next worker reads who refused it, and since when
    assert broker.counts()["default"] == {"scheduled": 1}
    assert fetch(broker) == []
    clock.advance(4)
    assert fetch(broker) == []
    clock.advance(1)
    broker.recover()
    (again,) = fetch(broker)
    assert (again.job_id, again.attempt) == (lease.job_id, 1)
    assert broker.get(again.job_id).error["refused_by"] == ["w1"]  # type: ignore[index,union-attr]
    # refused once more (by another worker): still not an attempt, the refusals accumulate
    error = refusal(["w1", "w2"], first)
    assert broker.ack([Outcome(again.job_id, again.token, "queued", run_at=clock() + 5, error=error)]) == [True]
    record = broker.get(again.job_id)
    assert record is not None and (record.state, record.attempts, record.error) == ("scheduled", 0, error)
    clock.advance(5)
    (third,) = fetch(broker)
    assert third.attempt == 1
    assert broker.ack([Outcome(third.job_id, third.token, "succeeded", result=b"1", started_at=clock(),
                               finished_at=clock())]) == [True]
    record = broker.get(third.job_id)
    assert record is not None and (record.state, record.attempts, record.result) == ("succeeded", 1, b"1")


def test_a_hand_back_due_now_is_queued_with_its_error(broker: Broker, make: Make, clock: FakeClock) -> None:
    lease = lease_one(broker, make)
    error = refusal(["w1"], clock())
    assert broker.ack([Outcome(lease.job_id, lease.token, "queued", run_at=clock(), error=error)]) == [True]
    record = broker.get(lease.job_id)
    assert record is not None and (record.state, record.attempts, record.error) == ("queued", 0, error)
    assert [x.job_id for x in fetch(broker)] == [lease.job_id]


def test_a_hand_back_of_a_job_whose_cancel_was_requested_cancels_it(
        broker: Broker, make: Make, clock: FakeClock) -> None:
    lease = lease_one(broker, make)
    assert broker.cancel(lease.job_id) == "running"
    error = refusal(["w1"], clock())
    assert broker.ack([Outcome(lease.job_id, lease.token, "queued", run_at=clock() + 5, error=error)]) == [True]
    assert state_of(broker, lease.job_id) == "cancelled"
    clock.advance(10)
    broker.recover()
    assert fetch(broker) == []


def test_a_handed_back_job_keeps_its_place(broker: Broker, make: Make) -> None:
    messages = [make() for _ in range(3)]
    broker.enqueue(messages)
    first, *_ = fetch(broker, 1)
    broker.ack([Outcome(first.job_id, first.token, "queued")])
    assert [x.job_id for x in fetch(broker)] == [m.id for m in messages]


# -- cancel ---------------------------------------------------------------------------------------
def test_cancel_a_queued_job(broker: Broker, make: Make, clock: FakeClock) -> None:
    m = make()
    broker.enqueue([m])
    assert broker.cancel(m.id) == "cancelled"
    record = broker.get(m.id)
    assert record is not None
    assert (record.state, record.finished_at, record.attempts) == ("cancelled", clock(), 0)
    assert fetch(broker) == []


def test_cancel_a_scheduled_job(broker: Broker, make: Make, clock: FakeClock) -> None:
    m = make(run_at=clock() + 10)
    broker.enqueue([m])
    assert broker.cancel(m.id) == "cancelled"
    clock.advance(20)
    broker.recover()
    assert fetch(broker) == []
    assert state_of(broker, m.id) == "cancelled"


def test_cancel_a_running_job_requests_it(broker: Broker, make: Make) -> None:
    lease = lease_one(broker, make)
    assert broker.cancel(lease.job_id) == "running"
    record = broker.get(lease.job_id)
    assert record is not None
    assert (record.state, record.cancel_requested, record.token) == ("running", True, lease.token)
    result = broker.extend([(lease.job_id, lease.token)], LEASE)
    assert result.cancel_requested == {lease.job_id}
    assert result.lost == set()
    assert broker.ack([Outcome(lease.job_id, lease.token, "cancelled")]) == [True]
    assert state_of(broker, lease.job_id) == "cancelled"


def test_cancel_a_finished_job_changes_nothing(broker: Broker, make: Make) -> None:
    lease = lease_one(broker, make)
    broker.ack([Outcome(lease.job_id, lease.token, "succeeded", result=b"1")])
    assert broker.cancel(lease.job_id) == "succeeded"
    record = broker.get(lease.job_id)
    assert record is not None
    assert (record.state, record.result, record.cancel_requested) == ("succeeded", b"1", False)


def _hand_back(broker: Broker, clock: FakeClock, lease: Lease) -> None:
    assert broker.ack([Outcome(lease.job_id, lease.token, "queued")]) == [True]


def _retry_later(broker: Broker, clock: FakeClock, lease: Lease) -> None:
    outcome = Outcome(lease.job_id, lease.token, "scheduled", error=ERROR, run_at=clock() + 5)
    assert broker.ack([outcome]) == [True]


def _lease_expires(broker: Broker, clock: FakeClock, lease: Lease) -> None:
    clock.advance(LEASE + 1)
    assert broker.recover() == 1


def _worker_stops(broker: Broker, clock: FakeClock, lease: Lease) -> None:
    assert broker.release("c1", "worker stopped") == 1


@pytest.mark.parametrize("ending", [_hand_back, _retry_later, _lease_expires, _worker_stops],
                         ids=["hand-back", "retry", "lease-expired", "released"])
def test_a_job_whose_cancel_was_requested_never_runs_again(
    broker: Broker, make: Make, clock: FakeClock, ending: Callable[[Broker, FakeClock, Lease], None]
) -> None:
    lease = lease_one(broker, make, max_attempts=5)
    broker.cancel(lease.job_id)
    ending(broker, clock, lease)
    record = broker.get(lease.job_id)
    assert record is not None
    assert record.state == "cancelled"
    assert record.finished_at == clock()
    assert (record.lease_until, record.consumer) == (None, None)
    clock.advance(60)
    assert fetch(broker) == []


# -- unique keys ----------------------------------------------------------------------------------
def test_a_key_in_use_returns_the_active_jobs_id(broker: Broker, make: Make, clock: FakeClock) -> None:
    first = make(key="in.mov")
    assert broker.enqueue([first]) == [first.id]
    duplicate = make(key="in.mov")
    assert broker.enqueue([duplicate]) == [first.id]
    assert broker.get(duplicate.id) is None
    assert [x.job_id for x in fetch(broker)] == [first.id]  # still unique while running
    assert broker.enqueue([make(key="in.mov")]) == [first.id]
    assert broker.counts() == {"default": {"running": 1}}
    other = make(key="other.mov")
    assert broker.enqueue([other]) == [other.id]


def test_a_key_in_use_by_a_scheduled_job(broker: Broker, make: Make, clock: FakeClock) -> None:
    first = make(key="k", run_at=clock() + 60)
    broker.enqueue([first])
    assert broker.enqueue([make(key="k")]) == [first.id]


def test_duplicate_keys_in_one_batch(broker: Broker, make: Make) -> None:
    a, b, c = make(key="k"), make(key="k"), make()
    assert broker.enqueue([a, b, c]) == [a.id, a.id, c.id]
    assert [x.job_id for x in fetch(broker)] == [a.id, c.id]


@pytest.mark.parametrize("verdict", ["succeeded", "failed", "cancelled"])
def test_a_key_is_free_again_once_the_job_ends(broker: Broker, make: Make, verdict: str) -> None:
    lease = lease_one(broker, make, key="k")
    broker.ack([Outcome(lease.job_id, lease.token, verdict, error=ERROR if verdict == "failed" else None)])
    again = make(key="k")
    assert broker.enqueue([again]) == [again.id]
    assert state_of(broker, again.id) == "queued"


def test_a_key_is_free_again_after_a_queued_job_is_cancelled(broker: Broker, make: Make) -> None:
    first = make(key="k")
    broker.enqueue([first])
    broker.cancel(first.id)
    again = make(key="k")
    assert broker.enqueue([again]) == [again.id]
