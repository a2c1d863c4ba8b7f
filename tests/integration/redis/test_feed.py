"""The Redis change feed (a capped Stream): its cursors mean the same to every broker object and web
process, so a dashboard's ``Last-Event-ID`` stays exact across web restarts; the Stream stays
capped, and a cursor older than what it keeps asks for a reset."""

from __future__ import annotations

import orjson
import redis
from redis_support import REDIS_URL, message

from conveyor.brokers import Event, Outcome
from conveyor.brokers.redis import FEED_KEEP, RedisBroker
from conveyor.web.events import EventPump


def again(broker: RedisBroker) -> RedisBroker:
    """Another broker object on the same prefix: what a restarted web process makes."""
    fresh = RedisBroker(broker.url)
    fresh.open()
    return fresh


def jobs(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.data["id"], e.data["state"]) for e in events if e.kind == "job"]


def test_a_cursor_means_the_same_to_a_new_broker_object(broker: RedisBroker) -> None:
    _, cursor = broker.changes(None)
    batch = [message() for _ in range(3)]
    broker.enqueue(batch)
    (lease, *_) = broker.fetch(["default"], 1, 30, "c1")
    broker.ack([Outcome(lease.job_id, lease.token, "succeeded", result=b"1")])
    expected, end = broker.changes(cursor)
    other = again(broker)
    try:
        got, other_end = other.changes(cursor)
        assert [(e.id, e.kind, e.data) for e in got] == [(e.id, e.kind, e.data) for e in expected]
        assert other_end == end and other.changes(end) == ([], end)
        assert jobs(got) == [(m.id, "queued") for m in batch] + [(lease.job_id, "running"),
                                                                 (lease.job_id, "succeeded")]
        # a page that ends inside one entry (the batch's three ids) resumes there, in another object
        first, middle = broker.changes(cursor, limit=2)
        rest, _ = other.changes(middle)
        assert jobs(first) + jobs(rest) == jobs(got)
    finally:
        other.close()


def test_a_restarted_web_process_resumes_from_last_event_id(broker: RedisBroker) -> None:
    before = EventPump(lambda: again(broker), interval=0.05)
    position = before.position()
    before.close()
    m = message()
    broker.enqueue([m])
    assert broker.delete(m.id)
    after = EventPump(lambda: again(broker), interval=0.05)  # a new process: no backlog of its own
    try:
        body = after.subscribe(position).take(1.0).decode()
        assert "event: reset" not in body and body.count("event: job") == 2
        assert body.count(m.id) == 2 and '"state":"queued"' in body and '"state":"deleted"' in body
    finally:
        after.close()


def test_a_deleted_job_s_event_names_its_task(broker: RedisBroker) -> None:
    m = message()
    broker.enqueue([m])
    _, cursor = broker.changes(None)
    assert broker.delete(m.id)
    (event,) = broker.changes(cursor)[0]
    assert event.data["state"] == "deleted" and event.data["task"] == m.task and event.data["queue"] == m.queue


def test_the_feed_is_capped_and_a_cursor_older_than_it_asks_for_a_reset(broker: RedisBroker) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    _, oldest = broker.changes(None)
    broker.enqueue([message()])
    _, cursor = broker.changes(None)
    for _ in range(FEED_KEEP + 500):  # one entry each
        broker.enqueue([message()])
    length = client.xlen(broker.prefix + ":feed")
    assert FEED_KEEP <= length < FEED_KEEP + 200  # trimmed by whole nodes (100 entries by default)
    assert [e.kind for e in broker.changes(cursor)[0]] == ["reset"]
    other = again(broker)
    try:
        assert [e.kind for e in other.changes(oldest)[0]] == ["reset"]
    finally:
        other.close()
    _, now = broker.changes(None)
    broker.enqueue([message()])
    assert [e.kind for e in broker.changes(now)[0]] == ["job"]


def test_a_large_batch_is_logged_in_entries_of_at_most_128_jobs(broker: RedisBroker) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    _, cursor = broker.changes(None)
    batch = [message(key=f"k{i}") for i in range(300)]  # unique keys: one script for all of them
    broker.enqueue(batch)
    sizes = [len(orjson.loads(fields[b"i"])) for _, fields in client.xrange(broker.prefix + ":feed", min="(" + cursor)]
    assert sizes == [128, 128, 44]
    events, _ = broker.changes(cursor, limit=1000)
    assert jobs(events) == [(m.id, "queued") for m in batch]
