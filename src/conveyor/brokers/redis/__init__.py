"""``redis://host:port/db`` (``rediss://`` for TLS): the production broker and job store.

Each queue's keys share one hash tag, ``{prefix:queue}``, so they live on one Redis Cluster slot and
every atomic step is one Lua script (``lua/*.lua``, loaded once) over one queue's keys. A fetch moves
a batch from the queue's ready lists to its lease set (scored by deadline) and bumps each job's
fencing token; acks, extends and progress carrying a stale token are refused; ``recover`` (run
every second by every worker's supervisor) brings expired leases back and promotes due jobs from
the schedule. Idle consumers block on ``BLPOP`` of per-queue wake lists. Every change is logged in
a capped Stream, the change feed (``feed.py``). The key layout, for readers in other languages, is in
``docs/brokers/redis.md``.

URL options (query parameters): ``prefix`` (key prefix, default ``conveyor``), ``cluster`` (``1`` to
use Redis Cluster) and redis-py's own (``socket_timeout``, ``socket_connect_timeout``,
``health_check_interval``, ``max_connections``, ...).
"""

from __future__ import annotations

from .base import FEED_KEEP, LAYOUT, RedisBase
from .control import RedisControl
from .feed import RedisFeed
from .lifecycle import BATCH, CHUNK, OUTCOME_STATES, RedisLifecycle
from .link import RedisLink, parse_url
from .pairing import RedisPairing
from .queries import SCAN_BUDGET, RedisQueries

__all__ = ["BATCH", "CHUNK", "FEED_KEEP", "LAYOUT", "OUTCOME_STATES", "SCAN_BUDGET", "RedisBase", "RedisBroker",
           "RedisLink", "RedisPairing", "parse_url"]


class RedisBroker(RedisPairing, RedisLifecycle, RedisControl, RedisQueries, RedisFeed):
    """Broker and job store on one Redis server, or on a Redis Cluster with ``?cluster=1``; a store a
    transport can carry the jobs of (the pairing hooks: :class:`RedisPairing`)."""

    scheme = "redis"
    supports_blocking_fetch = True
    supports_native_delays = True
    supports_notify = True
    supports_pairing = True
    supports_start_marks = True
