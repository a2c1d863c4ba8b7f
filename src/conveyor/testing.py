"""Helpers for testing code that uses Conveyor: a fake clock, a service gate and a poll.

The memory broker with a :class:`FakeClock` is the test double of every broker::

    clock = FakeClock()
    broker = MemoryBroker(clock=clock)
    clock.advance(30)          # leases expire, delays fall due
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


class FakeClock:
    """A clock that only moves when told to. Call it for the current time (seconds)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move time forward and return the new time."""
        self.now += seconds
        return self.now


def service_available(url: str, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at ``url``'s host and port."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port
    if port is None:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(url: str, name: str) -> None:
    """Skip the calling test when the service is down — but fail it when ``CI`` is set."""
    import pytest

    if service_available(url):
        return
    message = f"{name} is not reachable at {url}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: a missing service fails the test)")
    pytest.skip(message)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy, and return
    that; raise AssertionError naming ``what`` (and the last value) when ``timeout`` passes first.
    For tests that watch another process: a worker, a restarted server."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {value!r})")
        time.sleep(interval)
