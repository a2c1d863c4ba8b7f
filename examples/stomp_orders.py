"""STOMP (RabbitMQ's STOMP plugin) carries jobs; a SQLite file keeps their history. In one process.

Run it with ``python examples/stomp_orders.py`` (needs ``pip install 'conveyor[stomp]'`` and the
plugin on: ``rabbitmq-plugins enable rabbitmq_stomp``, port 61613, guest/guest). It starts a worker
(thread pool) in this process, enqueues jobs from Python, then sends a job message the way any
language can — plain STOMP text frames over a socket, no client library (docs/protocol.md) — and
prints the results from the store. In production::

    CONVEYOR_URL=stomp://guest:guest@127.0.0.1:61613/ CONVEYOR_STORE=sqlite:///jobs.db \\
        conveyor worker examples.stomp_orders:app
"""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import threading
import time
from typing import Any

import orjson
import uuid_utils

from conveyor import Conveyor, Job
from conveyor.errors import JobNotFound
from conveyor.worker.supervisor import Supervisor

folder = tempfile.mkdtemp(prefix="conveyor-stomp-example-")
prefix = "example."  # the queue /queue/example.default stays on the server (STOMP cannot delete it)
app = Conveyor(f"stomp://guest:guest@127.0.0.1:61613/?prefix={prefix}", store=f"sqlite:///{folder}/jobs.db",
               pool="thread", concurrency=2)


@app.task(name="orders.invoice")
def invoice(order: int, amount: float) -> str:
    return f"invoice for order {order}: {amount:.2f} EUR"


def send_frames(body: bytes) -> None:
    """CONNECT, SEND (persistent, with a receipt), wait for the RECEIPT: all a client must do."""
    with socket.create_connection(("127.0.0.1", 61613), timeout=10) as s:
        s.sendall(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")
        s.sendall(b"SEND\ndestination:/queue/%sdefault\ncontent-type:application/json\npersistent:true\n"
                  b"receipt:r1\ncontent-length:%d\n\n%s\0" % (prefix.encode(), len(body), body))
        answer = b""
        while b"RECEIPT" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError(f"the server closed the connection: {answer!r}")
            answer += chunk


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="  worker log: %(message)s")
    supervisor = Supervisor(app)
    worker = threading.Thread(target=supervisor.run, kwargs={"install_signals": False})
    worker.start()
    try:
        print("from Python:", invoice.enqueue(7001, 19.5).result(timeout=30))
        job_id = str(uuid_utils.uuid7())
        send_frames(orjson.dumps({"task": "orders.invoice", "args": [7002], "kwargs": {"amount": 42}, "id": job_id}))
        job = wait_for_job(job_id)  # the worker writes it to the store when the message arrives
        print("from plain STOMP frames:", job.result(timeout=30), f"(attempts: {job.attempts})")
        print("counts in the store:", app.store.counts())
    finally:
        supervisor.stop()
        worker.join(timeout=30)
        app.close()
        shutil.rmtree(folder, ignore_errors=True)


def wait_for_job(job_id: str, timeout: float = 30.0) -> Job[Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return app.get_job(job_id)
        except JobNotFound:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


if __name__ == "__main__":
    main()
