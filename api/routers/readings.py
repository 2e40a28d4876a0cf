from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from cimtwin.api.auth import ANY_ROLE, INGEST_READERS, Principal, require
from cimtwin.api.deps import get_pool
from cimtwin.api.services import readings as service
from cimtwin.schemas.api import DeadLetterOut, LatestReading, PendingDeviceOut, SensorReadings
from cimtwin.settings import get_settings
from cimtwin.store import readings as store

router = APIRouter(tags=["readings"])
Page = Annotated[int, Query(ge=1, le=10_000)]
Offset = Annotated[int, Query(ge=0)]


@router.get("/sensors/{sensor_id}/readings", response_model=SensorReadings, response_model_exclude_none=True,
            summary="Raw readings (paged) or 1m/1h/… buckets with avg, min, max and count")
async def sensor_readings(
    request: Request, sensor_id: int,
    start: Annotated[datetime | None, Query(description="ISO 8601; default end − 24 h")] = None,
    end: Annotated[datetime | None, Query(description="ISO 8601, exclusive; default now")] = None,
    bucket: Annotated[str | None, Query(description="e.g. 1m, 15m, 1h, 1d; omit for raw readings")] = None,
    limit: Annotated[int, Query(ge=1, description="raw readings per page")] = 1000,
    order: Literal["asc", "desc"] = "asc",
    principal: Principal = Depends(require(*ANY_ROLE)),
    pool=Depends(get_pool),
):
    return await service.sensor_readings(
        pool, sensor_id=sensor_id, start=start, end=end, bucket=bucket, limit=limit, vendor_id=principal.vendor_scope,
        max_limit=get_settings().api_max_raw_rows, order=order, base_url=str(request.url.remove_query_params(
            ["start", "end", "limit", "order"])).split("?")[0])


@router.get("/readings/latest", response_model=list[LatestReading], summary="The latest value of each sensor")
async def latest(vendor: str | None = None, device: str | None = None,
                 sensor_id: Annotated[list[int] | None, Query()] = None,
                 limit: Page = 1000, offset: Offset = 0, principal: Principal = Depends(require(*ANY_ROLE)),
                 pool=Depends(get_pool)):
    return await service.latest(pool, vendor=vendor, device=device, sensor_ids=sensor_id, limit=limit, offset=offset,
                                vendor_id=principal.vendor_scope)


@router.get("/dead-letters", response_model=list[DeadLetterOut], tags=["ingest"],
            summary="Messages that could not be stored, with their reason and raw payload")
async def dead_letters(vendor: str | None = None, reason_code: str | None = None, since: datetime | None = None,
                       limit: Page = 100, offset: Offset = 0,
                       principal: Principal = Depends(require(*INGEST_READERS)), pool=Depends(get_pool)):
    return await store.dead_letters(pool, vendor=vendor, reason_code=reason_code, since=since,
                                    limit=limit, offset=offset, vendor_id=principal.vendor_scope)


@router.get("/pending-devices", response_model=list[PendingDeviceOut], tags=["ingest"],
            summary="Devices that published before they were registered")
async def pending_devices(vendor: str | None = None, limit: Page = 100, offset: Offset = 0,
                          principal: Principal = Depends(require(*INGEST_READERS)), pool=Depends(get_pool)):
    return await store.pending_devices(pool, vendor=vendor, limit=limit, offset=offset,
                                       vendor_id=principal.vendor_scope)
