"""Vector tiles (MVT from PostGIS) and TileJSON 3.0.0."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response

from cimtwin.api.auth import key_in_url
from cimtwin.api.deps import get_pool
from cimtwin.api.services import tiles as service

router = APIRouter(prefix="/tiles", tags=["tiles"])


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.get("", summary="The tile layers, with their TileJSON")
async def layers(request: Request) -> JSONResponse:
    return JSONResponse(service.layers(base_url=_base(request), link_params=key_in_url(request)))


@router.get("/{layer}.json", summary="TileJSON 3.0.0 of one layer")
async def tilejson(layer: str, request: Request, pool=Depends(get_pool)) -> JSONResponse:
    body = await service.tilejson(pool=pool, settings=request.app.state.settings, base_url=_base(request),
                                  layer=layer, link_params=key_in_url(request))
    return JSONResponse(body, headers={"Cache-Control": "no-cache"})


@router.get("/{layer}/{z}/{x}/{y}.mvt", response_class=Response,
            summary="One Mapbox Vector Tile; 204 when empty; ETag and Cache-Control for revalidation",
            responses={200: {"content": {service.MVT: {}}, "description": "The tile"},
                       204: {"description": "Empty tile, or below the layer's minzoom"},
                       304: {"description": "Not modified (If-None-Match)"}})
async def tile(layer: str, z: int, x: int, y: int, request: Request,
               if_none_match: str | None = Header(default=None), pool=Depends(get_pool)) -> Response:
    result = await service.tile(pool=pool, settings=request.app.state.settings, layer=layer, z=z, x=x, y=y,
                                if_none_match=if_none_match)
    return Response(result.body if result.status == 200 else None, status_code=result.status,
                    headers=result.headers)
