"""What one process keeps of ``zmq://``: its ZeroMQ context, the hubs it runs, and, for a pool
process, where its supervisor's hub listens (the ``CONVEYOR_ZMQ_HUBS`` environment variable, which
fork() and the pool's spawn pass on). Used by :mod:`~conveyor.brokers.zmq`."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import threading
from typing import Any

import zmq

from .zmq_hub import Hub

__all__ = ["HUBS_ENV", "HubService", "context", "exported", "local_hub"]

#: Environment variable through which a supervisor tells its pool processes where its hub listens.
HUBS_ENV = "CONVEYOR_ZMQ_HUBS"

_lock = threading.Lock()
_hubs: dict[str, tuple[int, Hub]] = {}  # key -> (pid, hub): hubs running in this process
_contexts: dict[int, zmq.Context[Any]] = {}


def context() -> zmq.Context[Any]:
    """This process's ZeroMQ context (a forked child never uses its parent's)."""
    pid = os.getpid()
    with _lock:
        ctx = _contexts.get(pid)
        if ctx is None:
            _contexts.clear()
            ctx = _contexts[pid] = zmq.Context()
            atexit.register(_flush_at_exit, pid)
        return ctx


def _flush_at_exit(pid: int) -> None:
    """At exit, give pushes still queued up to a second to leave (``conveyor enqueue``, scripts)."""
    ctx = _contexts.get(pid)
    if ctx is not None and pid == os.getpid():
        ctx.destroy(linger=1000)


def local_hub(key: str) -> Hub | None:
    """The live hub this process runs for the transport ``key``, if any."""
    found = _hubs.get(key)
    if found is not None and found[0] == os.getpid() and found[1].alive:
        return found[1]
    return None


class HubService:
    """A hub this process runs for ``ZMQTransport.serve``; :meth:`close` stops it."""

    def __init__(self, key: str, hub: Hub, folder: str | None) -> None:
        self.key, self.hub, self.folder = key, hub, folder

    @classmethod
    def register(cls, key: str, hub: Hub, folder: str, members: str) -> HubService:
        """Record a started hub in this process, and export its ``members`` endpoint to the pool
        processes started from now on."""
        with _lock:
            _hubs[key] = (os.getpid(), hub)
        hubs = exported()
        entry: list[Any] = [members, os.getpid()]
        if hub.member_name:  # the push socket is inherited by the pool processes forked from now on
            entry += [hub.member_name, hub.push_fd, hub.push_name, hub.notes_name]
        hubs[key] = entry
        _export(hubs)
        return cls(key, hub, folder)

    def close(self) -> None:
        """Stop the hub and forget it (its buffered deliveries are resent from the store)."""
        with _lock:
            if _hubs.get(self.key, (0, None))[1] is self.hub:
                del _hubs[self.key]
        hubs = exported()
        if hubs.pop(self.key, [None, 0])[1] == os.getpid():
            _export(hubs)
        self.hub.stop()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def exported() -> dict[str, list[Any]]:
    """The hubs exported in this process's environment: key -> [members endpoint, supervisor pid,
    and, when the hub has datagram sockets: its address for requests, its push socket's descriptor
    and name (zmq_direct), and its address for notices that need not wake it]."""
    try:
        found = json.loads(os.environ.get(HUBS_ENV, "{}"))
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _export(hubs: dict[str, list[Any]]) -> None:
    if hubs:
        os.environ[HUBS_ENV] = json.dumps(hubs)
    else:
        os.environ.pop(HUBS_ENV, None)
