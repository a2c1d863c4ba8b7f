"""The job states tell the truth (issue #10, section 2): reserved is not running, an error a job
recovered from is labelled with its attempt, a succeeded job is 100 % done, a failed attempt
waiting for its retry says so, the Failed page offers what fits dead letters, the jobs list shows
durations and relative times, and an unknown task's 404 names the registered ones."""

from __future__ import annotations

import re
from collections.abc import Callable

import orjson
from web_support import BEARER, LONG_TASK, Browser, fail_once, reserve, start
from werkzeug.test import Client, TestResponse

from conveyor import Conveyor
from conveyor.brokers import Outcome
from conveyor.presentation import format_timestamp

RunJob = Callable[..., str]


def add(app: Conveyor, *args: object, task: str = "tests.add", **options: object) -> str:
    (job_id,) = app.broker.enqueue([app.tasks[task].message(list(args), {}, options)])
    return job_id


def get(client: Client, path: str, **kwargs: object) -> TestResponse:
    return client.get(path, headers=BEARER, **kwargs)  # type: ignore[arg-type]


def data(response: TestResponse) -> dict:  # type: ignore[type-arg]
    assert response.status_code < 300, response.get_data()
    return orjson.loads(response.get_data())  # type: ignore[no-any-return]


def html(browser: Browser, path: str) -> str:
    response = browser.get(path)
    assert response.status_code == 200, (path, response.status_code)
    return response.get_data(as_text=True)


def row(page: str, job_id: str) -> str:
    found = re.search(rf'<tr data-job-id="{job_id}".*?</tr>', page, re.S)
    assert found, f"no row for {job_id}"
    return found.group(0)


def reserved_and_executing(app: Conveyor, run_job: RunJob) -> tuple[str, str]:
    """Two jobs of the default queue held by a worker: the first reserved, the second executing."""
    add(app, 1)
    add(app, 2)
    reserved = reserve(app).job_id
    executing = run_job(state="running")
    return reserved, executing


# -- reserved is not running ------------------------------------------------------------------------
def test_the_api_tells_reserved_jobs_from_executing_ones(api: Client, app: Conveyor, run_job: RunJob) -> None:
    reserved, executing = reserved_and_executing(app, run_job)
    listed = {j["id"]: j for j in data(get(api, "/api/jobs"))["jobs"]}
    assert (listed[reserved]["state"], listed[reserved]["reserved"], listed[reserved]["display_state"]) == (
        "running", True, "reserved")
    assert (listed[executing]["state"], listed[executing]["reserved"], listed[executing]["display_state"]) == (
        "running", False, "running")
    one = data(get(api, f"/api/jobs/{reserved}"))
    assert (one["reserved"], one["display_state"], one["started_at"]) == (True, "reserved", None)
    # state=running still means what the store says: both; state=reserved only the one not started.
    ids = lambda state: {j["id"] for j in data(get(api, "/api/jobs", query_string={"state": state}))["jobs"]}  # noqa: E731
    assert ids("running") == {reserved, executing}
    assert ids("reserved") == {reserved}
    (default,) = [q for q in data(get(api, "/api/queues"))["queues"] if q["name"] == "default"]
    assert (default["counts"]["running"], default["counts"]["reserved"]) == (2, 1)  # running includes reserved
    assert data(get(api, "/api/stats"))["reserved"] == {"default": 1}


def test_a_reserved_filter_pages_through_running_jobs(api: Client, app: Conveyor, run_job: RunJob) -> None:
    for i in range(5):
        add(app, i)
    first = reserve(app).job_id
    for _ in range(3):
        run_job(state="running")
    last = reserve(app).job_id
    page = data(get(api, "/api/jobs", query_string={"state": "reserved", "limit": 1}))
    assert [j["id"] for j in page["jobs"]] == [last] and page["cursor"]
    rest = data(get(api, "/api/jobs", query_string={"state": "reserved", "limit": 1, "cursor": page["cursor"]}))
    assert [j["id"] for j in rest["jobs"]] == [first]


def test_the_pages_show_reserved_apart_from_running(browser: Browser, app: Conveyor, run_job: RunJob) -> None:
    reserved, executing = reserved_and_executing(app, run_job)
    overview = html(browser, "/")
    assert 'id="total-running">1<' in overview and 'id="total-reserved">1<' in overview
    queues = html(browser, "/queues")
    default = re.search(r'<tr data-queue="default".*?</tr>', queues, re.S)
    assert default
    assert 'data-count="running">1<' in default.group(0) and 'data-count="reserved">1<' in default.group(0)
    jobs = html(browser, "/jobs")
    assert 'data-state="reserved">reserved<' in row(jobs, reserved)
    assert 'data-state="running">running<' in row(jobs, executing)
    assert '<option value="reserved"' in jobs
    assert reserved in html(browser, "/jobs?state=reserved")
    page = html(browser, f"/jobs/{reserved}")
    assert 'data-state="reserved">reserved<' in page
    assert "<dt>started</dt>" not in page  # not started yet: no start time to show
    assert "<dt>started</dt>" in html(browser, f"/jobs/{executing}")


def test_metrics_count_reserved_jobs(api: Client, app: Conveyor, run_job: RunJob) -> None:
    reserved_and_executing(app, run_job)
    text = get(api, "/metrics").get_data(as_text=True)
    assert 'conveyor_jobs{queue="default",state="running"} 2.0' in text  # unchanged: the store's count
    assert 'conveyor_jobs_reserved{queue="default"} 1.0' in text


# -- errors of earlier attempts, progress, retries ----------------------------------------------------
def test_a_succeeded_job_labels_the_error_of_its_failed_attempt(browser: Browser, app: Conveyor) -> None:
    job_id = add(app, 1)
    fail_once(app)
    (lease,) = app.broker.fetch(["default"], 1, 30.0, "test-consumer")
    start(app, lease)
    now = app.broker.clock()
    assert app.broker.ack([Outcome(job_id, lease.token, "succeeded", result=app.serializer.dumps(2),
                                   started_at=now - 0.1, finished_at=now)]) == [True]
    record = app.broker.get(job_id)
    assert record is not None and record.state == "succeeded" and record.error  # the store keeps it
    listed = row(html(browser, "/jobs"), job_id)
    assert "error of attempt 1" in listed and 'class="error-text"' not in listed
    page = html(browser, f"/jobs/{job_id}")
    section = re.search(r"<h2>(Error[^<]*)</h2>(.*?)</section>", page, re.S)
    assert section and section.group(1) == "Error of attempt 1"
    assert 'class="error-text"' not in section.group(2) and "the CDN was slow" in section.group(2)


def test_a_succeeded_job_shows_complete_progress(browser: Browser, app: Conveyor) -> None:
    job_id = add(app, 1)
    (lease,) = app.broker.fetch(["default"], 1, 30.0, "test-consumer")
    start(app, lease)
    app.broker.progress(job_id, lease.token, 0.5, "resizing")
    now = app.broker.clock()
    app.broker.ack([Outcome(job_id, lease.token, "succeeded", result=app.serializer.dumps(2), started_at=now - 1,
                            finished_at=now)])
    listed = row(html(browser, "/jobs"), job_id)
    assert 'data-progress="1.000"' in listed and "resizing" not in listed
    page = html(browser, f"/jobs/{job_id}")
    assert 'data-progress="1.000"' in page and "resizing" not in page


def test_a_failed_attempt_waiting_for_its_retry_says_so(browser: Browser, app: Conveyor) -> None:
    job_id = add(app, 1)
    fail_once(app, retry_in=600)
    record = app.broker.get(job_id)
    assert record is not None and record.state == "scheduled" and record.run_at
    when = re.escape(f"failed, retry at {format_timestamp(record.run_at)[11:]}")
    listed = row(html(browser, "/jobs"), job_id)
    assert re.search(when, listed), listed
    assert "error of attempt 1" in listed
    assert re.search(when, html(browser, f"/jobs/{job_id}"))


# -- the Failed page ------------------------------------------------------------------------------------
def test_the_failed_page_offers_retry_and_delete_not_cancel(browser: Browser, app: Conveyor,
                                                            run_job: RunJob) -> None:
    add(app, "x", task="tests.echo")
    run_job("media", "failed", error={"type": "E", "message": "m"})
    page = html(browser, "/failed")
    assert 'value="cancel"' not in page
    for form in ("bulk-form", "bulk-filter-form"):
        found = re.search(rf'<form id="{form}".*?</form>', page, re.S)
        assert found, form
        assert 'value="retry"' in found.group(0) and 'value="delete"' in found.group(0), form
    assert 'value="cancel"' in html(browser, "/jobs")  # the jobs list still cancels


def test_a_failed_job_is_deleted_from_its_page_with_csrf(browser: Browser, app: Conveyor, run_job: RunJob) -> None:
    job_id = add(app, "x", task="tests.echo")
    run_job("media", "failed", error={"type": "E", "message": "m"})
    assert 'id="job-delete"' in html(browser, f"/jobs/{job_id}")
    refused = browser.post("/api/jobs/bulk", data={"_next": "/failed", "action": "delete", "ids": job_id})
    assert refused.status_code == 403 and app.broker.get(job_id) is not None
    done = browser.post("/api/jobs/bulk", data={"_csrf": browser.csrf, "_next": "/failed", "action": "delete",
                                                "ids": job_id})
    assert done.status_code == 303 and app.broker.get(job_id) is None


# -- the jobs list: durations, relative times, short task names ------------------------------------------
def test_the_jobs_list_shows_durations_relative_times_and_short_task_names(browser: Browser, app: Conveyor,
                                                                           run_job: RunJob) -> None:
    job_id = add(app, "a.png", task=LONG_TASK)
    run_job("default", "succeeded", result="ok")  # ran 0.5 s
    listed = row(html(browser, "/jobs"), job_id)
    assert ">500 ms<" in listed
    assert re.search(r'<time datetime="[^"]+Z" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">(just now|\d+ s ago)</time>',
                     listed), listed
    assert f'title="{LONG_TASK}"' in listed
    assert ">c.m.t.generate_thumbnail<" in listed


# -- the HTTP API's unknown task ---------------------------------------------------------------------
def test_an_unknown_task_lists_the_registered_ones_and_suggests_the_nearest(api: Client, app: Conveyor) -> None:
    response = api.post("/api/jobs", json={"task": "tests.ad", "args": [1]}, headers=BEARER)
    assert response.status_code == 404
    problem = orjson.loads(response.get_data())
    assert problem["field"] == "task" and problem["suggestion"] == "tests.add"
    assert problem["known"] == sorted(app.tasks)
    assert "did you mean 'tests.add'?" in problem["detail"] and "tests.echo" in problem["detail"]
    far = orjson.loads(api.post("/api/jobs", json={"task": "zzzz"}, headers=BEARER).get_data())
    assert far["suggestion"] is None and far["known"] == sorted(app.tasks)
