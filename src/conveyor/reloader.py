"""``conveyor worker --reload``: run the worker as a child process and start a new one when a Python
file under the watched folder changes. For development only: jobs running at a change get the
usual graceful stop (or are handed back after :data:`GRACE` seconds), so a change never loses a job."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

log = logging.getLogger("conveyor.reload")

#: Seconds a worker gets to finish its running jobs when a change (or Ctrl-C) stops it.
GRACE = 5.0


def _stop(child: subprocess.Popen[bytes], signum: int | None) -> None:
    """Stop the worker: send ``signum`` (None: it already got the terminal's Ctrl-C), wait up to
    :data:`GRACE` seconds, then send it SIGTERM again (a second signal hands running jobs back at
    once), and at last SIGKILL (its pool processes notice that their parent is gone)."""
    if signum is not None and child.poll() is None:
        child.send_signal(signum)
    for then in (signal.SIGTERM, signal.SIGKILL):
        try:
            child.wait(GRACE)
            return
        except subprocess.TimeoutExpired:
            child.send_signal(then)
    child.wait()


def run_with_reload(command: Sequence[str], folder: str) -> int:
    """Run ``command`` (a ``conveyor worker`` without ``--reload``) and restart it whenever a
    ``.py`` file under ``folder`` changes, until Ctrl-C or SIGTERM. Returns an exit code."""
    try:
        from watchfiles import PythonFilter, watch
    except ImportError:
        print("Error: --reload needs watchfiles: pip install 'conveyor[reload]'", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    received: list[int] = []

    def on_sigterm(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    log.info("watching %s for changes to .py files (--reload, for development)", os.path.abspath(folder))
    # In our process group: Ctrl-C in the terminal reaches the worker as it would without --reload.
    child = subprocess.Popen(list(command))
    try:
        for changes in watch(folder, watch_filter=PythonFilter(), raise_interrupt=True):
            names = sorted({os.path.relpath(path, folder) for _, path in changes})
            log.info("%s changed: restarting the worker", ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
            _stop(child, signal.SIGTERM)
            child = subprocess.Popen(list(command))
    except KeyboardInterrupt:
        _stop(child, signal.SIGTERM if received else None)
    return 0
