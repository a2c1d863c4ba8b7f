"""The dashboard mounted under a prefix in Flask and in Django (the projects in examples/)."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from web_support import BEARER, TOKEN
from werkzeug.test import Client

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_mounted(client: Client, prefix: str, host_page: str, task: str) -> None:
    """The dashboard answers under ``prefix`` with its links, cookie and API there; the host app
    keeps everything else."""
    assert host_page in client.get("/").get_data(as_text=True)
    assert client.get(f"{prefix}/").headers["Location"].startswith(f"{prefix}/login?next=")
    login = client.get(f"{prefix}/login?token={TOKEN}")
    assert (login.status_code, login.headers["Location"]) == (303, f"{prefix}/")
    assert f"Path={prefix}/" in login.headers["Set-Cookie"]
    page = client.get(f"{prefix}/").get_data(as_text=True)
    assert f'href="{prefix}/jobs"' in page and f'src="{prefix}/static/app.js' in page
    assert client.get(re.search(r'href="([^"]+app\.css[^"]*)"', page).group(1)).status_code == 200  # type: ignore[union-attr]
    csrf = re.search(r'name="conveyor-csrf" content="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    paused = client.post(f"{prefix}/api/queues/default/pause", data={"_csrf": csrf, "_next": "/queues"})
    assert (paused.status_code, paused.headers["Location"]) == (303, f"{prefix}/queues")
    assert 'id="queue-default-resume"' in client.get(f"{prefix}/queues").get_data(as_text=True)
    api = client.get(f"{prefix}/api/queues", headers=BEARER)
    assert api.status_code == 200 and api.json["queues"][0]["paused"] is True  # type: ignore[index]
    doc = client.get(f"{prefix}/api/openapi.json", headers=BEARER).json
    assert doc["servers"] == [{"url": prefix}]  # type: ignore[index]
    created = client.post(f"{prefix}/api/jobs", json={"task": task, "args": ["a"]},
                          headers=BEARER)
    assert created.status_code == 201 and created.headers["Location"].startswith(f"{prefix}/api/jobs/")
    events = client.get(f"{prefix}/api/events", headers=BEARER, buffered=False)
    chunks = iter(events.response)  # type: ignore[arg-type]
    assert next(chunks).startswith(b"retry: 2000")
    events.close()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CONVEYOR_URL", f"sqlite:///{tmp_path}/mounted.db")
    monkeypatch.setenv("CONVEYOR_WEB_TOKEN", TOKEN)
    yield


def test_flask_mount(env: None) -> None:
    module: Any = load(EXAMPLES / "flask_dashboard.py", "flask_dashboard_example")
    try:
        check_mounted(Client(module.site), "/conveyor", "Hello from Flask", module.resize.name)
    finally:
        module.site.wsgi_app.mounts["/conveyor"].close()
        module.jobs.close()


def test_django_mount(env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("django")
    monkeypatch.syspath_prepend(str(EXAMPLES / "django_dashboard"))
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "mysite.settings")
    for name in [m for m in sys.modules if m == "mysite" or m.startswith("mysite.")]:
        del sys.modules[name]
    wsgi: Any = importlib.import_module("mysite.wsgi")
    try:
        check_mounted(Client(wsgi.application), "/conveyor", "Hello from Django", next(iter(wsgi.jobs.tasks)))
        assert Client(wsgi.application).get("/nowhere").status_code == 404  # Django's own 404
    finally:
        wsgi.dashboard.close()
        wsgi.jobs.close()
