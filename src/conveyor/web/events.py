"""Live updates: one pump thread per web app reads the store's change feed
(:meth:`JobStore.changes`) and fans the events out to every Server-Sent Events client, so fifty open
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
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import orjson

from ..brokers import Event, JobStore

log = logging.getLogger("conveyor.web")

KINDS = frozenset({"job", "queue", "worker"})


class Batch:
    """The events of one poll, each formatted once for every subscriber; the bytes for each set
    of kinds are joined once too, for the first subscriber that asks."""

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = events
        self.formatted = [format_event(e) for e in events]
        self._joined: dict[frozenset[str] | None, tuple[bytes, int]] = {}
        self._lock = threading.Lock()

    def of_kinds(self, kinds: frozenset[str] | None) -> tuple[bytes, int]:
        """The events of ``kinds`` (all for None; ``reset`` always), joined, and how many."""
        with self._lock:
            found = self._joined.get(kinds)
            if found is None:
                parts = self.formatted if kinds is None else [
                    f for e, f in zip(self.events, self.formatted) if e.kind in kinds or e.kind == "reset"]
                found = self._joined[kinds] = (b"".join(parts), len(parts))
            return found

    def of_job(self, job: str) -> tuple[bytes, int]:
        """The events of one job (and ``reset``), joined, and how many."""
        parts = [f for e, f in zip(self.events, self.formatted)
                 if e.kind == "reset" or (e.kind == "job" and e.data.get("id") == job)]
        return b"".join(parts), len(parts)


class Subscription:
    """One SSE client's inbox: events already formatted for the stream, at most ``size`` waiting.

    The pump hands each poll's events over as one :class:`Batch`, so a stream wakes up (and writes
    to its socket) once per poll, however many events came, and fifty streams cost one
    formatting of each event. ``kinds`` (default all) and ``job`` (one job's events) filter.
    """

    def __init__(self, kinds: frozenset[str] | None = None, job: str | None = None, size: int = 10_000) -> None:
        self.kinds = None if kinds is None or kinds >= KINDS else kinds
        self.job = job
        self.size = size
        self._chunks: list[bytes] = []
        self._waiting = 0
        self._ready = threading.Condition(threading.Lock())

    def offer(self, batch: Batch) -> None:
        """Queue the events of ``batch`` that pass the filters."""
        if self.job is not None:
            chunk, n = batch.of_job(self.job) if self.kinds is None or "job" in self.kinds else (b"", 0)
        else:
            chunk, n = batch.of_kinds(self.kinds)
        if not n:
            return
        with self._ready:
            if self._waiting + n > self.size:  # a client too slow to keep up starts over
                last = batch.events[-1]
                self._chunks, self._waiting = [format_event(Event(last.id, "reset", {}, last.at))], 1
            else:
                self._chunks.append(chunk)
                self._waiting += n
            self._ready.notify()

    def take(self, timeout: float) -> bytes:
        """Everything waiting, formatted, after waiting up to ``timeout`` for something (else b"")."""
        with self._ready:
            if not self._chunks:
                self._ready.wait(timeout)
            chunks, self._chunks, self._waiting = self._chunks, [], 0
        return b"".join(chunks)


class EventPump:
    """Polls ``broker.changes`` every ``interval`` seconds while anyone listens.

    Args:
        make_broker: opens the broker the pump reads with (its own connection).
        interval: seconds between polls.
        backlog: recent events kept for clients that reconnect with ``Last-Event-ID``.
        idle: seconds without subscribers after which the thread stops (it restarts on demand).
    """

    #: Events read per poll at most. Each poll wakes every stream once, so under a flood fewer,
    #: larger batches cost the server less than many small ones.
    batch = 5000

    def __init__(self, make_broker: Callable[[], JobStore], interval: float = 0.25, backlog: int = 5000,
                 idle: float = 60.0) -> None:
        self.make_broker = make_broker
        self.interval = interval
        self.idle = idle
        self._lock = threading.Lock()
        self._subscribers: set[Subscription] = set()
        self._recent: deque[Event] = deque(maxlen=backlog)
        self._cursor: str | None = None
        self._broker: JobStore | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _reader(self) -> JobStore:
        if self._broker is None:
            self._broker = self.make_broker()
        return self._broker

    def position(self) -> str:
        """Where the stream stands now. A page rendered after this call whose stream resumes from
        it (as ``Last-Event-ID``) misses nothing that changed between the two."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._cursor is not None:
                return self._cursor
            return self._reader().changes(None)[1]

    def subscribe(self, last_event_id: str | None = None, kinds: frozenset[str] | None = None,
                  job: str | None = None) -> Subscription:
        """A new inbox (filtered as :class:`Subscription` says), holding what came after
        ``last_event_id`` when one is given."""
        sub = Subscription(kinds, job)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._cursor = self._reader().changes(None)[1]
                self._recent.clear()
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="conveyor-web-events", daemon=True)
                self._thread.start()
            missed = self._missed(last_event_id) if last_event_id else []
            if missed:
                sub.offer(Batch(missed))
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
                events, cursor = self._reader().changes(self._cursor, limit=self.batch)
                full = len(events) >= self.batch
                with self._lock:
                    self._cursor = cursor
                    self._recent.extend(events)
                    subscribers = list(self._subscribers)
                if events:
                    batch = Batch(events)
                    for sub in subscribers:
                        sub.offer(batch)
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


def stream(pump: EventPump, last_event_id: str | None, kinds: frozenset[str] | None = None,
           job: str | None = None, heartbeat: float = 15.0) -> Iterator[bytes]:
    """The body of an SSE response: events as they come, a comment after ``heartbeat`` seconds
    of silence. Ends (and unsubscribes) when the server closes it as the client goes away."""
    sub = pump.subscribe(last_event_id, kinds, job)
    try:
        yield b"retry: 2000\n: connected\n\n"
        while True:
            yield sub.take(heartbeat) or b": keepalive\n\n"
    finally:
        pump.unsubscribe(sub)
