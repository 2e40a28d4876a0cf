"""Vendors' MQTT credentials: make, list, revoke (async, for the API and the CLI), and the active
hashes that cimtwin/broker_auth.py writes into the broker's password file (sync).

Only Mosquitto-format hashes are stored; every change is audited in the same transaction.
"""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import Conflict, NotFound
from cimtwin.schemas.mqtt import MqttCredential

from . import audit

_COLUMNS = """c.id, v.code AS vendor, c.username, c.created_at, c.created_by, c.revoked_at, c.revoked_by"""
_SYNC_LOCK_KEY = 0x63696D71  # "cimq": one broker sync at a time


async def _vendor_id(conn, vendor_code: str, vendor_id: int | None) -> int:
    cur = await conn.execute("SELECT id FROM vendors WHERE code = %s AND (%s::bigint IS NULL OR id = %s)",
                             (vendor_code, vendor_id, vendor_id))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"vendor {vendor_code!r} does not exist", code="vendor_not_found")
    return row[0]


async def _get(conn, credential_id: int) -> MqttCredential:
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"SELECT {_COLUMNS} FROM mqtt_credentials c JOIN vendors v ON v.id = c.vendor_id WHERE c.id = %s",
        (credential_id,))
    return MqttCredential(**await cur.fetchone())


async def create_credential(pool: AsyncConnectionPool, *, vendor_code: str, password_hash: str, actor: str,
                            replace: bool = False, vendor_id: int | None = None) -> MqttCredential:
    """Stores a credential for the vendor (username = its code), audited as ``mqtt_credential.create``.

    A vendor has at most one active credential: with ``replace`` the active one is revoked in the
    same transaction (audited as ``mqtt_credential.revoke``), else that is a Conflict.
    """
    async with pool.connection() as conn, conn.transaction():
        vid = await _vendor_id(conn, vendor_code, vendor_id)
        # Serialize makers for this vendor, so two concurrent replaces cannot both find "no active".
        await conn.execute("SELECT 1 FROM vendors WHERE id = %s FOR UPDATE", (vid,))
        cur = await conn.execute("SELECT id FROM mqtt_credentials WHERE vendor_id = %s AND revoked_at IS NULL",
                                 (vid,))
        active = await cur.fetchone()
        if active is not None:
            if not replace:
                raise Conflict(f"vendor {vendor_code!r} already has an active MQTT credential (id {active[0]}); "
                               "revoke it first, or make the new one with replace", code="credential_exists",
                               credential_id=active[0])
            await _revoke(conn, active[0], actor=actor, reason="replaced")
        try:
            cur = await conn.execute(
                """INSERT INTO mqtt_credentials (vendor_id, username, password_hash, created_by)
                   VALUES (%s, %s, %s, %s) RETURNING id""", (vid, vendor_code, password_hash, actor))
        except psycopg.errors.UniqueViolation:
            raise Conflict(f"vendor {vendor_code!r} already has an active MQTT credential",
                           code="credential_exists") from None
        credential_id = (await cur.fetchone())[0]
        await audit.record(conn, actor=actor, action="mqtt_credential.create",
                           target=f"mqtt_credential:{credential_id}",
                           detail={"vendor": vendor_code, "username": vendor_code,
                                   "replaced": active[0] if active is not None else None})
        return await _get(conn, credential_id)


async def _revoke(conn, credential_id: int, *, actor: str, reason: str) -> bool:
    cur = await conn.execute(
        """UPDATE mqtt_credentials c SET revoked_at = now(), revoked_by = %s
           FROM vendors v WHERE v.id = c.vendor_id AND c.id = %s AND c.revoked_at IS NULL
           RETURNING v.code, c.username""", (actor, credential_id))
    row = await cur.fetchone()
    if row is None:
        return False
    await audit.record(conn, actor=actor, action="mqtt_credential.revoke", target=f"mqtt_credential:{credential_id}",
                       detail={"vendor": row[0], "username": row[1], "reason": reason})
    return True


async def revoke_credential(pool: AsyncConnectionPool, *, vendor_code: str, credential_id: int, actor: str,
                            vendor_id: int | None = None) -> tuple[MqttCredential, bool]:
    """Revokes the vendor's credential ``credential_id``; returns it and whether it changed now
    (revoking a revoked credential changes nothing and is not audited again)."""
    async with pool.connection() as conn, conn.transaction():
        vid = await _vendor_id(conn, vendor_code, vendor_id)
        cur = await conn.execute("SELECT 1 FROM mqtt_credentials WHERE id = %s AND vendor_id = %s",
                                 (credential_id, vid))
        if await cur.fetchone() is None:
            raise NotFound(f"vendor {vendor_code!r} has no MQTT credential {credential_id}",
                           code="credential_not_found")
        changed = await _revoke(conn, credential_id, actor=actor, reason="revoked")
        return await _get(conn, credential_id), changed


async def list_credentials(pool: AsyncConnectionPool, *, vendor_code: str | None = None,
                           vendor_id: int | None = None, include_revoked: bool = True) -> list[MqttCredential]:
    """Credentials (never their hashes), newest first; ``vendor_code`` must exist when given."""
    async with pool.connection() as conn:
        if vendor_code is not None:
            await _vendor_id(conn, vendor_code, vendor_id)
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"""SELECT {_COLUMNS} FROM mqtt_credentials c JOIN vendors v ON v.id = c.vendor_id
                WHERE (%(code)s::text IS NULL OR v.code = %(code)s)
                  AND (%(vid)s::bigint IS NULL OR c.vendor_id = %(vid)s)
                  AND (%(revoked)s OR c.revoked_at IS NULL)
                ORDER BY c.id DESC""",
            {"code": vendor_code, "vid": vendor_id, "revoked": include_revoked})
        return [MqttCredential(**r) for r in await cur.fetchall()]


# --- for the broker sync (synchronous) ----------------------------------------------------------

def lock_broker_sync(conn: psycopg.Connection) -> None:
    """Held until the caller's transaction ends: syncs run one at a time, so the last one to write
    the files has read the latest committed state."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SYNC_LOCK_KEY,))


def active_credential_hashes(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(username, Mosquitto hash) of every unrevoked credential, by username."""
    return [(u, h) for u, h in conn.execute(
        "SELECT username, password_hash FROM mqtt_credentials WHERE revoked_at IS NULL ORDER BY username")]
