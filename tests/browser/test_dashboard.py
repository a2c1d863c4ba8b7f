"""The dashboard in a real browser: Debian's Chromium (headless, through Playwright) against
``conveyor web`` and a ``conveyor worker`` of two processes, over one SQLite file.

Every test also checks that no page logged a console error, threw, or hit the
Content-Security-Policy (the ``context`` fixture watches every page of the browser).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from dashboard_harness import Dashboard

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PHONE = {"width": 390, "height": 844}
PAGES = [("overview", "/", "#totals"), ("jobs", "/jobs", "#jobs-table"), ("failed", "/failed", "#jobs-table"),
         ("queues", "/queues", "#queues-table"), ("workers", "/workers", "#workers-table")]


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def mark_page(page: Any) -> None:
    """Tag the loaded document: the tag survives live updates, not a reload or a navigation."""
    page.evaluate("window.__conveyorTag = 'same document'")


def assert_same_document(page: Any) -> None:
    assert page.evaluate("window.__conveyorTag") == "same document", "the page was reloaded"


def wait_live(page: Any) -> None:
    """Until the page's event stream is open."""
    expect(page.locator("#live")).to_have_attribute("data-state", "open")


def watch_progress(page: Any, selector: str, until_state: str, timeout: float = 20.0) -> list[float]:
    """The distinct ``data-progress`` values of the first progress bar in ``selector``, in the
    order seen, polled until the element's ``data-state`` is ``until_state``."""
    seen: list[float] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, progress = page.evaluate(
            """(selector) => {
                 const el = document.querySelector(selector);
                 const bar = el && el.querySelector(".progress-bar");
                 return [el && el.getAttribute("data-state"), bar && bar.getAttribute("data-progress")];
               }""", selector)
        if progress is not None and (not seen or seen[-1] != float(progress)):
            seen.append(float(progress))
        if state == until_state:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{selector} did not reach {until_state} in {timeout}s; progress seen: {seen}")


def assert_progress_moved(seen: list[float]) -> None:
    between = [p for p in seen if 0.0 < p < 1.0]
    assert len(between) >= 2, f"the bar should move through at least two values between 0 and 1: {seen}"
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    assert seen[-1] == 1.0


def test_login_with_the_token_form_and_with_the_login_url(chromium: Any, dashboard: Dashboard,
                                                          tmp_path: Path) -> None:
    context = chromium.launch(tmp_path / "form")
    try:
        page = context.new_page()
        page.goto(dashboard.href("/queues"))
        expect(page.locator("#login-form")).to_be_visible()
        assert page.locator("#nav").count() == 0
        context.watch.allow(r"status of 401")  # the browser logs the wrong token's answer
        page.fill("#login-token", "not-the-token")
        page.click("#login-submit")
        expect(page.locator("#login-error")).to_be_visible()
        page.fill("#login-token", dashboard.token)
        page.click("#login-submit")
        expect(page.locator("#queues-table")).to_be_visible()
        assert page.url == dashboard.href("/queues")  # back where it was going
        wait_live(page)
        page.click("#logout")
        expect(page.locator("#login-form")).to_be_visible()
        page.goto(dashboard.href("/jobs"))
        expect(page.locator("#login-form")).to_be_visible()  # the session is gone
        context.watch.assert_clean()
    finally:
        context.close()

    context = chromium.launch(tmp_path / "url")
    try:
        page = context.new_page()
        page.goto(dashboard.login_url)
        expect(page.locator("#totals")).to_be_visible()
        assert page.url == dashboard.href("/")  # the token is not left in the address bar
        wait_live(page)
        context.watch.assert_clean()
    finally:
        context.close()


def test_a_job_enqueued_by_another_process_appears_and_progresses_live(page: Any, dashboard: Dashboard) -> None:
    page.click("#nav-jobs")
    expect(page.locator("#jobs-table")).to_be_visible()
    wait_live(page)
    mark_page(page)
    job_id = dashboard.enqueue_elsewhere("steps", '{"n": 8, "pause": 0.3}')
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row).to_be_visible()
    seen = watch_progress(page, f'tr[data-job-id="{job_id}"]', "succeeded")
    assert_progress_moved(seen)
    expect(row.locator(".state")).to_have_text("succeeded")
    assert_same_document(page)


def test_the_job_page_follows_its_job_live(page: Any, dashboard: Dashboard) -> None:
    job_id = dashboard.enqueue_elsewhere("steps", '{"n": 8, "pause": 0.3}')
    page.goto(dashboard.href(f"/jobs/{job_id}"))
    wait_live(page)
    mark_page(page)
    assert_progress_moved(watch_progress(page, "#job", "succeeded"))
    expect(page.locator("#job-result")).to_have_text("8")
    expect(page.locator("#progress-message")).to_have_text("")  # done: 100 %, not its last message
    assert_same_document(page)


def test_retry_failed_jobs_from_the_failed_page_and_the_job_page(page: Any, dashboard: Dashboard) -> None:
    first = dashboard.enqueue_elsewhere("needs_fix")
    second = dashboard.enqueue_elsewhere("needs_fix")
    dashboard.wait_state(first, "failed")
    dashboard.wait_state(second, "failed")
    page.click("#nav-failed")
    row = page.locator(f'tr[data-job-id="{first}"]')
    expect(row).to_contain_text("RuntimeError: the fix is not deployed yet")
    (dashboard.folder / "fixed").touch()

    row.locator('input[name="ids"]').check()
    page.click('#bulk-form button[data-action="retry"]')
    expect(page.locator("#jobs-table")).to_be_visible()
    assert page.url == dashboard.href("/failed")
    ran_again = dashboard.wait_state(first, "succeeded")
    assert [entry["state"] for entry in ran_again.history] == ["failed"]  # the first run stays on record
    expect(row).to_have_count(0)  # no longer a dead letter

    page.locator(f'tr[data-job-id="{second}"] a.job-link').click()
    expect(page.locator("#job")).to_have_attribute("data-state", "failed")
    expect(page.locator("#job-traceback")).to_contain_text("RuntimeError")
    page.click("#job-retry")
    expect(page.locator("#job")).to_have_attribute("data-state", "succeeded")
    expect(page.locator("#attempts-timeline [data-attempt]")).to_have_count(2)
    expect(page.locator("#attempts-timeline .timeline-retried")).to_have_count(1)
    assert [entry["state"] for entry in dashboard.wait_state(second, "succeeded").history] == ["failed"]


def test_pause_and_resume_a_queue(page: Any, dashboard: Dashboard) -> None:
    page.click("#nav-queues")
    row = page.locator('tr[data-queue="media"]')
    expect(row).to_have_attribute("data-paused", "false")
    page.click("#queue-media-pause")
    expect(row).to_have_attribute("data-paused", "true")
    expect(row).to_contain_text("paused")
    wait_live(page)
    mark_page(page)

    ids = [dashboard.enqueue_elsewhere("media.add", f"[{i}, 1]") for i in range(3)]
    expect(row.locator('[data-count="queued"]')).to_have_text("3")  # shown live
    time.sleep(1.5)  # the worker polls every few milliseconds: it would have taken them by now
    assert [dashboard.app.broker.get(i).state for i in ids] == ["queued"] * 3  # type: ignore[union-attr]
    assert_same_document(page)

    page.click("#queue-media-resume")
    expect(row).to_have_attribute("data-paused", "false")
    for job_id in ids:
        dashboard.wait_state(job_id, "succeeded")
    expect(row.locator('[data-count="succeeded"]')).to_have_text("3")
    expect(row.locator('[data-count="queued"]')).to_have_text("0")


def test_purge_asks_first(page: Any, dashboard: Dashboard) -> None:
    dashboard.app.broker.pause("media")
    ids = [dashboard.enqueue_elsewhere("media.add", f"[{i}, 1]") for i in range(2)]
    page.click("#nav-queues")
    row = page.locator('tr[data-queue="media"]')
    expect(row.locator('[data-count="queued"]')).to_have_text("2")
    asked: list[str] = []

    def answer(accept: bool) -> Any:
        def handle(dialog: Any) -> None:
            asked.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()
        return handle

    page.once("dialog", answer(False))
    page.click("#queue-media-purge")
    assert asked == ["Delete the waiting jobs of this queue?"]
    assert all(dashboard.app.broker.get(i) is not None for i in ids)  # said no: nothing deleted
    page.once("dialog", answer(True))
    page.click("#queue-media-purge")
    expect(row.locator('[data-count="queued"]')).to_have_text("0")
    assert all(dashboard.app.broker.get(i) is None for i in ids)


def test_live_updates_wait_while_the_user_types_a_filter(page: Any, dashboard: Dashboard) -> None:
    page.click("#nav-jobs")
    wait_live(page)
    page.fill("#filter-search", "needle-42")  # the cursor stays in the field
    job_id = dashboard.enqueue_elsewhere("fail_fast", '{"reason": "needle-42"}')
    dashboard.wait_state(job_id, "failed")
    time.sleep(1.0)  # several refreshes would have come by now
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row).to_have_count(0)
    assert page.input_value("#filter-search") == "needle-42"
    other = dashboard.enqueue_elsewhere("add", "[1, 1]")
    page.click("#filter-apply")
    expect(row).to_be_visible()  # the search matched the job's arguments
    expect(page.locator(f'tr[data-job-id="{other}"]')).to_have_count(0)
    assert "search=" in page.url


def seed(dashboard: Dashboard) -> dict[str, str]:
    """A little of everything: succeeded, failed, running with progress, scheduled, a paused queue."""
    ids = {"add": dashboard.enqueue_elsewhere("add", "[2, 3]"),
           "failed": dashboard.enqueue_elsewhere("fail_fast", '{"reason": "the CDN answered 503"}'),
           "needs_fix": dashboard.enqueue_elsewhere("needs_fix"),
           "media": dashboard.enqueue_elsewhere("media.add", "[1, 2]")}
    for job_id in ids.values():
        dashboard.wait_state(job_id, "succeeded", "failed")
    ids["later"] = dashboard.enqueue_elsewhere("add", "[1, 1]", "--delay", "3600")
    ids["running"] = dashboard.enqueue_elsewhere("steps", '{"n": 20, "pause": 1.0}')
    dashboard.wait_state(ids["running"], "running")
    for _ in range(6):
        dashboard.enqueue_elsewhere("nap", "[0.05]")
    dashboard.app.broker.pause("media")
    return ids


def test_every_page_renders_without_errors(page: Any, dashboard: Dashboard, screenshots: Path) -> None:
    ids = seed(dashboard)
    for name, path, landmark in PAGES:
        page.goto(dashboard.href(path))
        expect(page.locator(landmark)).to_be_visible()
        expect(page.locator(f"#nav-{name}")).to_have_attribute("aria-current", "page")
        wait_live(page)
        page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)
        page.context.watch.assert_clean()
    page.goto(dashboard.href("/jobs"))
    added = page.locator(f'tr[data-job-id="{ids["add"]}"]')
    expect(added.locator("time")).to_have_text(re.compile(r"^(just now|\d+ (s|min) ago)$"))
    expect(added.locator("time")).to_have_attribute("title", re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
    expect(added.locator("td.num").first).to_have_text(re.compile(r"^\d+(\.\d+)? m?s$"))  # how long it ran
    expect(page.locator(f'tr[data-job-id="{ids["needs_fix"]}"] .error-text')).to_be_visible()
    page.goto(dashboard.href("/failed"))
    expect(page.locator('#jobs-table')).to_be_visible()
    expect(page.locator('button[data-action="cancel"]')).to_have_count(0)  # dead letters: retry or delete
    expect(page.locator('#bulk-filter-form button[data-action="retry"]')).to_have_text("Retry all")
    expect(page.locator('#bulk-filter-form button[data-action="delete"]')).to_have_text("Delete all")
    page.goto(dashboard.href(f"/jobs/{ids['needs_fix']}"))
    expect(page.locator("#job-traceback")).to_be_visible()
    wait_live(page)
    page.screenshot(path=str(screenshots / "job.png"), full_page=True)
    page.goto(dashboard.href(f"/jobs/{ids['running']}"))
    expect(page.locator("#job")).to_have_attribute("data-state", "running")
    page.screenshot(path=str(screenshots / "job-running.png"), full_page=True)
    page.context.watch.assert_clean()


def assert_state_column_in_view(page: Any) -> None:
    """Every row's state badge is inside the phone's viewport, without scrolling sideways."""
    boxes = page.evaluate("""() => Array.from(document.querySelectorAll("#jobs-table tr[data-job-id] .state"))
                               .map((el) => { const r = el.getBoundingClientRect(); return [r.left, r.right]; })""")
    assert boxes, "no job rows"
    for left, right in boxes:
        assert left >= 0 and right <= PHONE["width"], f"a state badge spans {left:.0f}..{right:.0f}px"


def test_a_phone_gets_the_nav_and_tables_without_sideways_scrolling(chromium: Any, dashboard: Dashboard,
                                                                     tmp_path: Path, screenshots: Path) -> None:
    ids = seed(dashboard)
    context = chromium.launch(tmp_path / "phone", viewport=PHONE, is_mobile=True, has_touch=True,
                              device_scale_factor=2)
    try:
        page = context.new_page()
        page.goto(dashboard.login_url)
        pages = [*PAGES, ("job", f"/jobs/{ids['needs_fix']}", "#job")]
        for name, path, landmark in pages:
            page.goto(dashboard.href(path))
            expect(page.locator(landmark)).to_be_visible()
            for link, _, _ in PAGES:
                expect(page.locator(f"#nav-{link}")).to_be_in_viewport()
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"] + 1, f"{path} is {width}px wide on a {PHONE['width']}px phone"
            if name in ("jobs", "failed"):
                assert_state_column_in_view(page)
            if name in ("overview", "jobs"):
                page.screenshot(path=str(screenshots / f"phone-{name}.png"), full_page=name == "jobs")
            context.watch.assert_clean()
    finally:
        context.close()
