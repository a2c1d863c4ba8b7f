"""Sample tasks used by ``conveyor demo``: slow ones with progress, flaky ones that retry, and
one that always fails (to show a dead letter). The URL comes from ``CONVEYOR_URL``."""

from __future__ import annotations

import random
import time

from . import Conveyor, current_job

app = Conveyor()


@app.task(queue="media", timeout=60)
def transcode(path: str, seconds: float = 3.0) -> dict[str, str]:
    """Pretend to transcode a video, reporting progress as it goes."""
    steps = 10
    for i in range(steps):
        job = current_job()
        if job.cancelled:
            raise InterruptedError("cancelled")
        job.progress((i + 1) / steps, f"encoding segment {i + 1}/{steps}")
        time.sleep(seconds / steps)
    return {"out": path.rsplit(".", 1)[0] + ".mp4"}


@app.task(queue="mail")
def send_email(to: str, subject: str = "Hello") -> str:
    """A quick job."""
    time.sleep(random.uniform(0.05, 0.3))
    return f"sent {subject!r} to {to}"


@app.task(retries=3, backoff=0.5)
def import_batch(batch: int) -> int:
    """Fails on its first attempt (a flaky upstream), then succeeds on the retry."""
    if current_job().attempt < 2:
        raise ConnectionError(f"upstream timed out while importing batch {batch}")
    time.sleep(0.2)
    return batch * 100


@app.task(retries=1, backoff=0.5)
def replicate(region: str) -> None:
    """Always fails: shows a dead letter (``failed``) that can be retried by hand."""
    raise RuntimeError(f"region {region} is unreachable")


@app.task
def publish(post_id: int) -> str:
    """Enqueued with a delay: waits in ``scheduled`` first."""
    return f"post {post_id} published"
