"""API keys: make, list, revoke, and look up (async, for the API and the CLI).

A key is ``cimtwin_<prefix>_<secret>``: 8 hex characters that identify it in listings, and
43 URL-safe characters (256 random bits). Only the SHA-256 of the whole key is stored.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import NotFound
from cimtwin.schemas.access import ApiKey, ApiKeyCreated, ApiKeyIn, Role

from . import audit

KEY_SCHEME = "cimtwin_"
#: last_used_at is written at most this often per key.
TOUCH_EVERY_S = 60

_COLUMNS = """k.id, k.name, k.role, v.code AS vendor, k.prefix, k.created_at, k.created_by, k.revoked_at,
              k.last_used_at"""


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key() -> tuple[str, str]:
    """A fresh key and its prefix."""
    prefix = secrets.token_hex(4)
    return f"{KEY_SCHEME}{prefix}_{secrets.token_urlsafe(32)}", prefix


@dataclass(frozen=True)
class KeyRecord:
    """An active key as authentication sees it."""

    id: int
    name: str
    role: Role
    vendor_id: int | None
    vendor_code: str | None


async def create_key(pool: AsyncConnectionPool, key_in: ApiKeyIn, *, actor: str) -> ApiKeyCreated:
    """Makes a key, audited as ``api_key.create`` in the same transaction."""
    for attempt in range(5):
        key, prefix = new_key()
        try:
            async with pool.connection() as conn, conn.transaction():
                vendor_id = None
                if key_in.vendor is not None:
                    cur = await conn.execute("SELECT id FROM vendors WHERE code = %s", (key_in.vendor,))
                    row = await cur.fetchone()
                    if row is None:
                        raise NotFound(f"vendor {key_in.vendor!r} does not exist", code="vendor_not_found")
                    vendor_id = row[0]
                cur = await conn.execute(
                    """INSERT INTO api_keys (name, role, vendor_id, prefix, secret_hash, created_by)
                       VALUES (%s, %s, %s, %s, %s, %s) RETURNING id""",
                    (key_in.name, key_in.role.value, vendor_id, prefix, key_hash(key), actor))
                key_id = (await cur.fetchone())[0]
                await audit.record(conn, actor=actor, action="api_key.create", target=f"api_key:{key_id}",
                                   detail={"name": key_in.name, "role": key_in.role.value, "vendor": key_in.vendor,
                                           "prefix": prefix})
                created = await _get(conn, key_id)
            return ApiKeyCreated(**created.model_dump(), key=key)
        except psycopg.errors.UniqueViolation:  # a prefix drawn twice (1 in 4 billion): draw again
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


async def _get(conn, key_id: int) -> ApiKey:
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"SELECT {_COLUMNS} FROM api_keys k LEFT JOIN vendors v ON v.id = k.vendor_id WHERE k.id = %s", (key_id,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"API key {key_id} does not exist", code="api_key_not_found")
    return ApiKey(**row)


async def get_key(pool: AsyncConnectionPool, key_id: int) -> ApiKey:
    async with pool.connection() as conn:
        return await _get(conn, key_id)


async def list_keys(pool: AsyncConnectionPool, *, role: Role | None = None, vendor: str | None = None,
                    include_revoked: bool = True, limit: int = 1000, offset: int = 0) -> list[ApiKey]:
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"""SELECT {_COLUMNS} FROM api_keys k LEFT JOIN vendors v ON v.id = k.vendor_id
                WHERE (%(role)s::text IS NULL OR k.role = %(role)s)
                  AND (%(vendor)s::text IS NULL OR v.code = %(vendor)s)
                  AND (%(revoked)s OR k.revoked_at IS NULL)
                ORDER BY k.id LIMIT %(limit)s OFFSET %(offset)s""",
            {"role": role.value if role else None, "vendor": vendor, "revoked": include_revoked,
             "limit": limit, "offset": offset})
        return [ApiKey(**r) for r in await cur.fetchall()]


async def revoke_key(pool: AsyncConnectionPool, key_id: int, *, actor: str) -> ApiKey:
    """Revokes a key (audited as ``api_key.revoke``); revoking a revoked key changes nothing."""
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL RETURNING prefix",
            (key_id,))
        row = await cur.fetchone()
        if row is not None:
            await audit.record(conn, actor=actor, action="api_key.revoke", target=f"api_key:{key_id}",
                               detail={"prefix": row[0]})
        return await _get(conn, key_id)


async def authenticate(pool: AsyncConnectionPool, key: str) -> KeyRecord | None:
    """The active (unrevoked) key with this secret, or None. Marks it used, at most once a minute."""
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            """WITH found AS (
                   SELECT k.id, k.name, k.role, k.vendor_id, v.code AS vendor_code
                   FROM api_keys k LEFT JOIN vendors v ON v.id = k.vendor_id
                   WHERE k.secret_hash = %(hash)s AND k.revoked_at IS NULL),
               touched AS (
                   UPDATE api_keys SET last_used_at = now()
                   WHERE id = (SELECT id FROM found)
                     AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => %(every)s)))
               SELECT * FROM found""", {"hash": key_hash(key), "every": TOUCH_EVERY_S})
        row = await cur.fetchone()
    if row is None:
        return None
    return KeyRecord(id=row["id"], name=row["name"], role=Role(row["role"]), vendor_id=row["vendor_id"],
                     vendor_code=row["vendor_code"])


async def is_active(pool: AsyncConnectionPool, key: str, *, role: Role | None = None) -> bool:
    """Whether ``key`` is an active key (of ``role``), without marking it used."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            """SELECT 1 FROM api_keys WHERE secret_hash = %s AND revoked_at IS NULL
                 AND (%s::text IS NULL OR role = %s)""",
            (key_hash(key), role and role.value, role and role.value))
        return await cur.fetchone() is not None
