"""Applies the numbered migrations in ``store/migrations``.

``NNNN_name.sql`` always runs. ``NNNN_name@timescaledb.sql`` and ``NNNN_name@plain.sql``
are alternatives: the first runs where the TimescaleDB extension could be created,
the second everywhere else. The choice is made once, by the first migration run,
and kept in ``cimtwin_meta``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from .db import connect, has_timescaledb

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)(?:@(?P<variant>plain|timescaledb))?\.sql$")
_LOCK_KEY = 0x63696D74  # "cimt"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    variant: str | None
    path: Path


@dataclass(frozen=True)
class MigrationReport:
    backend: str
    applied: list[str]
    current_version: int


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file {path.name!r} does not match NNNN_name[@variant].sql")
        found.append(Migration(int(match["version"]), match["name"], match["variant"], path))
    return found


def _try_timescaledb(conn: psycopg.Connection, url: str) -> bool:
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
    if not available:
        return False
    # Installed but not in shared_preload_libraries, CREATE EXTENSION ends the session with FATAL,
    # so it is tried on a connection of its own.
    try:
        with connect(url, application_name="cimtwin-migrate-probe", autocommit=True) as probe:
            probe.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error:
        # Not preloaded, or no privilege: plain path.
        return False
    return True


def _backend(conn: psycopg.Connection, url: str) -> str:
    conn.execute("""CREATE TABLE IF NOT EXISTS cimtwin_meta (
                        key text PRIMARY KEY, value text NOT NULL)""")
    row = conn.execute("SELECT value FROM cimtwin_meta WHERE key = 'backend'").fetchone()
    if row:
        return row[0]
    backend = "timescaledb" if (has_timescaledb(conn) or _try_timescaledb(conn, url)) else "plain"
    conn.execute("INSERT INTO cimtwin_meta (key, value) VALUES ('backend', %s)", (backend,))
    return backend


def migrate(url: str, *, directory: Path = MIGRATIONS_DIR) -> MigrationReport:
    """Apply every pending migration, each in its own transaction."""
    migrations = discover(directory)
    with connect(url, application_name="cimtwin-migrate", autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            backend = _backend(conn, url)
            conn.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                                version integer NOT NULL, name text NOT NULL,
                                variant text NOT NULL DEFAULT '',
                                applied_at timestamptz NOT NULL DEFAULT now(),
                                PRIMARY KEY (version, variant))""")
            done = {(v, var) for v, var in conn.execute(
                "SELECT version, variant FROM schema_migrations")}
            applied = []
            for m in migrations:
                if m.variant not in (None, backend) or (m.version, m.variant or "") in done:
                    continue
                with conn.transaction():
                    conn.execute(sql.SQL(m.path.read_text()))  # type: ignore[arg-type]
                    conn.execute("INSERT INTO schema_migrations (version, name, variant) VALUES (%s, %s, %s)",
                                 (m.version, m.name, m.variant or ""))
                applied.append(m.path.name)
            current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return MigrationReport(backend=backend, applied=applied, current_version=current)


def apply_storage_policies(url: str, *, retention_days: int, compress_after_days: int) -> None:
    """Bring TimescaleDB's compression and retention policies in line with settings.

    On plain PostgreSQL retention is done by :func:`drop_expired_readings`.
    """
    with connect(url, application_name="cimtwin-migrate", autocommit=True) as conn:
        if not has_timescaledb(conn):
            return
        conn.execute("SELECT remove_compression_policy('readings', if_exists => true)")
        conn.execute("SELECT add_compression_policy('readings', make_interval(days => %s))",
                     (compress_after_days,))
        conn.execute("SELECT remove_retention_policy('readings', if_exists => true)")
        if retention_days:
            conn.execute("SELECT add_retention_policy('readings', make_interval(days => %s))",
                         (retention_days,))


def drop_expired_readings(conn: psycopg.Connection, *, retention_days: int) -> int:
    """Plain PostgreSQL: drop weekly partitions wholly older than the retention."""
    if not retention_days or has_timescaledb(conn):
        return 0
    row = conn.execute("SELECT cimtwin_drop_readings_before(now() - make_interval(days => %s))",
                       (retention_days,)).fetchone()
    return row[0]
