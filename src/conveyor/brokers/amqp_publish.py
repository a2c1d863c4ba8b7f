"""Publishing of the ``amqp://`` transport (:class:`~conveyor.brokers.amqp.AMQPTransport`): persistent
messages, publisher confirms waited on once per batch, unroutable messages published again.

pika's ``BlockingChannel.confirm_delivery`` waits for each message's confirm (one round trip per
message), so confirms are turned on with the channel's own object and counted here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from ..errors import BrokerError
from .records import Dispatch
from .wire import dispatch_body

CONFIRM_TIMEOUT = 30.0  # seconds a send waits for RabbitMQ's confirms before it fails
_PERSISTENT = pika.BasicProperties(delivery_mode=2)


def _wait_for(conn: BlockingConnection, channel: BlockingChannel, done: Callable[[], bool], timeout: float) -> bool:
    """Process I/O until ``done()`` or ``timeout`` seconds; whether it is done. pika's own wait
    loop (``_flush_output``): ``process_data_events`` would wait all of its time limit for
    events of the channel object (confirms), which do not end its wait."""
    deadline = time.monotonic() + timeout
    timer = conn.call_later(timeout, _nothing)  # wakes the loop at the deadline
    try:
        channel._flush_output(lambda: done() or time.monotonic() >= deadline)
    finally:
        conn.remove_timeout(timer)
    return done()


def _nothing() -> None:
    pass


class AMQPPublishing:
    """Mixed into :class:`~conveyor.brokers.amqp.AMQPTransport`."""

    if TYPE_CHECKING:
        confirm: bool
        max_priority: int
        _pub: BlockingChannel | None
        _pending_confirms: set[int]
        _published: int
        _nacked: int
        _returned: list[tuple[str, bytes, Any]]
        _select_ok: bool
        _declared: set[str]

        def _connection(self) -> BlockingConnection: ...
        def _call(self, what: str, fn: Callable[[], Any], again: bool = False) -> Any: ...
        def _declare(self, queue: str) -> str: ...

    def _on_select_ok(self, _frame: Any) -> None:
        self._select_ok = True

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag = method.delivery_tag
        if method.multiple:
            self._pending_confirms = {t for t in self._pending_confirms if t > tag}
        else:
            self._pending_confirms.discard(tag)
        if isinstance(method, pika.spec.Basic.Nack):
            self._nacked += 1

    def _on_return(self, _channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._returned.append((method.routing_key, body, properties))

    def _properties(self, priority: int) -> pika.BasicProperties:
        """Persistent; the AMQP priority with ``max_priority``. (No content type: every consumer
        decodes each one's properties, and the body is JSON by definition, docs/protocol.md.)"""
        if not self.max_priority:
            return _PERSISTENT
        amqp_priority = max(0, min(self.max_priority, priority + (self.max_priority + 1) // 2))
        return pika.BasicProperties(delivery_mode=2, priority=amqp_priority)

    def send(self, dispatches: Sequence[Dispatch]) -> None:
        """Publish persistent dispatches, and wait for RabbitMQ's confirms of all of them (one
        round trip for the batch). A message returned unroutable (its queue was deleted) is
        published again once its queue is declared again. Raises BrokerError."""
        if not dispatches:
            return
        messages = [(d.queue, dispatch_body(d), d.priority) for d in dispatches]
        for attempt in (1, 2):
            try:
                returned = self._call("send", partial(self._publish, messages))
            except BrokerError:
                if attempt == 2:
                    raise
                continue
            if not returned:
                return
            messages = returned
        raise BrokerError(f"{len(messages)} message(s) came back unroutable from RabbitMQ")

    def _publish(self, messages: list[tuple[str, bytes, int]]) -> list[tuple[str, bytes, int]]:
        conn = self._connection()
        assert self._pub is not None
        channel = self._pub._impl  # see _connection
        self._returned.clear()
        by_name = {}
        for queue, body, priority in messages:
            name = self._declare(queue)
            by_name[name] = queue
            channel.basic_publish("", name, body, self._properties(priority), mandatory=True)
            self._published += 1
            if self.confirm:
                self._pending_confirms.add(self._published)
        nacked, self._nacked = self._nacked, 0
        if self.confirm:
            if not _wait_for(conn, self._pub, lambda: not self._pending_confirms, CONFIRM_TIMEOUT):
                raise BrokerError(f"RabbitMQ did not confirm {len(self._pending_confirms)} message(s) "
                                  f"in {CONFIRM_TIMEOUT:.0f}s")
            nacked, self._nacked = nacked + self._nacked, 0
        else:
            conn.process_data_events(0)
        if nacked:
            raise BrokerError(f"RabbitMQ refused {nacked} message(s) (nack)")
        returned = [(by_name.get(key, key), body, 0) for key, body, _ in self._returned]
        for key, _, _ in self._returned:
            self._declared.discard(key)  # deleted under us: declare it again
        self._returned.clear()
        return returned

