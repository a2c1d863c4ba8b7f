"""Live updates: one pump thread per web app reads the store's change feed
(:meth:`Broker.changes`) and fans the events out to every Server-Sent Events client, so fifty open
dashboards cost one poll of the store, not fifty.

The stream (``GET /api/events``) is ``text/event-stream``::

    retry: 2000

    id: 1042
    event: job
    data: {"id": "0190…", "task": "media.transcode", "queue": "media", "state": "running", …, "at": 1.7e9}

``event`` is ``job``, ``queue``, ``worker`` or ``reset`` (history was lost: reload everything).
A comment line (``: keepalive``) comes every 15 seconds of silence. A client that reconnects with
``Last-Event-ID`` gets what it missed, as long as the store still has it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

import orjson

from ..brokers import Broker, Event

log = logging.getLogger("conveyor.web")

EventFilter = Callable[[Event], bool]


class Subscription:
    """One SSE client's inbox."""

    def __init__(self, accept: EventFilter | None, size: int = 2000) -> None:
        self.accept = accept
        self.inbox: queue.Queue[Event] = queue.Queue(maxsize=size)

    def offer(self, event: Event) -> None:
        if event.kind != "reset" and self.accept is not None and not self.accept(event):
            return
        try:
            self.inbox.put_nowait(event)
        except queue.Full:  # a client too slow to keep up starts over
            with self.inbox.mutex:
                self.inbox.queue.clear()
            self.inbox.put_nowait(Event(event.id, "reset", {}, event.at))

    def take(self, timeout: float) -> list[Event]:
        """Everything waiting, after waiting up to ``timeout`` for the first."""
        try:
            first = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return []
        out = [first]
        while True:
            try:
                out.append(self.inbox.get_nowait())
            except queue.Empty:
                return out


class EventPump:
    """Polls ``broker.changes`` every ``interval`` seconds while anyone listens.

    Args:
        make_broker: opens the broker the pump reads with (its own connection).
        interval: seconds between polls.
        backlog: recent events kept for clients that reconnect with ``Last-Event-ID``.
        idle: seconds without subscribers after which the thread stops (it restarts on demand).
    """

    def __init__(self, make_broker: Callable[[], Broker], interval: float = 0.25, backlog: int = 5000,
                 idle: float = 60.0) -> None:
        self.make_broker = make_broker
        self.interval = interval
        self.idle = idle
        self._lock = threading.Lock()
        self._subscribers: set[Subscription] = set()
        self._recent: deque[Event] = deque(maxlen=backlog)
        self._cursor: str | None = None
        self._broker: Broker | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _reader(self) -> Broker:
        if self._broker is None:
            self._broker = self.make_broker()
        return self._broker

    def subscribe(self, last_event_id: str | None = None, accept: EventFilter | None = None) -> Subscription:
        """A new inbox, holding what came after ``last_event_id`` when one is given."""
        sub = Subscription(accept)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._cursor = self._reader().changes(None)[1]
                self._recent.clear()
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="conveyor-web-events", daemon=True)
                self._thread.start()
            if last_event_id:
                for event in self._missed(last_event_id):
                    sub.offer(event)
            self._subscribers.add(sub)
        return sub

    def _missed(self, last_event_id: str) -> list[Event]:
        """Events after ``last_event_id`` up to the pump's cursor (the lock is held)."""
        if last_event_id == self._cursor:
            return []
        ids = [e.id for e in self._recent]
        if last_event_id in ids:
            at = len(ids) - 1 - ids[::-1].index(last_event_id)
            return list(self._recent)[at + 1:]
        # Older than the backlog: ask the store, until its feed meets the backlog.
        first: dict[str, int] = {}
        for i, event_id in enumerate(ids):
            first.setdefault(event_id, i)
        out: list[Event] = []
        cursor = last_event_id
        for _ in range(100):
            events, cursor = self._reader().changes(cursor, limit=1000)
            for event in events:
                if event.kind == "reset":
                    return [event]
                if event.id in first:
                    return out + list(self._recent)[first[event.id]:]
                out.append(event)
            if not events or cursor == self._cursor:
                return out
        return [Event(self._cursor or "", "reset", {}, time.time())]

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def _run(self) -> None:
        quiet_since: float | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            full = False
            try:
                events, cursor = self._reader().changes(self._cursor, limit=1000)
                full = len(events) >= 1000
                with self._lock:
                    self._cursor = cursor
                    self._recent.extend(events)
                    subscribers = list(self._subscribers)
                for event in events:
                    for sub in subscribers:
                        sub.offer(event)
            except Exception:  # a broker hiccup must not end live updates for good
                log.exception("reading the change feed failed")
            with self._lock:
                if self._subscribers:
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > self.idle:
                    self._thread = None
                    self._close_reader()
                    return
            if not full:
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        with self._lock:
            self._close_reader()

    def _close_reader(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            try:
                broker.close()
            except Exception:
                log.exception("closing the event reader failed")

    def close(self) -> None:
        """Stop the thread (subscribers get nothing more)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


def format_event(event: Event) -> bytes:
    """One event in the ``text/event-stream`` format."""
    data = orjson.dumps({**event.data, "at": event.at}, default=str)
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event.id.encode(), event.kind.encode(), data)


def stream(pump: EventPump, last_event_id: str | None, accept: EventFilter | None,
           heartbeat: float = 15.0) -> Iterator[bytes]:
    """The body of an SSE response: events as they come, a comment after ``heartbeat`` seconds
    of silence. Ends (and unsubscribes) when the server closes it as the client goes away."""
    sub = pump.subscribe(last_event_id, accept)
    try:
        yield b"retry: 2000\n: connected\n\n"
        while True:
            events = sub.take(heartbeat)
            if not events:
                yield b": keepalive\n\n"
                continue
            yield b"".join(format_event(e) for e in events)
    finally:
        pump.unsubscribe(sub)
