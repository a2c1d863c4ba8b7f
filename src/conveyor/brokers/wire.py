"""The wire format of Conveyor's messages on AMQP queues and STOMP destinations (``docs/protocol.md``).

Every message body is one JSON object (UTF-8). Two kinds travel:

* a **dispatch**, what Conveyor itself sends: ``{"job": "<id>"}`` (and ``"priority": n`` when not
  0). The job (task, arguments, attempts) is already in the store; the body only names it.
* a **job message**, what a client in any language may publish to create a job:
  ``{"task": "name", "args": [...], "kwargs": {...}}`` with optional ``id``, ``queue``,
  ``priority``, ``max_attempts``, ``timeout``, ``delay`` and ``key``. The worker that receives it
  writes the job to the store first (:class:`~conveyor.brokers.paired.PairedBroker`), then runs it.

A body that is neither (not JSON, not an object, fields of the wrong type, larger than the size
limit) is a :class:`WireError`; the paired broker records it as a ``failed`` job with the reason,
so that nothing a client sent vanishes silently. A job message naming a task no worker has is
recorded and handled as any job for an unknown task (handed back, then ``failed`` with
``UnknownTask`` after the ``unknown_task_timeout`` setting).
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import uuid_utils

from .records import Dispatch, Message
from .transport import Delivery

__all__ = ["MAX_PAYLOAD", "WireError", "dispatch_body", "failed_message", "job_message", "read_delivery"]

#: Largest body accepted by default (bytes): the default ``max_payload`` setting.
MAX_PAYLOAD = 1_048_576
#: How much of a refused body is kept on its failed job (the rest is cut).
KEPT_OF_REFUSED = 4096
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "id": (str,), "queue": (str,), "priority": (int,), "max_attempts": (int,), "timeout": (int, float),
    "delay": (int, float), "key": (str,),
}
_KNOWN = frozenset({"task", "args", "kwargs", *_OPTIONAL})


class WireError(ValueError):
    """A body that does not fit the wire format; ``kind`` is the error type recorded on the job
    (``MalformedMessage`` or ``PayloadTooLarge``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def error(self) -> dict[str, Any]:
        """The job's ``error`` field."""
        return {"type": self.kind, "message": str(self)}


def dispatch_body(d: Dispatch) -> bytes:
    """The body of a dispatch of job ``d``."""
    if d.priority:
        return orjson.dumps({"job": d.job_id, "priority": d.priority})
    return orjson.dumps({"job": d.job_id})


def read_delivery(body: bytes, queue: str, tag: Any, redelivered: bool = False) -> Delivery:
    """A received body as a :class:`Delivery`: a dispatch names its job; anything else keeps its
    ``body`` for the paired broker to import (or refuse) as a job message."""
    if body[:8] == b'{"job":"':  # the usual case, decoded without a second look
        if body[-2:] == b'"}' and body.count(b'"') == 4 and b"\\" not in body:  # {"job":"<id>"} exactly
            return Delivery(body[8:-2].decode(), queue, 0, 0, tag, redelivered)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if type(data) is dict and type(data.get("job")) is str and "task" not in data:
            priority = data.get("priority", 0)
            if type(priority) is int:
                return Delivery(data["job"], queue, priority, 0, tag, redelivered)
    return Delivery("", queue, 0, 0, tag, redelivered, body)


def job_message(body: bytes, queue: str, now: float, max_payload: int = MAX_PAYLOAD) -> Message:
    """The job a job message asks for, arrived on ``queue`` (its queue unless it names one).
    Raises :class:`WireError`."""
    if len(body) > max_payload:
        raise WireError("PayloadTooLarge", f"message of {len(body)} bytes is over the limit of {max_payload} bytes")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WireError("MalformedMessage", f"not JSON: {exc}") from None
    if type(data) is not dict:
        raise WireError("MalformedMessage", f"not a JSON object but {type(data).__name__}")
    task = data.get("task")
    if type(task) is not str or not task:
        raise WireError("MalformedMessage", "no task: a job message needs \"task\" (a non-empty string)")
    args, kwargs = data.get("args", []), data.get("kwargs", {})
    if type(args) is not list:
        raise WireError("MalformedMessage", f"\"args\" must be an array, not {type(args).__name__}")
    if type(kwargs) is not dict:
        raise WireError("MalformedMessage", f"\"kwargs\" must be an object, not {type(kwargs).__name__}")
    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        raise WireError("MalformedMessage", f"unknown field(s) {unknown}; known: {sorted(_KNOWN)}")
    for name, types in _OPTIONAL.items():
        value = data.get(name)
        if value is not None and (type(value) not in types or (type(value) is float and not math.isfinite(value))):
            raise WireError("MalformedMessage", f"\"{name}\" must be {' or '.join(t.__name__ for t in types)}, "
                                                f"not {value!r}")
    max_attempts = data.get("max_attempts") or 1
    if max_attempts < 1:
        raise WireError("MalformedMessage", f"\"max_attempts\" must be >= 1, not {max_attempts}")
    timeout = data.get("timeout")
    if timeout is not None and timeout <= 0:
        raise WireError("MalformedMessage", f"\"timeout\" must be > 0 seconds, not {timeout}")
    delay = data.get("delay") or 0
    payload = orjson.dumps({"args": args, "kwargs": kwargs})
    return Message(id=data.get("id") or str(uuid_utils.uuid7()), task=task, queue=data.get("queue") or queue,
                   payload=payload, priority=data.get("priority") or 0,
                   run_at=now + delay if delay > 0 else None, key=data.get("key"), max_attempts=max_attempts,
                   timeout=timeout, created_at=now)


def failed_message(body: bytes, queue: str, now: float) -> Message:
    """The record of a refused body, to be failed with its reason: the task it named when it
    named one, and at most KEPT_OF_REFUSED bytes of the body (as a JSON string) in its payload."""
    task = "?"
    if len(body) <= MAX_PAYLOAD:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if type(data) is dict and type(data.get("task")) is str and data["task"]:
            task = data["task"][:200]
    kept = body[:KEPT_OF_REFUSED].decode("utf-8", "replace")
    payload = orjson.dumps({"args": [], "kwargs": {}, "refused_body": kept, "size": len(body)})
    return Message(id=str(uuid_utils.uuid7()), task=task, queue=queue, payload=payload, created_at=now)
