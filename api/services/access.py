"""API keys and the audit log: thin rules over store.access and store.audit."""

from __future__ import annotations

from datetime import datetime, timezone

from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import BadRequest
from cimtwin.schemas.access import ApiKey, ApiKeyCreated, ApiKeyIn, AuditEntry, Role
from cimtwin.store import access as store
from cimtwin.store import audit


async def create_key(*, pool: AsyncConnectionPool, body: ApiKeyIn, actor: str) -> ApiKeyCreated:
    return await store.create_key(pool, body, actor=actor)


async def list_keys(*, pool: AsyncConnectionPool, role: Role | None, vendor: str | None, include_revoked: bool,
                    limit: int, offset: int) -> list[ApiKey]:
    return await store.list_keys(pool, role=role, vendor=vendor, include_revoked=include_revoked, limit=limit,
                                 offset=offset)


async def get_key(*, pool: AsyncConnectionPool, key_id: int) -> ApiKey:
    return await store.get_key(pool, key_id)


async def revoke_key(*, pool: AsyncConnectionPool, key_id: int, actor: str) -> ApiKey:
    return await store.revoke_key(pool, key_id, actor=actor)


def _utc(t: datetime | None) -> datetime | None:
    return t.replace(tzinfo=timezone.utc) if t is not None and t.tzinfo is None else t


async def audit_entries(*, pool: AsyncConnectionPool, actor: str | None, action: str | None,
                        target: str | None, since: datetime | None, until: datetime | None, limit: int,
                        offset: int) -> list[AuditEntry]:
    since, until = _utc(since), _utc(until)
    if since is not None and until is not None and since >= until:
        raise BadRequest(f"since ({since.isoformat()}) must be before until ({until.isoformat()})",
                         code="invalid_range")
    rows = await audit.entries(pool, actor=actor, action=action, target_prefix=target, since=since, until=until,
                               limit=limit, offset=offset)
    return [AuditEntry(**r) for r in rows]
