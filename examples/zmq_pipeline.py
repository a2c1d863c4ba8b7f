"""ZeroMQ push/pull with a SQLite job store, end to end in one process.

Run it with ``python examples/zmq_pipeline.py`` (needs ``pip install 'conveyor[zmq]'``). It starts
a worker (thread pool) in this process: its supervisor binds the PULL socket at
``tcp://127.0.0.1:5555`` (a free port is picked here). The script then pushes 50 jobs and one that
fails, waits for the results from the store, and stops the worker. In production the worker is its
own process: ``CONVEYOR_URL=zmq://127.0.0.1:5555 CONVEYOR_STORE=sqlite:///jobs.db conveyor worker
examples.zmq_pipeline:app``, and the web app only pushes.
"""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import threading

from conveyor import Conveyor, JobFailed
from conveyor.worker.supervisor import Supervisor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


folder = tempfile.mkdtemp(prefix="conveyor-zmq-example-")
app = Conveyor(f"zmq://127.0.0.1:{free_port()}", store=f"sqlite:///{folder}/jobs.db", pool="thread",
               concurrency=4, grace=5.0)


@app.task
def resize(image: str, width: int) -> str:
    return f"{image}@{width}px"


@app.task(retries=0)
def broken(reason: str) -> None:
    raise ValueError(reason)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    supervisor = Supervisor(app)
    worker = threading.Thread(target=supervisor.run, kwargs={"install_signals": False}, daemon=True)
    worker.start()
    try:
        jobs = resize.enqueue_many([(f"photo-{i}.jpg", 320) for i in range(50)])
        failing = broken.enqueue("no such image")
        results = [job.result(timeout=30) for job in jobs]
        print(f"{len(results)} jobs ran, e.g. {results[0]!r}")
        try:
            failing.result(timeout=30)
        except JobFailed as exc:
            print(f"the failing job is {failing.status}: {exc}")
        print("counts in the store:", app.store.counts())
    finally:
        supervisor.stop()
        worker.join(30)
        app.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
