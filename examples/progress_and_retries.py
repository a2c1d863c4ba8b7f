"""Progress reports and retries, end to end in one process.

Run it with ``python examples/progress_and_retries.py``. It starts a thread-pool worker inside this
process on a temporary SQLite database, enqueues a job that reports progress and one that fails
once and then succeeds, prints what happened, and stops the worker.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time

from conveyor import Conveyor, current_job
from conveyor.worker.supervisor import Supervisor

folder = tempfile.mkdtemp(prefix="conveyor-example-")
# prefetch=1: each thread leases one job at a time, so the two jobs run side by side.
app = Conveyor(f"sqlite:///{folder}/jobs.db", pool="thread", concurrency=2, prefetch=1)


@app.task
def export(rows: int) -> dict[str, int]:
    job = current_job()
    for done in range(0, rows + 1, rows // 4):
        job.progress(done / rows, f"{done}/{rows} rows")
        time.sleep(0.4)
    return {"rows": rows}


@app.task(retries=2, backoff=0.5)
def upload(name: str) -> str:
    job = current_job()
    if job.attempt == 1:
        raise ConnectionError(f"network down while uploading {name}")
    return f"uploaded {name} on attempt {job.attempt} of {job.max_attempts}"


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="  worker log: %(message)s")
    supervisor = Supervisor(app)
    # run() installs signal handlers only in the main thread; here it runs in a thread without them.
    worker = threading.Thread(target=supervisor.run, kwargs={"install_signals": False})
    worker.start()
    try:
        exporting = export.enqueue(1000)
        uploading = upload.enqueue("report.csv")

        seen = None
        while exporting.status not in ("succeeded", "failed"):
            now = (exporting.progress, exporting.progress_message)
            if now != seen and now[0] is not None:
                print(f"export progress: {now[0]:.0%} ({now[1]})")
                seen = now
            time.sleep(0.05)
        print("export result:", exporting.result(timeout=5))

        print("upload result:", uploading.result(timeout=10))
        for entry in uploading.history:
            error = entry["error"]
            print(f"  attempt {entry['attempt']} raised {error['type']}: {error['message']} -> {entry['state']}")
        print("upload attempts:", uploading.attempts, "status:", uploading.status)
    finally:
        supervisor.stop()
        worker.join(timeout=30)
        app.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
