"""The twin of a building over HTTP: its tree with live state, and a floor plan as GeoJSON.

Readers only (admin, operator, analyst): a building's interior is not scoped to one vendor."""

from typing import Annotated

from cimtwin.api.auth import READERS, require
from cimtwin.api.deps import get_pool
from cimtwin.api.services import twin as service
from cimtwin.api.services.spatial import GEOJSON
from fastapi import APIRouter, Depends, Path, Query, Request, Response

router = APIRouter(tags=["twin"], dependencies=[Depends(require(*READERS))])


def get_tree_cache(request: Request) -> service.TreeCache:
    """This app's cache of building structures (made on first use)."""
    cache = getattr(request.app.state, "twin_tree_cache", None)
    if cache is None:
        cache = request.app.state.twin_tree_cache = service.TreeCache()
    return cache


@router.get("/twin/buildings/{building_id}", response_class=Response,
            summary="A building's tree (floors → rooms → components → sensors) with live state rolled up",
            description="Each sensor's `state`: `alarm` (an unfinished major/critical alert), `warning` "
                        "(an unfinished info/warning alert), `offline` (no reading for longer than "
                        "CIMTWIN_SENSOR_OFFLINE_AFTER_S, or never), else `ok`. Every other node carries "
                        "`counts` of the sensors beneath it by state and a `state`: the worst of "
                        "alarm > warning > ok among them, `offline` when all are offline, null when there "
                        "are none. Components and sensors hang under their room, else their floor, else "
                        "the building. 3D: building `height`/`min_height`; floor `elevation`, "
                        "`min_height`, `height` (storey) and `top`.",
            responses={200: {"content": {"application/json": {}}, "description": "the tree"}})
async def building_tree(request: Request, building_id: Annotated[int, Path(ge=1)], pool=Depends(get_pool),
                        cache=Depends(get_tree_cache)):
    text = await service.building_tree(pool=pool, cache=cache, building_id=building_id,
                                       offline_after_s=request.app.state.settings.sensor_offline_after_s)
    return Response(content=text, media_type="application/json")


@router.get("/twin/buildings/{building_id}/floors/{level}", response_class=Response,
            summary="A floor plan: the floor's rooms, components and sensors as GeoJSON, with live state",
            description="Feature ids are `room.<id>`, `component.<id>` and `sensor.<id>`; `properties.kind` "
                        "says which. Sensors carry their latest `value` and `time`, and every feature its "
                        "`state` (rooms and components rolled up from their sensors). The collection's "
                        "`floor` member has the floor's 3D attributes and roll-up.",
            responses={200: {"content": {GEOJSON: {}}, "description": "GeoJSON FeatureCollection"}})
async def floor_plan(request: Request, building_id: Annotated[int, Path(ge=1)], level: int,
                     crs: Annotated[str | None, Query(description="Output CRS: CRS84 (default), EPSG:4326, "
                                                                  "EPSG:4490, EPSG:3857, GCJ02, …")] = None,
                     pool=Depends(get_pool)):
    text, headers = await service.floor_plan(pool=pool, building_id=building_id, level=level, crs=crs,
                                             offline_after_s=request.app.state.settings.sensor_offline_after_s)
    return Response(content=text, media_type=GEOJSON, headers=headers)
