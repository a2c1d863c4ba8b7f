"""Versioned migrations of the PostgreSQL store (``migrations/NNNN_*.sql``) and the version check.

``conveyor migrate APP`` applies what is missing, in one transaction under an advisory lock of the
schema, so two hosts running it at once apply each migration once. ``open()`` never changes the
schema: it refuses one older (or newer) than this Conveyor with one line saying what to run.
"""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Any

import psycopg
from psycopg import sql

from ...errors import BrokerError

_FILE = re.compile(r"^(\d{4})_\w+\.sql$")


def migrations() -> list[tuple[int, str]]:
    """``(version, sql text)`` of every migration shipped, in order."""
    found = []
    for entry in files(__package__).joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    found.sort()
    return found


#: The schema version this Conveyor reads and writes.
CURRENT = migrations()[-1][0]


def _tables_exist(conn: psycopg.Connection[Any], schema: str) -> bool:
    found = conn.execute("SELECT to_regclass(%s)", (f"{sql.Identifier(schema).as_string(None)}.conveyor_settings",))
    return found.fetchone()[0] is not None  # type: ignore[index]


def _version(conn: psycopg.Connection[Any], schema: str) -> int:
    if not _tables_exist(conn, schema):
        return 0
    row = conn.execute(sql.SQL("SELECT value FROM {}.conveyor_settings WHERE name = 'schema_version'")
                       .format(sql.Identifier(schema))).fetchone()
    return int(row[0]) if row else 0


def check(conn: psycopg.Connection[Any], schema: str, label: str) -> None:
    """Raise BrokerError unless ``schema`` is at :data:`CURRENT`."""
    version = _version(conn, schema)
    if version == CURRENT:
        return
    if version > CURRENT:
        raise BrokerError(f"the Conveyor tables in PostgreSQL schema {schema!r} ({label}) are at version {version}, "
                          f"newer than this Conveyor (version {CURRENT}): upgrade Conveyor")
    what = ("do not exist yet" if version == 0 and not _tables_exist(conn, schema)
            else f"are at version {version}, this Conveyor needs {CURRENT}")
    raise BrokerError(f"the Conveyor tables in PostgreSQL schema {schema!r} ({label}) {what}: "
                      f"run `conveyor migrate APP` first")


def migrate(conn: psycopg.Connection[Any], schema: str, channel: str) -> tuple[int, int]:
    """Apply the missing migrations; ``(version before, version after)``. Idempotent; safe to run
    from several hosts at once (they queue on the advisory lock)."""
    quoted = sql.Identifier(schema).as_string(None)
    literal = sql.Literal(channel).as_string(None)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"conveyor migrate {schema}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        before = _version(conn, schema)
        for version, text in migrations():
            if version <= before:
                continue
            conn.execute(text.replace("{s}", quoted).replace("{channel}", literal))
            conn.execute(sql.SQL("INSERT INTO {}.conveyor_settings (name, value) VALUES ('schema_version', %s) "
                                 "ON CONFLICT (name) DO UPDATE SET value = excluded.value")
                         .format(sql.Identifier(schema)), (str(version),))
        return before, max(before, CURRENT)
