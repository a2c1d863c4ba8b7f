"""RabbitMQ carries a shop's jobs; a SQLite file keeps their history. End to end in one process.

Run it with ``python examples/amqp_shop.py`` (needs ``pip install 'conveyor[amqp]'`` and RabbitMQ on
127.0.0.1:5672, guest/guest; ``AMQP_URL`` overrides). It starts a worker (thread pool) in this
process, enqueues orders from Python, publishes one more as any other language would — a JSON job
message on the RabbitMQ queue (docs/protocol.md) — and one malformed message, then prints what the
store recorded of each. In production the worker is its own process::

    CONVEYOR_URL=amqp://guest:guest@127.0.0.1:5672/ CONVEYOR_STORE=redis://127.0.0.1:6379/0 \\
        conveyor worker examples.amqp_shop:app
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time

import orjson
import pika
import uuid_utils

from conveyor import Conveyor
from conveyor.worker.supervisor import Supervisor

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
folder = tempfile.mkdtemp(prefix="conveyor-amqp-example-")
prefix = f"example-{uuid_utils.uuid7().hex[:8]}."  # queues of this run only (deleted at the end)
app = Conveyor(f"{AMQP_URL}?prefix={prefix}", store=f"sqlite:///{folder}/jobs.db", pool="thread",
               concurrency=2, unknown_task_timeout=0)


@app.task(name="shop.ship", retries=2, backoff=0.2)
def ship(order: int, express: bool = False) -> str:
    return f"order {order} shipped {'express' if express else 'by post'}"


def publish_like_another_language(body: bytes) -> None:
    """What a PHP, Node or Java service would do: publish JSON to the queue, persistent."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish("", f"{prefix}default", body, pika.BasicProperties(delivery_mode=2))
    connection.close()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="  worker log: %(message)s")
    supervisor = Supervisor(app)
    worker = threading.Thread(target=supervisor.run, kwargs={"install_signals": False})
    worker.start()
    try:
        jobs = ship.enqueue_many([(1001,), ((1002,), {"express": True})])
        for job in jobs:
            print("from Python:", job.result(timeout=30))
        time.sleep(0.5)  # the worker's consumers have declared the queue by now
        foreign = str(uuid_utils.uuid7())
        publish_like_another_language(orjson.dumps({"task": "shop.ship", "args": [1003], "id": foreign}))
        publish_like_another_language(b"<order>1004</order>")
        while app.store.get(foreign) is None:  # the worker writes it to the store when it arrives
            time.sleep(0.05)
        print("from another language:", app.get_job(foreign).result(timeout=30))
        deadline = time.monotonic() + 30
        while not (failed := app.store.search_jobs(state="failed").jobs) and time.monotonic() < deadline:
            time.sleep(0.1)
        for record in failed:
            error = record.error or {}
            print(f"dead letter {record.id}: {error.get('type')}: {error.get('message')}")
        print("counts in the store:", app.store.counts())
    finally:
        supervisor.stop()
        worker.join(timeout=30)
        transport = getattr(app.broker, "transport", None)
        if transport is not None:
            transport.drop()
        app.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
