"""The ``conveyor`` command line. APP is ``module:attribute``, as gunicorn and uvicorn take it."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, NoReturn, TypeVar

import click
import orjson

from . import listing
from .app import Conveyor
from .brokers import STATES, JobRecord
from .config import load_settings, redact_url
from .errors import ConveyorError
from .loading import find_job
from .loading import load_app as _load_app

F = TypeVar("F", bound=Callable[..., Any])


def load_app(spec: str) -> Conveyor:
    """Load APP (see :func:`conveyor.loading.load_app`); warn when ``--url`` cannot apply to it."""
    app = _load_app(spec)
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    given = root.params.get("url") if root is not None else None
    if root is not None and given and root.get_parameter_source("url") is click.core.ParameterSource.COMMANDLINE \
            and app.settings.sources().get("url") == "argument" and app.settings.url != given:
        click.echo(f"Warning: {spec} names its own URL ({redact_url(app.settings.url)}) in its code; "
                   "--url does not change it", err=True)
    return app


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

    lazy = {"web": "conveyor.web.command:web", "migrate": "conveyor.admin:migrate", "doctor": "conveyor.admin:doctor",
            "zmq-device": "conveyor.brokers.zmq_device:zmq_device"}

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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog="APP is module:attribute (e.g. myapp.jobs:app), imported from the current folder. "
                    "Shell completion: see docs/cli.md (eval \"$(_CONVEYOR_COMPLETE=bash_source conveyor)\").")
@click.option("--url", envvar="CONVEYOR_URL", show_envvar=True, metavar="URL",
              help="Broker URL (sqlite:///conveyor.db, redis://host:6379/0...) for apps that do not name one in "
                   "their code (Conveyor() reads CONVEYOR_URL).")
@click.version_option(package_name="conveyor")
def main(url: str | None) -> None:
    """Conveyor: background jobs for Python web applications.

    \b
    Examples:
      conveyor worker myapp.jobs:app -c 4
      conveyor --url redis://127.0.0.1:6379/0 jobs myapp.jobs:app --state failed
      conveyor demo
    """
    if url:  # read by Conveyor() when the app module is imported, and by worker processes
        os.environ["CONVEYOR_URL"] = url


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")


@contextmanager
def _errors_said_once() -> Iterator[None]:
    """While the worker first connects, an error the broker logs is the one the command then
    reports (as its ``Error:`` line and exit status): keep the log from saying it first, and
    differently)."""
    def said_again(record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.name.startswith("conveyor.brokers"))

    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(said_again)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(said_again)


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
@click.option("--quiet", "-q", is_flag=True,
              help="No line per finished job (retries, failures and worker events are still logged).")
@click.option("--reload", is_flag=True,
              help="For development: restart the worker when a .py file under the current folder changes "
                   "(needs watchfiles: pip install 'conveyor[reload]').")
def worker(app_spec: str, reload: bool, quiet: bool, **flags: Any) -> None:
    """Run a worker pool for APP until SIGTERM/SIGINT.

    If the broker cannot be reached at start, the worker exits at once with one error line and
    status 2 (a service manager restarts it); once running, it rides out outages with back-off.

    \b
    Examples:
      conveyor worker myapp.jobs:app
      conveyor worker myapp.jobs:app -c 8 -P thread -Q mail,default
      conveyor worker myapp.jobs:app --reload      # development
    """
    if reload:
        from .reloader import run_with_reload

        argv = [a for a in sys.argv[1:] if a != "--reload"]
        sys.exit(run_with_reload([sys.executable, "-m", "conveyor.cli", *argv], os.getcwd()))
    from .worker.supervisor import Supervisor

    app = load_app(app_spec)
    settings = app.settings.replace("argument", **flags)
    from .worker.logs import JOB_LOGGER, WorkerLogHandler

    WorkerLogHandler(sys.stderr).install(settings.log_level.upper())
    if quiet:
        logging.getLogger(JOB_LOGGER).setLevel(logging.WARNING)
    with _errors_said_once():
        app.open()  # a bad database path or an unreachable server is reported here, before any process starts
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
@click.option("--wait", "wait", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Wait up to SECONDS for the job to end and print its result; exit 1 if it has not ended "
                   "by then (the job goes on), 2 if it failed.")
@json_option
def enqueue(app_spec: str, task: str, args_json: str, kwargs_json: str, as_json: bool,
            wait: float | None, **options: Any) -> None:
    """Enqueue TASK with ARGS_JSON (a JSON array, or an object of keyword arguments).

    \b
    Examples:
      conveyor enqueue myapp.jobs:app send_email '["ann@example.com"]'
      conveyor enqueue myapp.jobs:app transcode '{"path": "in.mov"}' --priority 9
      conveyor enqueue myapp.jobs:app add '[2, 3]' --wait 10
    """
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
    """List jobs, newest first.

    The id column shows short ids (the end of each id); every command that takes a job id accepts
    them, as it does any unique start of an id. State "reserved": a worker holds the job but has
    not started it yet.

    \b
    Examples:
      conveyor jobs myapp.jobs:app
      conveyor jobs myapp.jobs:app --state failed --queue media
      conveyor jobs myapp.jobs:app --json | jq '.jobs[].id'
    """
    app = load_app(app_spec)
    page = app.store.list_jobs(state=state, queue=queue, task=task, limit=limit, cursor=cursor)
    if as_json:
        _emit_json({"jobs": [_record_dict(app, r) for r in page.jobs], "cursor": page.cursor})
        return
    console = _console()
    if not page.jobs:
        filters = ", ".join(f"{k} {v}" for k, v in (("state", state), ("queue", queue), ("task", task)) if v)
        console.print("no jobs match" + (f" ({filters})" if filters else ""), highlight=False)
        return
    console.print(listing.jobs_table(page.jobs, console.width))
    if page.cursor:
        console.print(f"more: --cursor {page.cursor}", highlight=False)


@main.command()
@click.argument("app_spec", metavar="APP")
@click.argument("job_id")
@json_option
def job(app_spec: str, job_id: str, as_json: bool) -> None:
    """Show one job: arguments, state, attempts, result or error with traceback.

    JOB_ID is a full id, a unique start of one, or the short id that `conveyor jobs` shows.

    \b
    Examples:
      conveyor job myapp.jobs:app 5e1c9a07
      conveyor job myapp.jobs:app 01a237d2-5ebf-7097-8ea8-ce179d278d00 --json
    """
    app = load_app(app_spec)
    record = find_job(app.store, job_id)
    data = _record_dict(app, record)
    if as_json:
        _emit_json(data)
        return
    listing.print_job(_console(), record, data)


@main.command()
@click.argument("app_spec", metavar="APP")
@click.argument("job_id")
def retry(app_spec: str, job_id: str) -> None:
    """Run a failed or cancelled job again (JOB_ID: full, unique start, or short id).

    \b
    Example:
      conveyor retry myapp.jobs:app 5e1c9a07
    """
    app = load_app(app_spec)
    found = find_job(app.store, job_id).id
    try:
        state = app.broker.retry(found)
    except ValueError as exc:
        _fail(str(exc))
    click.echo(f"{found} {state}")


@main.command()
@click.argument("app_spec", metavar="APP")
@click.argument("job_id")
def cancel(app_spec: str, job_id: str) -> None:
    """Cancel a job (a running job is asked to stop). JOB_ID: full, unique start, or short id.

    \b
    Example:
      conveyor cancel myapp.jobs:app 5e1c9a07
    """
    app = load_app(app_spec)
    found = find_job(app.store, job_id).id
    state = app.broker.cancel(found)
    note = " (cancellation requested; the task stops at its next check)" if state == "running" else ""
    click.echo(f"{found} {state}{note}")


@main.command()
@click.argument("app_spec", metavar="APP")
@click.option("--pause", "pause", metavar="QUEUE", help="Pause this queue.")
@click.option("--resume", "resume", metavar="QUEUE", help="Resume this queue.")
@json_option
def queues(app_spec: str, pause: str | None, resume: str | None, as_json: bool) -> None:
    """Queues with their jobs by state, and whether they are paused.

    "reserved" jobs are held by a worker that has not started them yet; "running" ones are executing
    (in --json, "running" counts both and "reserved" says how many of them are reserved).

    \b
    Examples:
      conveyor queues myapp.jobs:app
      conveyor queues myapp.jobs:app --pause media
    """
    app = load_app(app_spec)
    if pause:
        app.broker.pause(pause)
    if resume:
        app.broker.resume(resume)
    infos = {q.name: q for q in app.store.queues()}
    for name in app.queues:
        if name not in infos:
            from .brokers import QueueInfo

            infos[name] = QueueInfo(name, False, dict.fromkeys(STATES, 0))
    reserved = app.store.reserved_counts()
    rows = [infos[n] for n in sorted(infos)]
    if as_json:
        _emit_json([{**asdict(q), "reserved": reserved.get(q.name, 0)} for q in rows])
        return
    console = _console()
    console.print(listing.queues_table(rows, reserved, console.width))


@main.command()
@click.argument("app_spec", metavar="APP")
@json_option
def workers(app_spec: str, as_json: bool) -> None:
    """Workers heard from in the last minute: host, pid, pool, and the jobs each is running now.

    One row per pool member (a process, a thread or an event loop); PID is the member's process.

    \b
    Example:
      conveyor workers myapp.jobs:app
    """
    app = load_app(app_spec)
    found = sorted(app.store.workers(), key=lambda w: (w.hostname, w.supervisor or "", w.pid, w.id))
    running = [job_id for w in found for job_id in w.current]
    records = {r.id: r for r in app.store.get_many(running) if r is not None} if running else {}
    if as_json:
        _emit_json([{**asdict(w), "running": [{"id": i, "task": records[i].task if i in records else None}
                                              for i in w.current]} for w in found])
        return
    console = _console()
    if not found:
        console.print("no workers heard from in the last minute", highlight=False)
        return
    console.print(listing.workers_table(found, {i: r.task for i, r in records.items()}, console.width))


@main.command()
@click.argument("app_spec", metavar="APP")
@click.option("--queue", help="Only this queue (default: every queue).")
@click.option("--state", "states", multiple=True, type=click.Choice([s for s in STATES if s != "running"]),
              help="States to delete (repeatable; default queued and scheduled).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(app_spec: str, queue: str | None, states: tuple[str, ...], yes: bool) -> None:
    """Delete waiting jobs (or jobs in the given states). Running jobs are never deleted.

    \b
    Examples:
      conveyor purge myapp.jobs:app --queue media
      conveyor purge myapp.jobs:app --state failed --yes
    """
    app = load_app(app_spec)
    states = states or ("queued", "scheduled")
    where = f"queue {queue!r}" if queue else "every queue"
    if not yes and not click.confirm(f"Delete {', '.join(states)} jobs of {where}?"):
        sys.exit(1)
    n = app.broker.purge(queue, states)
    click.echo(f"deleted {n} job(s)")


@main.command()
@click.argument("app_spec", metavar="[APP]", required=False)
@json_option
def config(app_spec: str | None, as_json: bool) -> None:
    """Effective settings and where each came from (flag, environment, file, default).

    With APP, the app's own settings (including what its code passes to Conveyor()).

    \b
    Examples:
      conveyor config
      conveyor config myapp.jobs:app --json
    """
    settings = load_app(app_spec).settings if app_spec else load_settings()
    values, sources = settings.as_dict(), settings.sources()
    values["url"] = redact_url(values["url"])
    if values.get("store"):
        values["store"] = redact_url(values["store"])
    if as_json:
        _emit_json({k: {"value": values[k], "source": sources[k]} for k in values})
        return
    console = _console()
    rows = [[k, repr(values[k]), sources[k]] for k in values]
    console.print(listing.fit([listing.Col("setting"), listing.Col("value", 16, give=1, wrap=True),
                               listing.Col("source", 8, wrap=True)], rows, console.width))


@main.command()
@click.option("--db", default="conveyor-demo.db", show_default=True, help="SQLite file to create.")
@click.option("--jobs", "n_jobs", type=click.IntRange(1, 10_000), default=24, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the database from an earlier demo.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Dashboard port on 127.0.0.1 (taken: another free port is used, and said; 0: any free port).")
@click.option("--serve/--no-serve", default=None,
              help="Keep the dashboard running after the jobs end, until Ctrl-C (default: when run in a terminal).")
def demo(db: str, n_jobs: int, keep: bool, port: int, serve: bool | None) -> None:
    """Start a worker and the dashboard on a fresh SQLite database, enqueue sample jobs, watch them.

    Exits 0 when every job ended as expected (one sample task always fails, on purpose), else 1.

    \b
    Examples:
      conveyor demo
      conveyor demo --jobs 120 --port 8080 --serve
    """
    from .demo import run_demo

    sys.exit(run_demo(db, n_jobs, keep, port=port, serve=serve))


if __name__ == "__main__":  # pragma: no cover
    main()
