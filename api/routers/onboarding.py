"""Vendor onboarding: profiles (versioned), dry run, bulk device import, pending devices,
dead-letter replay. Everything sits under the vendor it belongs to."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status

from cimtwin.api.auth import Principal, require
from cimtwin.api.deps import get_pool
from cimtwin.api.services import onboarding as service
from cimtwin.errors import TooLarge
from cimtwin.schemas.access import Role
from cimtwin.schemas.onboarding import (DeviceImportOut, DryRunIn, DryRunOut, OnboardIn, OnboardOut,
                                        ProfileMoveIn, ProfileMoveOut, ProfileName, ProfileVersion, ReplayIn,
                                        ReplayOut)
from cimtwin.schemas.registry import DeviceExtId, VendorCode

router = APIRouter(tags=["onboarding"])
Vendor = Annotated[VendorCode, "the vendor's code"]
Writer = Depends(require(Role.admin, Role.vendor))
Reader = Depends(require(Role.admin, Role.operator, Role.analyst, Role.vendor))
MAX_UPLOAD_BYTES = 20 * 1024 * 1024

_PROFILE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "/schemas/profile"}},
    "application/yaml": {"schema": {"type": "string"}}}}}
_IMPORT_BODY = {"requestBody": {"required": True, "content": {
    "text/csv": {"schema": {"type": "string"}, "example":
                 "ext_id,name,profile,building_id,lon,lat\nenv-001,Lobby,acme-env,12,121.5,31.23\n"},
    "application/geo+json": {"schema": {"type": "object"}}}}}


async def _body(request: Request) -> bytes:
    data = await request.body()
    if len(data) > MAX_UPLOAD_BYTES:
        raise TooLarge(f"the body is {len(data)} bytes; the limit is {MAX_UPLOAD_BYTES}", code="body_too_large")
    return data


@router.post("/vendors/{vendor}/profiles", status_code=status.HTTP_201_CREATED, response_model=ProfileVersion,
             openapi_extra=_PROFILE_BODY,
             summary="Save a profile (YAML or JSON): version 1, or the next version of the same name")
async def create_profile(vendor: Vendor, request: Request, principal: Principal = Writer, pool=Depends(get_pool)):
    return await service.create_profile(pool=pool, principal=principal, vendor=vendor, text=await _body(request))


@router.get("/vendors/{vendor}/profiles", response_model=list[ProfileVersion], summary="Every profile version")
async def list_profiles(vendor: Vendor, principal: Principal = Reader, pool=Depends(get_pool)):
    return await service.list_profiles(pool=pool, principal=principal, vendor=vendor)


@router.get("/vendors/{vendor}/profiles/{name}", response_model=list[ProfileVersion],
            summary="The versions of one profile, newest first")
async def profile_versions(vendor: Vendor, name: ProfileName, principal: Principal = Reader, pool=Depends(get_pool)):
    return await service.list_profiles(pool=pool, principal=principal, vendor=vendor, name=name)


@router.get("/vendors/{vendor}/profiles/{name}/versions/{version}", response_model=ProfileVersion)
async def profile_version(vendor: Vendor, name: ProfileName, version: int, principal: Principal = Reader,
                          pool=Depends(get_pool)):
    return await service.get_profile(pool=pool, principal=principal, vendor=vendor, name=name, version=version)


@router.delete("/vendors/{vendor}/profiles/{name}/versions/{version}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Delete a version no device is pinned to")
async def delete_profile_version(vendor: Vendor, name: ProfileName, version: int, principal: Principal = Writer,
                                 pool=Depends(get_pool)):
    await service.delete_profile_version(pool=pool, principal=principal, vendor=vendor, name=name, version=version)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/vendors/{vendor}/profiles/{name}/move", response_model=ProfileMoveOut,
             summary="Move devices to a version of this profile (devices keep theirs until moved)")
async def move_devices(vendor: Vendor, name: ProfileName, body: ProfileMoveIn, principal: Principal = Writer,
                       pool=Depends(get_pool)):
    return await service.move_devices(pool=pool, principal=principal, vendor=vendor, name=name, body=body)


@router.post("/vendors/{vendor}/dry-run", response_model=DryRunOut,
             summary="Decode a sample message with a saved or unsaved profile; nothing is stored")
async def dry_run(vendor: Vendor, body: DryRunIn, principal: Principal = Writer, pool=Depends(get_pool)):
    return await service.dry_run(pool=pool, principal=principal, vendor=vendor, body=body)


@router.post("/vendors/{vendor}/devices/import", response_model=DeviceImportOut, openapi_extra=_IMPORT_BODY,
             summary="Register or update devices from CSV or GeoJSON; each rejected row is listed")
async def import_devices(vendor: Vendor, request: Request,
                         dry_run: Annotated[bool, Query(description="validate only")] = False,
                         crs: Annotated[str | None, Query(description="CRS of lon/lat or the geometries")] = None,
                         principal: Principal = Writer, pool=Depends(get_pool)):
    data = await _body(request)
    return await service.import_devices(pool=pool, principal=principal, vendor=vendor, data=data,
                                        media_type=request.headers.get("content-type", "text/csv"),
                                        crs=crs, dry_run=dry_run)


@router.post("/vendors/{vendor}/pending-devices/{ext_id}/onboard", status_code=status.HTTP_201_CREATED,
             response_model=OnboardOut, summary="Register a pending device and replay its held-back messages")
async def onboard(vendor: Vendor, ext_id: DeviceExtId, request: Request, body: OnboardIn | None = None,
                  principal: Principal = Writer, pool=Depends(get_pool)):
    return await service.onboard_pending(pool=pool, settings=request.app.state.settings, principal=principal,
                                         vendor=vendor, ext_id=ext_id, body=body or OnboardIn())


@router.post("/vendors/{vendor}/dead-letters/replay", response_model=ReplayOut,
             summary="Replay the vendor's dead letters after a fix; a letter is stored at most once")
async def replay_vendor(vendor: Vendor, body: ReplayIn, request: Request, principal: Principal = Writer,
                        pool=Depends(get_pool)):
    return await service.replay_dead_letters(pool=pool, settings=request.app.state.settings, principal=principal,
                                             vendor=vendor, body=body)


@router.post("/dead-letters/replay", response_model=ReplayOut, tags=["ingest"],
             summary="Replay dead letters of any vendor (a vendor key: its own)")
async def replay_any(body: ReplayIn, request: Request,
                     principal: Principal = Depends(require(Role.admin, Role.operator, Role.vendor)),
                     pool=Depends(get_pool)):
    return await service.replay_dead_letters(pool=pool, settings=request.app.state.settings, principal=principal,
                                             vendor=None, body=body)
