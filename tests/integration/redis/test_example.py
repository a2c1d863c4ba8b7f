"""examples/redis_shop runs as its README says: a worker from the folder, then ``python shop.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from redis_support import CONVEYOR, REDIS_URL, unique_url

from conveyor.brokers.redis import RedisBroker
from conveyor.testing import require_service

SHOP = Path(__file__).resolve().parents[3] / "examples" / "redis_shop"


def test_the_redis_shop_example_runs_as_documented() -> None:
    require_service(REDIS_URL, "Redis")
    url, _ = unique_url(REDIS_URL)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(CONVEYOR_URL=url, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    worker = subprocess.Popen([*CONVEYOR, "worker", "tasks:app"], cwd=SHOP, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        shop = subprocess.run([sys.executable, "shop.py"], cwd=SHOP, env=env, capture_output=True, text=True,
                              timeout=90)
        assert shop.returncode == 0, shop.stderr
        assert shop.stdout.splitlines() == [
            "10 receipts: receipt of order 1010 sent to customer1010@example.com",
            "1 render(s) for 10 edits: /catalogue/red-shoes.html",
            "preview: {'video': 'launch.mov', 'preview': 'launch-preview.mp4', 'seconds': 20}",
        ]
    finally:
        worker.terminate()
        try:
            log = worker.communicate(timeout=60)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            log = worker.communicate()[0].decode(errors="replace")
        RedisBroker(url).drop()
    assert worker.returncode == 0, log
    assert "queues default,mail,media" in log, log
