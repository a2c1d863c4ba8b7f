"""The browser harness: the real dashboard (``conveyor web``, waitress) and a real ``conveyor
worker`` over one SQLite file, driven by Debian's Chromium through Playwright.

A :class:`Dashboard` is an acceptance :class:`~acceptance.harness.Project` (``tasks.py`` and
``t.db`` in a temporary folder) whose tasks module has a few more tasks, plus the web server as a
subprocess. :class:`PageWatch` records what a person would see go wrong in the browser: console
errors, uncaught exceptions and Content-Security-Policy violations.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from acceptance.harness import CONVEYOR, Project, wait_for

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

MORE_TASKS = '''

@app.task(name="steps", retries=0)
def steps(n: int = 8, pause: float = 0.3) -> int:
    """Reports progress n times over n * pause seconds."""
    for i in range(1, n + 1):
        time.sleep(pause)
        current_job().progress(i / n, f"step {i} of {n}")
    return n


@app.task(name="needs_fix", retries=0)
def needs_fix() -> str:
    """Fails until the file ``fixed`` exists: a bug whose fix is deployed later."""
    if not (HERE / "fixed").exists():
        raise RuntimeError("the fix is not deployed yet")
    return "fixed"


@app.task(name="media.add", queue="media")
def media_add(a: int, b: int) -> int:
    return a + b
'''


def chromium_path() -> str:
    """Debian's Chromium (never a browser Playwright downloads): skip without it, fail under CI."""
    path = os.environ.get("CONVEYOR_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        message = f"Chromium is not installed at {path} (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: a missing browser fails the test)")
        pytest.skip(message)
    return path


class Dashboard(Project):
    """A project folder with a worker and ``conveyor web`` serving it on a free port."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(folder, monkeypatch)
        with (folder / "tasks.py").open("a") as f:
            f.write(MORE_TASKS)
        self.web: subprocess.Popen[bytes] | None = None
        self.base = ""
        self.login_url = ""
        self.token = ""

    def serve(self) -> str:
        """Start ``conveyor web tasks:app --port 0`` (a generated token); returns the login URL."""
        out, err = self.folder / "web.out", self.folder / "web.err"
        with out.open("wb") as fout, err.open("wb") as ferr:
            self.web = subprocess.Popen([*CONVEYOR, "web", "tasks:app", "--port", "0"], cwd=self.folder,
                                        env=self.environ(), stdout=fout, stderr=ferr, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        web = self.web

        def printed() -> re.Match[str] | None:
            assert web.poll() is None, f"conveyor web exited ({web.returncode}):\n{err.read_text()}"
            return re.search(r"(http://127\.0\.0\.1:\d+)/login\?token=([\w-]+)", out.read_text())

        found = wait_for(printed, 20.0, "conveyor web to print its login URL", interval=0.05)
        self.base, self.token = found.group(1), found.group(2)
        self.login_url = found.group(0)
        return self.login_url

    def href(self, path: str) -> str:
        return self.base + path

    def enqueue_elsewhere(self, task: str, args: str = "[]", *flags: str) -> str:
        """``conveyor enqueue tasks:app TASK ARGS`` in another process; returns the job id."""
        done = self.cli("enqueue", "tasks:app", task, args, *flags)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def cleanup(self) -> None:
        if self.web is not None and self.web.poll() is None:
            try:
                os.killpg(self.web.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.web.wait(10)
        super().cleanup()


class PageWatch:
    """Console errors, uncaught exceptions and CSP violations of every page of a browser context."""

    # Reports each CSP violation on the console too (an init script is injected by the browser's
    # debugging protocol, so the page's own CSP does not block it).
    INIT_SCRIPT = """
    document.addEventListener("securitypolicyviolation", function (e) {
      console.error("CSP violation: " + e.violatedDirective + " blocked " + (e.blockedURI || "inline"));
    });
    """

    def __init__(self, context: Any) -> None:
        self.problems: list[str] = []
        self.allowed: list[re.Pattern[str]] = []
        context.add_init_script(self.INIT_SCRIPT)
        context.on("page", self.watch)
        for page in context.pages:
            self.watch(page)

    def watch(self, page: Any) -> None:
        page.on("console", lambda msg: self._console(page, msg))
        page.on("pageerror", lambda exc: self.problems.append(f"uncaught exception on {page.url}: {exc}"))

    def _console(self, page: Any, msg: Any) -> None:
        if msg.type not in ("error", "warning"):
            return
        text = f"console {msg.type} on {page.url}: {msg.text}"
        if not any(pattern.search(text) for pattern in self.allowed):
            self.problems.append(text)

    def allow(self, pattern: str) -> None:
        """Expect a console message matching ``pattern`` (e.g. the 401 of a wrong login)."""
        self.allowed.append(re.compile(pattern))

    def assert_clean(self) -> None:
        problems, self.problems = self.problems, []
        assert not problems, "the browser reported problems:\n" + "\n".join(problems)
