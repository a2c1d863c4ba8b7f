"""``conveyor migrate APP`` and ``conveyor doctor APP``: set up the store, and check the set-up.

Loaded only when one of them is invoked (see ``cli._Group.lazy``).
"""

from __future__ import annotations

import sys

import click

from .cli import load_app
from .config import redact_url


@click.command()
@click.argument("app_spec", metavar="APP")
def migrate(app_spec: str) -> None:
    """Create or upgrade the job store's schema (idempotent; safe to run on several hosts at once).

    Workers refuse to start on a PostgreSQL schema older than this Conveyor: run this first, e.g.
    as a release step of each deploy.

    \b
    Examples:
      conveyor migrate myapp.jobs:app
      conveyor --url postgresql://127.0.0.1/app?schema=jobs migrate myapp.jobs:app
    """
    app = load_app(app_spec)
    click.echo(app.broker.migrate())


@click.command()
@click.argument("app_spec", metavar="APP")
def doctor(app_spec: str) -> None:
    """Check that the store and the transport are reachable and set up as Conveyor needs.

    Prints one line per check; exits 1 when any failed, with what to do.

    \b
    Examples:
      conveyor doctor myapp.jobs:app
    """
    app = load_app(app_spec)
    label = redact_url(app.settings.url)
    if app.settings.store:
        label += f" + store {redact_url(app.settings.store)}"
    click.echo(f"Conveyor {label}")
    checks = app.broker.diagnose()
    try:
        app.close()
    except Exception:
        pass
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        line = f"  {mark} {check.what}"
        if check.detail:
            line += f": {check.detail}"
        click.echo(line)
        if not check.ok and check.advice:
            click.echo(f"       -> {check.advice}")
    failed = sum(not c.ok for c in checks)
    click.echo(f"{len(checks) - failed} of {len(checks)} checks passed")
    sys.exit(1 if failed else 0)
