"""Fixtures of the browser tests (the machinery is in ``dashboard_harness.py``).

``dashboard`` is a project with a 2-process worker and ``conveyor web`` serving it; ``context`` a
fresh Chromium profile (Debian's Chromium, headless) whose pages are watched for console errors
and CSP violations, checked again at teardown; ``page`` a page of it, logged in.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_harness import CHROMIUM_ARGS, Dashboard, PageWatch, chromium_path

DESKTOP = {"width": 1280, "height": 860}


class Chromium:
    """Launches headless Debian Chromium through Playwright, each context on a fresh profile."""

    def __init__(self, playwright: Any, executable: str) -> None:
        self.playwright = playwright
        self.executable = executable

    def launch(self, profile: Path, **options: Any) -> Any:
        profile.mkdir(parents=True, exist_ok=True)
        context = self.playwright.chromium.launch_persistent_context(
            str(profile), executable_path=self.executable, headless=True, args=CHROMIUM_ARGS,
            viewport=options.pop("viewport", DESKTOP), **options)
        context.set_default_timeout(15_000)
        context.watch = PageWatch(context)
        return context


# Module scope, not session: while Playwright's sync API runs, its event loop is the running loop of
# the main thread, and asyncio.run() in any later test would fail.
@pytest.fixture(scope="module")
def chromium() -> Iterator[Chromium]:
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        message = "playwright is not installed (pip install -e '.[dev]')"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: a missing tool fails the test)")
        pytest.skip(message)
    manager = sync_playwright().start()
    try:
        yield Chromium(manager, executable)
    finally:
        manager.stop()


@pytest.fixture
def dashboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Dashboard]:
    made = Dashboard(tmp_path, monkeypatch)
    try:
        made.serve()
        made.worker("-c", "2")
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def context(chromium: Chromium, tmp_path: Path) -> Iterator[Any]:
    made = chromium.launch(tmp_path / "profile")
    try:
        yield made
        made.watch.assert_clean()
    finally:
        made.close()


@pytest.fixture
def page(context: Any, dashboard: Dashboard) -> Any:
    """A page logged in through the login URL that ``conveyor web`` printed."""
    made = context.pages[0] if context.pages else context.new_page()
    made.goto(dashboard.login_url)
    made.wait_for_selector("#nav")
    return made


@pytest.fixture
def screenshots(artifacts: Path) -> Path:
    folder = artifacts / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
