"""A shop's background jobs on Redis: receipts by e-mail, catalogue pages, video previews.

Run a worker from this folder with ``conveyor worker tasks:app``; enqueue with ``python shop.py``.
The broker is ``CONVEYOR_URL`` when set, else the local Redis under the key prefix ``shop``.
"""

from __future__ import annotations

import os
import time

from conveyor import Conveyor, current_job

app = Conveyor(os.environ.get("CONVEYOR_URL", "redis://127.0.0.1:6379/0?prefix=shop"))


@app.task(queue="mail", retries=5, backoff=2.0, timeout=30)
def send_receipt(order_id: int, email: str) -> str:
    """Mail the receipt of an order: its own queue, so a slow mail server never delays the rest."""
    return f"receipt of order {order_id} sent to {email}"


@app.task(retries=3)
def publish_page(slug: str) -> str:
    """Render a catalogue page; enqueued with a unique key, so a burst of edits renders it once."""
    time.sleep(0.2)
    return f"/catalogue/{slug}.html"


@app.task(queue="media", timeout=600)
def make_preview(video: str, seconds: int = 10) -> dict[str, object]:
    """Cut a preview clip, reporting progress the dashboard shows live."""
    job = current_job()
    for step in range(1, 5):
        time.sleep(0.05)
        job.progress(step / 4, f"{step * seconds // 4}s of {seconds}s cut")
    return {"video": video, "preview": video.rsplit(".", 1)[0] + "-preview.mp4", "seconds": seconds}
