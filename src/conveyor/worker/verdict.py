"""The retry verdict: one rule for whether a failed attempt is retried, and when.

Used by the runner when a task raises and by the supervisor when it hard-kills a job past its time
limit (which needs no store read: its slot knows the task and the attempt).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["DEFAULT_DELAY", "retry_verdict"]

#: Seconds before the retry of a job whose task this worker does not know (no backoff to ask).
DEFAULT_DELAY = 1.0


def retry_verdict(attempt: int, max_attempts: int, now: float, backoff: Callable[[int], float] | None,
                  delay: float | None = None) -> tuple[str, float | None]:
    """``("scheduled", run_at)`` when attempts are left, else ``("failed", None)``.

    Args:
        attempt: the attempt that failed (1 for the first run).
        max_attempts: the job's attempts in all (retries + 1).
        now: when it failed (Unix seconds).
        backoff: the task's backoff (attempt -> seconds); None when the task is unknown here.
        delay: an explicit delay (``raise Retry(delay=...)``), which wins over the backoff.
    """
    if attempt >= max_attempts:
        return "failed", None
    if delay is None:
        delay = backoff(attempt) if backoff is not None else DEFAULT_DELAY
    return "scheduled", now + delay
