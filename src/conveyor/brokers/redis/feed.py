"""The Redis store's change feed: a Stream capped near FEED_KEEP entries, which the scripts write as
they change jobs (one entry per script, queue and state) and the broker writes as queues are paused
or resumed and workers beat or leave. A cursor is a Stream entry id, so it means the same to every
broker object and web process: the dashboard's ``Last-Event-ID`` stays exact across restarts.

On one server there is one Stream, ``<prefix>:feed``. On a cluster a script reaches only its queue's
slot, so each queue has its own, ``{<prefix>:<queue>}:feed``, next to ``<prefix>:feed`` for queues
and workers; a cursor then names a position in each.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote, unquote

import orjson

from .. import Event, job_event_data
from .base import RedisBase
from .codec import _as_dict

#: A position in one Stream: after entry ``ms-seq``, and ``.k`` ids into the entry that follows it
#: (a page of changes may end inside a batch's entry).
_POSITION = re.compile(r"(\d+-\d+)(?:\.(\d+))?")
#: An entry as read: (entry id as (ms, seq), the Stream's name in the cursor, its fields, its job ids
#: or [None] for a queue's or a worker's change).
_Entry = tuple[tuple[int, int], str, dict[bytes, bytes], list[Any]]
PAGE = 100  # entries read from a Stream per script call


def _entry_id(raw: bytes | str) -> tuple[int, int]:
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else raw).partition("-")
    return int(ms), int(seq)


class RedisFeed(RedisBase):
    """``changes()`` (the dashboard's live updates) and ``events()``, read from the feed."""

    def _feeds(self) -> dict[str, str]:
        """The Streams of the feed by their name in a cursor ('' for the server's or the queues' and
        workers' one, a queue's name for that queue's on a cluster)."""
        feeds = {"": self.prefix + ":feed"}
        if self.cluster:  # fresh: a queue's first jobs are changes too
            feeds.update((queue, self._base(queue) + ":feed") for queue in self._all_queues(fresh=True))
        return feeds

    def _read(self, key: str, after: str, count: int) -> tuple[bool, str, list[Any]]:
        """(whether the reader must reset, the newest entry id, the entries after ``after``)."""
        reply = self._link.script("feed", [key], [after, count])
        return reply[0] == b"reset", reply[1].decode(), reply[2] if len(reply) > 2 else []

    @staticmethod
    def _cursor(positions: dict[str, str]) -> str:
        if list(positions) == [""]:
            return positions[""]
        return ",".join(f"{quote(name, safe='')}={at}" for name, at in sorted(positions.items()))

    def _positions(self, cursor: str, feeds: dict[str, str]) -> dict[str, str] | None:
        """The cursor's position in each Stream; None when it is not one of this feed's cursors."""
        if "=" not in cursor:
            found = {"": cursor}
        else:
            found = {}
            for part in cursor.split(","):
                name, _, at = part.partition("=")
                found[unquote(name)] = at
        if "" not in found or (not self.cluster and len(found) > 1):
            return None
        if not all(_POSITION.fullmatch(at) for at in found.values()):
            return None
        # a queue newer than the cursor: its Stream is read from its start
        return {name: found.get(name, "0-0") for name in feeds} | found

    def changes(self, after: str | None, limit: int = 500) -> tuple[list[Event], str]:
        """Changes after the cursor ``after``, read from the feed (see the module's docstring); a
        cursor older than the feed keeps, or not of this feed, yields one ``reset`` event."""
        limit = max(0, limit)
        feeds = self._feeds()
        positions = None if after is None else self._positions(after, feeds)
        if positions is None:
            cursor = self._cursor({name: self._read(key, "", 0)[1] for name, key in feeds.items()})
            return ([] if after is None else [Event(cursor, "reset", {}, self.clock())]), cursor
        entries: list[_Entry] = []
        newest: dict[str, str] = {}
        reset = False
        for name, key in feeds.items():
            at, _, skip = positions[name].partition(".")
            wanted = limit + int(skip or 0)  # events of this Stream that may be among the first ``limit``
            while True:
                lost, newest[name], got = self._read(key, at, min(PAGE, wanted + 1))
                if lost:
                    reset = True
                    break
                for raw in got:
                    fields = _as_dict(raw[1])
                    ids = orjson.loads(fields[b"i"]) if b"i" in fields else [None]
                    entries.append((_entry_id(raw[0]), name, fields, ids))
                    wanted -= len(ids)
                if len(got) < PAGE or wanted < 0:
                    break
                at = got[-1][0].decode()
        if reset:
            cursor = self._cursor(newest)
            return [Event(cursor, "reset", {}, self.clock())], cursor
        entries.sort(key=lambda e: e[0])
        return self._events(entries, positions, limit)

    def _events(self, entries: Sequence[_Entry], positions: dict[str, str],
                limit: int) -> tuple[list[Event], str]:
        """The first ``limit`` events of ``entries`` (oldest first) after ``positions``, and the
        cursor after them; each event's id is the cursor just after it."""
        skip = {name: int(at.partition(".")[2] or 0) for name, at in positions.items()}
        planned: list[tuple[str, dict[str, str], dict[bytes, bytes], str | None, int]] = []  # per event
        for entry_id, name, fields, ids in entries:
            start, skip[name] = skip[name], 0
            here = f"{entry_id[0]}-{entry_id[1]}"
            for k in range(start, len(ids)):
                if len(planned) >= limit:
                    break
                previous = positions[name].partition(".")[0]
                positions = positions | {name: here if k + 1 == len(ids) else f"{previous}.{k + 1}"}
                planned.append((self._cursor(positions), positions, fields, ids[k], k))
        job_ids = [job_id for _, _, _, job_id, _ in planned if job_id is not None]
        records = dict(zip(job_ids, self.get_many(job_ids))) if job_ids else {}
        events = [self._event(cursor, fields, job_id, k, records) for cursor, _, fields, job_id, k in planned]
        return events, self._cursor(planned[-1][1] if planned else positions)

    @staticmethod
    def _event(cursor: str, fields: dict[bytes, bytes], job_id: str | None, k: int, records: dict[str, Any]) -> Event:
        text = {name.decode(): value.decode() for name, value in fields.items()}
        at = float(text["t"])
        if "w" in text:
            return Event(cursor, "worker", {"id": text["w"], "state": text["s"]}, at)
        if "p" in text:
            return Event(cursor, "queue", {"name": text["q"], "paused": text["p"] == "1"}, at)
        state = text["s"]
        record = records.get(job_id or "")
        if record is not None:
            data = job_event_data(record) | {"state": state}
        else:  # deleted since (or now)
            tasks = orjson.loads(text["k"]) if "k" in text else []
            data = {"id": job_id, "task": tasks[k] if k < len(tasks) else None, "queue": text["q"], "state": state,
                    "progress": None, "progress_message": None, "attempts": None, "started_at": None}
        return Event(cursor, "job", data, at)

    def events(self, poll: float = 1.0) -> Iterator[dict[str, Any]]:
        """Every state change from now on, as the feed has it: ``{"queue", "state", "at", "ids"}``
        (``state`` is ``deleted`` for removed jobs; ``started`` or ``cancel_requested`` is true when
        that is what changed). Runs until the caller stops iterating."""
        feeds = self._feeds()
        positions = {name: self._read(key, "", 0)[1] for name, key in feeds.items()}
        while True:
            found = False
            for name, key in self._feeds().items():
                _, _, got = self._read(key, positions.get(name, "0-0"), 1000)
                for raw in got:
                    positions[name] = raw[0].decode() if isinstance(raw[0], bytes) else raw[0]
                    fields = {n.decode(): v.decode() for n, v in _as_dict(raw[1]).items()}
                    if "i" not in fields or fields.get("x") == "progress":
                        continue
                    found = True
                    event: dict[str, Any] = {"queue": fields["q"], "state": fields["s"], "at": float(fields["t"]),
                                             "ids": orjson.loads(fields["i"])}
                    if "x" in fields:
                        event[fields["x"]] = True
                    yield event
            if not found:
                time.sleep(poll)
