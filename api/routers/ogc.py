"""OGC API - Features at /ogc (Part 1 Core + GeoJSON + OAS 3.0, Part 2 CRS by reference)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from cimtwin.api.auth import API_KEY_PARAM, key_in_url
from cimtwin.api.deps import get_pool
from cimtwin.api.services import ogc as service

router = APIRouter(prefix="/ogc", tags=["ogc api features"])

_GEOJSON_RESPONSE = {200: {"content": {service.GEOJSON: {}}, "description": "GeoJSON"}}


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _settings(request: Request):
    return request.app.state.settings


def _geojson(result: service.GeoJsonBody) -> Response:
    return Response(result.body, media_type=service.GEOJSON, headers={"Content-Crs": f"<{result.content_crs}>"})


@router.get("", summary="Landing page")
@router.get("/", include_in_schema=False)
async def landing_page(request: Request) -> JSONResponse:
    return JSONResponse(service.landing_page(base_url=_base(request)))


@router.get("/conformance", summary="Conformance classes")
async def conformance() -> JSONResponse:
    return JSONResponse(service.conformance())


@router.get("/api", summary="OpenAPI 3.0 definition of the OGC API",
            responses={200: {"content": {service.OPENAPI_30: {}}, "description": "OpenAPI 3.0"}})
async def api_document(request: Request) -> JSONResponse:
    return JSONResponse(service.api_document(base_url=_base(request), settings=_settings(request)),
                        media_type=service.OPENAPI_30)


@router.get("/collections", summary="Feature collections, with extent and CRS list")
async def collections(request: Request, pool=Depends(get_pool)) -> JSONResponse:
    return JSONResponse(await service.collections(pool=pool, base_url=_base(request)))


@router.get("/collections/{collection_id}", summary="One feature collection")
async def collection(collection_id: str, request: Request, pool=Depends(get_pool)) -> JSONResponse:
    return JSONResponse(await service.collection(pool=pool, base_url=_base(request), collection_id=collection_id))


@router.get("/collections/{collection_id}/queryables", summary="Properties usable as ?name=value filters")
async def queryables(collection_id: str, request: Request) -> JSONResponse:
    return JSONResponse(service.queryables(base_url=_base(request), collection_id=collection_id),
                        media_type=service.SCHEMA_JSON)


@router.get("/collections/{collection_id}/feature-schema", summary="JSON Schema of one GeoJSON feature")
async def feature_schema(collection_id: str, request: Request) -> JSONResponse:
    return JSONResponse(service.feature_schema(base_url=_base(request), collection_id=collection_id),
                        media_type=service.SCHEMA_JSON)


@router.get("/collections/{collection_id}/items", response_class=Response, responses=_GEOJSON_RESPONSE,
            summary="Features, paged; filter with bbox, datetime and ?property=value")
async def items(
    collection_id: str, request: Request,
    bbox: Annotated[str | None, Query(description="minx,miny,maxx,maxy (CRS84 lon/lat unless bbox-crs)")] = None,
    bbox_crs: Annotated[str | None, Query(alias="bbox-crs", description="CRS URI of bbox")] = None,
    crs: Annotated[str | None, Query(description="CRS URI of the response (default CRS84)")] = None,
    limit: Annotated[str | None, Query(description="features per page (integer)")] = None,
    offset: Annotated[str | None, Query(description="features to skip (integer)")] = None,
    datetime: Annotated[str | None, Query(description="instant or interval (sensors: latest reading)")] = None,
    resultType: Annotated[str | None, Query(description="results (default) or hits")] = None,  # noqa: N803
    f: Annotated[str | None, Query(description="json")] = None,
    pool=Depends(get_pool),
) -> Response:
    # ?api_key= authenticates (api/auth.py); it is not a property filter.
    filters = [(k, v) for k, v in request.query_params.multi_items()
               if k not in service.ITEM_PARAMS and k != API_KEY_PARAM]
    return _geojson(await service.items(
        pool=pool, settings=_settings(request), base_url=_base(request), collection_id=collection_id,
        bbox=bbox, bbox_crs=bbox_crs, crs=crs, limit=limit, offset=offset, datetime_=datetime,
        result_type=resultType, f=f, filters=filters, link_params=key_in_url(request)))


@router.get("/collections/{collection_id}/items/{feature_id}", response_class=Response,
            responses=_GEOJSON_RESPONSE, summary="One feature")
async def item(collection_id: str, feature_id: str, request: Request,
               crs: Annotated[str | None, Query(description="CRS URI of the response (default CRS84)")] = None,
               f: Annotated[str | None, Query(description="json")] = None,
               pool=Depends(get_pool)) -> Response:
    return _geojson(await service.item(pool=pool, settings=_settings(request), base_url=_base(request),
                                       collection_id=collection_id, feature_id=feature_id, crs=crs, f=f))
