"""What ``zmq://`` puts on the wire, its endpoints (``@`` binds, ``>`` connects) and its URL.

A **push** (producer to worker, or through a streamer device) is one frame: a JSON array of
deliveries, each ``[job_id, queue]`` or ``[job_id, queue, priority, order]``. A delivery names a
job already written to the store; the job's arguments never travel.

Any other push is read as a **job message** of :mod:`~conveyor.brokers.wire` (a client in another
language creating a job: ``{"task": ..., "args": [...], "kwargs": {...}, "queue": ...}``), carried
on the queue it names (``default`` when it names none). The pool process that takes it adds the
job to the store and runs it; one that does not fit the format (not JSON, wrong fields, over the
size limit, several frames) is recorded as a ``failed`` job with the reason, and the worker goes on.
Pushes over ``MAX_PUSH`` bytes are refused by ZeroMQ itself (the connection is dropped).

An **event** (on the ``events`` PUB socket) is two frames: the topic ``job.<state>`` (subscribe to
``job.`` for all, ``job.succeeded`` for completions) and a JSON object: ``id``, ``queue`` (null when
unknown), ``state``, ``finished_at``, ``run_at``, ``error`` and, when it is JSON, ``result``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import zmq

from ..errors import ConfigError
from .records import Dispatch, Outcome
from .transport import Delivery

__all__ = ["DATAGRAM_MAX", "MAX_PUSH", "Endpoint", "ZMQOptions", "answer_socket", "can", "decode_deliveries",
           "decode_dispatches", "encode_deliveries", "encode_dispatches", "message_queue", "outcome_event",
           "push_name"]

MAX_ID = 200  # longest job id or queue name accepted from the wire
#: Largest push a worker reads (bytes): four times the default size limit of a job message.
MAX_PUSH = 4 * 1_048_576
DEFAULT_QUEUE = "default"
#: Largest message sent on a datagram socket, a hub's answer or a local push (a larger one goes
#: over ZeroMQ).
DATAGRAM_MAX = 65_000
_OPTIONS = {"bind", "pull", "events", "hwm", "buffer", "send_timeout", "resend_after"}


@dataclass(slots=True, frozen=True)
class Endpoint:
    """A ZeroMQ address and whether this side binds it (CZMQ's ``@tcp://…`` / ``>tcp://…``)."""

    address: str
    bind: bool

    @classmethod
    def parse(cls, text: str, bind_by_default: bool) -> Endpoint:
        """``@addr`` binds, ``>addr`` connects, a bare ``addr`` does what ``bind_by_default`` says."""
        text = text.strip()
        if text.startswith("@"):
            return cls(text[1:], True)
        if text.startswith(">"):
            return cls(text[1:], False)
        return cls(text, bind_by_default)

    def attach(self, socket: zmq.Socket[Any]) -> None:
        """Bind or connect ``socket``."""
        if self.bind:
            socket.bind(self.address)
        else:
            socket.connect(self.address)

    def __str__(self) -> str:
        return ("@" if self.bind else ">") + self.address


class ZMQOptions:
    """The parsed ``zmq://`` URL (see :mod:`conveyor.brokers.zmq`). Raises ConfigError when it is wrong."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "zmq":
            raise ConfigError(f"not a zmq:// URL: {url!r}")
        if parts.netloc:
            self.push = [f"tcp://{host.strip()}" for host in parts.netloc.split(",") if host.strip()]
            for address in self.push:
                host, _, port = address.removeprefix("tcp://").rpartition(":")
                if not host or not port.isdigit():
                    raise ConfigError(f"zmq:// address {address!r} must be HOST:PORT")
        elif parts.path:
            self.push = [f"ipc://{parts.path}"]
        else:
            raise ConfigError("a zmq:// URL needs HOST:PORT (tcp) or an absolute path (ipc), e.g. zmq://127.0.0.1:5555")
        query = dict(parse_qsl(parts.query))
        unknown = set(query) - _OPTIONS
        if unknown:
            raise ConfigError(f"unknown zmq:// option(s) {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(_OPTIONS))})")
        try:
            self.hwm = int(query.get("hwm", 1000))
            self.buffer = int(query.get("buffer", 10_000))
            self.send_timeout = float(query.get("send_timeout", 0.5))
            self.resend_after = float(query.get("resend_after", 5.0))
        except ValueError as exc:
            raise ConfigError(f"bad zmq:// option: {exc}") from None
        if self.hwm < 1 or self.buffer < 1 or self.send_timeout < 0 or self.resend_after <= 0:
            raise ConfigError("zmq:// hwm and buffer must be >= 1, send_timeout >= 0, resend_after > 0")
        self.pull = Endpoint.parse(query["pull"], bind_by_default=False) if "pull" in query else None
        self.bind = Endpoint.parse(query["bind"], bind_by_default=True) if "bind" in query else None
        self.events = Endpoint.parse(query["events"], bind_by_default=True) if query.get("events") else None
        self.key = ",".join(self.push)

    @property
    def jobs(self) -> Endpoint:
        """Where a worker takes pushed deliveries from."""
        if self.pull is not None:
            return self.pull
        if self.bind is not None:
            return self.bind
        if len(self.push) != 1:
            raise ConfigError("with several zmq:// addresses, each worker needs bind= (its own) or pull= (a device)")
        return Endpoint(self.push[0], True)


def encode_dispatches(dispatches: Sequence[Dispatch]) -> bytes:
    """One push frame for ``dispatches``."""
    return orjson.dumps([[d.job_id, d.queue, d.priority, d.order] for d in dispatches])


def decode_dispatches(frames: Sequence[bytes]) -> list[Dispatch]:
    """The deliveries of one push; ValueError when the frames do not fit the format."""
    if len(frames) != 1:
        raise ValueError(f"expected one frame, got {len(frames)}")
    try:
        items = orjson.loads(frames[0])
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(items, list):
        raise ValueError("not a JSON array")
    out: list[Dispatch] = []
    for item in items:
        if not isinstance(item, list) or len(item) not in (2, 4):
            raise ValueError("each delivery must be [job_id, queue] or [job_id, queue, priority, order]")
        job_id, queue = item[0], item[1]
        priority, order = (item[2], item[3]) if len(item) == 4 else (0, 0)
        if not (isinstance(job_id, str) and isinstance(queue, str) and 0 < len(job_id) <= MAX_ID
                and 0 < len(queue) <= MAX_ID):
            raise ValueError("job_id and queue must be non-empty strings")
        if type(priority) is not int or type(order) is not int:
            raise ValueError("priority and order must be integers")
        out.append(Dispatch(job_id, queue, priority, order))
    return out


def message_queue(body: bytes) -> str:
    """The queue a job message names (``default`` when it names none, or is not one)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return DEFAULT_QUEUE
    queue = data.get("queue") if isinstance(data, dict) else None
    return queue if isinstance(queue, str) and 0 < len(queue) <= MAX_ID else DEFAULT_QUEUE


def encode_deliveries(request: int, deliveries: Sequence[Delivery], more: bool) -> bytes:
    """A hub's answer to a member's request (``more``: deliveries of those queues remain)."""
    return orjson.dumps([request, [[d.job_id, d.queue, d.priority, d.order, d.tag, d.redelivered,
                                    None if d.body is None else d.body.decode("latin-1")]
                                   for d in deliveries], more])


def answer_socket(who: str = "member") -> tuple[socket.socket, str | None]:
    """A datagram socket of a pool process (for its hub's answers) or of a hub (for its members'
    requests), and its address; no address where there is none (then unbound: it only sends).

    On Linux, a Unix datagram socket in the abstract namespace (no file to clean up: the name goes
    with the socket). The other side writes straight into it: the kernel wakes the waiting thread,
    where a message over ZeroMQ passes through two more threads (the I/O thread of each side).
    Elsewhere the messages go over ZeroMQ as before."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    if not sys.platform.startswith("linux"):
        return sock, None
    name = f"\0conveyor-zmq-{who}-{os.getpid()}-{secrets.token_hex(6)}"
    try:
        sock.bind(name)
    except OSError:
        return sock, None
    return sock, name


def push_name(address: str) -> str | None:
    """The Unix datagram address (Linux, abstract namespace) at which a hub bound at the ZeroMQ
    ``address`` also takes pushes from producers on its host; None elsewhere. A producer that can
    send there skips the two ZeroMQ I/O threads a push over tcp passes through (its own and the
    hub's): the kernel wakes the hub's thread directly. The name goes with the hub's socket."""
    if not sys.platform.startswith("linux"):
        return None
    return "\0conveyor-zmq-push-" + hashlib.blake2b(address.encode(), digest_size=12).hexdigest()


def decode_deliveries(body: bytes) -> tuple[int, list[Delivery], bool]:
    """The request number, deliveries and ``more`` of a hub's answer."""
    request, items, more = orjson.loads(body)
    return int(request), [Delivery(i[0], i[1], i[2], i[3], i[4], bool(i[5]),
                                   None if i[6] is None else i[6].encode("latin-1")) for i in items], bool(more)


def outcome_event(outcome: Outcome, queue: str | None) -> list[Any]:
    """``[topic, body]`` of the event for a recorded outcome."""
    body: dict[str, Any] = {"id": outcome.job_id, "queue": queue, "state": outcome.state,
                            "finished_at": outcome.finished_at, "run_at": outcome.run_at, "error": outcome.error}
    if outcome.result is not None:
        try:
            body["result"] = orjson.loads(outcome.result)
        except orjson.JSONDecodeError:
            pass  # not JSON (pickle): subscribers read it from the store
    return ["job." + outcome.state, body]


def can(sock: zmq.Socket[Any], what: int) -> bool:
    """Whether ``sock`` can take a send (``zmq.POLLOUT``) or has a message (``zmq.POLLIN``) now,
    without waiting: cheaper than a poll, or than a ``zmq.Again`` raised by a non-blocking call."""
    return bool(int(sock.getsockopt(zmq.EVENTS)) & what)
