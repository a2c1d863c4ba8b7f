"""Stores, transports and the broker facade; see ``docs/architecture.md``.

* :mod:`.records`: the plain records (Message, Lease, Outcome, JobRecord, QueueInfo, WorkerInfo,
  Event, STATES ...).
* :mod:`.store`: :class:`JobStore`, the job database, and :class:`Broker`, what the worker and the
  app use. A store that claims natively (memory, SQLite, Redis) is a broker by itself.
* :mod:`.transport`: :class:`Transport`, which only moves deliveries.
* :mod:`.paired`: :class:`PairedBroker`, a broker made of a transport and a store.
* :mod:`.registry`: :func:`from_url`, the one registry (entry-point groups ``conveyor.stores`` and
  ``conveyor.transports``; ``conveyor.brokers`` still names stores).

Every name this package exported before the split is still exported here.
"""

from __future__ import annotations

from .records import (
    ACTIVE_STATES,
    STATES,
    TERMINAL_STATES,
    Check,
    Clock,
    Dispatch,
    Event,
    ExtendResult,
    JobPage,
    JobQuery,
    JobRecord,
    Lease,
    Message,
    Outcome,
    QueueInfo,
    State,
    WorkerInfo,
    job_event_data,
    job_matches,
    percentile,
    summarize,
)
from .registry import broker_class, from_url, transport_class
from .store import SCAN_LIMIT, Broker, JobStore
from .transport import Delivery, Transport

__all__ = [
    "ACTIVE_STATES",
    "SCAN_LIMIT",
    "STATES",
    "TERMINAL_STATES",
    "Broker",
    "Check",
    "Clock",
    "Delivery",
    "Dispatch",
    "Event",
    "ExtendResult",
    "JobPage",
    "JobQuery",
    "JobRecord",
    "JobStore",
    "Lease",
    "Message",
    "Outcome",
    "QueueInfo",
    "State",
    "Transport",
    "WorkerInfo",
    "broker_class",
    "from_url",
    "job_event_data",
    "job_matches",
    "percentile",
    "summarize",
    "transport_class",
]
