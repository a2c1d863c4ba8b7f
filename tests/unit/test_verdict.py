"""The retry verdict and the slot: what the runner and the supervisor's hard kill both decide from."""

from __future__ import annotations

import time

from conveyor.brokers import Lease
from conveyor.worker.slot import Slot
from conveyor.worker.verdict import DEFAULT_DELAY, retry_verdict


def test_attempts_left_are_scheduled_by_the_backoff_or_an_explicit_delay() -> None:
    assert retry_verdict(1, 3, 100.0, lambda attempt: 10.0 * attempt) == ("scheduled", 110.0)
    assert retry_verdict(2, 3, 100.0, lambda attempt: 10.0 * attempt) == ("scheduled", 120.0)
    assert retry_verdict(1, 3, 100.0, lambda attempt: 10.0, delay=2.5) == ("scheduled", 102.5)
    assert retry_verdict(1, 3, 100.0, None) == ("scheduled", 100.0 + DEFAULT_DELAY)


def test_the_last_attempt_fails() -> None:
    assert retry_verdict(3, 3, 100.0, lambda attempt: 10.0) == ("failed", None)
    assert retry_verdict(1, 1, 100.0, None, delay=5.0) == ("failed", None)


def test_a_slot_knows_everything_the_hard_kill_needs() -> None:
    for shared in (True, False):
        slot = Slot(shared)
        assert slot.read() is None and slot.current() is None
        lease = Lease("01a2-job", 7, "media.transcode", "media", b"", 2, 4, 30.0, time.time() + 10)
        before = time.time()
        slot.start(lease, kill_after=5.0)
        seen = slot.read()
        assert seen is not None
        assert (seen.job_id, seen.token, seen.task, seen.attempt, seen.max_attempts, seen.timeout) == (
            "01a2-job", 7, "media.transcode", 2, 4, 30.0)
        assert before <= seen.started <= time.time()
        assert (seen.soft - seen.started, seen.hard - seen.started) == (30.0, 35.0)
        assert slot.current() == "01a2-job"
        slot.clear()
        assert slot.read() is None and slot.current() is None
