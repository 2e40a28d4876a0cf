"""OGC API - Features: Part 1 (Core, GeoJSON, OpenAPI 3.0) and Part 2 (CRS by reference).

Storage is EPSG:4326 lon/lat, advertised as CRS84. ``crs=`` reprojects the output: EPSG CRSs in
PostGIS, with the axis order of the CRS (lat/lon for EPSG:4326 and EPSG:4490, northing/easting for
the CGCS2000 Gauss-Krüger CRSs), and GCJ-02 in Python with :mod:`cimtwin.geo.crs`. ``bbox-crs=``
is converted to CRS84 here, so the database only ever sees lon/lat boxes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlencode

import numpy as np
import shapely
from psycopg_pool import AsyncConnectionPool

import cimtwin
from cimtwin.errors import BadRequest, NotFound, TooLarge, UnknownCrs
from cimtwin.geo.crs import CRS84, SUPPORTED_CRS, CrsRef, UnknownCrsError, parse_crs, transform_geometry, transform_xy
from cimtwin.settings import Settings
from cimtwin.store import ogc as store

GEOJSON = "application/geo+json"
JSON = "application/json"
OPENAPI_30 = "application/vnd.oai.openapi+json;version=3.0"
SCHEMA_JSON = "application/schema+json"
REL_QUERYABLES = "http://www.opengis.net/def/rel/ogc/1.0/queryables"

CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs",
]

#: The query parameters of /items besides property filters.
ITEM_PARAMS = ("bbox", "bbox-crs", "crs", "limit", "offset", "datetime", "resultType", "f")

_CRS_URIS = [ref.uri for ref in SUPPORTED_CRS]
_SUPPORTED = {ref.code for ref in SUPPORTED_CRS}
_AUTHALIC_KM = 6371.0072


@dataclass(frozen=True)
class GeoJsonBody:
    """A GeoJSON document (already serialised) and the URI of its CRS, for the Content-Crs header."""

    body: bytes
    content_crs: str


# ---------------------------------------------------------------------------- metadata


def _collection_or_404(collection_id: str) -> store.CollectionDef:
    c = store.COLLECTIONS.get(collection_id)
    if c is None:
        raise NotFound(f"no collection {collection_id!r}; collections: {', '.join(store.COLLECTIONS)}",
                       code="collection_not_found")
    return c


def landing_page(*, base_url: str) -> dict:
    ogc = f"{base_url}/ogc"
    return {
        "title": "cimtwin",
        "description": "Block data (areas, buildings, floors, rooms, components) and sensors with their "
                       "live status, as OGC API - Features. Coordinates are CRS84 unless crs= asks for "
                       "another CRS (CGCS2000, WGS84, Web Mercator, CGCS2000 Gauss-Krüger, GCJ-02).",
        "links": [
            {"href": ogc, "rel": "self", "type": JSON, "title": "This document"},
            {"href": f"{ogc}/api", "rel": "service-desc", "type": OPENAPI_30,
             "title": "The OpenAPI 3.0 definition of this OGC API"},
            {"href": f"{base_url}/openapi.json", "rel": "service-desc",
             "type": "application/vnd.oai.openapi+json;version=3.1", "title": "The whole cimtwin API (OpenAPI 3.1)"},
            {"href": f"{base_url}/docs", "rel": "service-doc", "type": "text/html", "title": "API documentation"},
            {"href": f"{ogc}/conformance", "rel": "conformance", "type": JSON, "title": "Conformance classes"},
            {"href": f"{ogc}/collections", "rel": "data", "type": JSON, "title": "Collections"},
        ],
    }


def conformance() -> dict:
    return {"conformsTo": CONFORMANCE}


def _collection_doc(c: store.CollectionDef, *, base_url: str, extent: dict | None) -> dict:
    url = f"{base_url}/ogc/collections/{c.id}"
    bbox = (extent or {}).get("bbox") or [-180.0, -90.0, 180.0, 90.0]
    doc = {
        "id": c.id,
        "title": c.title,
        "description": c.description,
        "itemType": "feature",
        "extent": {"spatial": {"bbox": [bbox], "crs": CRS84.uri}},
        "crs": _CRS_URIS,
        "storageCrs": CRS84.uri,
        "links": [
            {"href": url, "rel": "self", "type": JSON, "title": c.title},
            {"href": f"{url}/items", "rel": "items", "type": GEOJSON, "title": f"{c.title} (GeoJSON)"},
            {"href": f"{url}/queryables", "rel": REL_QUERYABLES, "type": SCHEMA_JSON,
             "title": "Properties that can filter items (?name=value)"},
            # GDAL reads field types from a GeoJSON Feature schema behind rel=describedBy.
            {"href": f"{url}/feature-schema", "rel": "describedBy", "type": SCHEMA_JSON,
             "title": "JSON Schema of a feature"},
        ],
    }
    if c.temporal is not None and extent is not None:
        doc["extent"]["temporal"] = {
            "interval": [[_iso(extent.get("start")), _iso(extent.get("end"))]],
            "trs": "http://www.opengis.net/def/uom/ISO-8601/0/Gregorian",
        }
    return doc


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


async def collections(*, pool: AsyncConnectionPool, base_url: str) -> dict:
    extents = await store.extents(pool, collections=list(store.COLLECTIONS))
    return {
        "links": [{"href": f"{base_url}/ogc/collections", "rel": "self", "type": JSON, "title": "Collections"}],
        "crs": _CRS_URIS,
        "collections": [_collection_doc(c, base_url=base_url, extent=extents.get(c.id))
                        for c in store.COLLECTIONS.values()],
    }


async def collection(*, pool: AsyncConnectionPool, base_url: str, collection_id: str) -> dict:
    c = _collection_or_404(collection_id)
    extents = await store.extents(pool, collections=[c.id])
    return _collection_doc(c, base_url=base_url, extent=extents.get(c.id))


def _json_schema_type(p: store.Prop) -> dict:
    if p.type == "date-time":
        return {"type": "string", "format": "date-time"}
    if p.enum:
        return {"type": p.type, "enum": list(p.enum)}
    return {"type": p.type}


def queryables(*, base_url: str, collection_id: str) -> dict:
    c = _collection_or_404(collection_id)
    props = {p.name: {"title": p.title or p.name, **_json_schema_type(p)} for p in c.queryables}
    return {
        "$schema": "https://json-schema.org/draft/2019-09/schema",
        "$id": f"{base_url}/ogc/collections/{c.id}/queryables",
        "type": "object",
        "title": c.title,
        "description": "Filter items with ?name=value (equality; several are combined with AND).",
        "properties": props,
        "additionalProperties": False,
    }


def feature_schema(*, base_url: str, collection_id: str) -> dict:
    """A JSON Schema of one GeoJSON feature of the collection (what GDAL's OAPIF driver reads)."""
    c = _collection_or_404(collection_id)
    return {
        "$schema": "https://json-schema.org/draft/2019-09/schema",
        "$id": f"{base_url}/ogc/collections/{c.id}/feature-schema",
        "title": c.title,
        "type": "object",
        "required": ["type", "geometry", "properties"],
        "properties": {
            "type": {"type": "string", "enum": ["Feature"]},
            "id": {"type": "integer"},
            "geometry": {"description": f"GeoJSON {c.geometry_type} or null"},
            "properties": {
                "type": "object",
                "properties": {p.name: {"title": p.title or p.name, **_json_schema_type(p)} for p in c.props},
            },
        },
    }


def api_document(*, base_url: str, settings: Settings) -> dict:
    """OpenAPI 3.0 of /ogc, with one path per collection so clients (GDAL, QGIS) see the
    queryable properties and the page size limits of each."""
    def ok(description: str, media: str) -> dict:
        return {"200": {"description": description, "content": {media: {"schema": {"type": "object"}}}},
                "400": {"$ref": "#/components/responses/BadRequest"}}

    paths: dict = {
        "/": {"get": {"operationId": "getLandingPage", "summary": "Landing page",
                      "tags": ["Capabilities"], "responses": ok("The landing page", JSON)}},
        "/conformance": {"get": {"operationId": "getConformance", "summary": "Conformance classes",
                                 "tags": ["Capabilities"], "responses": ok("Conformance classes", JSON)}},
        "/collections": {"get": {"operationId": "getCollections", "summary": "The feature collections",
                                 "tags": ["Capabilities"], "responses": ok("The collections", JSON)}},
    }
    common = [{"$ref": f"#/components/parameters/{name}"}
              for name in ("bbox", "bbox-crs", "crs", "limit", "offset", "resultType")]
    for c in store.COLLECTIONS.values():
        base = f"/collections/{c.id}"
        params = list(common)
        if c.temporal:
            params.append({"$ref": "#/components/parameters/datetime"})
        params += [{"name": p.name, "in": "query", "required": False, "style": "form", "explode": False,
                    "description": f"{p.title} (equality filter)", "schema": _json_schema_type(p)}
                   for p in c.queryables]
        not_found = {"404": {"$ref": "#/components/responses/NotFound"}}
        paths[base] = {"get": {"operationId": f"describe_{c.id}", "summary": f"{c.title}: the collection",
                               "tags": [c.title], "responses": {**ok(c.title, JSON), **not_found}}}
        paths[f"{base}/items"] = {"get": {
            "operationId": f"get_{c.id}_items", "summary": f"{c.title}: features", "tags": [c.title],
            "parameters": params, "responses": ok(f"{c.title} as a GeoJSON FeatureCollection", GEOJSON)}}
        paths[f"{base}/items/{{featureId}}"] = {"get": {
            "operationId": f"get_{c.id}_item", "summary": f"{c.title}: one feature", "tags": [c.title],
            "parameters": [{"name": "featureId", "in": "path", "required": True, "schema": {"type": "integer"}},
                           {"$ref": "#/components/parameters/crs"}],
            "responses": {**ok("A GeoJSON Feature", GEOJSON), **not_found}}}
        paths[f"{base}/queryables"] = {"get": {
            "operationId": f"get_{c.id}_queryables", "summary": f"{c.title}: queryable properties",
            "tags": [c.title], "responses": ok("JSON Schema of the queryables", SCHEMA_JSON)}}

    error = {"description": "An error", "content": {JSON: {"schema": {
        "type": "object", "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}}}}
    crs_enum = {"type": "string", "format": "uri", "enum": _CRS_URIS}
    return {
        "openapi": "3.0.3",
        "info": {"title": "cimtwin OGC API - Features", "version": cimtwin.__version__,
                 "description": landing_page(base_url=base_url)["description"]},
        "servers": [{"url": f"{base_url}/ogc"}],
        "paths": paths,
        "components": {
            "parameters": {
                "bbox": {"name": "bbox", "in": "query", "required": False, "style": "form", "explode": False,
                         "description": "minx,miny,maxx,maxy in bbox-crs (CRS84 lon/lat by default; in the "
                                        "axis order of bbox-crs otherwise)",
                         "schema": {"type": "array", "minItems": 4, "maxItems": 6, "items": {"type": "number"}}},
                "bbox-crs": {"name": "bbox-crs", "in": "query", "required": False, "style": "form",
                             "explode": False, "schema": crs_enum},
                "crs": {"name": "crs", "in": "query", "required": False, "style": "form", "explode": False,
                        "schema": crs_enum},
                "limit": {"name": "limit", "in": "query", "required": False, "style": "form", "explode": False,
                          "schema": {"type": "integer", "minimum": 1, "maximum": settings.ogc_max_limit,
                                     "default": settings.ogc_default_limit}},
                "offset": {"name": "offset", "in": "query", "required": False, "style": "form",
                           "explode": False, "schema": {"type": "integer", "minimum": 0, "default": 0}},
                "datetime": {"name": "datetime", "in": "query", "required": False, "style": "form",
                             "explode": False, "description": "RFC 3339 instant or interval (start/end, '..' open)",
                             "schema": {"type": "string"}},
                "resultType": {"name": "resultType", "in": "query", "required": False, "style": "form",
                               "explode": False, "description": "hits: only numberMatched, no features",
                               "schema": {"type": "string", "enum": ["results", "hits"], "default": "results"}},
            },
            "responses": {"BadRequest": error, "NotFound": error},
        },
    }


# ---------------------------------------------------------------------------- parameters


def _crs(value: str | None, *, param: str) -> CrsRef:
    if value is None or value == "":
        return CRS84
    try:
        ref = parse_crs(value)
    except UnknownCrsError as exc:
        raise UnknownCrs(f"{param}: unknown CRS {value!r}; use one of the URIs in the collection's crs list "
                         f"(e.g. {CRS84.uri}, http://www.opengis.net/def/crs/EPSG/0/4490)", crs=value) from exc
    if ref.code not in _SUPPORTED:
        raise UnknownCrs(f"{param}: CRS {value!r} is not offered; use one of the URIs in the collection's crs list",
                         crs=value)
    return ref


def _int(value: str | None, *, param: str, default: int, minimum: int) -> int:
    if value is None or value == "":
        return default
    if not re.fullmatch(r"\d{1,18}", value.strip()):
        raise BadRequest(f"{param} must be a whole number ≥ {minimum}, not {value!r}", code="invalid_parameter")
    number = int(value)
    if number < minimum:
        raise BadRequest(f"{param} must be ≥ {minimum}, not {number}", code="invalid_parameter")
    return number


def _bbox_crs84(text: str, crs: CrsRef, *, max_km2: float) -> tuple[float, float, float, float]:
    """bbox in ``crs`` (in its axis order) → (west, south, east, north) in CRS84 degrees."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise BadRequest(f"bbox must be 4 or 6 comma-separated numbers, not {text!r}", code="invalid_bbox") from None
    if len(values) not in (4, 6) or not all(math.isfinite(v) for v in values):
        raise BadRequest(f"bbox must be 4 or 6 comma-separated finite numbers, not {text!r}", code="invalid_bbox")
    a1, a2, b1, b2 = (values[0], values[1], values[2], values[3]) if len(values) == 4 else \
        (values[0], values[1], values[3], values[4])
    if crs.axis_lat_first:  # (south, west, north, east) or (northing, easting, …)
        a1, a2, b1, b2 = a2, a1, b2, b1
    xmin, ymin, xmax, ymax = a1, a2, b1, b2
    if xmin > xmax or ymin > ymax:
        raise BadRequest(f"bbox {text!r}: the lower corner must come first (boxes across the antimeridian "
                         "are not supported)", code="invalid_bbox")
    if crs.is_geographic and not (-180 <= xmin and xmax <= 180 and -90 <= ymin and ymax <= 90):
        raise BadRequest(f"bbox {text!r} is outside the range of {crs.code} "
                         "(longitude -180..180, latitude -90..90, in the CRS's axis order)", code="invalid_bbox")
    if crs.code != CRS84.code:
        # Densify the edges so the CRS84 box contains the whole transformed box.
        t = np.linspace(0.0, 1.0, 21)
        xs = np.concatenate([xmin + (xmax - xmin) * t, np.full_like(t, xmax), xmax - (xmax - xmin) * t,
                             np.full_like(t, xmin)])
        ys = np.concatenate([np.full_like(t, ymin), ymin + (ymax - ymin) * t, np.full_like(t, ymax),
                             ymax - (ymax - ymin) * t])
        lon, lat = transform_xy(xs, ys, src=crs, dst=CRS84)
        if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))):
            raise BadRequest(f"bbox {text!r} is outside the area where {crs.code} is defined",
                             code="invalid_bbox")
        xmin, ymin, xmax, ymax = float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())
        if not (-180.0001 <= xmin and xmax <= 180.0001 and -90.0001 <= ymin and ymax <= 90.0001):
            raise BadRequest(f"bbox {text!r} is outside the area where {crs.code} is defined",
                             code="invalid_bbox")
    # The area between two meridians and two parallels on the authalic sphere (within 0.3 % of WGS84).
    km2 = (_AUTHALIC_KM ** 2 * math.radians(xmax - xmin)
           * (math.sin(math.radians(ymax)) - math.sin(math.radians(ymin))))
    if km2 > max_km2:
        raise TooLarge(f"bbox covers {km2:,.0f} km², more than the {max_km2:,.0f} km² allowed; use a smaller "
                       "bbox, or leave bbox out and page through the collection", code="bbox_too_large")
    return xmin, ymin, xmax, ymax


def _instant(text: str) -> datetime | None:
    text = text.strip()
    if text in ("", ".."):
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadRequest(f"datetime: {text!r} is not an RFC 3339 date-time", code="invalid_datetime") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _interval(text: str | None):
    if text is None:
        return None
    if "/" in text:
        start_text, _, end_text = text.partition("/")
        start, end = _instant(start_text), _instant(end_text)
        if start and end and start > end:
            raise BadRequest(f"datetime {text!r}: the start is after the end", code="invalid_datetime")
        return start, end
    t = _instant(text)
    if t is None:
        raise BadRequest("datetime must be an instant or an interval", code="invalid_datetime")
    return t, t


def _filter_value(p: store.Prop, raw: str):
    try:
        if p.type == "integer":
            return int(raw)
        if p.type == "number":
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError
            return value
        if p.type == "boolean":
            return {"true": True, "false": False}[raw.lower()]
    except (ValueError, KeyError):
        raise BadRequest(f"property filter {p.name}={raw!r}: expected a {p.type}", code="invalid_filter") from None
    if p.enum and raw not in p.enum:
        raise BadRequest(f"property filter {p.name}={raw!r}: expected one of {', '.join(p.enum)}",
                         code="invalid_filter")
    return raw


def _filters(c: store.CollectionDef, extra: list[tuple[str, str]]) -> list[tuple[str, object]]:
    out = []
    for name, raw in extra:
        p = c.by_name.get(name)
        if p is None or not p.queryable:
            queryable = ", ".join(q.name for q in c.queryables)
            raise BadRequest(f"unknown query parameter {name!r}; parameters: {', '.join(ITEM_PARAMS)}; "
                             f"queryable properties of {c.id}: {queryable}", code="unknown_parameter")
        out.append((name, _filter_value(p, raw)))
    return out


def _check_f(f: str | None) -> None:
    if f not in (None, "", "json", "geojson"):
        raise BadRequest(f"f={f!r}: only json is offered", code="invalid_parameter")


# ---------------------------------------------------------------------------- features


def _output(crs: CrsRef) -> dict:
    """How the database writes coordinates for ``crs`` (GCJ-02 is converted from CRS84 afterwards)."""
    if crs.is_gcj02 or crs.code == CRS84.code:
        return {"srid": 4326, "flip": False, "decimals": 9}
    return {"srid": crs.epsg, "flip": crs.axis_lat_first, "decimals": 9 if crs.is_geographic else 3}


def _to_gcj02(rows: list[dict]) -> None:
    """Rewrites the rows' CRS84 GeoJSON geometries in GCJ-02 (lon/lat), in place."""
    idx = [i for i, r in enumerate(rows) if r["geometry"]]
    if not idx:
        return
    geoms = shapely.from_geojson(np.array([rows[i]["geometry"] for i in idx], dtype=object))
    out = shapely.to_geojson(transform_geometry(geoms, src=CRS84, dst="GCJ02"))
    for i, text in zip(idx, out):
        rows[i]["geometry"] = text


def _feature(row: dict) -> str:
    return ('{"type":"Feature","id":%d,"geometry":%s,"properties":%s}'
            % (row["id"], row["geometry"] or "null", row["properties"]))


def _link(href: str, rel: str, type_: str, title: str) -> dict:
    return {"href": href, "rel": rel, "type": type_, "title": title}


async def items(*, pool: AsyncConnectionPool, settings: Settings, base_url: str, collection_id: str,
                bbox: str | None = None, bbox_crs: str | None = None, crs: str | None = None,
                limit: str | None = None, offset: str | None = None, datetime_: str | None = None,
                result_type: str | None = None, f: str | None = None,
                filters: list[tuple[str, str]] = (), link_params: list[tuple[str, str]] = ()) -> GeoJsonBody:
    """One page of a collection. ``link_params`` are added to the paging links as they are (the API key
    when it came in the URL)."""
    c = _collection_or_404(collection_id)
    _check_f(f)
    out_crs = _crs(crs, param="crs")
    box_crs = _crs(bbox_crs, param="bbox-crs")
    if bbox_crs and not bbox:
        raise BadRequest("bbox-crs is given without bbox", code="invalid_parameter")
    box = _bbox_crs84(bbox, box_crs, max_km2=settings.max_bbox_km2) if bbox else None
    page = _int(limit, param="limit", default=settings.ogc_default_limit, minimum=1)
    if page > settings.ogc_max_limit:
        raise TooLarge(f"limit {page} is above the maximum of {settings.ogc_max_limit}; "
                       "page with the next links", code="limit_too_large")
    start = _int(offset, param="offset", default=0, minimum=0)
    interval = _interval(datetime_)
    if interval is not None and c.temporal is None:
        raise BadRequest(f"collection {c.id} has no time; datetime does not apply to it", code="invalid_parameter")
    if result_type not in (None, "", "results", "hits"):
        raise BadRequest(f"resultType must be results or hits, not {result_type!r}", code="invalid_parameter")
    where = {"bbox": box, "filters": _filters(c, list(filters)), "interval": interval}

    matched = await store.count_items(pool, collection=c.id, offline_after_s=settings.sensor_offline_after_s,
                                      **where)
    rows = [] if result_type == "hits" else await store.items(
        pool, collection=c.id, limit=page, offset=start, offline_after_s=settings.sensor_offline_after_s,
        **_output(out_crs), **where)
    if out_crs.is_gcj02:
        _to_gcj02(rows)

    # Links repeat every parameter of this request except the paging ones.
    kept = [(k, v) for k, v in (("bbox", bbox), ("bbox-crs", bbox_crs), ("crs", crs), ("datetime", datetime_),
                                ("resultType", result_type), ("f", f)) if v not in (None, "")]
    kept += list(filters) + list(link_params)
    url = f"{base_url}/ogc/collections/{c.id}/items"

    def page_url(off: int) -> str:
        return f"{url}?{urlencode(kept + [('limit', page), ('offset', off)])}"

    links = [_link(page_url(start), "self", GEOJSON, "This page"),
             _link(f"{base_url}/ogc/collections/{c.id}", "collection", JSON, c.title)]
    if result_type != "hits" and start + len(rows) < matched:
        links.append(_link(page_url(start + page), "next", GEOJSON, "Next page"))
    if start > 0:
        links.append(_link(page_url(max(0, start - page)), "prev", GEOJSON, "Previous page"))

    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    body = ('{"type":"FeatureCollection","numberMatched":%d,"numberReturned":%d,"timeStamp":%s,"links":%s,'
            '"features":[%s]}' % (matched, len(rows), json.dumps(stamp), json.dumps(links, ensure_ascii=False),
                                  ",".join(_feature(r) for r in rows)))
    return GeoJsonBody(body.encode(), out_crs.uri)


async def item(*, pool: AsyncConnectionPool, settings: Settings, base_url: str, collection_id: str,
               feature_id: str, crs: str | None = None, f: str | None = None) -> GeoJsonBody:
    c = _collection_or_404(collection_id)
    _check_f(f)
    out_crs = _crs(crs, param="crs")
    row = None
    if re.fullmatch(r"\d{1,18}", feature_id):
        row = await store.item(pool, collection=c.id, feature_id=int(feature_id),
                               offline_after_s=settings.sensor_offline_after_s, **_output(out_crs))
    if row is None:
        raise NotFound(f"collection {c.id} has no feature {feature_id!r}", code="feature_not_found")
    if out_crs.is_gcj02:
        _to_gcj02([row])
    url = f"{base_url}/ogc/collections/{c.id}"
    self_url = f"{url}/items/{row['id']}" + (f"?{urlencode([('crs', crs)])}" if crs else "")
    links = [_link(self_url, "self", GEOJSON, "This feature"), _link(url, "collection", JSON, c.title)]
    body = _feature(row)[:-1] + ',"links":%s}' % json.dumps(links, ensure_ascii=False)
    return GeoJsonBody(body.encode(), out_crs.uri)
