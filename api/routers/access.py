"""API keys and the audit log (admin only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status

from cimtwin.api.auth import Principal, key_cache, require
from cimtwin.api.deps import get_pool
from cimtwin.api.services import access as service
from cimtwin.schemas.access import ApiKey, ApiKeyCreated, ApiKeyIn, AuditEntry, Role

admin = require(Role.admin)
router = APIRouter(tags=["access"], dependencies=[Depends(admin)])
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0)]


@router.post("/api-keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated,
             summary="Make an API key; the response holds the key, shown this once only")
async def create_key(body: ApiKeyIn, principal: Principal = Depends(admin), pool=Depends(get_pool)):
    return await service.create_key(pool=pool, body=body, actor=principal.actor)


@router.get("/api-keys", response_model=list[ApiKey], summary="API keys (never the keys themselves)")
async def list_keys(role: Role | None = None, vendor: str | None = None,
                    revoked: Annotated[bool, Query(description="include revoked keys")] = True,
                    limit: Limit = 100, offset: Offset = 0, pool=Depends(get_pool)):
    return await service.list_keys(pool=pool, role=role, vendor=vendor, include_revoked=revoked, limit=limit,
                                   offset=offset)


@router.get("/api-keys/{key_id}", response_model=ApiKey, summary="One API key")
async def get_key(key_id: int, pool=Depends(get_pool)):
    return await service.get_key(pool=pool, key_id=key_id)


@router.delete("/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Revoke an API key (at once in this process, within seconds everywhere)")
async def revoke_key(key_id: int, request: Request, principal: Principal = Depends(admin), pool=Depends(get_pool)):
    await service.revoke_key(pool=pool, key_id=key_id, actor=principal.actor)
    key_cache(request).forget(key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/audit", response_model=list[AuditEntry],
            summary="The audit log, newest first: credential, vendor and profile changes")
async def audit(actor: Annotated[str | None, Query(description="exactly, e.g. key:3:ops-desk")] = None,
                action: Annotated[str | None, Query(description="exactly (api_key.create), or all under a "
                                                                "prefix ending in a dot (api_key.)")] = None,
                target: Annotated[str | None, Query(description="prefix, e.g. api_key: or vendor:acme")] = None,
                since: Annotated[datetime | None, Query(description="ISO 8601, inclusive")] = None,
                until: Annotated[datetime | None, Query(description="ISO 8601, exclusive")] = None,
                limit: Limit = 100, offset: Offset = 0, pool=Depends(get_pool)):
    return await service.audit_entries(pool=pool, actor=actor, action=action, target=target, since=since,
                                       until=until, limit=limit, offset=offset)
