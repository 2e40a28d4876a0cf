"""The audit log: who changed which credential, vendor or profile, and when. Append-only."""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

_INSERT = "INSERT INTO audit_log (actor, action, target, detail) VALUES (%s, %s, %s, %s)"


async def record(conn: psycopg.AsyncConnection, *, actor: str, action: str, target: str,
                 detail: dict | None = None) -> None:
    """Adds one entry inside the caller's transaction, so it stands or falls with the change."""
    await conn.execute(_INSERT, (actor, action, target, Jsonb(detail or {})))


def record_sync(conn: psycopg.Connection, *, actor: str, action: str, target: str,
                detail: dict | None = None) -> None:
    """``record`` for synchronous connections (CLI, ingest)."""
    conn.execute(_INSERT, (actor, action, target, Jsonb(detail or {})))


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def entries(pool: AsyncConnectionPool, *, actor: str | None = None, action: str | None = None,
                  target_prefix: str | None = None, since: datetime | None = None, until: datetime | None = None,
                  limit: int = 100, offset: int = 0) -> list[dict]:
    """Newest first. ``action`` ending in ``.`` matches every action under it (``api_key.``)."""
    action_like = _like_prefix(action) if action and action.endswith(".") else None
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute("""
            SELECT id, at, actor, action, target, detail FROM audit_log
            WHERE (%(actor)s::text IS NULL OR actor = %(actor)s)
              AND (%(action)s::text IS NULL OR action = %(action)s OR action LIKE %(action_like)s)
              AND (%(target)s::text IS NULL OR target LIKE %(target)s)
              AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)
              AND (%(until)s::timestamptz IS NULL OR at < %(until)s)
            ORDER BY at DESC, id DESC LIMIT %(limit)s OFFSET %(offset)s""",
            {"actor": actor, "action": action, "action_like": action_like,
             "target": _like_prefix(target_prefix) if target_prefix else None,
             "since": since, "until": until, "limit": limit, "offset": offset})
        return await cur.fetchall()
