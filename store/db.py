"""Connections to PostgreSQL. Every session runs in UTC so that time buckets are UTC."""

from __future__ import annotations

import psycopg
from psycopg_pool import AsyncConnectionPool

# Notice a dead server (or a cut network path) within seconds rather than the
# kernel's two hours, so writers retry instead of hanging.
_LIBPQ_OPTIONS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def _options(statement_timeout_ms: int | None, *, parallel: bool = True) -> str:
    opts = "-c TimeZone=UTC"
    if statement_timeout_ms:
        opts += f" -c statement_timeout={int(statement_timeout_ms)}"
    if not parallel:
        opts += " -c max_parallel_workers_per_gather=0"
    return opts


def connect(url: str, *, application_name: str = "cimtwin", autocommit: bool = False,
            statement_timeout_ms: int | None = None) -> psycopg.Connection:
    """Open one synchronous connection."""
    return psycopg.connect(url, autocommit=autocommit, application_name=application_name,
                           options=_options(statement_timeout_ms), **_LIBPQ_OPTIONS)


def open_async_pool(url: str, *, application_name: str = "cimtwin-api", min_size: int = 1,
                    max_size: int = 10, statement_timeout_ms: int | None = None,
                    parallel: bool = False) -> AsyncConnectionPool:
    """An async pool, not yet opened; the caller opens it (FastAPI's lifespan).

    Parallel query plans are off unless ``parallel``: the API's queries are short, and on a
    small machine starting workers for them cost 7–20 ms of the p95 (bench/geo.py)."""
    kwargs = {"application_name": application_name, "options": _options(statement_timeout_ms, parallel=parallel),
              "autocommit": True, **_LIBPQ_OPTIONS}
    return AsyncConnectionPool(url, min_size=min_size, max_size=max_size, kwargs=kwargs,
                               open=False, check=AsyncConnectionPool.check_connection, timeout=5)


def has_timescaledb(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return row is not None
