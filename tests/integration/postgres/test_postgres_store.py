"""What the PostgreSQL store promises beyond the contract suite, against the real server: its own
schema, unique keys under concurrent bulk enqueue, a change feed exact whatever order transactions
commit in (and across restarts), retention in batches, polling without LISTEN, and the claim plan.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
import uuid_utils
from pg_support import migrated_store

from conveyor.brokers import Message, Outcome
from conveyor.brokers.postgres import PostgresBroker
from conveyor.brokers.postgres.within import statement_runner
from conveyor.errors import BrokerError
from conveyor.testing import require_service

POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
PAYLOAD = b'{"args":[],"kwargs":{}}'


def _msg(queue: str = "default", key: str | None = None) -> Message:
    return Message(id=str(uuid_utils.uuid7()), task="t", queue=queue, payload=PAYLOAD, key=key)


@pytest.fixture
def store() -> Iterator[PostgresBroker]:
    with migrated_store(PostgresBroker, "store") as made:
        yield made


def _tables(schema: str) -> set[str]:
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()
    return {r[0] for r in rows}


def test_the_tables_live_in_the_schema_of_the_url(store: PostgresBroker) -> None:
    assert {"conveyor_jobs", "conveyor_queues", "conveyor_workers", "conveyor_changes"} <= _tables(store.schema)
    store.enqueue([_msg()])
    assert store.counts() == {"default": {"queued": 1}}


def test_an_unmigrated_schema_is_refused_with_what_to_run() -> None:
    require_service(POSTGRES_URL, "PostgreSQL")
    fresh = PostgresBroker(f"{POSTGRES_URL}?schema=never_{uuid_utils.uuid7().hex[-12:]}")
    with pytest.raises(BrokerError, match="run `conveyor migrate APP`"):
        fresh.open()
    fresh.close()


def test_unknown_or_bad_url_options_are_refused() -> None:
    with pytest.raises(BrokerError, match="notify"):
        PostgresBroker(f"{POSTGRES_URL}?notify=maybe")
    with pytest.raises(BrokerError, match="bad number"):
        PostgresBroker(f"{POSTGRES_URL}?poll=soon")


def test_unique_keys_hold_under_concurrent_bulk_enqueue(store: PostgresBroker) -> None:
    """Eight threads, each with its own store, enqueue the same 200 keys in batches: one active
    job per key, and every call gets that job's id back for its key."""
    keys = [f"k{i}" for i in range(200)]
    answers: list[dict[str, str]] = []
    lock = threading.Lock()

    def enqueue() -> None:
        mine = store.fork()
        try:
            batch = [_msg(key=k) for k in keys]
            ids = mine.enqueue(batch)
            with lock:
                answers.append({m.key: i for m, i in zip(batch, ids) if m.key})
        finally:
            mine.close()

    threads = [threading.Thread(target=enqueue) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.counts() == {"default": {"queued": 200}}
    assert len(answers) == 8 and all(a == answers[0] for a in answers)


def test_the_change_feed_is_exact_whatever_order_transactions_commit_in(store: PostgresBroker) -> None:
    """A transaction that began first but commits last is not skipped: its change comes when it
    commits, though a later one was read before it. A new store object (a restarted dashboard)
    continues from the cursor."""
    _, cursor = store.changes(None)
    first, second = _msg(), _msg()
    with psycopg.connect(POSTGRES_URL) as slow:
        target, execute = statement_runner(slow)
        from conveyor.brokers.postgres.lifecycle import insert_jobs

        insert_jobs(target, store.q, [first], time.time(), execute)  # begun, not committed
        store.enqueue([second])
        events, cursor = store.changes(cursor)
        assert [e.data["id"] for e in events if e.kind == "job"] == [second.id]
        slow.commit()
    restarted = PostgresBroker(store.url)
    restarted.open()
    try:
        events, cursor = restarted.changes(cursor)
        assert [e.data["id"] for e in events if e.kind == "job"] == [first.id]
        assert restarted.changes(cursor) == ([], cursor)
    finally:
        restarted.close()


def test_the_change_log_forgets_old_changes_keeps_the_newest_and_resets_outdated_cursors(
        store: PostgresBroker) -> None:
    """Trimmed by age along its primary key (schema version 3 has no index on the time): old
    changes go, young ones stay, the newest always stays, and a cursor older than the trim gets a
    reset instead of a silent gap."""
    from conveyor.brokers.postgres.reads import EVENT_AGE

    now = [time.time()]
    clocked = PostgresBroker(store.url, clock=lambda: now[0])
    clocked.open()
    try:
        _, early = clocked.changes(None)
        old = [_msg() for _ in range(3)]
        clocked.enqueue(old)
        now[0] += EVENT_AGE + 60
        young = _msg()
        clocked.enqueue([young])
        clocked.recover()  # the supervisor's maintenance trims the log
        events, _ = clocked.changes(early)
        assert [e.kind for e in events] == ["reset"]
        rows = [r[0] for r in store._exec("get_many", {"ids": [m.id for m in [*old, young]]})]
        assert len(rows) == 4  # the jobs stay; only their log entries went
        with psycopg.connect(POSTGRES_URL) as conn:
            logged = conn.execute(f'SELECT count(*) FROM "{store.schema}".conveyor_changes').fetchone()
        assert logged == (1,)  # the young job's entry
        now[0] += EVENT_AGE + 60
        clocked.recover()
        with psycopg.connect(POSTGRES_URL) as conn:
            logged = conn.execute(f'SELECT count(*) FROM "{store.schema}".conveyor_changes').fetchone()
        assert logged == (1,)  # all old now, but the newest stays so cursors never restart
    finally:
        clocked.close()


def test_a_streamed_bulk_enqueue_stores_all_or_nothing(store: PostgresBroker) -> None:
    """enqueue_many streams its COPY while it builds the messages: a bad call at index 700 aborts
    it with the index named, nothing is stored, and the store goes on; a batch sent again (a
    retry after a lost answer) is not doubled."""
    from conveyor import Conveyor
    from conveyor.errors import InvalidArguments

    app = Conveyor(store.url)

    @app.task
    def add(x: int) -> int:
        return x

    app.open()
    try:
        calls: list[object] = [(i,) for i in range(1000)]
        calls[700] = ("not a number",)
        with pytest.raises(InvalidArguments, match=r"\[700\]"):
            add.enqueue_many(calls)
        assert store.counts() == {}
        jobs = add.enqueue_many([(i,) for i in range(1000)])
        assert len({j.id for j in jobs}) == 1000
        assert store.counts() == {"default": {"queued": 1000}}
    finally:
        app.close()
    again = [_msg() for _ in range(50)]
    first = store.enqueue_stream(iter(again))
    assert store.enqueue_stream(iter(again)) == first == [m.id for m in again]
    assert store.counts() == {"default": {"queued": 1050}}


def test_retention_prunes_in_batches(store: PostgresBroker) -> None:
    """More finished jobs than one batch: all old ones go, the young and the active stay."""
    from conveyor.brokers.postgres import reads

    n = reads.PRUNE_BATCH + 700
    ids = store.enqueue([_msg() for _ in range(n)])
    leases = store.fetch(["default"], n, 60, "c")
    long_ago = time.time() - 3 * 86400
    store.ack([Outcome(x.job_id, x.token, "succeeded", result=b"null", finished_at=long_ago) for x in leases])
    young = store.enqueue([_msg()])
    (lease,) = store.fetch(["default"], 1, 60, "c")
    store.ack([Outcome(lease.job_id, lease.token, "succeeded", result=b"null")])
    waiting = store.enqueue([_msg()])
    assert store.prune(86400) == n
    assert store.get(ids[0]) is None and store.get(young[0]) is not None and store.get(waiting[0]) is not None


def test_without_listen_idle_consumers_poll(store: PostgresBroker) -> None:
    polling = PostgresBroker(store.url + "&notify=0&poll=0.05")
    polling.open()
    try:
        assert polling._listen() is None
        started = time.monotonic()
        polling.wait(["default"], 0.2)
        assert time.monotonic() - started < 0.19  # one poll interval, not the whole timeout
        store.enqueue([_msg()])
        assert len(polling.fetch(["default"], 10, 30, "c")) == 1
    finally:
        polling.close()


def test_a_notify_wakes_an_idle_consumer_at_once(store: PostgresBroker) -> None:
    waiter = store.fork()
    waiter.open()
    try:
        assert waiter.fetch(["default"], 1, 30, "c") == []
        threading.Timer(0.2, lambda: store.enqueue([_msg()])).start()
        started = time.monotonic()
        waiter.wait(["default"], 3.0)
        took = time.monotonic() - started
        assert 0.15 < took < 2.0
        assert len(waiter.fetch(["default"], 1, 30, "c")) == 1
    finally:
        waiter.close()


def test_the_claim_reads_the_partial_index_of_claimable_rows(store: PostgresBroker) -> None:
    store.enqueue([_msg() for _ in range(50)])
    with psycopg.connect(POSTGRES_URL) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute(
            f"EXPLAIN SELECT seq FROM {store.schema}.conveyor_jobs WHERE state = 'queued' AND queue = 'default' "
            "ORDER BY priority DESC, seq LIMIT 10 FOR UPDATE SKIP LOCKED").fetchall()
    assert "conveyor_jobs_ready" in "\n".join(r[0] for r in plan)


def test_a_lease_extension_is_no_change_but_each_transition_is_one(store: PostgresBroker) -> None:
    """Schema version 2 logs every updated row (no old/new join), except in statements marked quiet:
    a longer lease is not news for the dashboard; a claim and an ack are one change each."""
    job = _msg()
    store.enqueue([job])
    _, cursor = store.changes(None)
    [lease] = store.fetch(["default"], 1, 30.0, "c1")
    events, cursor = store.changes(cursor)
    assert [(e.data["id"], e.data["state"]) for e in events if e.kind == "job"] == [(job.id, "running")]
    assert store.extend([(job.id, lease.token)], 60.0).lost == set()
    assert store.changes(cursor) == ([], cursor)
    assert store.ack([Outcome(job.id, lease.token, "succeeded", result=b"1")]) == [True]
    events, cursor = store.changes(cursor)
    assert [(e.data["id"], e.data["state"]) for e in events if e.kind == "job"] == [(job.id, "succeeded")]


def test_listing_by_state_uses_an_index_for_every_state(store: PostgresBroker) -> None:
    """The listing index leaves out queued, running and succeeded jobs (the hot path writes none of
    its entries): those listings are still served, by the other indexes."""
    jobs = [_msg() for _ in range(6)]
    store.enqueue(jobs)
    leases = store.fetch(["default"], 4, 30.0, "c1")
    store.ack([Outcome(leases[0].job_id, leases[0].token, "succeeded"),
               Outcome(leases[1].job_id, leases[1].token, "failed", error={"type": "E", "message": "m"})])
    by_state = {state: {r.id for r in store.list_jobs(state=state).jobs}
                for state in ("queued", "running", "succeeded", "failed")}
    assert by_state == {"queued": {jobs[4].id, jobs[5].id}, "running": {leases[2].job_id, leases[3].job_id},
                        "succeeded": {leases[0].job_id}, "failed": {leases[1].job_id}}
    with psycopg.connect(POSTGRES_URL) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute(f"EXPLAIN SELECT * FROM {store.schema}.conveyor_jobs WHERE state = 'failed' "
                            "ORDER BY id DESC LIMIT 51").fetchall()
    assert "conveyor_jobs_listing" in "\n".join(r[0] for r in plan)


def test_a_job_scheduled_by_another_process_is_claimed_once_due(store: PostgresBroker) -> None:
    """A fetch that knows nothing is due claims with one statement; a job another process scheduled
    meanwhile is still claimed by the first fetch after it fell due (the empty claim asks when the
    next job is due, and promotes it at once), and by the fetch after a claim that returned rows."""
    assert store.fetch(["default"], 10, 30.0, "c1") == []  # nothing scheduled: the next fetches claim alone
    producer = PostgresBroker(store.url)
    try:
        soon = Message(id=str(uuid_utils.uuid7()), task="t", queue="default", payload=PAYLOAD,
                       run_at=time.time() + 0.2)
        producer.enqueue([soon])
        assert store.fetch(["default"], 10, 30.0, "c1") == []  # not due yet
        time.sleep(0.3)
        assert [lease.job_id for lease in store.fetch(["default"], 10, 30.0, "c1")] == [soon.id]
        later = Message(id=str(uuid_utils.uuid7()), task="t", queue="default", payload=PAYLOAD,
                        run_at=time.time() + 0.2)
        now = _msg()
        producer.enqueue([later, now])
        assert [lease.job_id for lease in store.fetch(["default"], 10, 30.0, "c1")] == [now.id]
        time.sleep(0.3)
        assert [lease.job_id for lease in store.fetch(["default"], 10, 30.0, "c1")] == [later.id]
    finally:
        producer.close()
