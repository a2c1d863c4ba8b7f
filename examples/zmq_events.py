"""Follow job completions live with a plain ZeroMQ SUB socket (any language can do the same).

Run it with ``python examples/zmq_events.py`` (needs ``pip install 'conveyor[zmq]'``). A worker
(thread pool, in this process) publishes an event for every outcome it records on
``events=tcp://127.0.0.1:PORT``. The subscriber below knows nothing of Conveyor: it subscribes to
the topic prefix ``job.`` and reads two frames per event, the topic (``job.succeeded``,
``job.failed``, ``job.scheduled`` for a retry...) and a JSON body.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import tempfile
import threading
import time

import zmq

from conveyor import Conveyor
from conveyor.worker.supervisor import Supervisor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


folder = tempfile.mkdtemp(prefix="conveyor-zmq-events-")
events = f"tcp://127.0.0.1:{free_port()}"
app = Conveyor(f"zmq://127.0.0.1:{free_port()}?events={events}", store=f"sqlite:///{folder}/jobs.db",
               pool="thread", concurrency=2, grace=5.0)


@app.task(retries=1, backoff=0.1)
def publish(article: int) -> dict[str, int]:
    if article == 3:
        raise RuntimeError("the CMS said no")  # retried once, then failed
    return {"article": article, "words": 100 * article}


def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)
    supervisor = Supervisor(app)
    worker = threading.Thread(target=supervisor.run, kwargs={"install_signals": False}, daemon=True)
    worker.start()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.connect(events)
    sub.setsockopt(zmq.SUBSCRIBE, b"job.")
    time.sleep(0.5)  # the worker binds, and the subscription reaches it (ZeroMQ's slow joiner)
    try:
        jobs = publish.enqueue_many([(i,) for i in range(1, 6)])
        finished: set[str] = set()
        while len(finished) < len(jobs) and sub.poll(10_000):
            topic, body = sub.recv_multipart()
            event = json.loads(body)
            print(f"{topic.decode():14} {event['id'][-12:]} result={event.get('result')} "
                  f"error={(event.get('error') or {}).get('message')}")
            if event["state"] in ("succeeded", "failed"):
                finished.add(event["id"])
    finally:
        sub.close(0)
        stop(supervisor, worker)


def stop(supervisor: Supervisor, worker: threading.Thread) -> None:
    """Stop the worker (running jobs finish first) and delete the example's database."""
    supervisor.stop()
    worker.join(30)
    app.close()
    shutil.rmtree(folder, ignore_errors=True)

if __name__ == "__main__":
    main()
