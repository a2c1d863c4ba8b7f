"""How a ``zmq://`` producer pushes (for :class:`~conveyor.brokers.zmq.ZMQTransport`): through the
datagram socket of a hub bound on its host at the URL's only address, else over a ZeroMQ PUSH
socket connected to every address of the URL."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..errors import BrokerError
from .records import Dispatch
from .zmq_process import context
from .zmq_wire import DATAGRAM_MAX, ZMQOptions, can, encode_dispatches, push_name

__all__ = ["PUSH_BATCH", "Pusher"]

#: Most deliveries per pushed message.
PUSH_BATCH = 1000
#: Seconds a producer pushes over ZeroMQ only after finding no hub's datagram socket on its host.
LOCAL_LOOK_EVERY = 1.0


class Pusher:
    """One process's pushes to the workers of a ``zmq://`` URL."""

    def __init__(self, options: ZMQOptions) -> None:
        self.options = options
        self._send_lock = threading.Lock()
        self.sock: zmq.Socket[Any] | None = None  # the PUSH socket, made for the first push over ZeroMQ
        self._monitor: zmq.Socket[Any] | None = None  # its connections
        self._peers = 0
        self._grace_until = 0.0
        self._counted_at = 0.0  # when the PUSH socket's monitor events were last read
        # A hub on this host at the URL's only address takes pushes on a datagram socket of this name.
        self._local_name = push_name(options.push[0]) if len(options.push) == 1 else None
        self._local: socket.socket | None = None
        self._local_off_until = 0.0  # no such hub was found: ZeroMQ only until then

    def send(self, dispatches: Sequence[Dispatch]) -> None:
        """Push ``dispatches``; BrokerError when no worker took them within ``send_timeout``."""
        with self._send_lock:
            if self._push_locally(dispatches):
                return
            sock = self._push_socket()
            # A connected worker with room (IMMEDIATE: no room without one) takes the push at once;
            # only when there is none are the monitor's events read and the timeout waited.
            now = time.monotonic()
            if now >= self._counted_at + 1.0:  # the monitor's events, read now and then all the same
                self._counted_at = now
                self._connected()
            if not can(sock, zmq.POLLOUT) and not self._connected() and now >= self._grace_until:
                raise BrokerError(f"no zmq:// worker is listening at {self.options.key}")
            for i in range(0, len(dispatches), PUSH_BATCH):
                frame = encode_dispatches(dispatches[i:i + PUSH_BATCH])
                if not can(sock, zmq.POLLOUT) \
                        and not sock.poll(int(self.options.send_timeout * 1000), zmq.POLLOUT):
                    raise BrokerError(f"no zmq:// worker took the jobs at {self.options.key} within "
                                      f"{self.options.send_timeout:g}s (none listening, or its HWM is full)")
                try:
                    sock.send(frame, zmq.NOBLOCK)
                except zmq.ZMQError as exc:
                    raise BrokerError(f"zmq:// push to {self.options.key} failed: {exc}") from exc

    def _push_locally(self, dispatches: Sequence[Dispatch]) -> bool:
        """Push through the datagram socket of a hub bound on this host at the URL's only address
        (``zmq_wire.push_name``): no ZeroMQ I/O thread on the way. False when there is none (looked
        for again a second later), or the push is too big or finds its queue full: ZeroMQ then
        carries it, waiting or failing as usual."""
        now = time.monotonic()
        if self._local_name is None or now < self._local_off_until or len(dispatches) > PUSH_BATCH:
            return False
        frame = encode_dispatches(dispatches)
        if len(frame) > DATAGRAM_MAX:
            return False
        if self._local is None:
            self._local = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._local.setblocking(False)
        try:
            self._local.sendto(frame, self._local_name)
        except (ConnectionRefusedError, FileNotFoundError):  # no hub bound here
            self._local_off_until = now + LOCAL_LOOK_EVERY
            return False
        except OSError:  # its queue is full (or the frame too big for this system)
            return False
        return True

    def _push_socket(self) -> zmq.Socket[Any]:
        if self.sock is None:
            sock: zmq.Socket[Any] = context().socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, self.options.hwm)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue for a worker that is not connected
            sock.setsockopt(zmq.LINGER, 2000)
            self._monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
            self._peers = 0
            # A fresh socket is given send_timeout to connect; after that a push with no worker
            # connected fails at once (the outbox keeps the jobs), and only a full HWM waits.
            self._grace_until = time.monotonic() + self.options.send_timeout
            for address in self.options.push:
                sock.connect(address)
            self.sock = sock
        return self.sock

    def _connected(self) -> bool:
        """Whether the PUSH socket has a worker (or a device) connected, from its monitor."""
        assert self._monitor is not None
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return self._peers > 0
            if event["event"] == zmq.EVENT_CONNECTED:
                self._peers += 1
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self._peers = max(0, self._peers - 1)

    def forget(self) -> None:
        """In a forked child: drop the parent's sockets (its ZeroMQ ones are never touched)."""
        if self._local is not None:
            self._local.close()
        self.sock = self._monitor = self._local = None

    def close(self) -> None:
        """Close the sockets (pushes still queued get up to 2 s to leave)."""
        if self.sock is not None and self._monitor is not None:
            self.sock.disable_monitor()
            self._monitor.close(0)
        if self.sock is not None:
            self.sock.close()
        if self._local is not None:
            self._local.close()
        self.sock = self._monitor = self._local = None
