"""``Transport``: what only moves deliveries (AMQP, STOMP, ZeroMQ; ``memory`` is the reference).

A transport keeps no job history: a delivery names a job (its id, queue, priority and place),
and the job itself (arguments, attempts, state, result) lives in the store it is paired with by
:class:`~conveyor.brokers.paired.PairedBroker`. Five operations, all batch-first:

* ``send(dispatches)``: carry these jobs to their queues.
* ``receive(queues, limit, timeout)``: up to ``limit`` deliveries from ``queues`` (in that order of
  preference), waiting up to ``timeout`` seconds for the first (0: never blocks). A received
  delivery is held (unacknowledged) until it is settled or requeued.
* ``settle(deliveries)``: done with them (the job ran, or the delivery was a duplicate).
* ``requeue(deliveries)``: give them back, in their place where the transport can.
* ``purge(queue)``: drop every waiting delivery of ``queue``.

One hook is for the worker: ``serve(broker, queues)`` starts what a transport runs inside a
worker's supervisor for its pool (ZeroMQ's sockets; nothing for a transport with a server), before
the pool starts, and returns what to ``close()`` at shutdown.

Capabilities are declared as class attributes, never probed; a paired broker presents them to the
worker as its own.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import BrokerError
from .records import Check, Dispatch, Outcome

if TYPE_CHECKING:
    from .store import Broker

__all__ = ["Delivery", "Reconnect", "Service", "Transport", "prefetch_for", "split_options"]

#: Seconds at most between two connection attempts of a transport with a server.
BACKOFF_MAX = 5.0


class Service(Protocol):
    """What :meth:`Transport.serve` started in a worker; closed at the worker's shutdown."""

    def close(self) -> None:
        """Stop it (what it held is resent from the store by whoever serves the queues next)."""


@dataclass(slots=True, frozen=True)
class Delivery:
    """One received delivery of a job; ``tag`` is the transport's own handle to settle it by."""

    job_id: str
    queue: str
    priority: int = 0
    order: int = 0
    tag: Any = None
    #: True when the transport has handed this delivery out before (it was requeued or lost).
    redelivered: bool = False
    #: The body of a *job message* (see :mod:`~conveyor.brokers.wire`): a job a client published
    #: that is not in the store yet (``job_id`` is then empty). The paired broker adds it to the
    #: store before claiming it, or records it as ``failed`` when it does not fit the format.
    body: bytes | None = None

    @property
    def dispatch(self) -> Dispatch:
        """The job this delivery carries, as the store names it."""
        return Dispatch(self.job_id, self.queue, self.priority, self.order)


class Transport(ABC):
    """Base class of every transport."""

    scheme: ClassVar[str] = ""
    #: ``receive`` can wait for a delivery (else the paired broker polls).
    supports_blocking_fetch: ClassVar[bool] = False
    #: Deliveries of higher priority come first within a queue.
    supports_priorities: ClassVar[bool] = False
    #: The transport can hold a delivery until a time (else delays wait in the store's schedule).
    supports_native_delays: ClassVar[bool] = False
    #: False for a transport living in one process (memory): the worker then refuses a process pool.
    shared_between_processes: ClassVar[bool] = True
    #: Deliveries outlive this process (a server keeps them). When False (memory), a paired broker
    #: sends every queued job again when it opens: what the last process held is gone.
    durable: ClassVar[bool] = True

    def __init__(self, url: str) -> None:
        self.url = url

    def open(self) -> None:  # noqa: B027 - optional hook
        """Connect now instead of on first use. Raises BrokerError."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; held deliveries go back to their queues. It may be opened again."""

    def fork(self) -> Transport:
        """A new, unopened transport on the same URL, for another process or thread."""
        return type(self)(self.url)

    def serve(self, broker: Broker | None = None, queues: Sequence[str] | None = None) -> Service | None:
        """Start what this transport runs inside a worker for its pool; the worker's supervisor
        calls it once, before the pool starts, and closes the result at shutdown.

        Args:
            broker: the worker's broker (a paired broker), for a service that reads its store.
            queues: the queues the worker consumes.

        Returns:
            What to close at shutdown, or None (the default: a transport with a server of its own
            needs nothing in the worker). Raises BrokerError when it cannot start (an address
            taken)."""
        return None

    def diagnose(self) -> list[Check]:
        """What ``conveyor doctor`` reports of this transport (reachable, configured as Conveyor
        needs: plugins, queue types). Default: it opens."""
        try:
            self.open()
        except Exception as exc:
            return [Check(f"{self.scheme}:// transport reachable", False, str(exc), "check the URL and the server")]
        return [Check(f"{self.scheme}:// transport reachable", True)]

    @abstractmethod
    def send(self, dispatches: Sequence[Dispatch]) -> None:
        """Carry the jobs to their queues, in one round trip where the transport can. Raises
        BrokerError when it could not (the store's outbox keeps them for a later send)."""

    @abstractmethod
    def receive(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        """Up to ``limit`` deliveries from ``queues``, in that order of preference; waits up to
        ``timeout`` seconds for the first one (0: never blocks)."""

    @abstractmethod
    def settle(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge deliveries: they are not delivered again."""

    @abstractmethod
    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Give deliveries back to their queues, in their place where the transport can."""

    def outcomes(self, outcomes: Sequence[Outcome], accepted: Sequence[bool]) -> None:  # noqa: B027 - optional hook
        """Told of every batch of outcomes after the store recorded it (``accepted``: each one's
        fencing verdict), for transports that publish job events (ZeroMQ's PUB socket). Default:
        nothing. Must not raise for a subscriber's sake."""

    @abstractmethod
    def purge(self, queue: str) -> int:
        """Drop the waiting deliveries of ``queue``; how many."""


def split_options(url: str, names: Collection[str]) -> tuple[dict[str, str], str]:
    """The query options ``names`` of a transport URL (Conveyor's own), and the URL without them
    (what the client library is given)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in names}
    rest = [(k, v) for k, v in query if k not in names]
    return ours, urlunsplit(parts._replace(query=urlencode(rest)))


def prefetch_for(limits: Sequence[int], ceiling: int) -> int:
    """The prefetch (unacknowledged deliveries a server may push) of a consumer whose recent
    fetches asked for ``limits``: twice the largest, rounded up to a power of two so that it
    changes seldom, between 2 and ``ceiling``. A worker's fetch size follows its jobs' run time
    (see ``worker/dispatch.py``), so slow jobs hold few deliveries and fast ones fill the pipe."""
    want = 2 * max(limits, default=1)
    return max(2, min(ceiling, 1 << math.ceil(math.log2(want))))


class Reconnect:
    """The connection state of a transport with a server (AMQP, STOMP): since when it is down, one
    warning per outage (lost, then back), and the back-off between attempts (0.1 s doubling up to
    BACKOFF_MAX).

    Args:
        server: how the logs and errors name the server (``"RabbitMQ"``).
        log: the transport's logger.
    """

    def __init__(self, server: str, log: logging.Logger) -> None:
        self.server = server
        self.log = log
        self.down_since: float | None = None
        self.retry_at = 0.0
        self.backoff = 0.0

    def lost(self, why: str, close: Any = None) -> None:
        """The connection was lost (warned once per outage); ``close()`` what is left of it,
        ignoring its errors."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.log.warning("lost the connection to %s (%s): reconnecting", self.server, why)
        if close is not None:
            try:
                close()
            except Exception:
                pass

    def check(self) -> None:
        """Raise BrokerError while the back-off after a failed attempt runs."""
        now = time.monotonic()
        if now < self.retry_at:
            raise BrokerError(f"{self.server} is unreachable; next attempt in {self.retry_at - now:.1f}s")

    def failed(self, why: str) -> BrokerError:
        """An attempt failed: back off (warned once per outage); the error to raise."""
        self.backoff = min(max(self.backoff * 2, 0.1), BACKOFF_MAX)
        self.retry_at = time.monotonic() + self.backoff
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.log.warning("cannot reach %s (%s)", self.server, why)
        return BrokerError(f"cannot reach {self.server}: {why}")

    def up(self) -> None:
        """Connected: say how long it was down, if it was."""
        if self.down_since is not None:
            self.log.warning("%s is back after %.1fs", self.server, time.monotonic() - self.down_since)
        self.down_since, self.backoff = None, 0.0
