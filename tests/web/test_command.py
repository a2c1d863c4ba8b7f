"""``conveyor web``: the real server (waitress), loopback-only without a token, the login URL."""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from web_support import TOKEN, make_app

from conveyor.web.command import is_loopback, serve_in_thread

APP_MODULE = '''
from conveyor import Conveyor
app = Conveyor("sqlite:///{db}")

@app.task(name="demo.add")
def add(a: int, b: int = 1) -> int:
    return a + b
'''


def run_web(tmp_path: Path, *args: str, env: dict[str, str] | None = None, wait: float = 10.0
            ) -> subprocess.Popen[str]:
    (tmp_path / "webapp.py").write_text(APP_MODULE.format(db=tmp_path / "web.db"))
    code = "from conveyor.web.command import web; web()"
    return subprocess.Popen([sys.executable, "-c", code, "webapp:app", *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def test_loopback_addresses() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.com", ""))


def test_a_non_loopback_bind_without_a_token_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("CONVEYOR_")}
    proc = run_web(tmp_path, "--host", "0.0.0.0", "--port", "0", env=env)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "refusing to bind 0.0.0.0" in err and "token" in err


def test_serves_and_prints_a_login_url_with_a_generated_token(tmp_path: Path) -> None:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("CONVEYOR_")}
    proc = run_web(tmp_path, "--port", "0", env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:(\d+))/login\?token=([\w-]+)", line)
        assert found, line
        port, token = int(found.group(2)), found.group(3)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/login?token={token}")
        response = conn.getresponse()
        response.read()
        assert response.status == 303 and "conveyor_session=" in (response.getheader("Set-Cookie") or "")
        conn.request("GET", "/api/jobs", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        assert response.status == 200 and response.read().startswith(b'{"jobs":')
        assert response.getheader("Server") == "conveyor"
        conn.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_a_configured_token_is_not_printed(tmp_path: Path) -> None:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("CONVEYOR_")}
    proc = run_web(tmp_path, "--port", "0", "--host", "0.0.0.0", env={**env, "CONVEYOR_WEB_TOKEN": TOKEN})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "Conveyor dashboard: http://0.0.0.0:" in line and TOKEN not in line
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_events_stream_through_the_real_server(tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path}/real.db")
    server, login_url, web = serve_in_thread(app, token=TOKEN)
    web.sse_heartbeat = 0.2
    try:
        port = int(re.search(r":(\d+)/", login_url).group(1))  # type: ignore[union-attr]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/events", headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Type", "").startswith("text/event-stream")
        assert response.readline() == b"retry: 2000\n"  # flushed at once, not buffered
        time.sleep(0.3)
        (job_id,) = app.broker.enqueue([app.tasks["tests.add"].message([1], {}, {})])
        deadline = time.monotonic() + 10
        seen = b""
        while job_id.encode() not in seen and time.monotonic() < deadline:
            seen += response.readline()
        assert job_id.encode() in seen
        conn.close()
    finally:
        server.close()
        web.close()
        app.close()


@pytest.mark.parametrize("host", ["127.0.0.1"])
def test_serve_in_thread_gives_a_login_url(tmp_path: Path, host: str) -> None:
    app = make_app("memory://")
    server, login_url, web = serve_in_thread(app, host=host)
    try:
        assert login_url.startswith(f"http://{host}:") and f"token={web.token}" in login_url
    finally:
        server.close()
        web.close()
