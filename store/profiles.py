"""Vendor payload profiles: immutable versions, and which version each device is pinned to.

Every function that reads or changes a vendor's objects takes ``scope``: the vendor id a
vendor's key is limited to, or None for staff roles. A vendor naming another vendor gets
the same 404 as for a vendor that does not exist.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import Conflict, NotFound
from cimtwin.store.audit import record

_COLUMNS = """p.id, v.code AS vendor, p.name, p.version, p.format, p.topic, p.document,
              p.created_at, p.created_by,
              (SELECT count(*) FROM devices d WHERE d.profile_id = p.id) AS devices"""


# --- ingest (synchronous) ----------------------------------------------------------------------

def profiles_generation(conn: psycopg.Connection) -> int:
    """A counter that moves whenever any profile is added, changed or deleted."""
    return conn.execute("SELECT generation FROM profiles_state").fetchone()[0]


def load_profiles(conn: psycopg.Connection) -> list[tuple[int, str, str, int, dict]]:
    """Every profile version: ``(id, vendor_code, name, version, document)``."""
    rows = conn.execute("""SELECT p.id, v.code, p.name, p.version, p.document
                           FROM profiles p JOIN vendors v ON v.id = p.vendor_id
                           ORDER BY v.code, p.name, p.version""").fetchall()
    return rows


# --- the API (async) ---------------------------------------------------------------------------

async def vendor_id(conn: psycopg.AsyncConnection, vendor: str, *, scope: int | None) -> int:
    cur = await conn.execute(
        "SELECT id FROM vendors WHERE code = %s AND (%s::bigint IS NULL OR id = %s)", (vendor, scope, scope))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"vendor {vendor!r} does not exist", code="vendor_not_found")
    return row[0]


async def create_version(pool: AsyncConnectionPool, *, vendor: str, scope: int | None, name: str,
                         format: str, topic: str, document: dict[str, Any], actor: str) -> dict:
    """Store ``document`` as the next version of profile ``name`` (version 1 if new)."""
    async with pool.connection() as conn, conn.transaction():
        owner = await vendor_id(conn, vendor, scope=scope)
        # One writer per vendor at a time, so two new versions never race for a number.
        await conn.execute("SELECT 1 FROM vendors WHERE id = %s FOR UPDATE", (owner,))
        cur = await conn.execute(
            """SELECT p.id, p.version, p.document FROM profiles p WHERE p.vendor_id = %s AND p.name = %s
               ORDER BY p.version DESC LIMIT 1""", (owner, name))
        latest = await cur.fetchone()
        if latest is not None and latest[2] == document:
            return await _get(conn, latest[0])  # unchanged: no new version
        cur = await conn.execute(
            """SELECT p.topic, p.name FROM profiles p
               WHERE p.vendor_id = %s AND p.name <> %s AND p.topic = %s LIMIT 1""", (owner, name, topic))
        clash = await cur.fetchone()
        if clash is not None:
            raise Conflict(f"profile {clash[1]!r} already uses topic {topic!r}; a topic pattern belongs to "
                           "one profile", code="topic_in_use")
        version = 1 if latest is None else latest[1] + 1
        cur = await conn.execute(
            """INSERT INTO profiles (vendor_id, name, version, format, topic, document, created_by)
               VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (owner, name, version, format, topic, Jsonb(document), actor))
        profile_id = (await cur.fetchone())[0]
        await record(conn, actor=actor, action="profile.create",
                     target=f"vendor:{vendor}/profile:{name}@{version}", detail={"id": profile_id})
        return await _get(conn, profile_id)


async def _get(conn: psycopg.AsyncConnection, profile_id: int) -> dict:
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"SELECT {_COLUMNS} FROM profiles p JOIN vendors v ON v.id = p.vendor_id WHERE p.id = %s", (profile_id,))
    return await cur.fetchone()


async def list_profiles(pool: AsyncConnectionPool, *, vendor: str, scope: int | None,
                        name: str | None = None) -> list[dict]:
    """Every version of the vendor's profiles (or of one of them), newest first within a name."""
    async with pool.connection() as conn:
        owner = await vendor_id(conn, vendor, scope=scope)
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"""SELECT {_COLUMNS} FROM profiles p JOIN vendors v ON v.id = p.vendor_id
                WHERE p.vendor_id = %s AND (%s::text IS NULL OR p.name = %s)
                ORDER BY p.name, p.version DESC""", (owner, name, name))
        rows = await cur.fetchall()
    if name is not None and not rows:
        raise NotFound(f"vendor {vendor!r} has no profile {name!r}", code="profile_not_found")
    return rows


async def get_profile(pool: AsyncConnectionPool, *, vendor: str, scope: int | None, name: str,
                      version: int | None) -> dict:
    """One version, or the newest when ``version`` is None."""
    async with pool.connection() as conn:
        return await _find(conn, vendor=vendor, scope=scope, name=name, version=version)


async def _find(conn: psycopg.AsyncConnection, *, vendor: str, scope: int | None, name: str,
                version: int | None) -> dict:
    owner = await vendor_id(conn, vendor, scope=scope)
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"""SELECT {_COLUMNS} FROM profiles p JOIN vendors v ON v.id = p.vendor_id
            WHERE p.vendor_id = %s AND p.name = %s AND (%s::int IS NULL OR p.version = %s)
            ORDER BY p.version DESC LIMIT 1""", (owner, name, version, version))
    row = await cur.fetchone()
    if row is None:
        which = f"{name!r}" if version is None else f"{name!r} version {version}"
        raise NotFound(f"vendor {vendor!r} has no profile {which}", code="profile_not_found")
    return row


async def delete_version(pool: AsyncConnectionPool, *, vendor: str, scope: int | None, name: str,
                         version: int, actor: str) -> None:
    async with pool.connection() as conn, conn.transaction():
        row = await _find(conn, vendor=vendor, scope=scope, name=name, version=version)
        if row["devices"]:
            raise Conflict(f"profile {name!r} version {version} is used by {row['devices']} device(s); "
                           "move them to another version first", code="profile_in_use")
        await conn.execute("DELETE FROM profiles WHERE id = %s", (row["id"],))
        await record(conn, actor=actor, action="profile.delete",
                     target=f"vendor:{vendor}/profile:{name}@{version}", detail={"id": row["id"]})


async def move_devices(pool: AsyncConnectionPool, *, vendor: str, scope: int | None, name: str,
                       version: int | None, device_ext_ids: list[str] | None, from_version: int | None,
                       actor: str) -> dict:
    """Pin devices to a profile version: the listed ones, or every device on ``from_version``
    (or on any version of the profile when both are None). Returns the profile and the count."""
    async with pool.connection() as conn, conn.transaction():
        target = await _find(conn, vendor=vendor, scope=scope, name=name, version=version)
        owner = await vendor_id(conn, vendor, scope=scope)
        if device_ext_ids is not None:
            cur = await conn.execute(
                "SELECT ext_id FROM devices WHERE vendor_id = %s AND ext_id = ANY(%s)", (owner, device_ext_ids))
            found = {r[0] for r in await cur.fetchall()}
            missing = [e for e in device_ext_ids if e not in found]
            if missing:
                raise NotFound(f"vendor {vendor!r} has no device(s) {', '.join(map(repr, missing[:20]))}",
                               code="device_not_found")
            cur = await conn.execute(
                """UPDATE devices SET profile_id = %s WHERE vendor_id = %s AND ext_id = ANY(%s)
                   AND profile_id IS DISTINCT FROM %s""", (target["id"], owner, device_ext_ids, target["id"]))
        else:
            cur = await conn.execute(
                """UPDATE devices d SET profile_id = %(target)s FROM profiles p
                   WHERE p.id = d.profile_id AND d.vendor_id = %(owner)s AND p.name = %(name)s
                     AND (%(from)s::int IS NULL OR p.version = %(from)s) AND d.profile_id <> %(target)s""",
                {"target": target["id"], "owner": owner, "name": name, "from": from_version})
        moved = cur.rowcount
        await record(conn, actor=actor, action="profile.move_devices",
                     target=f"vendor:{vendor}/profile:{name}@{target['version']}",
                     detail={"devices": device_ext_ids, "from_version": from_version, "moved": moved})
        target["devices"] += moved
        return {"profile": target, "moved": moved}
