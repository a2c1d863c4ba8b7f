"""``conveyor zmq-device``: the three classic ZeroMQ devices, for fan-in and fan-out across hosts.

* ``streamer``: PULL ``--in`` → PUSH ``--out``. Producers push to ``--in``; workers connect to
  ``--out`` with ``zmq://DEVICE:IN?pull=tcp://DEVICE:OUT``. Jobs go to whichever worker is
  connected, and no worker needs a fixed address.
* ``forwarder``: XSUB ``--in`` → XPUB ``--out``, for job events: workers publish to ``--in``
  (``events=>tcp://DEVICE:IN``) and subscribers connect to ``--out``.
* ``queue``: ROUTER ``--in`` → DEALER ``--out``, the request-reply broker of the ZeroMQ guide
  (not used by Conveyor itself; there for completeness).

Endpoints are bound unless written ``>tcp://…`` (``@tcp://…`` binds explicitly). A device keeps
nothing: what it holds when it stops is resent from the store by the workers (``resend_after``).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import click
import zmq

from .zmq_wire import Endpoint

__all__ = ["DEVICES", "Device", "zmq_device"]

log = logging.getLogger("conveyor.brokers.zmq")

#: kind -> (input socket type, output socket type)
DEVICES = {"streamer": (zmq.PULL, zmq.PUSH), "forwarder": (zmq.XSUB, zmq.XPUB), "queue": (zmq.ROUTER, zmq.DEALER)}


class Device:
    """One device between two endpoints, run by :meth:`run` (in this thread) until :meth:`stop`.

    Args:
        kind: ``streamer``, ``forwarder`` or ``queue``.
        inbound: where producers (publishers, clients) meet the device.
        outbound: where workers (subscribers) meet it.
        hwm: high-water mark of both sockets, in messages.
    """

    def __init__(self, kind: str, inbound: str, outbound: str, hwm: int = 1000) -> None:
        if kind not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {kind!r}")
        self.kind, self.hwm = kind, hwm
        self.inbound = Endpoint.parse(inbound, bind_by_default=True)
        self.outbound = Endpoint.parse(outbound, bind_by_default=True)
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._ready = threading.Event()

    def run(self) -> None:
        """Bind or connect both sides and move messages until :meth:`stop`."""
        in_type, out_type = DEVICES[self.kind]
        front: zmq.Socket[Any] = self._ctx.socket(in_type)
        back: zmq.Socket[Any] = self._ctx.socket(out_type)
        try:
            for sock in (front, back):
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDHWM, self.hwm)
                sock.setsockopt(zmq.RCVHWM, self.hwm)
            self.inbound.attach(front)
            self.outbound.attach(back)
            self._ready.set()
            try:
                zmq.proxy(front, back)
            except zmq.ContextTerminated:
                pass
        finally:
            self._ready.set()
            front.close(0)
            back.close(0)

    def wait_ready(self, timeout: float) -> bool:
        """Whether both sides are bound or connected (for tests running it in a thread)."""
        return self._ready.wait(timeout)

    def stop(self) -> None:
        """End :meth:`run` (from another thread or a signal handler)."""
        threading.Thread(target=self._ctx.term, daemon=True).start()


@click.command("zmq-device")
@click.argument("kind", type=click.Choice(sorted(DEVICES)))
@click.option("--in", "inbound", required=True, metavar="ENDPOINT",
              help="producers' side, e.g. tcp://*:5555 (bound; >tcp://host:port connects)")
@click.option("--out", "outbound", required=True, metavar="ENDPOINT",
              help="workers' (subscribers') side, e.g. tcp://*:5556")
@click.option("--hwm", default=1000, show_default=True, help="high-water mark of both sockets, in messages")
def zmq_device(kind: str, inbound: str, outbound: str, hwm: int) -> None:
    """Run a ZeroMQ device: streamer (jobs), forwarder (job events) or queue, until SIGTERM/SIGINT.

    \b
    conveyor zmq-device streamer --in tcp://*:5555 --out tcp://*:5556
    conveyor zmq-device forwarder --in tcp://*:5557 --out tcp://*:5558
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    device = Device(kind, inbound, outbound, hwm)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: device.stop())
    click.echo(f"conveyor zmq-device {kind}: in {device.inbound}, out {device.outbound} (hwm {hwm})", err=True)
    try:
        device.run()
    except zmq.ZMQError as exc:
        raise click.ClickException(f"{kind}: {exc}") from exc
    click.echo(f"conveyor zmq-device {kind} stopped", err=True)
