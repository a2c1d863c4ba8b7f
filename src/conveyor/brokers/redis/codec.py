"""How the Redis broker writes values and reads them back: exact decimal times, raw replies, the
header line of field ``m`` and whole job hashes as :class:`~conveyor.brokers.JobRecord`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from .. import JobRecord


def _f(x: float) -> str:
    """A float as the exact decimal string the scripts store and compare."""
    return repr(float(x))


def _num(v: bytes | None) -> float | None:
    try:
        return float(v) if v else None
    except ValueError:
        return None


def _int(v: bytes | None, default: int) -> int:
    try:
        return int(v) if v else default
    except ValueError:
        return default


def _as_dict(reply: Any) -> dict[bytes, bytes]:
    """HGETALL's raw reply (a flat list in RESP2, a map in RESP3) as a dict."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2])) if reply else {}


def _text(v: bytes | None) -> str | None:
    return v.decode() if v else None


def _floats(values: Sequence[Any]) -> list[bytes]:
    """Many floats as the exact decimal strings :func:`_f` gives, in one call (orjson writes the
    shortest round-tripping form too, ten times faster than ``repr`` one by one)."""
    return orjson.dumps(values)[1:-1].split(b",") if values else []


def _header(head: bytes) -> tuple[str, int, int, float | None]:
    """The JSON header line of field m, [task, priority, max_attempts, timeout, created_at,
    enqueued_at] -> (task, priority, max_attempts, timeout). Raises ValueError."""
    try:
        task, priority, max_attempts, timeout = orjson.loads(head)[:4]
        return str(task), int(priority), int(max_attempts), None if timeout is None else float(timeout)
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"bad header line in field m: {exc}") from None


def record(job_id: str, queue: str, h: dict[bytes, bytes]) -> JobRecord:
    """The job record of the hash ``h`` of job ``job_id`` in ``queue`` (a record written by hand is
    shown as it is)."""
    head, _, payload = (h.get(b"m") or b"").partition(b"\n")
    try:
        task, priority, max_attempts, timeout, created_at, enqueued_at = orjson.loads(head)
        priority, max_attempts, created_at = int(priority), int(max_attempts), float(created_at)
        timeout = None if timeout is None else float(timeout)
    except (orjson.JSONDecodeError, TypeError, ValueError):  # a record written by hand: shown as it is
        task, priority, max_attempts, timeout, created_at, enqueued_at = "", 0, 1, None, 0.0, None
        payload = h.get(b"m") or b""
    error, history = h.get(b"error"), h.get(b"history")
    message = h.get(b"progress_message")
    return JobRecord(
        id=job_id, task=str(task), queue=queue, state=h[b"state"].decode(), payload=payload,
        priority=priority, key=_text(h.get(b"key")), attempts=_int(h.get(b"attempts"), 0),
        max_attempts=max_attempts, timeout=timeout, created_at=created_at,
        run_at=_num(h.get(b"run_at")) or enqueued_at, started_at=_num(h.get(b"started_at")),
        finished_at=_num(h.get(b"finished_at")), updated_at=_num(h.get(b"updated_at")) or enqueued_at,
        lease_until=_num(h.get(b"lease_until")), token=_int(h.get(b"token"), 0),
        consumer=_text(h.get(b"consumer")), cancel_requested=h.get(b"cancel_requested") == b"1",
        progress=_num(h.get(b"progress")), progress_message=None if message is None else message.decode(),
        result=h.get(b"result") or None, error=orjson.loads(error) if error else None,
        history=orjson.loads(history) if history else [],
    )
