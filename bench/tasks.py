"""The benchmark's task module: one no-op task, on the broker named by ``CONVEYOR_BENCH_URL``.

The worker under test runs ``conveyor worker bench.tasks:app --concurrency 2`` from the repository root.
"""

import os

from conveyor import Conveyor

app = Conveyor(os.environ.get("CONVEYOR_BENCH_URL"))


@app.task
def noop(x: int) -> int:
    """Does nothing and returns its argument."""
    return x
