"""What the benchmark harness's modules share: the root of this checkout (the workers and producers
run there, and ``git`` is asked about it) and :func:`log`, the progress line on stderr, which keeps
stdout free for the one JSON report.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)
