"""Finding things the command line is told about: the app (``module:attribute``, as gunicorn and
uvicorn take it) and a job (by its full id, a unique prefix, or the short id the lists show).

Kept apart from ``cli`` so that the commands that live elsewhere (``conveyor web``, the demo) load
apps without importing the command line (no cli → demo → web.command → cli circle).
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, JobNotFound

if TYPE_CHECKING:
    from .app import Conveyor
    from .brokers import JobRecord, JobStore

__all__ = ["AmbiguousJobId", "AppNotFound", "find_job", "load_app"]

#: Jobs named in an "ambiguous id" error.
SHOWN_MATCHES = 5
#: Newest jobs searched for an id that ends with what was typed (the short id of the lists).
SUFFIX_SCAN = 10_000
#: Shortest fragment of an id accepted (fewer characters match too many jobs to be meant).
MIN_FRAGMENT = 4


class AppNotFound(ConfigError):
    """APP does not name a Conveyor app; the message says what was wrong and suggests the nearest name."""


class AmbiguousJobId(ConfigError):
    """A fragment of a job id matches more than one job."""


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _import(module_name: str) -> object:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name) and (
                len(exc.name) == len(module_name) or module_name[len(exc.name)] == "."):
            # the module itself (or a package of its path) is missing, not something it imports
            here = [p.stem for p in Path.cwd().glob("*.py")] + [
                p.parent.name for p in Path.cwd().glob("*/__init__.py")]
            raise AppNotFound(f"cannot import {module_name!r}: no module named {exc.name!r} "
                              f"(in {os.getcwd()} or on sys.path){_did_you_mean(exc.name, here)}") from None
        raise AppNotFound(f"cannot import {module_name!r}: {exc}") from None
    except ImportError as exc:
        raise AppNotFound(f"cannot import {module_name!r}: {exc}") from None


def load_app(spec: str) -> Conveyor:
    """Import ``module:attribute`` (the current folder is importable) and return the Conveyor app.

    ``module`` alone is accepted when the module holds exactly one app. Raises :class:`AppNotFound`
    with a suggestion (``module 'tasks' has no attribute 'ap'; did you mean 'app'?``).
    """
    from .app import Conveyor

    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise AppNotFound(f"APP {spec!r} is not module:attribute (e.g. myapp.jobs:app)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = _import(module_name)
    apps = sorted(name for name, value in vars(module).items() if isinstance(value, Conveyor))
    if not attr:
        if len(apps) == 1:
            return getattr(module, apps[0])  # type: ignore[no-any-return]
        found = f"it holds {len(apps)}: {', '.join(apps)}" if apps else "it holds none"
        raise AppNotFound(f"module {module_name!r} must hold one Conveyor app to be named alone ({found}); "
                          f"name it as {module_name}:ATTRIBUTE")
    if not hasattr(module, attr):
        names = apps or [n for n in vars(module) if not n.startswith("__")]
        raise AppNotFound(f"module {module_name!r} has no attribute {attr!r}{_did_you_mean(attr, names)}")
    app = getattr(module, attr)
    if not isinstance(app, Conveyor):
        hint = f"; did you mean {apps[0]!r}?" if len(apps) == 1 else _did_you_mean(attr, apps)
        raise AppNotFound(f"{spec!r} is a {type(app).__name__}, not a Conveyor app{hint}")
    return app


def find_job(broker: JobStore, fragment: str) -> JobRecord:
    """The job whose id is ``fragment``, starts with it, or (the short id the lists show) ends with it.

    A prefix is looked up through the store's id order (one query); an ending is looked for among
    the newest :data:`SUFFIX_SCAN` jobs. Raises :class:`~conveyor.errors.JobNotFound`, or
    :class:`AmbiguousJobId` naming the jobs that match.
    """
    fragment = fragment.strip()
    record = broker.get(fragment) if fragment else None
    if record is not None:
        return record
    if len(fragment) < MIN_FRAGMENT:
        raise JobNotFound(fragment)
    # Ids newest first, each below the cursor: every id that starts with the fragment sorts just
    # below the fragment followed by the highest character.
    page = broker.list_jobs(limit=SHOWN_MATCHES + 1, cursor=fragment + "\U0010ffff")
    matches = [r for r in page.jobs if r.id.startswith(fragment)]
    if not matches:
        matches = _ending_with(broker, fragment)
    if not matches:
        raise JobNotFound(fragment)
    if len(matches) > 1:
        shown = ", ".join(r.id for r in matches[:SHOWN_MATCHES])
        more = " and more" if len(matches) > SHOWN_MATCHES else ""
        raise AmbiguousJobId(f"job id {fragment!r} is ambiguous: it matches {shown}{more}; give more characters")
    return matches[0]


def _ending_with(broker: JobStore, fragment: str) -> list[JobRecord]:
    found: list[JobRecord] = []
    cursor: str | None = None
    scanned = 0
    while scanned < SUFFIX_SCAN and len(found) <= SHOWN_MATCHES:
        page = broker.list_jobs(limit=500, cursor=cursor)
        found += [r for r in page.jobs if r.id.endswith(fragment)]
        scanned += len(page.jobs)
        if page.cursor is None:
            break
        cursor = page.cursor
    return found
