"""The block-data model over HTTP: areas, buildings, floors, rooms, components, parties,
party assignments; where sensors and devices are.

Feature lists are GeoJSON FeatureCollections with ``numberMatched``, ``numberReturned`` and
a ``next`` link, and accept the spatial filters of ``/spatial/{layer}`` too. Bodies carry
GeoJSON geometries in ``geom-crs`` (default CRS84); responses are in ``crs``.
"""

# No `from __future__ import annotations` here: the route factory below annotates with
# the body models it is given, which FastAPI must see as real classes.
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status

from cimtwin.api.auth import ANY_ROLE, READERS, STAFF, Principal, require
from cimtwin.api.deps import get_pool
from cimtwin.api.services import blocks as service
from cimtwin.api.services.spatial import GEOJSON, SpatialArgs, query_layer
from cimtwin.schemas.blocks import (
    AreaIn,
    AreaLevel,
    AreaPatch,
    Assignment,
    AssignmentIn,
    BuildingIn,
    BuildingPatch,
    ComponentIn,
    ComponentKind,
    ComponentPatch,
    DeviceLocationIn,
    FloorIn,
    FloorPatch,
    PartyIn,
    PartyKind,
    PartyPatch,
    RoomIn,
    RoomPatch,
    SensorPlaceIn,
)
from cimtwin.schemas.access import Role
from cimtwin.settings import get_settings

router = APIRouter(tags=["blocks"])

# Every role reads block data (vendors to place their sensors); admin and operator write it.
# Parties are not for vendors. A vendor places only its own sensors and devices.
_WRITE = [Depends(require(*STAFF))]
_READ_PARTIES = [Depends(require(*READERS))]
_PLACE = require(*STAFF, Role.vendor)

_GEO = {200: {"content": {GEOJSON: {}}, "description": "GeoJSON"}}
CrsParam = Annotated[str | None, Query(description="Output CRS: CRS84 (default), EPSG:4326, EPSG:4490 "
                                                   "(CGCS2000), EPSG:3857, EPSG:4513-4554, GCJ02, …")]
GeomCrsParam = Annotated[str | None, Query(alias="geom-crs", description="CRS of `geom`/`point`/body "
                                                                         "geometries (default CRS84)")]
Limit = Annotated[int, Query(ge=1, description="page size; above CIMTWIN_API_MAX_PAGE_SIZE is a 400")]
Offset = Annotated[int, Query(ge=0)]


def spatial_args(
    bbox: Annotated[str | None, Query(description="minx,miny,maxx,maxy in bbox-crs")] = None,
    bbox_crs: Annotated[str | None, Query(alias="bbox-crs", description="CRS of bbox (default CRS84)")] = None,
    geom: Annotated[str | None, Query(description="WKT or GeoJSON geometry in geom-crs")] = None,
    geom_crs: GeomCrsParam = None,
    relation: Annotated[str, Query(description="intersects (default) or within (covered by `geom`)")] = "intersects",
    point: Annotated[str | None, Query(description="x,y, WKT or GeoJSON point in geom-crs; results are "
                                                   "ordered by distance and carry distance_m")] = None,
    distance: Annotated[float | None, Query(gt=0, description="metres from `point` (geodesic)")] = None,
    nearest: Annotated[int | None, Query(ge=1, description="the N features nearest to `point`")] = None,
    crs: CrsParam = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> SpatialArgs:
    return SpatialArgs(bbox=bbox, bbox_crs=bbox_crs, geom=geom, geom_crs=geom_crs, relation=relation, point=point,
                       distance=distance, nearest=nearest, crs=crs, limit=limit, offset=offset)


def _geojson(result: tuple[str, dict], status_code: int = 200) -> Response:
    text, headers = result
    return Response(content=text, media_type=GEOJSON, headers=headers, status_code=status_code)


async def _list(request: Request, pool, layer: str, args: SpatialArgs, filters: dict) -> Response:
    return _geojson(await query_layer(pool=pool, settings=get_settings(), layer=layer, args=args, filters=filters,
                                      url=str(request.url)))


# ----------------------------------------------------------------------------- code list

@router.get("/component-kinds", response_model=list[ComponentKind], summary="The code list of component kinds")
async def component_kinds(pool=Depends(get_pool)):
    return await service.component_kinds(pool=pool)


# ----------------------------------------------------------------------------- lists with filters

@router.get("/areas", responses=_GEO, response_class=Response,
            summary="Areas (district → street → community → grid)")
async def list_areas(request: Request, level: AreaLevel | None = None, parent_id: int | None = None,
                     code: str | None = None,
                     area_id: Annotated[int | None, Query(description="this area and all below it")] = None,
                     area: Annotated[str | None, Query(description="by code: this area and all below it")] = None,
                     q: Annotated[str | None, Query(description="in name or code")] = None,
                     args: SpatialArgs = Depends(spatial_args), pool=Depends(get_pool)):
    return await _list(request, pool, "areas", args, {"level": level, "parent_id": parent_id, "code": code,
                                                      "area_id": area_id, "area": area, "q": q})


@router.get("/buildings", responses=_GEO, response_class=Response, summary="Buildings")
async def list_buildings(request: Request,
                         area_id: Annotated[int | None, Query(description="in this area or below it")] = None,
                         area: Annotated[str | None, Query(description="area code; in it or below it")] = None,
                         ext_id: str | None = None, use: str | None = None,
                         q: Annotated[str | None, Query(description="in name, address or ext_id")] = None,
                         min_height: float | None = None, max_height: float | None = None,
                         args: SpatialArgs = Depends(spatial_args), pool=Depends(get_pool)):
    return await _list(request, pool, "buildings", args, {
        "area_id": area_id, "area": area, "ext_id": ext_id, "use": use, "q": q, "min_height": min_height,
        "max_height": max_height})


@router.get("/floors", responses=_GEO, response_class=Response, summary="Floors")
async def list_floors(request: Request, building_id: int | None = None, level: int | None = None,
                      args: SpatialArgs = Depends(spatial_args), pool=Depends(get_pool)):
    return await _list(request, pool, "floors", args, {"building_id": building_id, "level": level})


@router.get("/rooms", responses=_GEO, response_class=Response, summary="Rooms (units)")
async def list_rooms(request: Request, floor_id: int | None = None, building_id: int | None = None,
                     use: str | None = None, q: str | None = None,
                     args: SpatialArgs = Depends(spatial_args), pool=Depends(get_pool)):
    return await _list(request, pool, "rooms", args, {"floor_id": floor_id, "building_id": building_id,
                                                      "use": use, "q": q})


@router.get("/components", responses=_GEO, response_class=Response, summary="Components (部件)")
async def list_components(request: Request,
                          kind: Annotated[list[str] | None, Query(description="one or more kind codes")] = None,
                          building_id: int | None = None,
                          area_id: Annotated[int | None, Query(description="in this area or below it")] = None,
                          area: Annotated[str | None, Query(description="area code; in it or below it")] = None,
                          floor_id: int | None = None, room_id: int | None = None, ext_id: str | None = None,
                          q: str | None = None,
                          args: SpatialArgs = Depends(spatial_args), pool=Depends(get_pool)):
    return await _list(request, pool, "components", args, {
        "kind": kind, "building_id": building_id, "area_id": area_id, "area": area, "floor_id": floor_id,
        "room_id": room_id, "ext_id": ext_id, "q": q})


# ----------------------------------------------------------------------------- one feature: get, create, patch, delete

def _crud(path: str, layer: str, body_in, body_patch, noun: str) -> None:
    @router.get(f"/{path}/{{feature_id}}", responses=_GEO, response_class=Response, summary=f"One {noun}",
                name=f"get_{layer}")
    async def get_one(feature_id: int, crs: CrsParam = None, pool=Depends(get_pool)):
        return _geojson(await service.spatial.feature(pool=pool, layer=layer, feature_id=feature_id, crs=crs))

    @router.post(f"/{path}", status_code=status.HTTP_201_CREATED, responses={201: _GEO[200]},
                 response_class=Response, summary=f"Create a {noun}", name=f"create_{layer}", dependencies=_WRITE)
    async def create(body: body_in, geom_crs: GeomCrsParam = None, crs: CrsParam = None, pool=Depends(get_pool)):
        return _geojson(await service.create_feature(pool=pool, settings=get_settings(), layer=layer, body=body,
                                                     geom_crs=geom_crs, crs=crs), status.HTTP_201_CREATED)

    @router.patch(f"/{path}/{{feature_id}}", responses=_GEO, response_class=Response,
                  summary=f"Change a {noun} (only the fields given; a link set to null is derived again)",
                  name=f"update_{layer}", dependencies=_WRITE)
    async def patch(feature_id: int, body: body_patch, geom_crs: GeomCrsParam = None, crs: CrsParam = None,
                    pool=Depends(get_pool)):
        return _geojson(await service.update_feature(pool=pool, settings=get_settings(), layer=layer,
                                                     feature_id=feature_id, body=body, geom_crs=geom_crs, crs=crs))

    @router.delete(f"/{path}/{{feature_id}}", status_code=status.HTTP_204_NO_CONTENT, summary=f"Delete a {noun}",
                   name=f"delete_{layer}", dependencies=_WRITE)
    async def delete(feature_id: int, pool=Depends(get_pool)):
        await service.delete_feature(pool=pool, layer=layer, feature_id=feature_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)


_crud("areas", "areas", AreaIn, AreaPatch, "area")
_crud("buildings", "buildings", BuildingIn, BuildingPatch, "building")
_crud("floors", "floors", FloorIn, FloorPatch, "floor")
_crud("rooms", "rooms", RoomIn, RoomPatch, "room")
_crud("components", "components", ComponentIn, ComponentPatch, "component")


# ----------------------------------------------------------------------------- parties

@router.get("/parties", summary="Responsible parties (责任主体)", dependencies=_READ_PARTIES)
async def list_parties(request: Request, kind: PartyKind | None = None, q: str | None = None, limit: Limit = 100,
                       offset: Offset = 0, pool=Depends(get_pool)):
    return await service.list_parties(pool=pool, settings=get_settings(), kind=kind, q=q, limit=limit,
                                       offset=offset, url=str(request.url))


@router.post("/parties", status_code=status.HTTP_201_CREATED, summary="Create a party", dependencies=_WRITE)
async def create_party(body: PartyIn, pool=Depends(get_pool)):
    return await service.create_party(pool=pool, body=body)


@router.get("/parties/{party_id}", summary="One party", dependencies=_READ_PARTIES)
async def get_party(party_id: int, pool=Depends(get_pool)):
    return await service.get_party(pool=pool, party_id=party_id)


@router.patch("/parties/{party_id}", summary="Change a party", dependencies=_WRITE)
async def update_party(party_id: int, body: PartyPatch, pool=Depends(get_pool)):
    return await service.update_party(pool=pool, party_id=party_id, body=body)


@router.delete("/parties/{party_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a party",
               dependencies=_WRITE)
async def delete_party(party_id: int, pool=Depends(get_pool)):
    await service.delete_party(pool=pool, party_id=party_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/party-assignments", summary="What each party answers for", dependencies=_READ_PARTIES)
async def list_assignments(request: Request, party_id: int | None = None, area_id: int | None = None,
                           building_id: int | None = None, room_id: int | None = None,
                           component_id: int | None = None, component_kind: str | None = None,
                           role: str | None = None, limit: Limit = 100, offset: Offset = 0, pool=Depends(get_pool)):
    filters = {"party_id": party_id, "area_id": area_id, "building_id": building_id, "room_id": room_id,
               "component_id": component_id, "component_kind": component_kind, "role": role}
    return await service.list_assignments(pool=pool, settings=get_settings(), filters=filters, limit=limit,
                                          offset=offset, url=str(request.url))


@router.post("/party-assignments", status_code=status.HTTP_201_CREATED, response_model=Assignment,
             summary="Assign a party to an area, building, room, component, or a component kind in an area",
             dependencies=_WRITE)
async def create_assignment(body: AssignmentIn, pool=Depends(get_pool)):
    return await service.create_assignment(pool=pool, body=body)


@router.get("/party-assignments/{assignment_id}", response_model=Assignment, summary="One party assignment",
            dependencies=_READ_PARTIES)
async def get_assignment(assignment_id: int, pool=Depends(get_pool)):
    return await service.get_assignment(pool=pool, assignment_id=assignment_id)


@router.delete("/party-assignments/{assignment_id}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Remove a party assignment", dependencies=_WRITE)
async def delete_assignment(assignment_id: int, pool=Depends(get_pool)):
    await service.delete_assignment(pool=pool, assignment_id=assignment_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ----------------------------------------------------------------------------- where sensors and devices are

@router.get("/sensors/{sensor_id}/place", responses=_GEO, response_class=Response, tags=["registry"],
            summary="Where a sensor is: its component's, room's or building's geometry, or its device's point")
async def get_sensor_place(sensor_id: int, crs: CrsParam = None, principal: Principal = Depends(require(*ANY_ROLE)),
                           pool=Depends(get_pool)):
    return _geojson(await service.sensor_place(pool=pool, sensor_id=sensor_id, crs=crs,
                                               vendor_id=principal.vendor_scope))


@router.put("/sensors/{sensor_id}/place", responses=_GEO, response_class=Response, tags=["registry"],
            summary="Link a sensor to a component, room or building (all null: its device's point)")
async def set_sensor_place(sensor_id: int, body: SensorPlaceIn, crs: CrsParam = None,
                           principal: Principal = Depends(_PLACE), pool=Depends(get_pool)):
    return _geojson(await service.set_sensor_place(pool=pool, sensor_id=sensor_id, body=body, crs=crs,
                                                   vendor_id=principal.vendor_scope))


@router.put("/devices/{device_id}/location", status_code=status.HTTP_204_NO_CONTENT, tags=["registry"],
            summary="Set (or clear) a device's point")
async def set_device_location(device_id: int, body: DeviceLocationIn, geom_crs: GeomCrsParam = None,
                              principal: Principal = Depends(_PLACE), pool=Depends(get_pool)):
    await service.set_device_location(pool=pool, device_id=device_id, geometry=body.geometry, geom_crs=geom_crs,
                                      vendor_id=principal.vendor_scope)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
