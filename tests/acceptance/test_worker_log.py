"""Acceptance: the worker says what it did (issue #10, section 3)."""

from __future__ import annotations

import re

import pytest

from harness import Project

pytestmark = pytest.mark.slow


def test_one_info_line_per_finished_job_with_task_id_attempt_duration_and_outcome(project: Project) -> None:
    worker = project.worker("-c", "1")
    jobs = project.app.get_task("add").enqueue_many([(i, 1) for i in range(5)])
    for job in jobs:
        job.result(timeout=10)
    boom = project.app.get_task("boom").enqueue()
    project.wait_state(boom.id, "failed")
    log = worker.wait_log(f"job {boom.id} (boom) attempt 3/3 failed after")
    for job in jobs:
        (line,) = [line for line in log.splitlines() if job.id in line]
        assert re.search(rf"INFO .*job {job.id} \(add\) attempt 1/\d+ succeeded in \d+(\.\d+)? (ms|s)$", line), line
    retries = [line for line in log.splitlines() if boom.id in line and "raised ValueError after" in line]
    assert len(retries) == 2 and all("retry in" in line for line in retries)


def test_a_result_json_cannot_store_is_logged_as_a_failure_with_the_reason(project: Project) -> None:
    worker = project.worker("-c", "1")
    job = project.app.get_task("unencodable").enqueue()
    record = project.wait_state(job.id, "failed")
    assert record.error is not None and record.error["type"] == "SerializationError"
    line = worker.wait_log(f"job {job.id} (unencodable) attempt 1/1 failed after").splitlines()[-1]
    assert "ERROR" in line and "cannot be stored" in line and record.error["message"] in line


@pytest.mark.parametrize(("flags", "banner"), [(("--quiet",), True), (("--log-level", "WARNING"), False)])
def test_quiet_or_warning_level_drops_the_per_job_lines_and_keeps_failures(
    project: Project, flags: tuple[str, ...], banner: bool
) -> None:
    worker = project.worker("-c", "1", *flags)
    job = project.app.get_task("add").enqueue(1, 2)
    assert job.result(timeout=10) == 3
    fail = project.app.get_task("fail_fast").enqueue("on purpose")
    project.wait_state(fail.id, "failed")
    log = worker.wait_log(f"job {fail.id} (fail_fast) attempt 1/1 failed after")
    assert job.id not in log
    assert ("conveyor worker" in log) is banner  # --quiet keeps the worker's own INFO lines


def test_per_job_lines_keep_their_order_with_other_lines(project: Project) -> None:
    worker = project.worker("-c", "1")
    add, fail = project.app.get_task("add"), project.app.get_task("fail_fast")
    first = add.enqueue(1, 1)
    assert first.result(timeout=10) == 2
    failed = fail.enqueue("between")
    project.wait_state(failed.id, "failed")
    last = add.enqueue(2, 2)
    assert last.result(timeout=10) == 4
    log = worker.wait_log(f"job {last.id} (add)")
    positions = [log.index(f"job {j.id} ") for j in (first, failed, last)]
    assert positions == sorted(positions), log
