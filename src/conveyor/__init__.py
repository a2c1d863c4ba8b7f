"""Conveyor: background jobs for Python web applications."""

from .app import Conveyor
from .errors import (
    ConveyorError,
    InvalidArguments,
    JobCancelled,
    JobFailed,
    JobNotFound,
    PayloadTooLarge,
    Retry,
    UnknownTask,
)
from .job import Job, current_job
from .task import Backoff, Task

__all__ = [
    "Backoff",
    "Conveyor",
    "ConveyorError",
    "InvalidArguments",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "PayloadTooLarge",
    "Retry",
    "Task",
    "UnknownTask",
    "current_job",
]
__version__ = "0.1.0"
