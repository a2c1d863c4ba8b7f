"""``conveyor doctor`` for ``zmq://``: whether workers take pushes at the URL's addresses, whether one
could bind there, and the settings in force (:meth:`~conveyor.brokers.zmq.ZMQTransport.diagnose`)."""

from __future__ import annotations

import zmq

from ..errors import ConfigError
from .records import Check
from .zmq_process import context
from .zmq_wire import ZMQOptions

__all__ = ["diagnose"]


def diagnose(o: ZMQOptions) -> list[Check]:
    """Whether a worker (or streamer device) accepts pushes at the URL's addresses; when none
    does, whether a worker could bind there; and the settings in force."""
    checks: list[Check] = []
    sock = context().socket(zmq.PUSH)
    try:
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.LINGER, 0)
        for address in o.push:
            sock.connect(address)
        reachable = bool(sock.poll(1000, zmq.POLLOUT))
    finally:
        sock.close(0)
    if reachable:
        checks.append(Check(f"zmq:// workers reachable at {o.key}", True, "a worker or a device accepts pushes"))
    else:
        checks.append(Check(f"zmq:// workers reachable at {o.key}", False,
                            "nothing accepts pushes there: enqueued jobs wait in the store's outbox",
                            "start `conveyor worker APP` (it binds the address) or the streamer device"))
        try:
            jobs = o.jobs
        except ConfigError as exc:
            checks.append(Check("zmq:// worker address", False, str(exc), "add bind= or pull= to the URL"))
            jobs = None
        if jobs is not None and jobs.bind:
            probe = context().socket(zmq.PULL)
            try:
                probe.setsockopt(zmq.LINGER, 0)
                probe.bind(jobs.address)
                checks.append(Check(f"zmq:// worker can bind {jobs.address}", True))
            except zmq.ZMQError as exc:
                checks.append(Check(f"zmq:// worker can bind {jobs.address}", False, str(exc),
                                    "bind= an address of this host, or use a streamer device (pull=)"))
            finally:
                probe.close(0)
    checks.append(Check("zmq:// settings", True,
                        f"hwm={o.hwm} messages, buffer={o.buffer} deliveries per worker, "
                        f"send_timeout={o.send_timeout:g}s, resend_after={o.resend_after:g}s, "
                        f"events={o.events or 'off'}"))
    return checks
