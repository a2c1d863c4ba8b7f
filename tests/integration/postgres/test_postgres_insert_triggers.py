"""Schema version 4's insert triggers, against the real server: whichever way a job is inserted (a
single enqueue, a small or a large batch, COPY, an application's own INSERT), it is logged in the
change feed exactly once, each queue is NOTIFYed once per transaction, and, once a paired store
turned the outbox on, it is marked exactly once; an unpaired store's inserts have no outbox trigger
to run.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence

import psycopg
import pytest
import uuid_utils
from pg_support import POSTGRES_URL, migrated_store
from psycopg import sql

from conveyor.brokers import Message
from conveyor.brokers.postgres import PostgresBroker, schema

PAYLOAD = b'{"args":[],"kwargs":{}}'


def _msgs(n: int, queue: str = "default") -> list[Message]:
    return [Message(id=str(uuid_utils.uuid7()), task="t", queue=queue, payload=PAYLOAD) for _ in range(n)]


@pytest.fixture
def store() -> Iterator[PostgresBroker]:
    with migrated_store(PostgresBroker, "ins") as made:
        yield made


@pytest.fixture
def paired() -> Iterator[PostgresBroker]:
    class Paired(PostgresBroker):
        def __init__(self, url: str) -> None:
            super().__init__(url)
            self.use_outbox()

    with migrated_store(Paired, "insout") as made:
        yield made


def _raw_insert(store: PostgresBroker, jobs: Sequence[Message], *, twice: bool = False) -> None:
    """The application's own multi-row INSERT, in one transaction (``twice``: two INSERTs in it)."""
    now = time.time()
    insert = sql.SQL("INSERT INTO {}.conveyor_jobs (id, task, queue, state, payload, created_at, updated_at) "
                     "SELECT id, 't', q, 'queued', %s, %s, %s FROM unnest(%s::text[], %s::text[]) AS u(id, q)"
                     ).format(sql.Identifier(store.schema))
    with psycopg.connect(POSTGRES_URL) as conn:
        parts = [jobs[: len(jobs) // 2], jobs[len(jobs) // 2:]] if twice else [jobs]
        for part in parts:
            conn.execute(insert, (PAYLOAD, now, now, [m.id for m in part], [m.queue for m in part]))


def _every_way(store: PostgresBroker) -> list[Message]:
    """Insert jobs every way there is; all of them."""
    single, two, eight, copied, streamed, raw, raw_twice = (
        _msgs(1), _msgs(2), _msgs(8), _msgs(40), _msgs(30), _msgs(5), _msgs(6))
    store.enqueue(single)
    store.enqueue(two)  # INSERT
    store.enqueue(eight)
    store.enqueue(copied)  # COPY
    store.enqueue_stream(iter(streamed))
    _raw_insert(store, raw)
    _raw_insert(store, raw_twice, twice=True)
    return single + two + eight + copied + streamed + raw + raw_twice


def test_every_way_of_inserting_logs_each_new_job_exactly_once(store: PostgresBroker) -> None:
    _, cursor = store.changes(None)
    jobs = _every_way(store)
    logged: Counter[str] = Counter()
    while True:
        events, cursor = store.changes(cursor, limit=50)
        if not events:
            break
        logged.update(e.data["id"] for e in events if e.kind == "job" and e.data["state"] == "queued")
    assert logged == Counter(m.id for m in jobs)


def test_each_queue_is_notified_once_per_transaction_whatever_the_way(store: PostgresBroker) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(store.channel)))

        def heard() -> list[str]:
            return sorted(n.payload for n in listener.notifies(timeout=0.5))

        store.enqueue(_msgs(1, "a"))
        assert heard() == ["a"]
        store.enqueue(_msgs(20, "a") + _msgs(20, "b"))  # COPY of two queues
        assert heard() == ["a", "b"]
        store.enqueue(_msgs(3, "a") + _msgs(3, "b"))  # a small batch: INSERT
        assert heard() == ["a", "b"]
        _raw_insert(store, _msgs(5, "c"))
        assert heard() == ["c"]
        _raw_insert(store, _msgs(5, "c") + _msgs(4, "c"), twice=True)  # two statements: folded at commit
        assert heard() == ["c"]


def _outbox_triggers(store: PostgresBroker) -> set[str]:
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname LIKE %s",
                            (f"{sql.Identifier(store.schema).as_string(None)}.conveyor_jobs", "%outbox")).fetchall()
    return {r[0] for r in rows}


def test_a_paired_store_marks_every_new_job_once_and_an_unpaired_one_has_no_outbox_triggers(
        store: PostgresBroker, paired: PostgresBroker) -> None:
    assert _outbox_triggers(store) == set()
    _every_way(store)
    assert store.outbox() == []

    assert _outbox_triggers(paired) == {"conveyor_jobs_outbox"}
    jobs = _every_way(paired)
    marked = paired.outbox(limit=1000)
    assert Counter(d.job_id for d in marked) == Counter(m.id for m in jobs)


def test_turning_the_outbox_on_is_idempotent_and_marks_the_jobs_queued_before(store: PostgresBroker) -> None:
    before = _msgs(3)
    store.enqueue(before)
    store.use_outbox()
    store._turn_outbox_on()
    store._turn_outbox_on()  # again: no second mark, no error
    assert [d.job_id for d in store.outbox()] == [m.id for m in before]
    after = _msgs(1)
    store.enqueue(after)
    assert [d.job_id for d in store.outbox()] == [m.id for m in before + after]


def test_migrating_a_paired_version_3_schema_gives_it_the_outbox_triggers() -> None:
    """A schema whose outbox was on before version 4 keeps marking new jobs after `conveyor migrate`."""
    name = f"insv3_{uuid_utils.uuid7().hex[-16:]}"
    quoted = sql.Identifier(name).as_string(None)
    made = PostgresBroker(f"{POSTGRES_URL}?schema={name}")
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn, conn.transaction():
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
            for version, text in schema.migrations():
                if version <= 3:
                    conn.execute(text.replace("{s}", quoted).replace("{channel}", "'unused'"))
            conn.execute(sql.SQL("INSERT INTO {}.conveyor_settings (name, value) VALUES "
                                 "('schema_version', '3'), ('outbox', 'on')").format(sql.Identifier(name)))
        assert "from version 3 to" in made.migrate()
        made.open()
        assert _outbox_triggers(made) == {"conveyor_jobs_outbox"}
        jobs = _msgs(1) + _msgs(2)
        made.enqueue(jobs[:1])
        made.enqueue(jobs[1:])
        assert [d.job_id for d in made.outbox()] == [m.id for m in jobs]
    finally:
        made.drop()
