"""The PostgreSQL server stopped and started under load (issue #12), on a private cluster
(``initdb`` + ``pg_ctl`` on a free port in a temporary folder): the shared server is never
stopped. Jobs keep being enqueued and run while the server is down for about 2 s; afterwards
every enqueue that was acknowledged has run and the worker went on with the same members."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_support import PrivateCluster, Project, need_private_cluster

from conveyor.errors import ConveyorError
from conveyor.testing import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    need_private_cluster()
    made = PrivateCluster()
    try:
        made.init()
        made.start()
        yield made
    finally:
        made.destroy()


def test_server_stopped_and_started_under_load_loses_no_acknowledged_job(cluster: PrivateCluster,
                                                                       tmp_path: Path) -> None:
    project = Project(tmp_path, cluster.url).migrate()
    try:
        # A lease longer than the outage (about 2.5 s): a shorter one expires while the server is
        # down, and maintenance then rightly takes back a job whose ack was on its way ("ack
        # refused, the lease was lost"), a second log line this test does not expect.
        worker = project.worker("-c", "2", "--lease", "10")
        project.wait_consumers(worker, 2)
        members = sorted(c.pid for c in worker.children())
        work = project.app.tasks["work"]
        acknowledged: list[str] = []
        refused: list[str] = []
        done = threading.Event()

        def produce() -> None:
            try:
                for i in range(500):
                    try:
                        acknowledged.append(work.enqueue(i, 0.005).id)
                    except ConveyorError as exc:
                        refused.append(str(exc))
                    time.sleep(0.005)
            finally:
                done.set()

        producer = threading.Thread(target=produce)
        producer.start()
        try:
            wait_for(lambda: len(acknowledged) >= 150, 30.0, "jobs to be enqueued")
            cluster.stop("fast")
            stopped = time.monotonic()
            time.sleep(2.0)
            cluster.start()
            down = time.monotonic() - stopped
        finally:
            producer.join(120)
        assert done.is_set()
        assert len(acknowledged) >= 250, "the producer did not go on after the restart"
        project.wait_succeeded(acknowledged, 90.0)
        runs = Counter(line[1] for line in project.ledger() if line[0] == "end")
        assert [job_id for job_id in acknowledged if not runs[job_id]] == []
        log = worker.stderr()
        said = [line for line in log.splitlines() if " INFO " not in line]
        assert said and all("lost the connection(s) to PostgreSQL" in line for line in said), said
        pids = [line.split("[", 1)[1].split("]", 1)[0] for line in said]
        assert len(pids) == len(set(pids)) <= 3, said  # one line per process: the supervisor, each member
        assert sorted(c.pid for c in worker.children()) == members  # the same members went on
        # And they still take new work at once.
        late = work.enqueue(-1, 0.0)
        project.wait_succeeded([late.id], 15.0)
        print(f"server down {down:.1f}s: {len(acknowledged)} enqueues acknowledged, {len(refused)} refused, "
              f"{sum(1 for n in runs.values() if n > 1)} run twice; worker said:\n" + "\n".join(said))
    finally:
        project.cleanup()
