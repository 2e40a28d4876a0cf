"""Vendors' MQTT credentials. An admin manages any vendor's; a vendor key only its own."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Request, status

from cimtwin.api.auth import Principal, require
from cimtwin.api.deps import get_pool
from cimtwin.api.services import mqtt_credentials as service
from cimtwin.schemas.access import Role
from cimtwin.schemas.mqtt import MqttCredential, MqttCredentialChanged, MqttCredentialCreated, MqttCredentialIn

managers = require(Role.admin, Role.vendor)
router = APIRouter(tags=["mqtt credentials"])
VendorPath = Annotated[str, Path(description="the vendor's code")]


@router.post("/vendors/{code}/mqtt-credentials", status_code=status.HTTP_201_CREATED,
             response_model=MqttCredentialCreated,
             summary="Make the vendor's MQTT credential (username = vendor code); the password is shown "
                     "this once only")
async def create_credential(code: VendorPath, request: Request,
                            body: Annotated[MqttCredentialIn | None, Body()] = None,
                            principal: Principal = Depends(managers), pool=Depends(get_pool)):
    principal.ensure_vendor(code)
    body = body or MqttCredentialIn()
    return await service.create_credential(pool=pool, settings=request.app.state.settings, vendor_code=code,
                                           actor=principal.actor, replace=body.replace,
                                           vendor_id=principal.vendor_scope)


@router.get("/vendors/{code}/mqtt-credentials", response_model=list[MqttCredential],
            summary="The vendor's MQTT credentials, newest first (never passwords or hashes)")
async def list_credentials(code: VendorPath,
                           revoked: Annotated[bool, Query(description="include revoked credentials")] = True,
                           principal: Principal = Depends(managers), pool=Depends(get_pool)):
    return await service.list_credentials(pool=pool, vendor_code=code, vendor_id=principal.vendor_scope,
                                          include_revoked=revoked)


@router.delete("/vendors/{code}/mqtt-credentials/{credential_id}", response_model=MqttCredentialChanged,
               summary="Revoke an MQTT credential; the broker drops it at once, open connections included")
async def revoke_credential(code: VendorPath, credential_id: int, request: Request,
                            principal: Principal = Depends(managers), pool=Depends(get_pool)):
    principal.ensure_vendor(code)
    return await service.revoke_credential(pool=pool, settings=request.app.state.settings, vendor_code=code,
                                           credential_id=credential_id, actor=principal.actor,
                                           vendor_id=principal.vendor_scope)
