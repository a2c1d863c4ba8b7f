"""One registry of stores and transports, chosen by URL scheme: :func:`from_url`.

Built-ins are registered here, once (a scheme may name both a store and a transport: ``memory``).
Third-party packages register classes in the entry-point groups ``conveyor.stores`` (a
:class:`~conveyor.brokers.store.Broker`, i.e. a store that claims natively), ``conveyor.transports``
(a :class:`~conveyor.brokers.transport.Transport`) and, as before the split, ``conveyor.brokers``
(read as stores). A built-in scheme is never looked up in the entry points.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ..config import redact_url
from ..errors import BrokerError, ConfigError
from .records import Clock
from .store import Broker
from .transport import Transport

__all__ = ["broker_class", "from_url", "transport_class"]

_STORES = {
    "memory": "conveyor.brokers.memory:MemoryBroker",
    "sqlite": "conveyor.brokers.sqlite:SQLiteBroker",
    "redis": "conveyor.brokers.redis:RedisBroker",
    "rediss": "conveyor.brokers.redis:RedisBroker",
    "redis+sentinel": "conveyor.brokers.redis:RedisBroker",
    "rediss+sentinel": "conveyor.brokers.redis:RedisBroker",
    "postgresql": "conveyor.brokers.postgres:PostgresBroker",
    "postgres": "conveyor.brokers.postgres:PostgresBroker",
}
_TRANSPORTS = {
    "memory": "conveyor.brokers.memory_transport:MemoryTransport",
    "amqp": "conveyor.brokers.amqp:AMQPTransport",
    "amqps": "conveyor.brokers.amqp:AMQPTransport",
    "stomp": "conveyor.brokers.stomp:STOMPTransport",
    "stomp+ssl": "conveyor.brokers.stomp:STOMPTransport",
    "zmq": "conveyor.brokers.zmq:ZMQTransport",
}
_EXTRAS = {"rediss": "redis", "redis+sentinel": "redis", "rediss+sentinel": "redis", "postgresql": "postgres",
           "amqps": "amqp", "stomp+ssl": "stomp"}  # scheme -> pip extra
_STORE_GROUPS = ("conveyor.stores", "conveyor.brokers")
_TRANSPORT_GROUPS = ("conveyor.transports",)


def _scheme(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if not scheme:
        raise BrokerError(f"broker URL {redact_url(url)!r} has no scheme; expected e.g. sqlite:///conveyor.db")
    return scheme


def _known() -> str:
    return ", ".join(sorted(set(_STORES) | set(_TRANSPORTS)))


def _load(scheme: str, builtin: dict[str, str], groups: tuple[str, ...]) -> Any | None:
    """The class registered for ``scheme`` (built-in first, then the entry points), or None."""
    target = builtin.get(scheme)
    if target is None:
        if scheme in _STORES or scheme in _TRANSPORTS:
            return None  # built-in of the other kind: never shadowed by an entry point
        from importlib.metadata import entry_points  # ~35 ms to import: only for third-party schemes

        for group in groups:
            found = [ep for ep in entry_points(group=group) if ep.name == scheme]
            if found:
                return found[0].load()
        return None
    module, _, name = target.partition(":")
    try:
        return getattr(import_module(module), name)
    except ImportError as exc:
        raise BrokerError(
            f"the {scheme!r} broker needs an extra: pip install 'conveyor[{_EXTRAS.get(scheme, scheme)}]' ({exc})"
        ) from exc


def preload(url: str | None) -> None:
    """Import the module of ``url``'s built-in broker now (its client library: psycopg takes about
    0.15 s), so that an application's first enqueue, or first web request, does not pay for it.
    Nothing else happens: a bad URL or a missing extra is reported at first use, as before."""
    try:
        scheme = _scheme(url or "")
    except BrokerError:
        return
    for table in (_STORES, _TRANSPORTS):
        target = table.get(scheme)
        if target is not None:
            try:
                import_module(target.partition(":")[0])
            except Exception:  # reported, with the extra to install, when the broker is made
                pass


def _store_class(scheme: str) -> type[Broker] | None:
    cls = _load(scheme, _STORES, _STORE_GROUPS)
    if cls is not None and not (isinstance(cls, type) and issubclass(cls, Broker)):
        raise BrokerError(f"{cls!r} registered for {scheme!r} is not a conveyor Broker")
    return cls


def transport_class(url: str) -> type[Transport] | None:
    """The transport class for ``url``'s scheme, or None when the scheme names no transport."""
    scheme = _scheme(url)
    cls = _load(scheme, _TRANSPORTS, _TRANSPORT_GROUPS)
    if cls is not None and not (isinstance(cls, type) and issubclass(cls, Transport)):
        raise BrokerError(f"{cls!r} registered for {scheme!r} is not a conveyor Transport")
    return cls


def broker_class(url: str) -> type[Broker]:
    """The store class (a broker by itself) for ``url``'s scheme: built-in, else from the
    entry-point groups ``conveyor.stores`` and ``conveyor.brokers``."""
    scheme = _scheme(url)
    cls = _store_class(scheme)
    if cls is None:
        if transport_class(url) is not None:
            raise _no_store(url)
        raise BrokerError(f"no broker for scheme {scheme!r} in {redact_url(url)!r} (known: {_known()})")
    return cls


def _no_store(url: str) -> ConfigError:
    scheme = _scheme(url)
    return ConfigError(
        f"{scheme}:// is a transport: it carries jobs but keeps no job history, so it needs a job store. "
        f"Name one with store=, e.g. Conveyor({redact_url(url)!r}, store=\"redis://127.0.0.1:6379/0\"), "
        "or set CONVEYOR_STORE (every process of one queue must name the same store)")


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def from_url(url: str, store: str | None = None, *, clock: Clock | None = None,
             max_payload: int | None = None) -> Broker:
    """Create (without connecting) the broker for ``url``.

    Without ``store``, ``url`` must name a store (which is a broker by itself); a transport alone
    is a ConfigError (it keeps no job history). With ``store``, a transport URL is paired with that
    store (:class:`~conveyor.brokers.paired.PairedBroker`); a store URL is accepted only when
    ``store`` is the same URL. ``memory://`` names both: alone it is the memory store, with a
    store it is the memory transport. ``max_payload`` (bytes) is the largest job message a paired
    broker takes from other clients (the app's ``max_payload`` setting; None: the default).
    """
    scheme = _scheme(url)
    if store is None:
        return broker_class(url)(url, clock=clock)
    transport_cls = transport_class(url)
    if transport_cls is None or _same_url(url, store):
        cls = _store_class(scheme)
        if cls is None:
            raise BrokerError(f"no broker for scheme {scheme!r} in {redact_url(url)!r} (known: {_known()})")
        if not _same_url(url, store):
            raise ConfigError(
                f"store= is for transports, which keep no job history; {scheme}:// keeps its own jobs, "
                f"so store={redact_url(store)!r} would be a second, unused job database. "
                "Drop store= (or CONVEYOR_STORE), or give the same URL")
        return cls(url, clock=clock)
    from .paired import PairedBroker

    # A store without the pairing hooks (supports_pairing) is refused by PairedBroker: a ConfigError.
    made = broker_class(store)(store, clock=clock)
    if max_payload is None:
        return PairedBroker(transport_cls(url), made)
    return PairedBroker(transport_cls(url), made, max_payload)
