"""Spatial queries: which buildings, components or sensors lie in a polygon or bbox, within a
distance of a point, or nearest to it; and what holds a point (building, grid → district)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from cimtwin.api.deps import get_pool
from cimtwin.api.services import spatial as service
from cimtwin.schemas.spatial import SpatialSearch
from cimtwin.settings import get_settings

from .blocks import _GEO, CrsParam, GeomCrsParam, SpatialArgs, _geojson, spatial_args

router = APIRouter(prefix="/spatial", tags=["spatial"])


@router.get("/containment", responses=_GEO, response_class=Response,
            summary="What holds a point: its building, then grid → community → street → district")
async def containment(point: Annotated[str, Query(description="x,y, WKT or GeoJSON point in geom-crs")],
                      geom_crs: GeomCrsParam = None, crs: CrsParam = None, pool=Depends(get_pool)):
    return _geojson(await service.containment(pool=pool, point=point, geom_crs=geom_crs, crs=crs))


@router.get("/{layer}", responses=_GEO, response_class=Response,
            summary="Features of a layer in a bbox or geometry, within a distance of a point, or nearest to it")
async def query(request: Request, layer: Literal["buildings", "components", "sensors", "areas"],
                kind: Annotated[list[str] | None, Query(description="components: kind codes")] = None,
                area: Annotated[str | None, Query(description="area code (buildings/components: in it or "
                                                              "below it; sensors: inside its polygon)")] = None,
                args: SpatialArgs = Depends(spatial_args), pool=Depends(get_pool)):
    filters = {"kind": kind, "area": area}
    return _geojson(await service.query_layer(pool=pool, settings=get_settings(), layer=layer, args=args,
                                              filters=filters, url=str(request.url)))


@router.post("/{layer}/search", responses=_GEO, response_class=Response,
             summary="The same query with its parameters in a JSON body (for query polygons too long for a URL)")
async def search(request: Request, layer: Literal["buildings", "components", "sensors", "areas"],
                 body: SpatialSearch, pool=Depends(get_pool)):
    """The parameters of ``GET /spatial/{layer}`` as JSON, with the same limits. The ``next``
    link says to POST the same body again with its ``offset`` and ``limit`` merged in."""
    return _geojson(await service.search(pool=pool, settings=get_settings(), layer=layer, body=body,
                                         url=str(request.url)))
