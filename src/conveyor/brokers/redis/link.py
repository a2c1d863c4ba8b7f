"""The Redis broker's connection layer: one thread's own connection, retried with back-off, the
Lua scripts of ``lua/*.lua`` (loaded once per server, again when Redis lost them) and the start-up
check of the server's durability settings. :class:`~conveyor.brokers.redis.RedisBroker` says what to
store; this module only gets commands to Redis and replies back, and says when Redis is unreachable.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis import Redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.client import NEVER_DECODE
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ...config import redact_url
from ...errors import BrokerError
from .scripts import SCRIPTS, SHAS

_pack: Any
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - redis-py's own packer then
    _pack = None

log = logging.getLogger("conveyor.brokers.redis")

_CHECKED: set[str] = set()  # servers whose durability settings this process has checked
REDIS_OPTIONS = frozenset({"db", "socket_timeout", "socket_connect_timeout", "socket_keepalive", "retry_on_timeout",
                           "max_connections", "health_check_interval", "ssl_cert_reqs", "ssl_ca_certs",
                           "ssl_certfile", "ssl_keyfile", "ssl_check_hostname", "protocol", "client_name"})


RETRIES = 5  # tries of a command after a lost connection, 0.1 s apart doubling to 1 s
RETRY_SECONDS = sum(min(1.0, 0.05 * 2 ** i) for i in range(1, RETRIES + 1))  # about 2.5 s

SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel")
OURS = frozenset({"prefix", "cluster", "sentinel_password"})  # Conveyor's options, not redis-py's


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """Split a Redis URL into the URL redis-py gets and Conveyor's own options (``prefix``,
    ``cluster``, ``sentinel_password``). Raises BrokerError naming what is wrong."""
    try:
        parts = urlsplit(url)
        if not parts.scheme.endswith("+sentinel"):
            _ = parts.port  # raises on a port that is not a number in range
    except ValueError:  # not quoted: what urllib read as a port may be part of a password
        raise BrokerError(f"bad Redis URL {redact_url(url)!r}: expected [[user]:password@]host[:port][/db], with "
                          f"/ ? # @ in a password percent-encoded") from None
    if parts.scheme not in SCHEMES:
        raise BrokerError(f"not a Redis URL: {redact_url(url)!r} (schemes: {', '.join(SCHEMES)})")
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in OURS:
            ours[name] = value
        elif name in REDIS_OPTIONS:
            theirs.append((name, value))
        else:
            raise BrokerError(f"unknown Redis URL option {name!r} in {redact_url(url)!r}")
    if not parts.scheme.startswith("rediss"):
        tls_only = sorted(name for name, _ in theirs if name.startswith("ssl_"))
        if tls_only:
            raise BrokerError(f"{', '.join(tls_only)} need TLS: use rediss:// (or rediss+sentinel://), "
                              f"not {redact_url(url)!r}")
    prefix = ours.setdefault("prefix", "conveyor")
    if not prefix or re.search(r"[{}\[\]*?\s]", prefix):
        raise BrokerError(f"Redis key prefix {prefix!r} must be non-empty, without braces, brackets, * ? or spaces")
    if parts.scheme.endswith("+sentinel"):  # the rest of such a URL is read by RedisLink
        if ours.get("cluster", "").lower() in ("1", "true", "yes"):
            raise BrokerError(f"cluster=1 cannot be used with Sentinel in {redact_url(url)!r}: "
                              "Sentinel watches one primary")
    elif "sentinel_password" in ours:
        raise BrokerError(f"sentinel_password is an option of redis+sentinel:// URLs only, "
                          f"not of {redact_url(url)!r}")
    return urlunsplit(parts._replace(query=urlencode(theirs))), ours


def _sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, int, str]:
    """``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/primary[/db]`` ->
    (Sentinel addresses, primary's name, db, the ``user:password@`` part). Raises BrokerError."""
    parts = urlsplit(url)
    auth, _, hosts = parts.netloc.rpartition("@")
    addresses: list[tuple[str, int]] = []
    for host in hosts.split(","):
        found = re.fullmatch(r"\s*(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]\s]+))(?::(\d+))?\s*", host)
        if not found:
            raise BrokerError(f"bad Sentinel address {host!r} in {redact_url(url)!r}: expected host[:port] "
                              f"or [IPv6][:port]")
        port = int(found[3] or 26379)
        if not 0 < port < 65536:
            raise BrokerError(f"bad Sentinel port {port} in {redact_url(url)!r}")
        addresses.append((found[1] or found[2], port))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise BrokerError(f"a Sentinel URL names the primary and may add a db: "
                          f"redis+sentinel://host:26379/<primary>[/<db>], not {redact_url(url)!r}")
    return addresses, path[0], int(path[1]) if len(path) == 2 else 0, auth + "@" if auth else ""


def _demoted(exc: ResponseError) -> None:
    """Under Sentinel, READONLY means the primary was demoted (before Redis 7 the word comes wrapped
    in a script error): a lost connection, so that the retry asks Sentinel for the new primary."""
    if "READONLY" in str(exc) and not isinstance(exc, NoScriptError):
        raise RedisConnectionError(f"the primary became a replica: {exc}") from None


class RedisLink:
    """Commands to one Redis server (a Redis Cluster, or the primary that Sentinel names) and their
    raw replies, for one broker.

    Args:
        client_url: the URL redis-py gets (Conveyor's own options removed, see ``parse_url``).
        cluster: whether the server is a Redis Cluster.
        sentinel_password: the Sentinels' own password, for ``redis+sentinel://`` URLs.

    Each thread gets its own connection on first use, and a new one after ``fork()``. A lost
    connection is retried with exponential back-off, logged once per outage (and again when Redis is
    back), then reported as :class:`~conveyor.errors.BrokerError`.
    """

    def __init__(self, client_url: str, cluster: bool, sentinel_password: str | None = None) -> None:
        self.client_url = client_url
        self.cluster = cluster
        self.sentinel_password = sentinel_password
        parts = urlsplit(client_url)
        self.sentinel = parts.scheme.endswith("+sentinel")
        self._sentinel = _sentinel_parts(client_url) if self.sentinel else None  # raises on a bad URL
        if self._sentinel is not None:
            addresses, primary, db, _ = self._sentinel
            sentinels = ",".join(f"{host}:{port}" for host, port in addresses)
            self.where = f"{primary} (primary named by Sentinel {sentinels})/{db}"
        else:
            self.where = f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}{parts.path or '/0'}"
        self._redis: Any = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._local = threading.local()  # this thread's own connection for single commands
        self._links: list[Any] = []
        self.retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES)
        self.down_since: float | None = None

    def client(self) -> Any:
        if self._redis is not None and self._pid == os.getpid():
            return self._redis
        self._pid = os.getpid()  # a connection never crosses fork(): the child makes its own
        options: dict[str, Any] = {
            "socket_timeout": 10.0, "socket_connect_timeout": 3.0, "socket_keepalive": True,
            "health_check_interval": 15,
            "retry": self.retry,
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        }
        cls: Any = RedisCluster if self.cluster else Redis
        try:
            if self.sentinel:
                self._redis = self._from_sentinel(options)
            else:
                self._redis = cls.from_url(self.client_url, **options)
        except (RedisError, ValueError, TypeError) as exc:
            raise BrokerError(f"bad Redis URL {redact_url(self.client_url)!r}: {exc}") from None
        return self._redis

    def _from_sentinel(self, options: dict[str, Any]) -> Any:
        """A client of the primary that the Sentinels name, asked again on every new connection: after
        a failover, the old primary's READONLY replies or refused connections end in a reconnect,
        retried with back-off, to the new one."""
        from redis.connection import parse_url as redis_options
        from redis.sentinel import Sentinel

        assert self._sentinel is not None
        addresses, primary, db, auth = self._sentinel
        parts = urlsplit(self.client_url)
        tls = parts.scheme.startswith("rediss")
        # redis-py's own parsing of the options, on the equivalent URL of one server
        one = urlunsplit(("rediss" if tls else "redis", auth + "sentinel", f"/{db}", parts.query, ""))
        kwargs: dict[str, Any] = redis_options(one)  # type: ignore[no-untyped-call]
        for name in ("host", "port", "connection_class"):
            kwargs.pop(name, None)
        kwargs = {**options, **kwargs}
        if tls:
            kwargs["ssl"] = True  # the Sentinel pool picks its TLS connection class from this flag
        timeouts = ("socket_timeout", "socket_connect_timeout")
        sentinel_kwargs = {name: kwargs[name] for name in timeouts if name in kwargs}
        sentinel_kwargs["retry"] = Retry(NoBackoff(), 0)  # not redis-py's 3 tries 1 s apart: ours wrap it
        if self.sentinel_password:
            sentinel_kwargs["password"] = self.sentinel_password
        sentinel = Sentinel(addresses, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
        return sentinel.master_for(primary, redis_class=Redis, **kwargs)  # type: ignore[no-untyped-call]

    def exec(self, *args: Any) -> Any:
        """One command and its raw reply, on this thread's own connection (redis-py's client adds
        some 40 us of bookkeeping per command, which single enqueues and latency feel). Lost
        connections are retried with exponential back-off, then raise BrokerError."""
        if self.cluster:
            try:
                return self.client().execute_command(*args)
            except NoScriptError:
                raise
            except RedisError as exc:
                raise self.error(exc) from None

        def attempt(link: Any) -> Any:
            if _pack is not None:  # hiredis packs the whole command in C
                link.send_packed_command([_pack(args)])
            else:
                link.send_command(*args)
            return link.read_response()

        return self.on_link(attempt)

    def on_link(self, attempt: Callable[[Any], Any]) -> Any:
        """``attempt(link)`` on this thread's own connection (made on first use, and again after
        fork); a lost connection is dropped and the attempt retried with exponential back-off, then
        BrokerError. NoScriptError passes through for the caller to load the scripts."""
        link = getattr(self._local, "link", None)
        if link is None or self._local.pid != os.getpid():
            link = self.client().connection_pool.make_connection()
            link.retry = Retry(NoBackoff(), 0)  # connecting is retried below, not also inside each try
            self._local.link, self._local.pid = link, os.getpid()
            with self._lock:
                self._links.append(link)

        def failed(error: Exception) -> None:
            self.trouble(error)
            link.disconnect()

        def run() -> Any:
            if not self.sentinel:
                return attempt(link)
            link.connect()  # redis-py (8.1) sends on a closed connection without asking Sentinel: connect first
            try:
                reply = attempt(link)
            except ResponseError as exc:
                _demoted(exc)
                raise
            for value in reply if isinstance(reply, list) else ():  # stream() keeps refusals as replies
                if isinstance(value, ResponseError):
                    _demoted(value)
            return reply

        try:
            reply = self.retry.call_with_retry(run, failed)
        except NoScriptError:
            raise
        except RedisError as exc:
            raise self.error(exc) from None
        if self.down_since is not None:
            self.up()
        return reply

    def stream(self, commands: Iterator[tuple[Any, ...]], meanwhile: Callable[[], None] | None = None,
               together: bool = False) -> list[Any]:
        """Raw replies of ``commands``, each sent as soon as the iterator yields it and the replies
        read at the end: Redis runs one command while Python builds the next. A lost connection
        sends them all again (so they must be idempotent), with the back-off of ``exec``.
        ``together``: the commands are few and small, sent in one write (a write to a socket costs
        some 20 us, more than packing them all first). ``meanwhile`` is called once, when the
        commands have first been written to the connection and before their replies are read; what
        it raises is raised after the replies are read (so the connection stays in step)."""
        sent: list[list[bytes]] = []
        pending = [meanwhile] if meanwhile is not None else []
        raised: list[BaseException] = []

        def attempt(link: Any) -> list[Any]:
            check = True  # redis-py's health check (a PING) only before the first: replies are pending

            def send(packed: list[bytes]) -> None:
                nonlocal check
                link.send_packed_command(packed, check_health=check)
                check = False

            for packed in sent:  # a retry: what the lost connection may not have delivered
                send(packed)
            for command in commands:
                packed = [_pack(command)] if _pack is not None else link.pack_command(*command)
                sent.append(packed)
                if not together:
                    send(packed)
            if together and sent and check:
                send([b"".join(chunk for packed in sent for chunk in packed)])
            if pending:
                try:
                    pending.pop()()
                except BaseException as exc:
                    raised.append(exc)
            replies: list[Any] = []
            for _ in sent:
                try:
                    replies.append(link.read_response())
                except ResponseError as exc:  # read whole: the next replies stay in step
                    replies.append(exc)
            return replies

        replies = list(self.on_link(attempt))
        if raised:
            raise raised[0]
        return replies

    def many(self, commands: Sequence[tuple[Any, ...]], *, atomic: bool = False) -> list[Any]:
        """Raw replies of several commands in one round trip, on this thread's link (so a lost
        connection, or a Sentinel failover, is handled as in ``exec``); a command Redis refuses
        raises BrokerError. ``atomic``: as one MULTI/EXEC transaction (not on a cluster, where the
        keys may live on several nodes); the replies are then EXEC's."""
        if self.cluster:
            pipe = self.client().pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command, **{NEVER_DECODE: True})
            try:
                return list(pipe.execute())
            except RedisError as exc:
                raise self.error(exc) from None
        if len(commands) == 1 and not atomic:
            return [self.exec(*commands[0])]
        sent = [("MULTI",), *commands, ("EXEC",)] if atomic else list(commands)
        replies = self.stream(iter(sent), together=True)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise self.error(reply)
        return list(replies[-1]) if atomic else replies

    def _why(self, exc: Exception) -> str:
        """What went wrong, in a line (redis-py's "no master found" carries the repr of every client)."""
        if self.sentinel and type(exc).__name__ == "MasterNotFoundError":
            return "no Sentinel answered with this primary (are they running, and is the name right?)"
        return str(exc)

    def trouble(self, exc: Exception) -> None:
        """Say once per outage that Redis cannot be reached (then the command is retried with back-off
        for about RETRY_SECONDS before it raises BrokerError)."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.error("cannot reach Redis at %s: %s; retrying for up to %.1fs", self.where, self._why(exc),
                      RETRY_SECONDS)

    def error(self, exc: Exception) -> BrokerError:
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
            self.trouble(exc)
            return BrokerError(f"cannot reach Redis at {self.where}: {self._why(exc)}")
        return BrokerError(f"Redis at {self.where} refused the operation: {exc}")

    def up(self) -> None:
        if self.down_since is not None:
            log.warning("Redis at %s is back after %.1fs", self.where, time.monotonic() - self.down_since)
            self.down_since = None

    def open(self) -> None:
        r = self.client()
        try:
            r.ping()
            # Loaded once per server: a worker opens several brokers, and compiling costs ~0.5 ms each
            # (a cluster's nodes are each asked by redis-py's script_load itself).
            present = [False] * len(SHAS) if self.cluster else r.script_exists(*SHAS.values())
            for body, there in zip(SCRIPTS.values(), present):
                if not there:
                    r.script_load(body)
            self.check_server(r)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            # Said once, by the caller's error: nothing retries an open() that failed.
            raise BrokerError(f"cannot reach Redis at {self.where}: {self._why(exc)}") from None
        except RedisError as exc:
            raise self.error(exc) from None
        self.up()

    def check_server(self, r: Any) -> None:
        """Warn, in one line each, about Redis settings that can lose jobs (once per process and server)."""
        if self.where in _CHECKED:
            return
        _CHECKED.add(self.where)
        try:
            config: dict[Any, Any] = {}
            for name in ("maxmemory-policy", "appendonly", "save"):
                got = r.config_get(name)
                config.update({(k.decode() if isinstance(k, bytes) else k): v for k, v in got.items()})
        except RedisError:  # CONFIG is often disabled on managed Redis
            log.debug("cannot read the Redis configuration; durability not checked")
            return
        text = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in config.items()}
        policy = text.get("maxmemory-policy", "noeviction")
        if policy.startswith("allkeys"):
            log.warning("Redis maxmemory-policy is %s: when memory runs out Redis evicts keys and those jobs are "
                        "lost without a trace; set maxmemory-policy noeviction", policy)
        aof, save = text.get("appendonly", "no"), text.get("save", "").strip()
        if aof != "yes" and not save:
            log.warning("Redis persistence is off (appendonly no, no save points): a Redis restart loses every "
                        "job; set appendonly yes")
        elif aof != "yes":
            log.info("Redis keeps RDB snapshots only (save %s): a Redis crash loses the jobs of the last "
                     "minutes; appendonly yes loses at most one second", save)

    def close(self) -> None:
        with self._lock:
            if self._redis is not None and self._pid == os.getpid():
                for link in self._links:
                    link.disconnect()
                self._redis.close()
            self._redis = None
            self._links = []
            self._local = threading.local()

    def script(self, name: str, keys: Sequence[str], argv: Sequence[Any],
               pipe_before: Sequence[tuple[Any, ...]] = (), meanwhile: Callable[[], None] | None = None,
               then: Sequence[tuple[Any, ...]] = ()) -> Any:
        """Run script ``name`` of ``lua/*.lua`` after ``pipe_before`` commands sent in the same round
        trip. Loads the scripts again when Redis lost them (a restart, ``SCRIPT FLUSH``).
        ``meanwhile`` is called once, after the script was written to the connection and before its
        reply is read (see ``stream``); on a cluster, after the reply. With ``then``, commands sent
        behind the script in the same round trip: the reply is then [the script's, then theirs]."""
        command = ("EVALSHA", SHAS[name], len(keys), *keys, *argv)
        if meanwhile is not None and self.cluster:
            reply = self.script(name, keys, argv, pipe_before, then=then)
            meanwhile()
            return reply
        for attempt in (1, 2):
            try:
                if not pipe_before and meanwhile is None and not then:
                    return self.exec(*command)
                if not self.cluster:  # on this thread's link, as exec
                    replies = self.stream(iter([*pipe_before, command, *then]), meanwhile, together=True)
                    meanwhile = None  # called by the first try (a reload of the scripts tries again)
                    for refused in replies:
                        if isinstance(refused, NoScriptError):
                            raise refused
                        if isinstance(refused, ResponseError):
                            raise self.error(refused)
                    return replies[len(pipe_before)] if not then else replies[len(pipe_before):]
                pipe = self.client().pipeline(transaction=False)
                for command_before in pipe_before:
                    pipe.execute_command(*command_before)
                pipe.execute_command(*command)
                for command_after in then:
                    pipe.execute_command(*command_after, **{NEVER_DECODE: True})
                try:
                    got = pipe.execute()
                    reply = got[len(pipe_before)] if not then else got[len(pipe_before):]
                except RedisError as exc:
                    if isinstance(exc, NoScriptError):
                        raise
                    raise self.error(exc) from None
                self.up()
                return reply
            except NoScriptError:
                if attempt == 2:
                    raise BrokerError(f"Redis at {self.where} keeps losing the Conveyor scripts") from None
                self.exec("SCRIPT", "LOAD", SCRIPTS[name])
        raise AssertionError("unreachable")
