"""Access control, CSRF and Origin checks, escaping, CSP, and secrets that must never be shown."""

from __future__ import annotations

import re
from collections.abc import Callable

import orjson
import pytest
from web_support import BEARER, TOKEN, XSS, Browser, csrf_of, make_app, worker
from werkzeug.test import Client

from conveyor import Conveyor
from conveyor.web import WSGIApplication, create_app
from conveyor.web.auth import SESSION_COOKIE, Auth, same
from conveyor.web.routes import ROUTES

RunJob = Callable[..., str]
JOB = "0190aaaa-0000-7000-8000-000000000000"
PAGES = ["/", "/jobs", "/failed", "/queues", "/workers"]


def concrete(rule: str, job_id: str = JOB) -> str:
    return rule.replace("<id>", job_id).replace("<name>", "default")


MUTATIONS = [(concrete(r.rule), r.method) for r in ROUTES if r.mutates and r.kind == "api"]


def test_every_mutation_is_in_the_list() -> None:
    assert len(MUTATIONS) == 8


@pytest.mark.parametrize(("path", "method"), MUTATIONS)
def test_mutations_need_credentials(anonymous: Client, path: str, method: str) -> None:
    response = anonymous.open(path, method=method, json={})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = anonymous.open(path, method=method, json={}, headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401


@pytest.mark.parametrize(("path", "method"), MUTATIONS)
def test_a_session_without_csrf_token_is_refused(browser: Browser, path: str, method: str) -> None:
    response = browser.open(path, method=method, json={})
    assert response.status_code == 403
    assert orjson.loads(response.get_data())["field"] == "X-CSRF-Token"
    wrong = browser.open(path, method=method, json={}, headers={"X-CSRF-Token": "0" * 64})
    assert wrong.status_code == 403


@pytest.mark.parametrize(("path", "method"), MUTATIONS)
def test_a_foreign_origin_is_refused(browser: Browser, path: str, method: str) -> None:
    headers = {"X-CSRF-Token": browser.csrf, "Origin": "https://evil.example"}
    response = browser.open(path, method=method, json={}, headers=headers)
    assert response.status_code == 403
    assert orjson.loads(response.get_data())["field"] == "Origin"
    bearer = browser.open(path, method=method, json={}, headers={**BEARER, "Origin": "null"})
    assert bearer.status_code == 403


def test_a_session_with_csrf_token_and_own_origin_may_mutate(browser: Browser, app: Conveyor) -> None:
    headers = {"X-CSRF-Token": browser.csrf, "Origin": "http://localhost"}
    response = browser.post("/api/queues/default/pause", headers=headers)
    assert response.status_code == 200
    assert app.broker.paused_queues() == {"default"}


def test_forms_post_with_the_csrf_field_and_redirect_back(browser: Browser, app: Conveyor) -> None:
    form = {"_csrf": browser.csrf, "_next": "/queues"}
    response = browser.post("/api/queues/media/pause", data=form)
    assert (response.status_code, response.headers["Location"]) == (303, "/queues")
    assert app.broker.paused_queues() == {"media"}
    assert browser.post("/api/queues/media/resume", data={"_next": "/queues"}).status_code == 403
    sneaky = browser.post("/api/queues/media/resume", data={**form, "_next": "//evil.example/"})
    assert sneaky.headers["Location"] == "/"
    (job_id,) = app.broker.enqueue([app.tasks["tests.add"].message([1], {}, {})])
    bulk = browser.post("/api/jobs/bulk", data={**form, "action": "cancel", "ids": [job_id]})
    assert bulk.status_code == 303
    assert app.broker.get(job_id).state == "cancelled"  # type: ignore[union-attr]


def test_pages_and_reads_need_credentials(anonymous: Client) -> None:
    for page in PAGES:
        response = anonymous.get(page)
        assert response.status_code == 303
        assert response.headers["Location"].startswith("/login?next=")
    for path in ("/api/jobs", "/api/queues", "/api/workers", "/api/stats", "/api/events", "/metrics",
                 "/api/openapi.json", f"/api/jobs/{JOB}"):
        assert anonymous.get(path).status_code == 401, path


def test_login_url_sets_a_signed_cookie(anonymous: Client) -> None:
    response = anonymous.get(f"/login?token={TOKEN}&next=/queues")
    assert (response.status_code, response.headers["Location"]) == (303, "/queues")
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert TOKEN not in cookie
    assert anonymous.get("/queues").status_code == 200


def test_login_form_and_a_wrong_token(anonymous: Client) -> None:
    page = anonymous.get("/login")
    assert page.status_code == 200 and 'id="login-form"' in page.get_data(as_text=True)
    assert anonymous.get("/login?token=wrong").status_code == 401
    assert anonymous.get("/").status_code == 303
    posted = anonymous.post("/login", data={"token": TOKEN, "next": "/workers"})
    assert (posted.status_code, posted.headers["Location"]) == (303, "/workers")
    assert anonymous.get("/workers").status_code == 200
    evil = Client(anonymous.application).post("/login", data={"token": TOKEN},
                                              headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403


def test_a_forged_or_foreign_cookie_is_refused(web: WSGIApplication, app: Conveyor) -> None:
    client = Client(web)
    client.set_cookie(SESSION_COOKIE, "forged")
    assert client.get("/").status_code == 303
    other = Auth("another-token")
    client.set_cookie(SESSION_COOKIE, other.open_session())
    assert client.get("/").status_code == 303


def test_logout_ends_the_session(browser: Browser) -> None:
    response = browser.post("/logout", data={"_csrf": browser.csrf})
    assert response.status_code == 303
    assert browser.get("/").status_code == 303


def test_get_never_changes_state(browser: Browser, app: Conveyor) -> None:
    (job_id,) = app.broker.enqueue([app.tasks["tests.add"].message([1], {}, {})])
    for path in (f"/api/jobs/{job_id}/cancel", f"/api/jobs/{job_id}/retry", "/api/queues/default/pause",
                 "/api/jobs/bulk", "/logout"):
        assert browser.get(path).status_code in (404, 405), path  # /api/jobs/bulk reads as job "bulk"
    assert app.broker.get(job_id).state == "queued"  # type: ignore[union-attr]
    assert app.broker.paused_queues() == set()


def test_job_data_is_always_escaped(browser: Browser, app: Conveyor, run_job: RunJob) -> None:
    task = app.tasks[XSS]
    (job_id,) = app.broker.enqueue([task.message([XSS], {}, {})])
    run_job(XSS, "failed", error={"type": XSS, "message": XSS, "traceback": XSS})
    app.broker.enqueue([task.message([XSS], {}, {"key": XSS})])
    worker(app, current=[job_id], hostname=XSS)
    pages = [*PAGES, f"/jobs/{job_id}", f"/jobs?search={XSS}", f"/jobs?queue={XSS}", f"/jobs?task={XSS}",
             f"/jobs?state={XSS}", f"/jobs?since={XSS}", f"/jobs/{XSS}"]
    for page in pages:
        response = browser.get(page)
        html = response.get_data(as_text=True)
        assert "<script>alert" not in html, page
        assert re.findall(r"<script[^>]*>", html) in ([], ['<script src="/static/app.js?v=' + browser.application
                                                          .static_version + '" defer>']), page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in browser.get(f"/jobs/{job_id}").get_data(as_text=True)


def test_every_response_has_a_strict_csp(browser: Browser, anonymous: Client) -> None:
    responses = [browser.get(p) for p in [*PAGES, "/jobs/missing", "/static/app.css"]]
    responses += [anonymous.get("/login"), anonymous.get("/"), anonymous.get("/api/jobs")]
    responses += [browser.get(p, headers=BEARER) for p in ("/api/jobs", "/metrics", "/nowhere")]
    for response in responses:
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"


def test_pages_have_no_inline_script_or_style(browser: Browser) -> None:
    for page in PAGES:
        html = browser.get(page).get_data(as_text=True)
        assert " style=" not in html and "<style" not in html, page
        assert " onclick=" not in html and "javascript:" not in html, page
        assert len(re.findall(r"<script", html)) == 1 and 'src="/static/app.js' in html


def test_broker_urls_and_passwords_never_show(tmp_path: object) -> None:
    app = make_app("memory://admin:pw-S3CRET-1@broker.internal:6379/0?password=qs-S3CRET-2&token=tk-S3CRET-3")
    url = app.settings.url
    web = create_app(app, token=TOKEN)
    try:
        client = Client(web)
        client.get(f"/login?token={TOKEN}")
        task = app.tasks["tests.add"]
        (job_id,) = app.broker.enqueue([task.message([1], {}, {})])
        (lease,) = app.broker.fetch(["default"], 1, 30.0, "c")
        error = {"type": "ConnectionError", "message": f"cannot reach {url}", "traceback": url}
        from conveyor.brokers import Outcome

        app.broker.ack([Outcome(job_id, lease.token, "failed", error=error)])
        paths = [*PAGES, f"/jobs/{job_id}", "/api/jobs", f"/api/jobs/{job_id}", "/api/queues", "/api/workers",
                 "/api/stats", "/metrics", "/api/openapi.json", "/login", "/static/app.js"]
        for path in paths:
            for headers in ({}, BEARER, {**BEARER, "Accept-Encoding": "identity"}):
                body = client.get(path, headers=headers).get_data(as_text=True)
                assert "S3CRET" not in body and url not in body, path
                assert str(response_headers(client, path)).find("S3CRET") == -1
    finally:
        web.close()


def response_headers(client: Client, path: str) -> object:
    return dict(client.get(path, headers=BEARER).headers)


def test_secrets_are_compared_in_constant_time() -> None:
    import inspect

    from conveyor.web import auth

    source = inspect.getsource(auth)
    assert "compare_digest" in source
    assert same("a", "a") and not same("a", "b") and not same(None, "a")
    assert not Auth(TOKEN).check_bearer(f"Basic {TOKEN}")
    assert Auth(TOKEN).check_bearer(f"bearer {TOKEN}")


def test_the_csrf_token_is_bound_to_the_session(web: WSGIApplication) -> None:
    first, second = Client(web), Client(web)
    first.get(f"/login?token={TOKEN}")
    second.get(f"/login?token={TOKEN}")
    token_of_second = csrf_of(second.get("/"))
    response = first.post("/api/queues/default/pause", headers={"X-CSRF-Token": token_of_second})
    assert response.status_code == 403


def test_a_token_from_the_environment_or_generated(app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_WEB_TOKEN", "from-env-token")
    configured = create_app(app)
    assert configured.token == "from-env-token" and not configured.token_generated
    monkeypatch.delenv("CONVEYOR_WEB_TOKEN")
    generated = create_app(app)
    assert generated.token_generated and len(generated.token) >= 24
    assert generated.login_path("http://127.0.0.1:8000") == f"http://127.0.0.1:8000/login?token={generated.token}"
    assert Client(generated).get("/api/jobs", headers={"Authorization": f"Bearer {generated.token}"}).status_code == 200
