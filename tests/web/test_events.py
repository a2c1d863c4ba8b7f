"""Server-Sent Events: delivery of live changes, heartbeats, filters and Last-Event-ID resume."""

from __future__ import annotations

import html
import re
import threading
import time
from collections.abc import Iterator

import orjson
from web_support import BEARER, worker
from werkzeug.test import Client, TestResponse

from conveyor import Conveyor
from conveyor.brokers import Event
from conveyor.web import WSGIApplication
from conveyor.web.events import Batch, Subscription


class Stream:
    """Reads an SSE response in a thread, so a test can wait for an event with a deadline."""

    def __init__(self, response: TestResponse) -> None:
        self.response = response
        self.text = ""
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        # A server closes the body in the thread that iterates it; so does this reader (the
        # stream yields at least every heartbeat, so it notices ``done`` within 0.2 s).
        chunks: Iterator[bytes] = iter(self.response.response)  # type: ignore[arg-type]
        try:
            for chunk in chunks:
                with self.lock:
                    self.text += chunk.decode()
                if self.done.is_set():
                    break
        finally:
            self.response.close()

    def events(self) -> list[dict[str, object]]:
        with self.lock:
            blocks = self.text.split("\n\n")
        out = []
        for block in blocks:
            fields: dict[str, str] = {}
            for line in block.splitlines():
                name, _, value = line.partition(": ")
                if name in ("id", "event", "data"):
                    fields[name] = value
            if "data" in fields:
                out.append({"id": fields.get("id"), "event": fields.get("event"), "data": orjson.loads(fields["data"])})
        return out

    def wait_for(self, check: object, timeout: float = 5.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if callable(check) and check(event):
                    return event
            time.sleep(0.02)
        raise AssertionError(f"no such event within {timeout}s; got {self.text!r}")

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()


def open_stream(client: Client, path: str = "/api/events", **headers: str) -> Stream:
    response = client.get(path, headers={**BEARER, **headers}, buffered=False)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert "Content-Encoding" not in response.headers
    return Stream(response)


def job_event(job_id: str, state: str) -> object:
    return lambda e: e["event"] == "job" and e["data"]["id"] == job_id and e["data"]["state"] == state


def enqueue(app: Conveyor, *args: object) -> str:
    (job_id,) = app.broker.enqueue([app.tasks["tests.add"].message(list(args), {}, {})])
    return job_id


def test_a_job_enqueued_after_connecting_is_delivered(api: Client, app: Conveyor, web: WSGIApplication) -> None:
    stream = open_stream(api)
    try:
        time.sleep(0.1)
        job_id = enqueue(app, 1)
        event = stream.wait_for(job_event(job_id, "queued"))
        assert event["data"]["task"] == "tests.add" and event["data"]["queue"] == "default"  # type: ignore[index]
        assert event["id"]
        (lease,) = app.broker.fetch(["default"], 1, 30.0, "c")
        app.broker.progress(lease.job_id, lease.token, 0.25, "a quarter")
        progressed = stream.wait_for(lambda e: e["event"] == "job" and e["data"]["progress"] == 0.25)
        assert progressed["data"]["progress_message"] == "a quarter"  # type: ignore[index]
        app.broker.pause("media")
        stream.wait_for(lambda e: e["event"] == "queue" and e["data"] == {"name": "media", "paused": True,
                                                                         "at": e["data"]["at"]})
        worker(app)
        stream.wait_for(lambda e: e["event"] == "worker" and e["data"]["id"] == "worker-1")
        assert stream.text.startswith("retry: 2000\n")
    finally:
        stream.close()


def test_keepalive_comments_during_silence(api: Client, web: WSGIApplication) -> None:
    stream = open_stream(api)
    try:
        deadline = time.monotonic() + 3
        while ": keepalive" not in stream.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ": keepalive\n\n" in stream.text
    finally:
        stream.close()


def test_resume_with_last_event_id(api: Client, app: Conveyor, web: WSGIApplication) -> None:
    first = open_stream(api)
    try:
        time.sleep(0.1)
        a = enqueue(app, 1)
        seen = first.wait_for(job_event(a, "queued"))
    finally:
        first.close()
    b = enqueue(app, 2)  # while disconnected
    c = enqueue(app, 3)
    time.sleep(0.2)
    again = open_stream(api, **{"Last-Event-ID": str(seen["id"])})
    try:
        again.wait_for(job_event(b, "queued"))
        again.wait_for(job_event(c, "queued"))
        assert not [e for e in again.events() if e["data"]["id"] == a]  # type: ignore[index]
    finally:
        again.close()


def test_resume_from_before_the_backlog_asks_the_store(api: Client, app: Conveyor, web: WSGIApplication) -> None:
    _, cursor = app.broker.changes(None)
    a = enqueue(app, 1)
    web.pump._recent.clear()  # as if the pump's own memory had moved on
    stream = open_stream(api, **{"Last-Event-ID": cursor})
    try:
        stream.wait_for(job_event(a, "queued"))
    finally:
        stream.close()


def test_an_unknown_last_event_id_asks_for_a_reset(api: Client, web: WSGIApplication) -> None:
    stream = open_stream(api, **{"Last-Event-ID": "garbage"})
    try:
        stream.wait_for(lambda e: e["event"] == "reset")
    finally:
        stream.close()


def test_filters_by_kind_and_job(api: Client, app: Conveyor, web: WSGIApplication) -> None:
    watched = enqueue(app, 1)
    only_job = open_stream(api, f"/api/events?job={watched}")
    only_queues = open_stream(api, "/api/events?kind=queue")
    try:
        time.sleep(0.1)
        other = enqueue(app, 2)
        app.broker.cancel(watched)
        app.broker.pause("default")
        only_job.wait_for(job_event(watched, "cancelled"))
        only_queues.wait_for(lambda e: e["event"] == "queue")
        time.sleep(0.2)
        assert all(e["data"]["id"] == watched for e in only_job.events())  # type: ignore[index]
        assert all(e["event"] == "queue" for e in only_queues.events())
        assert other
    finally:
        only_job.close()
        only_queues.close()
    bad = api.get("/api/events?kind=everything", headers=BEARER)
    assert bad.status_code == 422


def test_one_pump_serves_every_client(api: Client, app: Conveyor, web: WSGIApplication) -> None:
    streams = [open_stream(api) for _ in range(5)]
    try:
        time.sleep(0.1)
        job_id = enqueue(app, 1)
        for stream in streams:
            stream.wait_for(job_event(job_id, "queued"))
        assert web.pump.subscribers == 5
        assert sum(t.name == "conveyor-web-events" for t in threading.enumerate()) == 1
    finally:
        for stream in streams:
            stream.close()
    deadline = time.monotonic() + 2
    while web.pump.subscribers and time.monotonic() < deadline:
        time.sleep(0.02)
    assert web.pump.subscribers == 0  # closed streams unsubscribe


def test_a_page_s_stream_starts_where_the_page_was_rendered(web: WSGIApplication, app: Conveyor,
                                                             browser: Client) -> None:
    """What changes between rendering a page and opening its stream still comes (no gap)."""
    idle = browser.get("/jobs").get_data(as_text=True)  # the event thread is not running yet
    keeper = open_stream(browser)  # now it is
    try:
        for page in (idle, browser.get("/jobs").get_data(as_text=True)):
            found = re.search(r'<meta name="conveyor-events" content="([^"]+)">', page)
            assert found and "last_event_id=" in found.group(1)
            (job_id,) = app.broker.enqueue([app.tasks["tests.add"].message([1], {}, {})])
            time.sleep(0.2)  # the change is fanned out before the page's stream opens
            stream = open_stream(browser, html.unescape(found.group(1)))
            try:
                stream.wait_for(job_event(job_id, "queued"))
            finally:
                stream.close()
    finally:
        keeper.close()


def test_a_subscriber_too_far_behind_gets_a_reset_instead() -> None:
    events = [Event(f"0-{i}", "job", {"id": f"j{i % 3}", "state": "queued"}, 1.0) for i in range(6)]
    events.append(Event("0-6", "queue", {"name": "default", "paused": True}, 1.0))
    batch = Batch(events)
    everything, jobs_only, one_job = Subscription(size=10), Subscription(frozenset({"job"})), Subscription(job="j1")
    for sub in (everything, jobs_only, one_job):
        sub.offer(batch)
    assert everything.take(0).count(b"\nevent: ") == 7
    assert jobs_only.take(0).count(b"event: job\n") == 6 and b"event: queue" not in jobs_only.take(0)
    assert one_job.take(0).count(b'"id":"j1"') == 2
    everything.offer(batch)
    everything.offer(batch)  # 14 waiting would be over 10: the client must reload instead
    assert everything.take(0) == b'id: 0-6\nevent: reset\ndata: {"at":1.0}\n\n'
    assert everything.take(0.01) == b""  # nothing more: a keep-alive follows
