"""Contract: pause/resume, the store's queries, purge, prune, delete and worker heartbeats."""

from __future__ import annotations

from collections.abc import Callable

from conveyor.brokers import STATES, Broker, Lease, Message, Outcome, QueueInfo, WorkerInfo
from conveyor.testing import FakeClock

LEASE = 30.0
Make = Callable[..., Message]


def fetch(broker: Broker, queues: list[str] | None = None, limit: int = 100) -> list[Lease]:
    return broker.fetch(queues or ["default"], limit, LEASE, "c1")


def state_of(broker: Broker, job_id: str) -> str | None:
    record = broker.get(job_id)
    return None if record is None else record.state


def finish(broker: Broker, lease: Lease, state: str = "succeeded") -> None:
    error = {"type": "ValueError", "message": "boom"} if state == "failed" else None
    assert broker.ack([Outcome(lease.job_id, lease.token, state, error=error)]) == [True]


# -- pause ----------------------------------------------------------------------------------------
def test_a_paused_queue_is_skipped_until_resumed(broker: Broker, make: Make) -> None:
    a, b = make(queue="a"), make(queue="b")
    broker.enqueue([a])
    broker.pause("a")
    assert broker.paused_queues() == {"a"}
    broker.enqueue([b, make(queue="a")])  # enqueueing still works
    assert [x.job_id for x in fetch(broker, ["a", "b"])] == [b.id]
    assert state_of(broker, a.id) == "queued"
    broker.resume("a")
    assert broker.paused_queues() == set()
    assert [x.job_id for x in fetch(broker, ["a", "b"], 1)] == [a.id]


def test_pause_and_resume_are_idempotent(broker: Broker) -> None:
    broker.pause("a")
    broker.pause("a")
    broker.pause("b")
    assert broker.paused_queues() == {"a", "b"}
    broker.resume("a")
    broker.resume("a")
    broker.resume("never-paused")
    assert broker.paused_queues() == {"b"}


def test_pause_leaves_running_jobs_alone(broker: Broker, make: Make) -> None:
    broker.enqueue([make(queue="a")])
    (lease,) = fetch(broker, ["a"])
    broker.pause("a")
    assert broker.extend([(lease.job_id, lease.token)], LEASE).lost == set()
    finish(broker, lease)
    assert state_of(broker, lease.job_id) == "succeeded"


def test_queues_lists_depths_and_paused_flag(broker: Broker, make: Make, clock: FakeClock) -> None:
    broker.enqueue([make(queue="b"), make(queue="b", run_at=clock() + 60), make(queue="a")])
    broker.pause("b")
    broker.pause("empty")
    zero = dict.fromkeys(STATES, 0)
    assert broker.queues() == [
        QueueInfo("a", False, {**zero, "queued": 1}),
        QueueInfo("b", True, {**zero, "queued": 1, "scheduled": 1}),
        QueueInfo("empty", True, zero),
    ]
    broker.resume("b")
    assert [q.paused for q in broker.queues() if q.name == "b"] == [False]


# -- list_jobs and counts -------------------------------------------------------------------------
def test_list_jobs_newest_first(broker: Broker, make: Make) -> None:
    job_ids = broker.enqueue([make() for _ in range(5)])
    page = broker.list_jobs()
    assert [j.id for j in page.jobs] == job_ids[::-1]
    assert page.cursor is None
    assert page.jobs[0].payload == b'{"args":[],"kwargs":{}}'


def test_list_jobs_filters(broker: Broker, make: Make) -> None:
    a1 = make(queue="a", task="t.one")
    a2 = make(queue="a", task="t.two")
    b1 = make(queue="b", task="t.one")
    broker.enqueue([a1, a2, b1])
    (lease,) = fetch(broker, ["a"], 1)  # a1 is running
    assert lease.job_id == a1.id

    def listed(**filters: str) -> list[str]:
        return [j.id for j in broker.list_jobs(**filters).jobs]  # type: ignore[arg-type]

    assert listed(queue="a") == [a2.id, a1.id]
    assert listed(task="t.one") == [b1.id, a1.id]
    assert listed(state="queued") == [b1.id, a2.id]
    assert listed(state="running") == [a1.id]
    assert listed(state="queued", queue="a", task="t.two") == [a2.id]
    assert listed(state="failed") == []
    assert listed(queue="nowhere") == []


def test_list_jobs_cursor_pages_every_job_exactly_once(broker: Broker, make: Make) -> None:
    job_ids = broker.enqueue([make(queue="a" if i % 4 else "b") for i in range(23)])
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = broker.list_jobs(limit=5, cursor=cursor)
        assert 0 < len(page.jobs) <= 5
        seen.extend(j.id for j in page.jobs)
        pages += 1
        cursor = page.cursor
        if cursor is None:
            break
    assert pages == 5
    assert seen == job_ids[::-1]

    in_a = [i for i, m in zip(job_ids, range(23)) if m % 4]
    seen, cursor = [], None
    while True:
        page = broker.list_jobs(queue="a", limit=4, cursor=cursor)
        seen.extend(j.id for j in page.jobs)
        if page.cursor is None:
            break
        cursor = page.cursor
    assert seen == in_a[::-1]


def test_list_jobs_exact_last_page_has_no_cursor(broker: Broker, make: Make) -> None:
    broker.enqueue([make() for _ in range(10)])
    first = broker.list_jobs(limit=5)
    assert first.cursor is not None
    second = broker.list_jobs(limit=5, cursor=first.cursor)
    assert len(second.jobs) == 5
    assert second.cursor is None


def test_counts_per_queue_and_state(broker: Broker, make: Make, clock: FakeClock) -> None:
    broker.enqueue([make(queue="a") for _ in range(4)] + [make(queue="b", run_at=clock() + 60)])
    one, two = fetch(broker, ["a"], 2)
    finish(broker, one)
    finish(broker, two, "failed")
    fetch(broker, ["a"], 1)
    assert broker.counts() == {
        "a": {"succeeded": 1, "failed": 1, "running": 1, "queued": 1},
        "b": {"scheduled": 1},
    }


# -- purge, prune, delete -------------------------------------------------------------------------
def test_purge_deletes_waiting_jobs_of_that_queue_only(broker: Broker, make: Make, clock: FakeClock) -> None:
    run, done, q1, q2 = (make(queue="a") for _ in range(4))
    later = make(queue="a", run_at=clock() + 60)
    other = make(queue="b")
    broker.enqueue([run, done, q1, q2, later, other])
    leased = fetch(broker, ["a"], 2)
    finish(broker, leased[1])
    assert broker.purge("a") == 3
    assert [state_of(broker, m.id) for m in (run, done, q1, q2, later, other)] == [
        "running", "succeeded", None, None, None, "queued"]
    assert broker.extend([(leased[0].job_id, leased[0].token)], LEASE).lost == set()


def test_purge_every_queue_and_chosen_states(broker: Broker, make: Make) -> None:
    a, b, c = make(queue="a"), make(queue="b"), make(queue="b")
    broker.enqueue([a, b, c])
    (lease,) = fetch(broker, ["b"], 1)
    finish(broker, lease, "failed")
    assert broker.purge(None, ["failed", "running"]) == 1  # running is never purged
    assert state_of(broker, b.id) is None
    assert broker.purge(None) == 2
    assert broker.counts() == {}


def test_purge_frees_unique_keys(broker: Broker, make: Make) -> None:
    broker.enqueue([make(key="k")])
    assert broker.purge("default") == 1
    again = make(key="k")
    assert broker.enqueue([again]) == [again.id]


def test_prune_deletes_old_finished_jobs_only(broker: Broker, make: Make, clock: FakeClock) -> None:
    old_ok, old_cancelled, old_failed, recent_ok, waiting = (make() for _ in range(5))
    broker.enqueue([old_ok, old_failed])
    first, second = fetch(broker, limit=2)
    finish(broker, first)
    finish(broker, second, "failed")
    broker.enqueue([old_cancelled])
    broker.cancel(old_cancelled.id)
    clock.advance(100)
    broker.enqueue([recent_ok, waiting])
    (third,) = fetch(broker, limit=1)
    finish(broker, third)
    assert broker.prune(older_than=50) == 2
    assert [state_of(broker, m.id) for m in (old_ok, old_cancelled, old_failed, recent_ok, waiting)] == [
        None, None, "failed", "succeeded", "queued"]
    assert broker.prune(older_than=50) == 0


def test_delete_a_job_that_is_not_running(broker: Broker, make: Make) -> None:
    waiting, running = make(), make()
    broker.enqueue([running, waiting])
    (lease,) = fetch(broker, limit=1)
    assert lease.job_id == running.id
    assert broker.delete(waiting.id) is True
    assert broker.get(waiting.id) is None
    assert broker.delete(running.id) is False
    assert state_of(broker, running.id) == "running"
    assert broker.delete(waiting.id) is False


# -- workers --------------------------------------------------------------------------------------
def worker(clock: FakeClock, worker_id: str = "w1", **fields: object) -> WorkerInfo:
    return WorkerInfo(id=worker_id, hostname="host-1", pid=4242, queues=["a", "b"], started_at=clock(),
                      **fields)  # type: ignore[arg-type]


def test_heartbeat_lists_the_worker(broker: Broker, clock: FakeClock) -> None:
    info = worker(clock, supervisor="s1", pool="thread", current=["j1"], rss=1024, processed=3, failed=1)
    clock.advance(2)
    broker.heartbeat(info)
    (listed,) = broker.workers()
    assert listed.last_seen == clock()
    assert (listed.id, listed.hostname, listed.pid, listed.queues) == ("w1", "host-1", 4242, ["a", "b"])
    assert listed.started_at == clock() - 2
    assert (listed.supervisor, listed.pool, listed.current) == ("s1", "thread", ["j1"])
    assert (listed.rss, listed.processed, listed.failed) == (1024, 3, 1)


def test_heartbeat_updates_the_worker(broker: Broker, clock: FakeClock) -> None:
    broker.heartbeat(worker(clock, processed=1))
    clock.advance(5)
    broker.heartbeat(worker(clock, processed=7))
    (listed,) = broker.workers()
    assert (listed.processed, listed.last_seen) == (7, clock())


def test_a_silent_worker_is_not_listed(broker: Broker, clock: FakeClock) -> None:
    broker.heartbeat(worker(clock, "quiet"))
    clock.advance(45)
    broker.heartbeat(worker(clock, "chatty"))
    clock.advance(20)
    assert [w.id for w in broker.workers()] == ["chatty"]
    assert sorted(w.id for w in broker.workers(max_age=120)) == ["chatty", "quiet"]
    assert broker.workers(max_age=10) == []


def test_unregister_removes_the_worker(broker: Broker, clock: FakeClock) -> None:
    broker.heartbeat(worker(clock, "w1"))
    broker.heartbeat(worker(clock, "w2"))
    broker.unregister("w1")
    assert [w.id for w in broker.workers()] == ["w2"]
    broker.unregister("never-seen")
    assert [w.id for w in broker.workers()] == ["w2"]


def test_prune_forgets_workers_silent_for_over_an_hour(broker: Broker, clock: FakeClock) -> None:
    broker.heartbeat(worker(clock, "gone"))
    clock.advance(1800)
    broker.heartbeat(worker(clock, "recent"))
    clock.advance(1801)
    broker.prune(older_than=60)
    assert [w.id for w in broker.workers(max_age=10**6)] == ["recent"]


def test_heartbeat_carries_the_task_names(broker: Broker, clock: FakeClock) -> None:
    broker.heartbeat(worker(clock, "w1", tasks=["media.transcode", "mail.send"]))
    broker.heartbeat(worker(clock, "w2"))
    listed = {w.id: w.tasks for w in broker.workers()}
    assert listed == {"w1": ["media.transcode", "mail.send"], "w2": []}
    broker.heartbeat(worker(clock, "w2", tasks=["mail.send"]))
    assert {w.id: w.tasks for w in broker.workers()}["w2"] == ["mail.send"]
