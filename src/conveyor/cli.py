"""The ``conveyor`` command line. APP is ``module:attribute``, as gunicorn and uvicorn take it."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, NoReturn, TypeVar

import click
import orjson

from .app import Conveyor
from .brokers import STATES, JobRecord
from .config import load_settings, redact_url
from .errors import ConveyorError

F = TypeVar("F", bound=Callable[..., Any])


def load_app(spec: str) -> Conveyor:
    """Import ``module:attribute`` (the current folder is importable) and return the Conveyor app."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise click.BadParameter(f"{spec!r} is not module:attribute (e.g. myapp.jobs:app)", param_hint="APP")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint="APP") from None
    if attr:
        app = getattr(module, attr, None)
    else:
        found = [v for v in vars(module).values() if isinstance(v, Conveyor)]
        app = found[0] if len(found) == 1 else None
    if not isinstance(app, Conveyor):
        raise click.BadParameter(f"{spec!r} is not a Conveyor app", param_hint="APP")
    return app


def _ts(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _record_dict(app: Conveyor, r: JobRecord) -> dict[str, Any]:
    data = asdict(r)
    try:
        data["payload"] = app.serializer.loads(r.payload)
    except ConveyorError:
        data["payload"] = r.payload.decode("utf-8", "replace")
    if r.result is not None:
        try:
            data["result"] = app.serializer.loads(r.result)
        except ConveyorError:
            data["result"] = r.result.decode("utf-8", "replace")
    return data


def _emit_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


def _console() -> Any:
    from rich.console import Console

    return Console()


def _plain(value: str) -> Any:
    """``value`` as rich text that is never read as markup (job data may hold "[/]")."""
    from rich.text import Text

    return Text(value)


def _fail(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


class _Group(click.Group):
    """Turns Conveyor errors into one clear line and exit code 2 instead of a traceback.

    Commands with heavy imports load only when invoked: ``conveyor worker`` never imports the web
    stack (werkzeug, jinja2, waitress, prometheus-client), which would cost every worker start-up
    time and memory.
    """

    lazy = {"web": "conveyor.web.command:web"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, _, attr = self.lazy[name].partition(":")
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConveyorError as exc:
            _fail(str(exc))
        except TimeoutError as exc:  # enqueue --wait
            click.echo(f"Timeout: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="conveyor")
def main() -> None:
    """Conveyor: background jobs for Python web applications."""


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")


@main.command()
@click.argument("app_spec", metavar="APP")
@click.option("--queues", "-Q", help="Comma-separated queues (default: every queue of the app's tasks).")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), help="Pool size.")
@click.option("--pool", "-P", type=click.Choice(["process", "thread", "async"]), help="Pool kind.")
@click.option("--max-jobs-per-child", type=click.IntRange(min=1), help="Recycle a process after N jobs.")
@click.option("--max-memory", type=click.IntRange(min=1), help="Recycle a process above this RSS (MB).")
@click.option("--grace", type=click.FloatRange(min=0), help="Seconds running jobs get on SIGTERM.")
@click.option("--prefetch", type=click.IntRange(min=1),
              help="Most jobs leased per fetch (fewer when jobs are slow, so no member hoards them).")
@click.option("--lease", type=click.FloatRange(min=0.5), help="Lease seconds (extended by heartbeat).")
@click.option("--log-level", "-l", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def worker(app_spec: str, **flags: Any) -> None:
    """Run a worker pool for APP until SIGTERM/SIGINT."""
    from .worker.supervisor import Supervisor

    app = load_app(app_spec)
    settings = app.settings.replace("argument", **flags)
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    app.open()  # a bad database path is reported here, before any process starts
    sys.exit(Supervisor(app, settings).run())


def _json_argument(text: str, name: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        _fail(f"{name} is not valid JSON ({exc}): {text!r}")


@main.command()
@click.argument("app_spec", metavar="APP")
@click.argument("task")
@click.argument("args_json", default="[]", required=False)
@click.option("--kwargs", "kwargs_json", default="{}", help="Keyword arguments as a JSON object.")
@click.option("--queue")
@click.option("--priority", type=int)
@click.option("--delay", type=click.FloatRange(min=0), help="Seconds before the job may run.")
@click.option("--key", help="Unique key: no second active job with the same key.")
@click.option("--wait", "wait", type=float, default=None, help="Wait up to N seconds for the result.")
@json_option
def enqueue(app_spec: str, task: str, args_json: str, kwargs_json: str, as_json: bool,
            wait: float | None, **options: Any) -> None:
    """Enqueue TASK with ARGS_JSON (a JSON array, or an object of keyword arguments)."""
    app = load_app(app_spec)
    args: Any = _json_argument(args_json, "ARGS_JSON")
    kwargs: Any = _json_argument(kwargs_json, "--kwargs")
    if not isinstance(args, (list, dict)):
        _fail(f"ARGS_JSON must be a JSON array or object, not {args_json!r}")
    if not isinstance(kwargs, dict):
        _fail(f"--kwargs must be a JSON object, not {kwargs_json!r}")
    if isinstance(args, dict):
        kwargs = {**args, **kwargs}
        args = []
    job = app.enqueue(task, args, kwargs, **{k: v for k, v in options.items() if v is not None})
    out: dict[str, Any] = {"id": job.id, "task": task, "status": job.status}
    if wait is not None:
        out["result"] = job.result(timeout=wait)
        out["status"] = job.status
    if as_json:
        _emit_json(out)
    else:
        click.echo(job.id if wait is None else f"{job.id} {out['status']}: {out['result']!r}")


@main.command()
@click.argument("app_spec", metavar="APP")
@click.option("--state", type=click.Choice(STATES))
@click.option("--queue")
@click.option("--task")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--cursor", help="Continue after this job id (from a previous page).")
@json_option
def jobs(app_spec: str, state: str | None, queue: str | None, task: str | None, limit: int,
         cursor: str | None, as_json: bool) -> None:
    """List jobs, newest first."""
    app = load_app(app_spec)
    page = app.broker.list_jobs(state=state, queue=queue, task=task, limit=limit, cursor=cursor)
    if as_json:
        _emit_json({"jobs": [_record_dict(app, r) for r in page.jobs], "cursor": page.cursor})
        return
    from rich.table import Column, Table

    table = Table(Column("id", no_wrap=True, min_width=36), "task", "queue", "state", "attempts", "created",
                  "progress", "error")
    from rich.console import Group
    from rich.progress_bar import ProgressBar

    console = _console()
    for r in page.jobs:
        progress: Any = ""
        if r.progress is not None:
            label = _plain(f"{r.progress:.0%}")
            # A bar where a terminal can draw one; the percentage alone in a pipe or a log.
            progress = Group(ProgressBar(total=1.0, completed=r.progress, width=12), label) \
                if console.is_terminal else label
        stale = r.error is None or r.state == "succeeded"  # a succeeded job's error is an earlier attempt's
        error = "" if stale or r.error is None else f"{r.error.get('type')}: {r.error.get('message', '')}"[:60]
        table.add_row(*map(_plain, (r.id, r.task, r.queue, r.state, f"{r.attempts}/{r.max_attempts}",
                                    _ts(r.created_at))), progress, _plain(error))
    console.print(table)
    if page.cursor:
        console.print(f"more: --cursor {page.cursor}")


@main.command()
@click.argument("app_spec", metavar="APP")
@click.argument("job_id")
@json_option
def job(app_spec: str, job_id: str, as_json: bool) -> None:
    """Show one job: arguments, state, attempts, result or error with traceback."""
    app = load_app(app_spec)
    record = app.get_job(job_id).record
    data = _record_dict(app, record)
    if as_json:
        _emit_json(data)
        return
    from rich.text import Text

    # Job data is printed as text, never read as rich markup: "[/]" in an error must not break it.
    console = _console()

    def line(name: str, value: Any) -> None:
        shown = orjson.dumps(value, default=str).decode() if isinstance(value, (dict, list)) else str(value)
        console.print(Text(f"{name:>12} ", style="bold"), Text(shown), highlight=False)

    for name in ("id", "task", "queue", "state", "priority", "key", "attempts", "max_attempts", "timeout"):
        line(name, data[name])
    for name in ("created_at", "run_at", "started_at", "finished_at"):
        line(name, _ts(data[name]))
    line("arguments", data["payload"])
    if record.progress is not None:
        line("progress", f"{record.progress:.0%} {record.progress_message or ''}")
    if record.state == "succeeded":
        line("result", data["result"])
    for entry in record.history:
        err = entry.get("error") or {}
        line("attempt", f"#{entry.get('attempt')} {entry.get('state')} at {_ts(entry.get('at'))}: "
                        f"{err.get('type')}: {err.get('message')}")
    if record.error and record.error.get("traceback"):
        console.print(Text(record.error["traceback"]), highlight=False)


@main.command()
@click.argument("app_spec", metavar="APP")
@click.argument("job_id")
def retry(app_spec: str, job_id: str) -> None:
    """Run a failed or cancelled job again."""
    app = load_app(app_spec)
    try:
        state = app.broker.retry(job_id)
    except ValueError as exc:
        _fail(str(exc))
    click.echo(f"{job_id} {state}")


@main.command()
@click.argument("app_spec", metavar="APP")
@click.argument("job_id")
def cancel(app_spec: str, job_id: str) -> None:
    """Cancel a job (a running job is asked to stop)."""
    app = load_app(app_spec)
    state = app.broker.cancel(job_id)
    note = " (cancellation requested; the task stops at its next check)" if state == "running" else ""
    click.echo(f"{job_id} {state}{note}")


@main.command()
@click.argument("app_spec", metavar="APP")
@click.option("--pause", "pause", metavar="QUEUE", help="Pause this queue.")
@click.option("--resume", "resume", metavar="QUEUE", help="Resume this queue.")
@json_option
def queues(app_spec: str, pause: str | None, resume: str | None, as_json: bool) -> None:
    """Queues with their depth, running, failed and paused state."""
    app = load_app(app_spec)
    if pause:
        app.broker.pause(pause)
    if resume:
        app.broker.resume(resume)
    infos = {q.name: q for q in app.broker.queues()}
    for name in app.queues:
        if name not in infos:
            from .brokers import QueueInfo

            infos[name] = QueueInfo(name, False, dict.fromkeys(STATES, 0))
    rows = [infos[n] for n in sorted(infos)]
    if as_json:
        _emit_json([asdict(q) for q in rows])
        return
    from rich.table import Table

    table = Table("queue", "queued", "scheduled", "running", "succeeded", "failed", "cancelled", "paused")
    for q in rows:
        table.add_row(_plain(q.name), *(str(q.counts.get(s, 0)) for s in STATES), "yes" if q.paused else "")
    _console().print(table)


@main.command()
@click.argument("app_spec", metavar="APP")
@click.option("--queue", help="Only this queue (default: every queue).")
@click.option("--state", "states", multiple=True, type=click.Choice([s for s in STATES if s != "running"]),
              help="States to delete (repeatable; default queued and scheduled).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(app_spec: str, queue: str | None, states: tuple[str, ...], yes: bool) -> None:
    """Delete waiting jobs (or jobs in the given states). Running jobs are never deleted."""
    app = load_app(app_spec)
    states = states or ("queued", "scheduled")
    where = f"queue {queue!r}" if queue else "every queue"
    if not yes and not click.confirm(f"Delete {', '.join(states)} jobs of {where}?"):
        sys.exit(1)
    n = app.broker.purge(queue, states)
    click.echo(f"deleted {n} job(s)")


@main.command()
@click.argument("app_spec", metavar="APP", required=False)
@json_option
def config(app_spec: str | None, as_json: bool) -> None:
    """Effective settings and where each came from (flag, environment, file, default)."""
    settings = load_app(app_spec).settings if app_spec else load_settings()
    values, sources = settings.as_dict(), settings.sources()
    values["url"] = redact_url(values["url"])
    if values.get("store"):
        values["store"] = redact_url(values["store"])
    if as_json:
        _emit_json({k: {"value": values[k], "source": sources[k]} for k in values})
        return
    from rich.table import Table

    table = Table("setting", "value", "source")
    for k in values:
        table.add_row(k, _plain(repr(values[k])), _plain(sources[k]))
    _console().print(table)


@main.command()
@click.option("--db", default="conveyor-demo.db", show_default=True, help="SQLite file to create.")
@click.option("--jobs", "n_jobs", type=click.IntRange(1, 10_000), default=24, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the database from an earlier demo.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Dashboard port on 127.0.0.1 (0: any free port).")
@click.option("--serve/--no-serve", default=None,
              help="Keep the dashboard running after the jobs end (default: when run in a terminal).")
def demo(db: str, n_jobs: int, keep: bool, port: int, serve: bool | None) -> None:
    """Start a worker and the dashboard on a fresh SQLite database, enqueue sample jobs, watch them."""
    from .demo import run_demo

    sys.exit(run_demo(db, n_jobs, keep, port=port, serve=serve))


if __name__ == "__main__":  # pragma: no cover
    main()
