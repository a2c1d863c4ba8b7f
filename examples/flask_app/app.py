"""A Flask app that hands slow work to Conveyor.

Flask is not a dependency of Conveyor; install it yourself::

    pip install flask
    cd examples/flask_app
    conveyor worker app:jobs              # terminal 1: the worker
    flask --app app:web run               # terminal 2: the web app
    curl -X POST localhost:5000/thumbnails -H 'Content-Type: application/json' \
         -d '{"url": "https://example.com/cat.jpg", "size": 64}'
    curl localhost:5000/jobs/<id>

Both processes import this module (so the worker needs Flask too) and find the jobs in
``conveyor.db`` in the current folder, or at ``CONVEYOR_URL``.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, jsonify, request, url_for

from conveyor import Conveyor, InvalidArguments, JobNotFound, PayloadTooLarge, current_job

jobs = Conveyor()  # CONVEYOR_URL, else sqlite:///conveyor.db
web = Flask(__name__)


@jobs.task(retries=2, timeout=60)
def thumbnail(url: str, size: int = 128) -> dict[str, Any]:
    """Stands in for real work: download, resize, upload."""
    job = current_job()
    for step, what in enumerate(("downloading", "resizing", "uploading")):
        job.progress(step / 3, what)
        time.sleep(0.2)
    job.progress(1.0, "done")
    return {"url": url, "size": size, "thumbnail": f"{url}.{size}px.png"}


@web.post("/thumbnails")
def create_thumbnail() -> Any:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return jsonify(error='send a JSON object, e.g. {"url": "..."}'), 400
    try:
        job = thumbnail.enqueue(**body)
    except InvalidArguments as exc:
        return jsonify(error=str(exc), arguments=exc.errors), 422
    except PayloadTooLarge as exc:
        return jsonify(error=str(exc)), 413
    return jsonify(id=job.id, status_url=url_for("job_status", job_id=job.id)), 202


@web.get("/jobs/<job_id>")
def job_status(job_id: str) -> Any:
    try:
        job = jobs.get_job(job_id)  # one read of the store
    except JobNotFound:
        return jsonify(error=f"no job {job_id}"), 404
    state = job.record.state
    out: dict[str, Any] = {
        "id": job.id,
        "task": job.task_name,
        "status": state,
        "attempts": job.attempts,
        "progress": job.progress,
        "message": job.progress_message,
    }
    if state == "succeeded":
        out["result"] = job.result()  # already finished: returns at once
    elif job.error:
        out["error"] = {"type": job.error.get("type"), "message": job.error.get("message")}
    return jsonify(out)
