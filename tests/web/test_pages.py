"""The dashboard's pages: content, stable selectors for browser tests, partial refreshes, phones."""

from __future__ import annotations

import re
from collections.abc import Callable

from web_support import XSS, Browser, worker

from conveyor import Conveyor

RunJob = Callable[..., str]


def html(browser: Browser, path: str, **headers: str) -> str:
    response = browser.get(path, headers=headers)
    assert response.status_code == 200, (path, response.status_code)
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    return response.get_data(as_text=True)


def add(app: Conveyor, *args: object, task: str = "tests.add", **options: object) -> str:
    (job_id,) = app.broker.enqueue([app.tasks[task].message(list(args), {}, options)])
    return job_id


def test_overview_shows_totals_charts_queues_and_workers(browser: Browser, app: Conveyor, run_job: RunJob) -> None:
    add(app, 1)
    add(app, "x", task="tests.echo")
    run_job("media", "failed", error={"type": "ValueError", "message": "broken input"})
    worker(app)
    page = html(browser, "/")
    assert 'id="total-queued">1<' in page and 'id="total-failed">1<' in page
    assert 'id="throughput-chart"' in page and 'id="failures-chart"' in page
    assert re.search(r'<rect class="bar bar-fail"[^>]*data-value="1"', page)
    assert 'data-queue="media"' in page and 'data-worker-id="worker-1"' in page
    assert "broken input" in page
    assert 'name="viewport" content="width=device-width, initial-scale=1"' in page


def test_jobs_list_filters_and_bulk_forms(browser: Browser, app: Conveyor) -> None:
    ids = [add(app, i) for i in range(3)]
    page = html(browser, "/jobs")
    assert 'id="jobs-table"' in page
    assert all(f'tr data-job-id="{i}" data-state="queued"' in page for i in ids)
    assert page.count('class="progress-bar" data-progress=') == 3
    assert 'data-action="retry"' in page and 'data-action="delete"' in page and 'id="bulk-form"' in page
    assert 'id="bulk-filter-form"' not in page  # no filter: no "apply to everything" buttons
    filtered = html(browser, "/jobs?state=queued&limit=2")
    assert 'id="bulk-filter-form"' in filtered and 'id="next-page"' in filtered
    bad = browser.get("/jobs?since=whenever")
    assert bad.status_code == 422 and 'id="filter-error"' in bad.get_data(as_text=True)


def test_failed_page_lists_dead_letters_with_retry(browser: Browser, app: Conveyor, run_job: RunJob) -> None:
    kept = add(app, "a", task="tests.echo")
    run_job("media", "failed", error={"type": "E", "message": "m"})
    add(app, 1)
    page = html(browser, "/failed")
    assert f'data-job-id="{kept}"' in page and page.count("<tr data-job-id=") == 1
    assert 'data-bulk="filter"' in page and 'value="retry"' in page
    response = browser.post("/api/jobs/bulk", data={"_csrf": browser.csrf, "_next": "/failed", "action": "retry",
                                                    "state": "failed"})
    assert response.status_code == 303
    assert app.broker.get(kept).state == "queued"  # type: ignore[union-attr]


def test_job_page_shows_arguments_result_traceback_and_timeline(browser: Browser, app: Conveyor,
                                                               run_job: RunJob) -> None:
    job_id = add(app, "clip.mov", task="tests.echo")
    run_job("media", "failed", error={"type": "OSError", "message": "disk full", "traceback": "Traceback: line 1"})
    page = html(browser, f"/jobs/{job_id}")
    assert 'id="job-args"' in page and "clip.mov" in page
    assert 'id="job-traceback"' in page and "Traceback: line 1" in page
    assert 'id="attempts-timeline"' in page and 'data-attempt="1"' in page
    assert 'id="job-retry"' in page and 'data-action="retry"' in page
    assert f'content="/api/events?job={job_id}&amp;last_event_id=' in page
    running = add(app, 2)
    run_job("default", "running", progress=0.4)
    page = html(browser, f"/jobs/{running}")
    assert 'class="progress-bar" data-progress="0.400"' in page and 'id="job-cancel"' in page
    assert browser.get("/jobs/unknown").status_code == 404


def test_job_page_marks_a_retry_by_hand_in_the_timeline(browser: Browser, app: Conveyor, run_job: RunJob) -> None:
    job_id = add(app, "clip.mov", task="tests.echo")
    run_job("media", "failed", error={"type": "OSError", "message": "disk full"})
    assert "retried by hand" not in html(browser, f"/jobs/{job_id}")
    app.broker.retry(job_id)  # the attempts start over
    assert html(browser, f"/jobs/{job_id}").count("retried by hand") == 1
    run_job("media", "succeeded", result="ok")
    page = html(browser, f"/jobs/{job_id}")
    assert page.count("retried by hand") == 1 and page.count('data-attempt="1"') == 2


def test_queues_page_has_pause_and_resume_buttons(browser: Browser, app: Conveyor) -> None:
    app.broker.pause("media")
    page = html(browser, "/queues")
    assert 'id="queues-table"' in page
    assert 'id="queue-default-pause"' in page and 'id="queue-media-resume"' in page
    assert 'data-queue="media" data-paused="true"' in page


def test_workers_page(browser: Browser, app: Conveyor) -> None:
    job_id = add(app, 1)
    worker(app, current=[job_id])
    page = html(browser, "/workers")
    assert 'id="workers-table"' in page and 'data-worker-id="worker-1"' in page
    assert "host-1" in page and "4242" in page and "50.0 MiB" in page and re.search(r">1 min [23]\d s<", page)
    assert f'href="/jobs/{job_id}"' in page


def test_a_partial_request_returns_only_the_main_fragment(browser: Browser, app: Conveyor) -> None:
    add(app, 1)
    for path in ("/", "/jobs", "/failed", "/queues", "/workers"):
        fragment = html(browser, path, **{"X-Partial": "1"})
        assert "<html" not in fragment and "<nav" not in fragment and "<h1>" in fragment, path
    assert 'id="jobs-table"' in html(browser, "/jobs", **{"X-Partial": "1"})


def test_nav_marks_the_current_page(browser: Browser) -> None:
    for path, name in (("/", "overview"), ("/jobs", "jobs"), ("/failed", "failed"), ("/queues", "queues"),
                       ("/workers", "workers")):
        assert f'id="nav-{name}" href="{path}" aria-current="page"' in html(browser, path)


def test_static_files_are_served_and_cached(browser: Browser) -> None:
    page = html(browser, "/")
    css = re.search(r'href="(/static/app\.css\?v=\w+)"', page)
    assert css
    response = browser.get(css.group(1))
    assert response.status_code == 200 and response.headers["Content-Type"] == "text/css; charset=utf-8"
    assert "immutable" in response.headers["Cache-Control"]
    assert "@media (max-width" in response.get_data(as_text=True)  # readable on a phone
    js = browser.get("/static/app.js")
    assert "EventSource" in js.get_data(as_text=True)
    assert browser.get("/static/../wsgi.py").status_code == 404
    assert browser.get("/static/nothing.js").status_code == 404


def test_the_xss_queue_still_renders(browser: Browser, app: Conveyor) -> None:
    add(app, "x", task=XSS)
    assert "&lt;script&gt;" in html(browser, "/queues")
