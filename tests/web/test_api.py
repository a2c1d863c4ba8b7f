"""The JSON API: every route, its answers and its error codes, over SQLite and memory stores."""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable

import orjson
from web_support import BEARER, XSS, worker
from werkzeug.test import Client, TestResponse

from conveyor import Conveyor

RunJob = Callable[..., str]


def post(client: Client, path: str, body: object = None, **headers: str) -> TestResponse:
    return client.post(path, json=body, headers={**BEARER, **headers})


def get(client: Client, path: str, **kwargs: object) -> TestResponse:
    return client.get(path, headers=BEARER, **kwargs)  # type: ignore[arg-type]


def data(response: TestResponse) -> dict:  # type: ignore[type-arg]
    return orjson.loads(response.get_data())  # type: ignore[no-any-return]


def enqueue(client: Client, task: str = "tests.add", **fields: object) -> dict:  # type: ignore[type-arg]
    response = post(client, "/api/jobs", {"task": task, **fields})
    assert response.status_code == 201, response.get_data()
    return data(response)


# -- POST /api/jobs ---------------------------------------------------------------------------------
def test_enqueue_returns_201_with_the_job_and_its_location(api: Client) -> None:
    response = post(api, "/api/jobs", {"task": "tests.add", "args": [1], "kwargs": {"b": 2}, "priority": 5})
    assert response.status_code == 201
    job = data(response)
    assert (job["task"], job["state"], job["args"], job["kwargs"], job["priority"]) == (
        "tests.add", "queued", [1], {"b": 2}, 5)
    assert response.headers["Location"] == f"/api/jobs/{job['id']}"
    assert response.headers["Content-Type"] == "application/json"


def test_enqueue_options_queue_and_delay(api: Client) -> None:
    job = enqueue(api, args=[1], queue="other", delay=60)
    assert (job["queue"], job["state"]) == ("other", "scheduled")
    assert job["run_at"] > time.time() + 30


def test_idempotency_key_returns_the_same_job_with_200(api: Client, app: Conveyor, run_job: RunJob) -> None:
    first = post(api, "/api/jobs", {"task": "tests.add", "args": [1]}, **{"Idempotency-Key": "order-7"})
    assert first.status_code == 201
    again = post(api, "/api/jobs", {"task": "tests.add", "args": [1]}, **{"Idempotency-Key": "order-7"})
    assert again.status_code == 200
    assert data(again)["id"] == data(first)["id"]
    run_job()  # finished jobs still answer the repeat
    third = post(api, "/api/jobs", {"task": "tests.add", "args": [1]}, **{"Idempotency-Key": "order-7"})
    assert (third.status_code, data(third)["id"], data(third)["state"]) == (200, data(first)["id"], "succeeded")
    other = post(api, "/api/jobs", {"task": "tests.add", "args": [1]}, **{"Idempotency-Key": "order-8"})
    assert other.status_code == 201


def test_a_key_held_by_an_active_job_returns_it_with_200(api: Client) -> None:
    first = enqueue(api, args=[1], key="nightly")
    again = post(api, "/api/jobs", {"task": "tests.add", "args": [2], "key": "nightly"})
    assert (again.status_code, data(again)["id"]) == (200, first["id"])


def test_invalid_arguments_answer_422_naming_the_field(api: Client) -> None:
    response = post(api, "/api/jobs", {"task": "tests.add", "args": ["not a number"]})
    assert response.status_code == 422
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = data(response)
    assert problem["field"] == "a" and "'a'" in problem["detail"] and problem["status"] == 422
    assert problem["errors"][0]["argument"] == "a"
    missing = data(post(api, "/api/jobs", {"task": "tests.add", "kwargs": {"b": 1}}))
    assert missing["field"] == "a"
    extra = data(post(api, "/api/jobs", {"task": "tests.add", "args": [1], "kwargs": {"zzz": 1}}))
    assert extra["field"] == "zzz"


def test_malformed_requests_answer_4xx_naming_the_field(api: Client) -> None:
    cases = [
        ({"task": "tests.add", "args": {"a": 1}}, "args"),
        ({"task": "tests.add", "kwargs": [1]}, "kwargs"),
        ({"task": "tests.add", "priority": "high"}, "priority"),
        ({"task": "tests.add", "priority": True}, "priority"),
        ({"task": "tests.add", "delay": -1}, "delay"),
        ({"task": "tests.add", "queue": 7}, "queue"),
        ({"task": "tests.add", "surprise": 1}, "surprise"),
        ({"args": [1]}, "task"),
        ([1, 2], "body"),
    ]
    for body, field in cases:
        response = post(api, "/api/jobs", body)
        assert (response.status_code, data(response).get("field")) == (422, field), body
    broken = api.post("/api/jobs", data=b"{not json", headers={**BEARER, "Content-Type": "application/json"})
    assert (broken.status_code, data(broken)["field"]) == (400, "body")


def test_unknown_task_answers_404(api: Client) -> None:
    response = post(api, "/api/jobs", {"task": "no.such.task"})
    assert response.status_code == 404
    assert data(response)["field"] == "task" and "no.such.task" in data(response)["detail"]


def test_oversized_arguments_answer_413(api: Client, web: object) -> None:
    big = post(api, "/api/jobs", {"task": "tests.echo", "args": ["x" * 5000]})  # max_payload is 4096
    assert big.status_code == 413 and data(big)["status"] == 413
    huge = api.post("/api/jobs", data=b"[" + b"1," * 200_000 + b"1]",
                    headers={**BEARER, "Content-Type": "application/json"})
    assert huge.status_code == 413 and data(huge)["field"] == "body"


# -- GET /api/jobs ----------------------------------------------------------------------------------
def test_list_filters_by_state_queue_and_task(api: Client, run_job: RunJob) -> None:
    a = enqueue(api, args=[1])
    b = enqueue(api, "tests.echo", args=["hello"])
    run_job("media", "failed", error={"type": "ValueError", "message": "bad"})
    ids = lambda query: [j["id"] for j in data(get(api, "/api/jobs", query_string=query))["jobs"]]  # noqa: E731
    assert ids({}) == [b["id"], a["id"]]
    assert ids({"state": "failed"}) == [b["id"]]
    assert ids({"queue": "default"}) == [a["id"]]
    assert ids({"task": "tests.echo"}) == [b["id"]]
    assert ids({"state": "queued", "queue": "media"}) == []


def test_list_searches_arguments_and_errors(api: Client, run_job: RunJob) -> None:
    enqueue(api, "tests.echo", args=["holiday.mov"])
    failing = enqueue(api, "tests.echo", args=["report.pdf"])
    run_job("media", "succeeded")
    run_job("media", "failed", error={"type": "OSError", "message": "disk quota exceeded"})
    found = data(get(api, "/api/jobs", query_string={"search": "QUOTA"}))["jobs"]
    assert [j["id"] for j in found] == [failing["id"]]
    assert found[0]["error"] == {"type": "OSError", "message": "disk quota exceeded"}
    assert len(data(get(api, "/api/jobs", query_string={"search": "holiday"}))["jobs"]) == 1


def test_list_time_range_and_its_validation(api: Client) -> None:
    job = enqueue(api, args=[1])
    created = job["created_at"]
    ids = lambda query: [j["id"] for j in data(get(api, "/api/jobs", query_string=query))["jobs"]]  # noqa: E731
    assert ids({"since": created - 10, "until": created + 10}) == [job["id"]]
    assert ids({"since": created + 10}) == []
    assert ids({"until": "2000-01-01T00:00:00Z"}) == []
    assert ids({"since": "2000-01-01T00:00"}) == [job["id"]]
    for query, field in (({"since": "yesterday"}, "since"), ({"state": "done"}, "state"),
                         ({"limit": "0"}, "limit"), ({"limit": "many"}, "limit")):
        response = get(api, "/api/jobs", query_string=query)
        assert (response.status_code, data(response)["field"]) == (422, field)


def test_list_pages_with_a_cursor(api: Client) -> None:
    made = [enqueue(api, args=[i])["id"] for i in range(5)]
    first = data(get(api, "/api/jobs", query_string={"limit": 2}))
    second = data(get(api, "/api/jobs", query_string={"limit": 2, "cursor": first["cursor"]}))
    third = data(get(api, "/api/jobs", query_string={"limit": 2, "cursor": second["cursor"]}))
    seen = [j["id"] for page in (first, second, third) for j in page["jobs"]]
    assert seen == made[::-1] and third["cursor"] is None


# -- one job ----------------------------------------------------------------------------------------
def test_get_job_shows_arguments_result_error_and_history(api: Client, run_job: RunJob) -> None:
    job = enqueue(api, "tests.echo", args=["hi"])
    run_job("media", "succeeded", result={"out": "hi.mp4"})
    shown = data(get(api, f"/api/jobs/{job['id']}"))
    assert (shown["state"], shown["args"], shown["result"]) == ("succeeded", ["hi"], {"out": "hi.mp4"})
    failed = enqueue(api, "tests.echo", args=["x"])
    run_job("media", "failed", error={"type": "KeyError", "message": "k", "traceback": "Traceback (most recent)"})
    shown = data(get(api, f"/api/jobs/{failed['id']}"))
    assert shown["error"]["traceback"] == "Traceback (most recent)"
    assert [h["state"] for h in shown["history"]] == ["failed"]


def test_unknown_job_answers_404_on_every_route(api: Client) -> None:
    assert get(api, "/api/jobs/nope").status_code == 404
    assert post(api, "/api/jobs/nope/cancel").status_code == 404
    assert post(api, "/api/jobs/nope/retry").status_code == 404
    response = api.delete("/api/jobs/nope", headers=BEARER)
    assert response.status_code == 404 and data(response)["field"] == "id"


def test_cancel_retry_and_delete(api: Client, run_job: RunJob) -> None:
    job = enqueue(api, args=[1])
    cancelled = post(api, f"/api/jobs/{job['id']}/cancel")
    assert (cancelled.status_code, data(cancelled)["state"]) == (200, "cancelled")
    retried = post(api, f"/api/jobs/{job['id']}/retry")
    assert (retried.status_code, data(retried)["state"]) == (200, "queued")
    conflict = post(api, f"/api/jobs/{job['id']}/retry")  # queued: nothing to retry
    assert conflict.status_code == 409
    run_job(state="running")
    assert data(post(api, f"/api/jobs/{job['id']}/cancel"))["cancel_requested"] is True
    assert api.delete(f"/api/jobs/{job['id']}", headers=BEARER).status_code == 409  # running
    other = enqueue(api, args=[2])
    deleted = api.delete(f"/api/jobs/{other['id']}", headers=BEARER)
    assert (deleted.status_code, data(deleted)) == (200, {"id": other["id"], "deleted": True})
    assert get(api, f"/api/jobs/{other['id']}").status_code == 404


# -- bulk -------------------------------------------------------------------------------------------
def test_bulk_retry_cancel_delete_by_filter_and_ids(api: Client, run_job: RunJob) -> None:
    failed = []
    for i in range(3):
        failed.append(enqueue(api, "tests.echo", args=[f"f{i}"])["id"])
        run_job("media", "failed", error={"type": "E", "message": "m"})
    waiting = [enqueue(api, args=[i])["id"] for i in range(2)]
    result = data(post(api, "/api/jobs/bulk", {"action": "retry", "filter": {"state": "failed"}}))
    assert (result["matched"], result["changed"], result["more"]) == (3, 3, False)
    states = {j["id"]: j["state"] for j in data(get(api, "/api/jobs"))["jobs"]}
    assert all(states[i] == "queued" for i in failed)
    result = data(post(api, "/api/jobs/bulk", {"action": "cancel", "ids": [*waiting, "missing"]}))
    assert (result["matched"], result["changed"], result["skipped"]) == (3, 2, 1)
    result = data(post(api, "/api/jobs/bulk", {"action": "delete", "filter": {"state": "cancelled"}}))
    assert result["changed"] == 2
    assert len(data(get(api, "/api/jobs"))["jobs"]) == 3


def test_bulk_refuses_what_would_be_a_mistake(api: Client) -> None:
    cases = [({"action": "explode", "ids": []}, "action"), ({"action": "delete"}, "ids"),
             ({"action": "delete", "filter": {}}, "filter"), ({"action": "delete", "ids": "x"}, "ids"),
             ({"action": "delete", "filter": {"state": "bogus"}}, "state"), ("x", "body")]
    for body, field in cases:
        response = post(api, "/api/jobs/bulk", body)
        assert (response.status_code, data(response)["field"]) == (422, field), body


# -- queues, workers, stats -------------------------------------------------------------------------
def test_queues_pause_resume_purge(api: Client, app: Conveyor) -> None:
    enqueue(api, "tests.echo", args=["a"])
    enqueue(api, "tests.echo", args=["b"], delay=60)
    queues = {q["name"]: q for q in data(get(api, "/api/queues"))["queues"]}
    assert {"default", "media", XSS} <= set(queues)  # the app's queues, even when empty
    assert (queues["media"]["depth"], queues["media"]["counts"]["scheduled"]) == (2, 1)
    assert data(post(api, "/api/queues/media/pause")) == {"name": "media", "paused": True}
    assert app.broker.paused_queues() == {"media"}
    assert data(post(api, "/api/queues/media/resume")) == {"name": "media", "paused": False}
    assert app.broker.paused_queues() == set()
    assert data(post(api, "/api/queues/media/purge", {"states": ["scheduled"]})) == {"name": "media", "deleted": 1}
    assert data(post(api, "/api/queues/media/purge")) == {"name": "media", "deleted": 1}
    bad = post(api, "/api/queues/media/purge", {"states": ["running"]})
    assert (bad.status_code, data(bad)["field"]) == (422, "states")
    assert post(api, "/api/queues/media/explode").status_code == 404


def test_workers_show_host_pid_current_job_rss_and_uptime(api: Client, app: Conveyor) -> None:
    job = enqueue(api, args=[1])
    worker(app, current=[job["id"]])
    (shown,) = data(get(api, "/api/workers"))["workers"]
    assert (shown["hostname"], shown["pid"], shown["current"], shown["rss"]) == (
        "host-1", 4242, [job["id"]], 50 * 2**20)
    assert 80 < shown["uptime"] < 200


def test_stats_per_queue_over_time(api: Client, run_job: RunJob) -> None:
    for i in range(3):
        enqueue(api, "tests.echo", args=[str(i)])
    run_job("media")
    run_job("media")
    run_job("media", "failed", error={"type": "E", "message": "m"})
    stats = data(get(api, "/api/stats", query_string={"bucket": 3600}))
    (row,) = stats["series"]
    assert (row["queue"], row["succeeded"], row["failed"]) == ("media", 2, 1)
    assert row["run_mean"] == pytest_approx(0.5) and row["run_p95"] == pytest_approx(0.5)
    assert stats["bucket"] == 3600
    for query, field in (({"bucket": "0"}, "bucket"), ({"since": "0", "bucket": "1"}, "bucket"),
                         ({"since": "soon"}, "since")):
        response = get(api, "/api/stats", query_string=query)
        assert (response.status_code, data(response)["field"]) == (422, field)


def pytest_approx(value: float) -> object:
    import pytest

    return pytest.approx(value, abs=0.05)


# -- metrics, compression, errors -------------------------------------------------------------------
def test_metrics_in_prometheus_text_format(api: Client, app: Conveyor) -> None:
    enqueue(api, args=[1])
    worker(app)
    response = get(api, "/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.get_data(as_text=True)
    assert '# TYPE conveyor_jobs gauge' in text
    assert 'conveyor_jobs{queue="default",state="queued"} 1.0' in text
    assert 'conveyor_queue_paused{queue="media"} 0.0' in text
    assert "conveyor_workers 1.0" in text
    assert 'conveyor_worker_rss_bytes{hostname="host-1",pid="4242",worker="worker-1"} 5.24288e+07' in text
    from prometheus_client.parser import text_string_to_metric_families

    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"conveyor_jobs", "conveyor_workers", "conveyor_queue_paused"} <= names


def test_responses_are_gzipped_when_accepted(api: Client) -> None:
    for i in range(20):
        enqueue(api, args=[i])
    plain = get(api, "/api/jobs")
    assert "Content-Encoding" not in plain.headers
    zipped = api.get("/api/jobs", headers={**BEARER, "Accept-Encoding": "gzip, deflate"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["Vary"]
    assert gzip.decompress(zipped.get_data()) == plain.get_data()
    refused = api.get("/api/jobs", headers={**BEARER, "Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused.headers


def test_unknown_route_and_method(api: Client) -> None:
    missing = get(api, "/api/nothing")
    assert (missing.status_code, missing.headers["Content-Type"]) == (404, "application/problem+json")
    wrong = api.put("/api/jobs", headers=BEARER)
    assert wrong.status_code == 405 and "POST" in wrong.headers["Allow"]
