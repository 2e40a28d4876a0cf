"""Spatial queries over the block layers, and the GeoJSON/CRS plumbing the block endpoints share.

Inputs (``bbox`` with ``bbox-crs``; ``geom``/``point`` with ``geom-crs``) are parsed and
checked here, reprojected to the storage CRS (EPSG:4326) with :mod:`cimtwin.geo.crs`,
and bounded by the limits in Settings. PostgreSQL writes each feature's GeoJSON geometry
(``ST_AsGeoJSON(ST_Transform(…))``, for EPSG targets it knows) and its properties
(``json_build_object``); this module only joins the pieces. GCJ-02 (and any EPSG code
missing from ``spatial_ref_sys``) is reprojected here, vectorized over the page's
geometries. Coordinates are always x/y: lon/lat, or easting/northing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np
import shapely
from psycopg_pool import AsyncConnectionPool
from starlette.datastructures import URL

from cimtwin.errors import BadRequest, InvalidGeometry, TooLarge, UnknownCrs
from cimtwin.geo.checks import geodesic_bbox_area_km2, in_lonlat_range, parse_geometry
from cimtwin.geo.crs import CRS84, WGS84, CrsRef, UnknownCrsError, parse_crs, transform_geometry
from cimtwin.geo.dwithin import scaled_band
from cimtwin.schemas.spatial import SpatialSearch
from cimtwin.settings import Settings
from cimtwin.store import blocks as store

GEOJSON = "application/geo+json"
_DENSIFY_M = 50.0  # straight edges in a projected CRS stay (nearly) straight in lon/lat
_known_srids: dict[int, bool] = {}


# ----------------------------------------------------------------------------- CRS

def crs_param(value: str | None, *, name: str = "crs") -> CrsRef:
    """A CRS query parameter (default CRS84); an unknown one is a 400 that names it."""
    if value is None or value.strip() == "":
        return CRS84
    try:
        return parse_crs(value)
    except UnknownCrsError as exc:
        raise UnknownCrs(f"{name}: {exc}", crs=value) from None


@dataclass(frozen=True)
class OutputCrs:
    ref: CrsRef
    srid: int | None  # PostGIS reprojects to this; None: reprojected here from WKB
    digits: int

    @property
    def header(self) -> dict[str, str]:
        return {"Content-Crs": f"<{self.ref.uri}>"}

    def member(self) -> dict | None:
        """The (pre-RFC 7946) ``crs`` member that GDAL and QGIS read, for anything but CRS84."""
        if self.ref.code in ("OGC:CRS84",):
            return None
        return {"type": "name", "properties": {"name": self.ref.uri}}


async def output_crs(pool: AsyncConnectionPool, ref: CrsRef) -> OutputCrs:
    if ref.code in ("OGC:CRS84", "EPSG:4326"):
        return OutputCrs(ref, 4326, 9)
    digits = 9 if ref.is_geographic else 3
    epsg = ref.epsg
    if epsg is not None:
        if epsg not in _known_srids:
            _known_srids[epsg] = await store.srid_known(pool, epsg)
        if _known_srids[epsg]:
            return OutputCrs(ref, epsg, digits)
    return OutputCrs(ref, None, digits)


def geometry_texts(geometries: list, out: OutputCrs) -> list[str]:
    """The GeoJSON text of each geometry (GeoJSON text already, or WKB when srid is None)."""
    if out.srid is not None:
        return [g if g is not None else "null" for g in geometries]
    wkb = np.array(geometries, dtype=object)
    present = np.array([g is not None for g in wkb], dtype=bool)
    texts = np.full(len(geometries), "null", dtype=object)
    if present.any():
        geoms = shapely.from_wkb(wkb[present])
        geoms = transform_geometry(geoms, src=WGS84, dst=out.ref)
        texts[present] = shapely.to_geojson(geoms)
    return list(texts)


# ----------------------------------------------------------------------------- input geometry

def _to_storage(geom, ref: CrsRef, *, name: str):
    if ref.code not in ("OGC:CRS84", "EPSG:4326"):
        if not ref.is_geographic:
            geom = shapely.segmentize(geom, _DENSIFY_M)
        with np.errstate(all="ignore"):
            geom = transform_geometry(geom, src=ref, dst=WGS84)
    if not in_lonlat_range([geom])[0] or not np.isfinite(shapely.bounds(geom)).all():
        raise InvalidGeometry(f"{name}: the coordinates are not in {ref.code} (they fall outside lon/lat "
                              f"after reprojection)")
    if not shapely.is_valid(geom):
        raise InvalidGeometry(f"{name}: invalid geometry after reprojection from {ref.code}: "
                              f"{shapely.is_valid_reason(geom)}")
    return geom


def input_geometry(text: str, *, ref: CrsRef, name: str, allowed: tuple[str, ...] | None = None,
                   max_vertices: int | None = None):
    """A geometry from WKT, GeoJSON or ``x,y`` in ``ref``, checked and reprojected to EPSG:4326."""
    try:
        geom = parse_geometry(text, allowed=allowed, max_vertices=max_vertices)
    except ValueError as exc:
        raise InvalidGeometry(f"{name}: {exc}") from None
    return _to_storage(geom, ref, name=name)


def body_geometry(obj: dict | None, *, ref: CrsRef, allowed: tuple[str, ...] | None,
                  max_vertices: int) -> bytes | None:
    """A request body's GeoJSON geometry as EPSG:4326 WKB (None stays None)."""
    if obj is None:
        return None
    geom = input_geometry(json.dumps(obj), ref=ref, name="geometry", allowed=allowed, max_vertices=max_vertices)
    return shapely.to_wkb(geom)


def bbox_geometry(text: str, *, ref: CrsRef):
    """``minx,miny,maxx,maxy`` in ``ref`` as an EPSG:4326 polygon (densified if projected)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise BadRequest(f"bbox {text!r} is not minx,miny,maxx,maxy numbers", code="invalid_bbox") from None
    if len(values) == 6:  # minx,miny,minz,maxx,maxy,maxz
        values = [values[0], values[1], values[3], values[4]]
    if len(values) != 4 or not all(np.isfinite(values)):
        raise BadRequest(f"bbox {text!r} must be four numbers minx,miny,maxx,maxy", code="invalid_bbox")
    x0, y0, x1, y1 = values
    if x0 >= x1 or y0 >= y1:
        raise BadRequest(f"bbox {text!r}: minx must be below maxx and miny below maxy", code="invalid_bbox")
    return _to_storage(shapely.box(x0, y0, x1, y1), ref, name="bbox")


# ----------------------------------------------------------------------------- feature collections

def _json_default(value: Any):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":"))


_FEATURE = '{"type":"Feature","id":%d,"geometry":%s,"properties":%s}'


def feature_strings(rows: list[tuple], out: OutputCrs) -> list[str]:
    """Features from the store's (id, geometry, properties JSON text) rows."""
    geoms = geometry_texts([r[1] for r in rows], out)
    return [_FEATURE % (row[0], geom, row[2]) for row, geom in zip(rows, geoms)]


def feature_texts(rows: list[dict], out: OutputCrs, *, layer: str | None = None) -> list[str]:
    """Features from rows of named columns (a few at a time: containment)."""
    geoms = geometry_texts([r["geometry"] for r in rows], out)
    texts = []
    for row, geom in zip(rows, geoms):
        props = {k: v for k, v in row.items() if k not in ("id", "geometry")}
        if layer:
            props = {"layer": layer, **props}
        texts.append(_FEATURE % (row["id"], geom, dumps(props)))
    return texts


def collection_text(features: list[str], *, matched: int | None, out: OutputCrs, links: list[dict],
                    extra: dict | None = None) -> str:
    head = {"type": "FeatureCollection"}
    if member := out.member():
        head["crs"] = member
    if matched is not None:
        head["numberMatched"] = matched
    head["numberReturned"] = len(features)
    head["links"] = links
    if extra:
        head.update(extra)
    body = dumps(head)
    return body[:-1] + ',"features":[' + ",".join(features) + "]}"


def page_links(url: str, *, offset: int, limit: int, returned: int, matched: int | None,
               post: bool = False) -> list[dict]:
    """self and next links. For a POST search the next link says to POST the same body with
    ``offset`` and ``limit`` merged in (the convention of STAC API item search)."""
    if post:
        links = [{"rel": "self", "href": url, "type": GEOJSON, "method": "POST"}]
    else:
        links = [{"rel": "self", "href": url, "type": GEOJSON}]
    if matched is not None and offset + returned < matched:
        if post:
            links.append({"rel": "next", "href": url, "type": GEOJSON, "method": "POST",
                          "body": {"offset": offset + returned, "limit": limit}, "merge": True})
        else:
            nxt = URL(url).include_query_params(offset=offset + returned, limit=limit)
            links.append({"rel": "next", "href": str(nxt), "type": GEOJSON})
    return links


# ----------------------------------------------------------------------------- queries

@dataclass
class SpatialArgs:
    """The spatial and paging query parameters every feature list accepts."""

    bbox: str | None = None
    bbox_crs: str | None = None
    geom: str | None = None
    geom_crs: str | None = None
    relation: str = "intersects"
    point: str | None = None
    distance: float | None = None
    nearest: int | None = None
    crs: str | None = None
    limit: int = 100
    offset: int = 0


def _check_area(geom, settings: Settings, what: str) -> None:
    km2 = float(geodesic_bbox_area_km2([geom])[0])
    if km2 > settings.max_bbox_km2:
        raise TooLarge(f"the {what} covers {km2:,.1f} km² (its bounding box), more than the limit of "
                       f"{settings.max_bbox_km2:,.0f} km²; query a smaller region", code="bbox_too_large",
                       km2=round(km2, 3), limit_km2=settings.max_bbox_km2)


def check_limit(limit: int, settings: Settings) -> None:
    if limit > settings.api_max_page_size:
        raise TooLarge(f"limit {limit} is above the maximum page size of {settings.api_max_page_size}; "
                       f"follow the next link to page", code="limit_too_large")


def build_query(*, layer: str, args: SpatialArgs, filters: dict[str, Any], settings: Settings,
                out: OutputCrs) -> store.FeatureQuery:
    check_limit(args.limit, settings)
    if args.nearest is not None and args.nearest > settings.api_max_page_size:
        raise TooLarge(f"nearest {args.nearest} is above the maximum of {settings.api_max_page_size}",
                       code="limit_too_large")
    if args.relation not in ("intersects", "within"):
        raise BadRequest(f"relation {args.relation!r} must be intersects or within", code="invalid_relation")
    q = store.FeatureQuery(layer=layer, filters=filters, limit=args.limit, offset=args.offset,
                           relation=args.relation, srid=out.srid, digits=out.digits)
    if args.bbox is not None:
        box = bbox_geometry(args.bbox, ref=crs_param(args.bbox_crs, name="bbox-crs"))
        _check_area(box, settings, "bbox")
        q.bbox = shapely.to_wkb(box)
    geom_ref = crs_param(args.geom_crs, name="geom-crs")
    if args.geom is not None:
        geom = input_geometry(args.geom, ref=geom_ref, name="geom", max_vertices=settings.api_max_geometry_vertices)
        _check_area(geom, settings, "geom")
        q.geom = shapely.to_wkb(geom)
    point = None
    if args.point is not None:
        point = input_geometry(args.point, ref=geom_ref, name="point", allowed=("Point",))
        q.point = shapely.to_wkb(point)
    elif args.distance is not None or args.nearest is not None:
        raise BadRequest("distance and nearest need a point (point=x,y or WKT/GeoJSON, in geom-crs)",
                         code="point_required")
    if args.distance is not None:
        if args.distance > settings.api_max_distance_m:
            raise TooLarge(f"distance {args.distance:g} m is above the limit of {settings.api_max_distance_m:g} m",
                           code="distance_too_large")
        q.distance_m = args.distance
        q.band = scaled_band(point.x, point.y, args.distance)
    if args.nearest is not None:
        q.nearest = args.nearest
    return q


async def query_layer(*, pool: AsyncConnectionPool, settings: Settings, layer: str, args: SpatialArgs,
                      filters: dict[str, Any], url: str, post: bool = False) -> tuple[str, dict[str, str]]:
    """A page of a layer as a GeoJSON FeatureCollection (text) and its response headers."""
    out = await output_crs(pool, crs_param(args.crs))
    q = build_query(layer=layer, args=args, filters=filters, settings=settings, out=out)
    matched, rows = await store.feature_page(pool, q)
    links = page_links(url, offset=args.offset, limit=args.limit, returned=len(rows),
                       matched=None if q.nearest is not None else matched, post=post)
    text = collection_text(feature_strings(rows, out), matched=matched, out=out, links=links)
    return text, out.header


def search_args(body: SpatialSearch) -> tuple[SpatialArgs, dict[str, Any]]:
    """A POST search body as the GET form's arguments and filters (so the same checks apply)."""
    point = body.point
    if isinstance(point, list):
        point = ",".join(repr(float(v)) for v in point[:2])
    elif point is not None:
        point = json.dumps(point)
    args = SpatialArgs(
        bbox=",".join(repr(float(v)) for v in body.bbox) if body.bbox is not None else None,
        bbox_crs=body.bbox_crs, geom=json.dumps(body.geometry) if body.geometry is not None else None,
        geom_crs=body.geom_crs, relation=body.relation, point=point, distance=body.distance, nearest=body.nearest,
        crs=body.crs, limit=body.limit, offset=body.offset)
    return args, body.filters.model_dump(exclude_none=True)


async def search(*, pool: AsyncConnectionPool, settings: Settings, layer: str, body: SpatialSearch,
                 url: str) -> tuple[str, dict[str, str]]:
    """``POST /spatial/{layer}/search``: the GET query with its parameters in a JSON body."""
    args, filters = search_args(body)
    return await query_layer(pool=pool, settings=settings, layer=layer, args=args, filters=filters, url=url,
                             post=True)


async def feature(*, pool: AsyncConnectionPool, layer: str, feature_id: int, crs: str | None) -> tuple[str, dict]:
    out = await output_crs(pool, crs_param(crs))
    _, rows = await store.feature_page(pool, store.FeatureQuery(layer=layer, ids=[feature_id], limit=1,
                                                                srid=out.srid, digits=out.digits))
    if not rows:
        raise store.not_found(layer, feature_id)
    return feature_strings(rows, out)[0], out.header


async def containment(*, pool: AsyncConnectionPool, point: str, geom_crs: str | None,
                      crs: str | None) -> tuple[str, dict]:
    """What holds a point: its building (if any), then its grid → community → street → district."""
    out = await output_crs(pool, crs_param(crs))
    geom = input_geometry(point, ref=crs_param(geom_crs, name="geom-crs"), name="point", allowed=("Point",))
    found = await store.containment(pool, point=shapely.to_wkb(geom), srid=out.srid, digits=out.digits)
    features = []
    if found["building_id"] is not None:
        row = await store.get_feature(pool, "buildings", found["building_id"], srid=out.srid, digits=out.digits)
        features += feature_texts([row], out, layer="building")
    features += feature_texts(found["areas"], out, layer="area")
    chain = [{"id": a["id"], "code": a["code"], "name": a["name"], "level": a["level"]} for a in found["areas"]]
    shown = transform_geometry(geom, src=WGS84, dst=out.ref)
    extra = {"point": json.loads(shapely.to_geojson(shown)), "chain": chain, "building_id": found["building_id"]}
    text = collection_text(features, matched=None, out=out, links=[], extra=extra)
    return text, out.header
