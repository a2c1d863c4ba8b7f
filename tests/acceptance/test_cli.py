"""Acceptance: the ``conveyor`` commands against a real database, and clear errors without tracebacks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson
import pytest

from harness import Project

pytestmark = pytest.mark.slow


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The command failed with exit 2 and a single ``Error: ...`` line naming ``needles``."""
    assert result.returncode == 2, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_cli_commands_against_a_real_database(project: Project) -> None:
    # enqueue --json, then a worker runs it
    out = orjson.loads(ok(project.cli("enqueue", "tasks:app", "add", "[2, 3]", "--json")))
    assert out["task"] == "add" and out["status"] == "queued"
    added = out["id"]
    reason = "on purpose [/] [bold]x[/bold]"  # job data is printed as is, never read as markup
    kwargs = orjson.dumps({"reason": reason}).decode()
    failing = orjson.loads(ok(project.cli("enqueue", "tasks:app", "fail_fast", kwargs, "--json")))["id"]
    project.worker("--pool", "thread", "-c", "1")
    assert project.wait_state(added, "succeeded").state == "succeeded"
    project.wait_state(failing, "failed")

    # job ID --json
    shown = orjson.loads(ok(project.cli("job", "tasks:app", added, "--json")))
    assert (shown["id"], shown["state"], shown["result"]) == (added, "succeeded", 5)
    assert shown["payload"] == {"args": [2, 3], "kwargs": {}}
    failed = orjson.loads(ok(project.cli("job", "tasks:app", failing, "--json")))
    assert failed["error"]["type"] == "RuntimeError"
    assert reason in failed["error"]["traceback"]
    human = ok(project.cli("job", "tasks:app", failing))
    assert f"RuntimeError: {reason}" in human
    assert reason in ok(project.cli("jobs", "tasks:app", "--state", "failed", env={"COLUMNS": "250"}))

    # jobs --state failed --json
    listed = orjson.loads(ok(project.cli("jobs", "tasks:app", "--state", "failed", "--json")))
    assert [j["id"] for j in listed["jobs"]] == [failing]
    assert listed["cursor"] is None

    # retry ID: the failed job runs again (and fails again: same arguments)
    assert ok(project.cli("retry", "tasks:app", failing)).split() == [failing, "queued"]
    record = project.wait_state(failing, "failed")
    assert len(record.history) == 2
    again = project.cli("retry", "tasks:app", added)
    assert again.returncode == 2 and "only failed or cancelled" in again.stderr

    # cancel ID of a delayed job
    later = ok(project.cli("enqueue", "tasks:app", "add", "[1, 1]", "--delay", "600")).strip()
    assert project.app.get_job(later).status == "scheduled"
    assert ok(project.cli("cancel", "tasks:app", later)).split() == [later, "cancelled"]
    assert project.app.get_job(later).status == "cancelled"

    # queues --json
    queues = orjson.loads(ok(project.cli("queues", "tasks:app", "--json")))
    (default,) = [q for q in queues if q["name"] == "default"]
    assert default["counts"]["succeeded"] == 1
    assert default["counts"]["failed"] == 1
    assert default["counts"]["cancelled"] == 1
    assert default["paused"] is False

    # purge --yes deletes what waits, nothing else
    for _ in range(3):
        ok(project.cli("enqueue", "tasks:app", "add", "[1, 1]", "--delay", "600"))
    assert ok(project.cli("purge", "tasks:app", "--yes")).strip() == "deleted 3 job(s)"
    assert project.counts() == {"succeeded": 1, "failed": 1, "cancelled": 1}

    # job ID of an unknown id
    one_line_error(project.cli("job", "tasks:app", "no-such-id"), "no-such-id")


def test_cli_config_shows_where_each_setting_came_from(project: Project) -> None:
    shown = orjson.loads(ok(project.cli("config", "--json", env={"CONVEYOR_GRACE": "7"})))
    assert shown["grace"] == {"value": 7.0, "source": "env CONVEYOR_GRACE"}
    assert shown["url"] == {"value": project.url, "source": "env CONVEYOR_URL"}
    assert shown["lease"]["source"] == "default"
    secret = "redis://user:s3cret@127.0.0.1:6379/0"
    redacted = orjson.loads(ok(project.cli("config", "--json", env={"CONVEYOR_URL": secret})))
    assert "s3cret" not in redacted["url"]["value"]


@pytest.mark.parametrize(("args", "needles"), [
    (["add", "[1, 2"], ["JSON"]),
    (["add", "[1, 2]", "--kwargs", "nope"], ["JSON"]),
    (["add", '"a string"'], ["ARGS_JSON"]),
    (["add", '{"a": 1}', "--kwargs", "[2]"], ["--kwargs", "JSON object"]),
    (["nope", "[]"], ["unknown task", "'nope'"]),
    (["add", '["x", 2]'], ["invalid arguments", "'a'", "int"]),
    (["add", "[1]"], ["invalid arguments", "'b'"]),
])
def test_cli_enqueue_refuses_bad_input_with_one_clear_line(project: Project, args: list[str],
                                                           needles: list[str]) -> None:
    one_line_error(project.cli("enqueue", "tasks:app", *args), *needles)
    assert project.counts() == {}


def test_worker_refuses_a_corrupt_database_with_one_clear_line(project: Project) -> None:
    project.db.write_bytes(b"this is not an SQLite database, just garbage bytes\x00\xff" * 200)

    result = project.cli("worker", "tasks:app", "-c", "1", timeout=20)

    one_line_error(result, str(project.db))


def test_worker_refuses_a_database_in_a_missing_folder(project: Project, tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "folder" / "t.db"

    result = project.cli("worker", "tasks:app", "-c", "1", env={"CONVEYOR_URL": f"sqlite:///{path}"}, timeout=20)

    one_line_error(result, str(path))
    assert not path.parent.exists()


def test_worker_refuses_a_database_in_an_unwritable_folder(project: Project, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        folder = Path("/proc")  # not even root may create files there
    else:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
    path = folder / "conveyor-acceptance.db"

    result = project.cli("worker", "tasks:app", "-c", "1", env={"CONVEYOR_URL": f"sqlite:///{path}"}, timeout=20)

    one_line_error(result, str(path))
    assert not path.exists()
