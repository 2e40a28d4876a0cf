from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, status

from cimtwin.api.auth import ANY_ROLE, Principal, require
from cimtwin.api.deps import get_pool
from cimtwin.schemas.access import Role
from cimtwin.schemas import Device, DeviceIn, Sensor, Vendor, VendorIn
from cimtwin.store import registry as store

router = APIRouter(tags=["registry"])
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0)]


@router.post("/vendors", status_code=status.HTTP_201_CREATED, response_model=Vendor)
async def create_vendor(body: VendorIn, principal: Principal = Depends(require(Role.admin)), pool=Depends(get_pool)):
    return await store.create_vendor(pool, body, actor=principal.actor)


@router.get("/vendors", response_model=list[Vendor])
async def list_vendors(principal: Principal = Depends(require(*ANY_ROLE)), pool=Depends(get_pool)):
    return await store.list_vendors(pool, vendor_id=principal.vendor_scope)


@router.post("/devices", status_code=status.HTTP_201_CREATED, response_model=Device,
             summary="Register a device with its channels (re-posting updates it and adds channels)")
async def register_device(body: DeviceIn, principal: Principal = Depends(require(Role.admin, Role.vendor)),
                          pool=Depends(get_pool)):
    principal.ensure_vendor(body.vendor)
    return await store.register_device(pool, body)


@router.get("/devices", response_model=list[Device])
async def list_devices(vendor: str | None = None, limit: Limit = 100, offset: Offset = 0,
                       principal: Principal = Depends(require(*ANY_ROLE)), pool=Depends(get_pool)):
    return await store.list_devices(pool, vendor=vendor, limit=limit, offset=offset, vendor_id=principal.vendor_scope)


@router.get("/devices/{device_id}", response_model=Device)
async def get_device(device_id: int, principal: Principal = Depends(require(*ANY_ROLE)), pool=Depends(get_pool)):
    return await store.get_device(pool, device_id, vendor_id=principal.vendor_scope)


@router.get("/sensors/{sensor_id}", response_model=Sensor)
async def get_sensor(sensor_id: int, principal: Principal = Depends(require(*ANY_ROLE)), pool=Depends(get_pool)):
    return await store.get_sensor(pool, sensor_id, vendor_id=principal.vendor_scope)
