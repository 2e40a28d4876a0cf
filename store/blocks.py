"""Block data SQL: areas, buildings, floors, rooms, components, parties, party assignments,
sensor places; spatial queries; spatial derivation of links; bulk upserts for imports.

Async functions take the API's pool; the bulk functions (``upsert_*``, ``export_rows``)
take a synchronous connection and run inside the caller's transaction. Geometries go
in as WKB in EPSG:4326 and come out as GeoJSON text (``ST_AsGeoJSON``, reprojected with
``ST_Transform``) or as WKB for callers that reproject themselves (GCJ-02).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import shapely
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import BadRequest, Conflict, NotFound, QueryTimeout
from cimtwin.geo.dwithin import nearest_band

# ----------------------------------------------------------------------------- errors

_KEY = re.compile(r"Key \((?P<cols>[^)]*)\)=\((?P<vals>.*)\) (?P<what>.*)\.?$")
_SINGULAR = {"areas": "area", "buildings": "building", "floors": "floor", "rooms": "room",
             "components": "component", "parties": "party", "component_kinds": "component kind",
             "party_assignments": "party assignment", "sensors": "sensor", "devices": "device"}


@contextmanager
def _translated(table: str = "") -> Iterator[None]:
    """Database errors a client caused, as domain errors (4xx)."""
    try:
        yield
    except psycopg.errors.QueryCanceled:
        raise QueryTimeout("the query ran past the statement timeout; narrow it (a smaller area, "
                           "distance or page)") from None
    except psycopg.errors.ForeignKeyViolation as exc:
        detail = exc.diag.message_detail or ""
        m = _KEY.search(detail)
        if m and "is not present in table" in detail:
            target = detail.rsplit('"', 2)[-2] if detail.count('"') >= 2 else m["cols"]
            noun = _SINGULAR.get(target, target)
            raise NotFound(f"{noun} {m['vals']} does not exist",
                           code=f"{noun.replace(' ', '_')}_not_found") from None
        if m and "still referenced from table" in detail:
            other = detail.rsplit('"', 2)[-2]
            raise Conflict(f"{_SINGULAR.get(table, table)} {m['vals']} is still referenced by {other}; "
                           f"delete or move those first", code="still_referenced") from None
        raise Conflict(f"{_SINGULAR.get(table, table)} is still referenced: {detail}".strip(),
                       code="still_referenced") from None
    except psycopg.errors.UniqueViolation as exc:
        m = _KEY.search(exc.diag.message_detail or "")
        what = f"{m['cols']} {m['vals']}" if m else "the same key"
        raise Conflict(f"a {_SINGULAR.get(table, table)} with {what} already exists") from None
    except (psycopg.errors.CheckViolation, psycopg.errors.NotNullViolation) as exc:
        raise BadRequest(f"{_SINGULAR.get(table, table)} rejected by the database: "
                         f"{exc.diag.message_primary}", code="constraint_violation") from None


# ----------------------------------------------------------------------------- layers

_LEVEL_RANK = "array_position(ARRAY['grid','community','street','district'], {a}.level)"


@dataclass(frozen=True)
class Layer:
    name: str
    table: str
    from_: str
    columns: tuple[tuple[str, str], ...]
    filters: dict[str, str]
    id_expr: str = "t.id"
    polygonal: bool = True
    geom_nullable: bool = False


def _subtree(param: str) -> str:
    return (f"(WITH RECURSIVE sub(id) AS (SELECT id FROM areas WHERE id = %({param})s "
            f"UNION ALL SELECT a.id FROM areas a JOIN sub ON a.parent_id = sub.id) SELECT id FROM sub)")


def _subtree_by_code(param: str) -> str:
    return (f"(WITH RECURSIVE sub(id) AS (SELECT id FROM areas WHERE code = %({param})s "
            f"UNION ALL SELECT a.id FROM areas a JOIN sub ON a.parent_id = sub.id) SELECT id FROM sub)")


LAYERS: dict[str, Layer] = {
    "areas": Layer(
        "areas", "areas", "areas t LEFT JOIN areas p ON p.id = t.parent_id",
        (("code", "t.code"), ("name", "t.name"), ("level", "t.level"), ("parent_id", "t.parent_id"),
         ("parent_code", "p.code"), ("parent_derived", "t.parent_derived"), ("attributes", "t.properties"),
         ("created_at", "t.created_at"), ("updated_at", "t.updated_at")),
        {"level": "t.level = %(level)s", "parent_id": "t.parent_id = %(parent_id)s", "code": "t.code = %(code)s",
         "q": "(t.name ILIKE %(q)s OR t.code ILIKE %(q)s)", "area_id": f"t.id IN {_subtree('area_id')}",
         "area": f"t.id IN {_subtree_by_code('area')}"}),
    "buildings": Layer(
        "buildings", "buildings", "buildings t LEFT JOIN areas a ON a.id = t.area_id",
        (("ext_id", "t.ext_id"), ("name", "t.name"), ("address", "t.address"), ("use", "t.use"),
         ("height", "t.height"), ("min_height", "t.min_height"), ("floors_above", "t.floors_above"),
         ("floors_below", "t.floors_below"), ("occupants", "t.occupants"), ("organisations", "t.organisations"),
         ("area_id", "t.area_id"), ("area_code", "a.code"), ("area_derived", "t.area_derived"),
         ("attributes", "t.properties"), ("created_at", "t.created_at"), ("updated_at", "t.updated_at")),
        {"area_id": f"t.area_id IN {_subtree('area_id')}", "area": f"t.area_id IN {_subtree_by_code('area')}",
         "ext_id": "t.ext_id = %(ext_id)s", "use": "t.use = %(use)s",
         "q": "(t.name ILIKE %(q)s OR t.address ILIKE %(q)s OR t.ext_id ILIKE %(q)s)",
         "min_height": "t.height >= %(min_height)s", "max_height": "t.height <= %(max_height)s"}),
    "floors": Layer(
        "floors", "floors", "floors t",
        (("building_id", "t.building_id"), ("level", "t.level"), ("name", "t.name"),
         ("elevation", "t.elevation"), ("height", "t.height"), ("attributes", "t.properties")),
        {"building_id": "t.building_id = %(building_id)s", "level": "t.level = %(level)s"},
        geom_nullable=True),
    "rooms": Layer(
        "rooms", "rooms", "rooms t JOIN floors f ON f.id = t.floor_id",
        (("floor_id", "t.floor_id"), ("building_id", "f.building_id"), ("level", "f.level"),
         ("ext_id", "t.ext_id"), ("name", "t.name"), ("use", "t.use"), ("occupants", "t.occupants"),
         ("organisations", "t.organisations"), ("attributes", "t.properties")),
        {"floor_id": "t.floor_id = %(floor_id)s", "building_id": "f.building_id = %(building_id)s",
         "use": "t.use = %(use)s", "q": "(t.name ILIKE %(q)s OR t.ext_id ILIKE %(q)s)"},
        geom_nullable=True),
    "components": Layer(
        "components", "components",
        "components t JOIN component_kinds k ON k.code = t.kind LEFT JOIN areas a ON a.id = t.area_id "
        "LEFT JOIN buildings b ON b.id = t.building_id",
        (("ext_id", "t.ext_id"), ("kind", "t.kind"), ("kind_name_en", "k.name_en"), ("kind_name_zh", "k.name_zh"),
         ("name", "t.name"), ("area_id", "t.area_id"), ("area_code", "a.code"), ("area_derived", "t.area_derived"),
         ("building_id", "t.building_id"), ("building_ext_id", "b.ext_id"),
         ("building_derived", "t.building_derived"), ("floor_id", "t.floor_id"), ("room_id", "t.room_id"),
         ("attributes", "t.properties"), ("created_at", "t.created_at"), ("updated_at", "t.updated_at")),
        {"kind": "t.kind = ANY(%(kind)s)", "building_id": "t.building_id = %(building_id)s",
         "area_id": f"t.area_id IN {_subtree('area_id')}", "area": f"t.area_id IN {_subtree_by_code('area')}",
         "floor_id": "t.floor_id = %(floor_id)s", "room_id": "t.room_id = %(room_id)s",
         "ext_id": "t.ext_id = %(ext_id)s", "q": "(t.name ILIKE %(q)s OR t.ext_id ILIKE %(q)s)"},
        polygonal=False),
    "sensors": Layer(
        "sensors", "sensors",
        "sensor_places t JOIN sensors s ON s.id = t.sensor_id JOIN devices d ON d.id = t.device_id "
        "JOIN vendors v ON v.id = d.vendor_id LEFT JOIN latest l ON l.sensor_id = t.sensor_id",
        (("vendor", "v.code"), ("device", "d.ext_id"), ("device_id", "t.device_id"), ("channel", "s.channel"),
         ("quantity", "s.quantity"), ("unit", "s.unit"), ("place", "t.place"), ("component_id", "t.component_id"),
         ("room_id", "t.room_id"), ("floor_id", "t.floor_id"), ("building_id", "t.building_id"),
         ("latest_value", "l.value"), ("latest_time", "l.time")),
        {"vendor": "v.code = %(vendor)s", "device": "d.ext_id = %(device)s", "quantity": "s.quantity = %(quantity)s",
         "building_id": "t.building_id = %(building_id)s", "component_id": "t.component_id = %(component_id)s",
         "area_id": "ST_Intersects(t.geom, (SELECT geom FROM areas WHERE id = %(area_id)s))",
         "area": "ST_Intersects(t.geom, (SELECT geom FROM areas WHERE code = %(area)s))"},
        id_expr="t.sensor_id", polygonal=False),
}
SPATIAL_LAYERS = ("areas", "buildings", "components", "sensors", "floors", "rooms")


@dataclass
class FeatureQuery:
    """What to select from a layer. Geometries are WKB in EPSG:4326.

    ``band`` (a :class:`cimtwin.geo.dwithin.ScaledBand`, or None) lets a distance query
    settle most rows with a planar test; the rows it cannot settle, and every row when it
    is None, get the exact geodesic test."""

    layer: str
    filters: dict[str, Any] = field(default_factory=dict)
    bbox: bytes | None = None
    geom: bytes | None = None
    relation: str = "intersects"  # or "within"
    point: bytes | None = None
    distance_m: float | None = None
    band: Any = None
    nearest: int | None = None
    limit: int = 100
    offset: int = 0
    srid: int | None = 4326  # None: geometries come back as WKB
    digits: int = 9
    ids: list[int] | None = None


# Geodesic distances are PostGIS's geography ones, on the WGS84 ellipsoid with great-circle
# edges. (ST_DistanceSpheroid on geometry would be ~30 % cheaper, but it rejects
# GeometryCollections, which components may be.)
_POINT = "ST_GeomFromWKB(%(point)s, 4326)"
_DISTANCE = f"ST_Distance(t.geom::geography, {_POINT}::geography)"
_DWITHIN = f"ST_DWithin(t.geom::geography, {_POINT}::geography, %(distance)s)"
# The geography index's candidates for "within r": ST_DWithin's own index condition.
_DWITHIN_CANDIDATES = f"t.geom::geography && _ST_Expand({_POINT}::geography, %(distance)s)"
# Most candidates are settled by a planar distance in lon/lat with longitudes scaled
# (see geo/dwithin.py for why the radii are safe); the band between the radii, and any
# geometry larger than the guard box, get the exact test.
_DWITHIN_BANDED = f"""{_DWITHIN_CANDIDATES} AND CASE
    WHEN t.geom @ ST_MakeEnvelope(%(band_x0)s, %(band_y0)s, %(band_x1)s, %(band_y1)s, 4326) THEN
        ST_DWithin(ST_Scale(t.geom, %(band_kx)s, 1), ST_SetSRID(ST_MakePoint(%(band_x)s, %(band_y)s), 4326),
                   %(band_inner)s)
        OR (ST_DWithin(ST_Scale(t.geom, %(band_kx)s, 1), ST_SetSRID(ST_MakePoint(%(band_x)s, %(band_y)s), 4326),
                       %(band_outer)s)
            AND {_DWITHIN})
    ELSE {_DWITHIN} END"""


def geometry_sql(srid: int | None, digits: int, expr: str = "t.geom") -> sql.Composable:
    """``expr`` as GeoJSON geometry text in ``srid`` (PostGIS reprojects), or WKB when srid is None."""
    if srid is None:
        return sql.SQL("ST_AsBinary({})").format(sql.SQL(expr))
    # options 0: no "crs" member inside each geometry (the collection says it once).
    if srid == 4326:
        return sql.SQL("ST_AsGeoJSON({}, {}, 0)").format(sql.SQL(expr), sql.Literal(digits))
    return sql.SQL("ST_AsGeoJSON(ST_Transform({}, {}), {}, 0)").format(sql.SQL(expr), sql.Literal(srid),
                                                                      sql.Literal(digits))


def _within_distance(q: FeatureQuery, params: dict) -> sql.Composable:
    params["distance"] = q.distance_m
    if q.band is None:
        return sql.SQL(_DWITHIN)
    b = q.band
    params.update(band_x0=b.guard[0], band_y0=b.guard[1], band_x1=b.guard[2], band_y1=b.guard[3], band_kx=b.kx,
                  band_x=b.x, band_y=b.y, band_inner=b.inner, band_outer=b.outer)
    return sql.SQL(_DWITHIN_BANDED)


def _where(layer: Layer, q: FeatureQuery, params: dict) -> sql.Composable:
    conds: list[sql.Composable] = []
    for name, value in q.filters.items():
        if value is None:
            continue
        if name not in layer.filters:
            raise BadRequest(f"{layer.name} cannot be filtered by {name!r}", code="invalid_filter")
        conds.append(sql.SQL(layer.filters[name]))
        params[name] = f"%{value}%" if name == "q" else value
    if q.ids is not None:
        conds.append(sql.SQL(layer.id_expr + " = ANY(%(ids)s)"))
        params["ids"] = q.ids
    if layer.geom_nullable and (q.bbox or q.geom or q.point):
        conds.append(sql.SQL("t.geom IS NOT NULL"))
    if q.bbox is not None:
        conds.append(sql.SQL("ST_Intersects(t.geom, ST_GeomFromWKB(%(bbox)s, 4326))"))
        params["bbox"] = q.bbox
    if q.geom is not None:
        rel = "ST_CoveredBy(t.geom, ST_GeomFromWKB(%(geom)s, 4326))" if q.relation == "within" \
            else "ST_Intersects(t.geom, ST_GeomFromWKB(%(geom)s, 4326))"
        conds.append(sql.SQL(rel))
        params["geom"] = q.geom
    if q.point is not None:
        params["point"] = q.point
        if q.distance_m is not None:
            conds.append(_within_distance(q, params))
    return sql.SQL(" AND ").join(conds) if conds else sql.SQL("true")


def _select_list(layer: Layer, q: FeatureQuery) -> sql.Composable:
    """Every column by name, for the callers that want rows (``get_feature``, ``export_rows``)."""
    cols = [sql.SQL("{} AS id").format(sql.SQL(layer.id_expr))]
    cols += [sql.SQL("{} AS {}").format(sql.SQL(expr), sql.Identifier(name)) for name, expr in layer.columns]
    cols.append(sql.SQL("{} AS geometry").format(geometry_sql(q.srid, q.digits)))
    return sql.SQL(", ").join(cols)


def _feature_select(layer: Layer, q: FeatureQuery) -> sql.Composable:
    """(id, geometry: GeoJSON text, or WKB when srid is None; properties: JSON text)."""
    pairs = [sql.SQL("{}, {}").format(sql.Literal(name), sql.SQL(expr)) for name, expr in layer.columns]
    if q.point is not None:
        pairs.append(sql.SQL("'distance_m', round(({})::numeric, 3)").format(sql.SQL(_DISTANCE)))
    return sql.SQL("{id} AS id, {geom} AS geometry, json_build_object({props})::text AS properties").format(
        id=sql.SQL(layer.id_expr), geom=geometry_sql(q.srid, q.digits), props=sql.SQL(", ").join(pairs))


# Nearest N (see geo/dwithin.py, "Nearest N"). Each row's scaled planar distance ``s`` and
# bounding-box diagonal give bounds lo ≤ ST_Distance(geography) ≤ hi (coefficients from
# NearestBand); a row outside the guard box gets its exact distance ``d`` instead (lo = hi = d).
# The point, the scaled point and the guard box are bound as EWKB text typed by their casts:
# PostgreSQL parses them once, at bind, so a generic plan converts nothing per row and costs
# what a custom plan does (so the plan cache keeps it), and planning folds nothing. Only C
# functions: SQL-function wrappers (ST_Scale, ST_GeomFromWKB(wkb, srid)) are inlined anew at
# every planning.
_NN_POINT = "%(nn_point)s::geometry"
_NN_GEOG = "%(nn_point_geog)s::geography"
_NN_DISTANCE = "ST_Distance({g}::geography, " + _NN_GEOG + ", true)"
_NEAREST_ROW = f"""ST_Distance(ST_Affine(t.geom, %(nb_kx)s, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0), %(nb_point)s::geometry) AS s,
    ST_Length(ST_BoundingDiagonal(t.geom, false)) AS diag,
    CASE WHEN NOT t.geom @ %(nb_guard)s::geometry THEN {_NN_DISTANCE.format(g="t.geom")} END AS d"""
_NEAREST_HI = "coalesce(d, s * (%(nb_hi0)s + %(nb_hi1)s * s) + %(nb_hi2)s * diag * diag + 0.005)"
_NEAREST_LO = ("coalesce(d, least(s, %(nb_span)s) * (%(nb_lo0)s - %(nb_lo1)s * least(s, %(nb_span)s)) "
               "- %(nb_lo2)s * diag * diag - 0.005)")
# A row's rank: its lower bound where no other row's bounds overlap its own (the rows are in
# order of lo, id), else its exact distance.
_NEAREST_RANK = f"""CASE WHEN exact OR (max(hi) OVER (ORDER BY lo, id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                                < lo IS NOT FALSE AND hi < lead(lo) OVER (ORDER BY lo, id) IS NOT FALSE) THEN lo
         ELSE {_NN_DISTANCE.format(g="geom")} END"""
# Layers whose joins neither drop nor repeat rows (LEFT JOINs on a key; an inner join on a NOT
# NULL foreign key): their candidates come from the table alone, which plans faster, unless a
# filter reads another alias.
_NEAREST_TABLE_ONLY = frozenset({"areas", "buildings", "components", "floors"})
_ALIAS = re.compile(r"\b([A-Za-z_]\w*)\.[A-Za-z_]")


def _ewkb(geom: shapely.Geometry) -> str:
    """``geom`` in EPSG:4326 as hex EWKB, which ``::geometry`` and ``::geography`` parse."""
    return shapely.to_wkb(shapely.set_srid(geom, 4326), hex=True, include_srid=True)


def _nearest_params(band, point: shapely.Point) -> dict[str, Any]:
    """The parameters of _NN_POINT, _NN_GEOG, _NEAREST_ROW, _NEAREST_LO and _NEAREST_HI for
    a NearestBand and its query point."""
    (lo0, lo1, lo2), (hi0, hi1, hi2) = band.lo_coefficients, band.hi_coefficients
    point_ewkb = _ewkb(point)  # bound twice: a parameter has one type, and it is cast to two
    return {"nn_point": point_ewkb, "nn_point_geog": point_ewkb, "nb_kx": band.kx,
            "nb_point": _ewkb(shapely.Point(band.x, band.y)), "nb_guard": _ewkb(shapely.box(*band.guard)),
            "nb_span": 2 * band.reach, "nb_lo0": lo0, "nb_lo1": lo1, "nb_lo2": lo2, "nb_hi0": hi0, "nb_hi1": hi1,
            "nb_hi2": hi2}


def _nearest_from(layer: Layer, q: FeatureQuery) -> str:
    """What the candidate steps scan: the table alone where that selects the same rows."""
    if layer.name in _NEAREST_TABLE_ONLY:
        used = {name for name, value in q.filters.items() if value is not None}
        if not any(set(_ALIAS.findall(layer.filters.get(name, "x.x"))) - {"t"} for name in used):
            return f"{layer.table} t"
    return layer.from_


def _nearest_sql(layer: Layer, q: FeatureQuery, where: sql.Composable, select: sql.Composable | None,
                 params: dict) -> sql.Composable:
    """Exactly the N nearest by geodesic distance (``ST_Distance`` on geography), ties by id;
    ``select`` None: the ids alone, in order.

    1. The N nearest in planar lon/lat (the plain GiST index) give a radius: the largest
       upper bound of their distances. N features are within it for sure.
    2. Every feature that may be within it (the geography index) gets its bounds; those
       whose lower bound is above the N-th smallest upper bound are out.
    3. The rest are ranked by their bounds; only rows whose bounds overlap another's get
       the exact distance (usually none or two; ties always do), so the order is exactly
       that of the exact distances, then id.

    Where no bounds are safe (near the poles, across the antimeridian) every distance is
    exact (:func:`_nearest_exact_sql`).

    N is written into the SQL: with LIMIT as a parameter a generic plan is costed for a
    tenth of the table (and JIT-compiled), so a prepared statement would be planned anew at
    every call; with it written in, the plan cache keeps the generic plan, which is the
    same plan. The ranking (window functions) and the LIMIT are in the outer query: one
    query level fewer to plan."""
    params["nearest"] = q.nearest
    pt = shapely.from_wkb(q.point)
    band = nearest_band(pt.x, pt.y) if isinstance(pt, shapely.Point) and not pt.is_empty else None
    if band is None:
        return _nearest_exact_sql(layer, where, select, params)
    params.update(_nearest_params(band, pt))
    parts = dict(
        row=sql.SQL(_NEAREST_ROW), lo=sql.SQL(_NEAREST_LO), hi=sql.SQL(_NEAREST_HI), point=sql.SQL(_NN_POINT),
        geog=sql.SQL(_NN_GEOG), rank=sql.SQL(_NEAREST_RANK), scan=sql.SQL(_nearest_from(layer, q)), where=where, id=sql.SQL(layer.id_expr),
        n=sql.Literal(int(q.nearest)), n_1=sql.Literal(int(q.nearest) - 1))
    candidates = sql.SQL("""
        WITH knn AS MATERIALIZED (
            SELECT {row} FROM {scan} WHERE {where}
            ORDER BY t.geom <-> {point} LIMIT {n}),
        cand AS MATERIALIZED (
            SELECT id, geom, d IS NOT NULL AS exact, {lo} AS lo, {hi} AS hi FROM (
                SELECT {id} AS id, t.geom, {row} FROM {scan}
                WHERE {where} AND t.geom::geography && _ST_Expand({geog}, (SELECT max({hi}) FROM knn))
                OFFSET 0) c)""").format(**parts)
    kept = sql.SQL("FROM cand WHERE lo <= (SELECT hi FROM cand ORDER BY hi LIMIT 1 OFFSET {n_1}) IS NOT FALSE").format(
        **parts)
    if select is None:
        return sql.SQL("{} SELECT id {} ORDER BY {}, id LIMIT {}").format(candidates, kept, parts["rank"],
                                                                         parts["n"])
    return sql.SQL("{candidates} SELECT {select} FROM {from_} JOIN (SELECT id, {rank} AS rank_d {kept} "
                   "ORDER BY 2, 1 LIMIT {n}) nn ON nn.id = {id} ORDER BY nn.rank_d, nn.id").format(
        candidates=candidates, select=select, from_=sql.SQL(layer.from_), rank=parts["rank"], kept=kept,
        n=parts["n"], id=sql.SQL(layer.id_expr))


def _nearest_exact_sql(layer: Layer, where: sql.Composable, select: sql.Composable | None,
                       params: dict) -> sql.Composable:
    """The N nearest with every distance exact, in two steps in one statement: the N nearest
    in planar lon/lat (the plain GiST index) give a radius, the largest of their geodesic
    distances, that N features are sure to be within; then every feature within that radius
    (the geography index) is ranked by geodesic distance, then id."""
    return sql.SQL("""
        WITH knn AS MATERIALIZED (
            SELECT {dist} AS d FROM {from_} WHERE {where}
            ORDER BY t.geom <-> {point} LIMIT %(nearest)s),
        reach AS MATERIALIZED (SELECT max(d) * (1 + 1e-9) + 1e-6 AS r FROM knn)
        SELECT {select} FROM {from_}
        WHERE {where} AND t.geom::geography && _ST_Expand({point}::geography, (SELECT r FROM reach))
          AND {dist} <= (SELECT r FROM reach)
        ORDER BY {dist}, {id} LIMIT %(nearest)s""").format(
        dist=sql.SQL(_DISTANCE), point=sql.SQL(_POINT), from_=sql.SQL(layer.from_), where=where,
        select=select if select is not None else sql.SQL("{} AS id").format(sql.SQL(layer.id_expr)),
        id=sql.SQL(layer.id_expr))


def _feature_sql(layer: Layer, q: FeatureQuery, params: dict) -> tuple[sql.Composable, sql.Composable | None]:
    """The page query and, unless the page itself tells, the count query."""
    where = _where(layer, q, params)
    select = _feature_select(layer, q)
    if q.nearest is not None:
        return _nearest_sql(layer, q, where, select, params), None
    from_, id_ = sql.SQL(layer.from_), sql.SQL(layer.id_expr)
    order = sql.SQL("{}, {}").format(sql.SQL(_DISTANCE), id_) if q.point is not None else id_
    params.update(limit=q.limit, offset=q.offset)
    if q.offset == 0:
        # PostgreSQL renders (GeoJSON, properties) only the rows the sort lets through.
        query = sql.SQL("SELECT {select} FROM {from_} WHERE {where} ORDER BY {order} LIMIT %(limit)s").format(
            select=select, from_=from_, where=where, order=order)
    else:
        # The page's ids first: rows an OFFSET skips would otherwise be rendered too.
        query = sql.SQL("""SELECT {select} FROM {from_}
                           WHERE {id} = ANY(ARRAY(SELECT {id} FROM {from_} WHERE {where} ORDER BY {order}
                                                  LIMIT %(limit)s OFFSET %(offset)s))
                           ORDER BY {order}""").format(select=select, from_=from_, where=where, order=order, id=id_)
    count = sql.SQL("SELECT count(*) FROM {from_} WHERE {where}").format(from_=from_, where=where)
    return query, count


async def feature_page(pool: AsyncConnectionPool, q: FeatureQuery) -> tuple[int, list[tuple]]:
    """(numberMatched, rows) for one page; each row is (id, geometry, properties JSON text).

    With ``nearest`` the rows are the N nearest by geodesic distance; with ``point`` they
    are ordered by distance and carry ``distance_m`` (metres, to the millimetre);
    otherwise they are ordered by id."""
    layer = LAYERS[q.layer]
    params: dict[str, Any] = {}
    query, count = _feature_sql(layer, q, params)
    with _translated(layer.table):
        async with pool.connection() as conn:
            rows = await (await conn.execute(query, params)).fetchall()
            if count is None or (q.offset == 0 and len(rows) < q.limit):
                matched = len(rows)
            else:
                matched = (await (await conn.execute(count, params)).fetchone())[0]
    return matched, rows


def matching_ids_sql(q: FeatureQuery) -> tuple[sql.Composable, dict]:
    """The ids a query selects, with the same predicate as :func:`feature_page` but nothing
    rendered: unordered, or for ``nearest`` the N nearest in order (the benchmark's "query itself")."""
    layer = LAYERS[q.layer]
    params: dict[str, Any] = {}
    where = _where(layer, q, params)
    id_ = sql.SQL("{} AS id").format(sql.SQL(layer.id_expr))
    if q.nearest is not None:
        return _nearest_sql(layer, q, where, None, params), params
    return sql.SQL("SELECT {id} FROM {from_} WHERE {where}").format(
        id=id_, from_=sql.SQL(layer.from_), where=where), params


async def get_feature(pool: AsyncConnectionPool, layer_name: str, feature_id: int, *, srid: int | None = 4326,
                      digits: int = 9) -> dict:
    """One feature as a row of named columns (geometry: GeoJSON text, or WKB when srid is None)."""
    layer = LAYERS[layer_name]
    q = FeatureQuery(layer=layer_name, srid=srid, digits=digits)
    query = sql.SQL("SELECT {select} FROM {from_} WHERE {id} = %(id)s").format(
        select=_select_list(layer, q), from_=sql.SQL(layer.from_), id=sql.SQL(layer.id_expr))
    with _translated(layer.table):
        async with pool.connection() as conn:
            row = await (await conn.cursor(row_factory=dict_row).execute(query, {"id": feature_id})).fetchone()
    if row is None:
        raise not_found(layer_name, feature_id)
    return row


def not_found(layer_name: str, feature_id: int) -> NotFound:
    noun = _SINGULAR[LAYERS[layer_name].table]
    return NotFound(f"{noun} {feature_id} does not exist", code=f"{noun}_not_found")


async def srid_known(pool: AsyncConnectionPool, srid: int) -> bool:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT 1 FROM spatial_ref_sys WHERE srid = %s", (srid,))
        return await cur.fetchone() is not None


async def containment(pool: AsyncConnectionPool, *, point: bytes, srid: int | None, digits: int) -> dict:
    """The most specific area holding the point and its parents up to the top, plus the
    smallest building footprint holding it."""
    geom = geometry_sql(srid, digits, "a.geom")
    query = sql.SQL("""
        WITH RECURSIVE start AS (
            SELECT a.id FROM areas a
            WHERE ST_Intersects(a.geom, ST_GeomFromWKB(%(point)s, 4326))
            ORDER BY {rank}, ST_Area(a.geom), a.id LIMIT 1),
        chain(id, depth) AS (
            SELECT id, 0 FROM start
            UNION ALL
            SELECT a.parent_id, c.depth + 1 FROM chain c JOIN areas a ON a.id = c.id
            WHERE a.parent_id IS NOT NULL AND c.depth < 10)
        SELECT a.id, a.code, a.name, a.level, a.parent_id, a.properties AS attributes, {geom} AS geometry
        FROM chain c JOIN areas a ON a.id = c.id ORDER BY c.depth""").format(
        rank=sql.SQL(_LEVEL_RANK.format(a="a")), geom=geom)
    with _translated("areas"):
        async with pool.connection() as conn:
            areas = await (await conn.cursor(row_factory=dict_row).execute(query, {"point": point})).fetchall()
            cur = await conn.cursor(row_factory=dict_row).execute(
                """SELECT b.id FROM buildings b WHERE ST_Intersects(b.geom, ST_GeomFromWKB(%(point)s, 4326))
                   ORDER BY ST_Area(b.geom), b.id LIMIT 1""", {"point": point})
            building = await cur.fetchone()
    return {"areas": areas, "building_id": building["id"] if building else None}


# ----------------------------------------------------------------------------- derivation

_DERIVE_AREA_PARENTS = """
    UPDATE areas c SET parent_id = x.pid, updated_at = now()
    FROM (SELECT c2.id, (SELECT p.id FROM areas p
                         WHERE p.level = CASE c2.level WHEN 'street' THEN 'district'
                                                       WHEN 'community' THEN 'street'
                                                       WHEN 'grid' THEN 'community' END
                           AND p.id <> c2.id AND ST_Intersects(p.geom, ST_PointOnSurface(c2.geom))
                         ORDER BY ST_Area(p.geom), p.id LIMIT 1) AS pid
          FROM areas c2 WHERE c2.parent_derived) x
    WHERE c.id = x.id AND c.parent_id IS DISTINCT FROM x.pid"""

_DERIVE_BUILDING_AREAS = """
    UPDATE buildings b SET area_id = x.aid, updated_at = now()
    FROM (SELECT b2.id, (SELECT a.id FROM areas a WHERE ST_Intersects(a.geom, ST_PointOnSurface(b2.geom))
                         ORDER BY {rank}, ST_Area(a.geom), a.id LIMIT 1) AS aid
          FROM buildings b2 WHERE b2.area_derived AND (%(ids)s::bigint[] IS NULL OR b2.id = ANY(%(ids)s))) x
    WHERE b.id = x.id AND b.area_id IS DISTINCT FROM x.aid""".replace("{rank}", _LEVEL_RANK.format(a="a"))

_DERIVE_COMPONENT_BUILDINGS = """
    UPDATE components c SET building_id = x.bid, updated_at = now()
    FROM (SELECT c2.id, (SELECT b.id FROM buildings b WHERE ST_Intersects(b.geom, ST_PointOnSurface(c2.geom))
                         ORDER BY ST_Area(b.geom), b.id LIMIT 1) AS bid
          FROM components c2 WHERE c2.building_derived AND (%(ids)s::bigint[] IS NULL OR c2.id = ANY(%(ids)s))) x
    WHERE c.id = x.id AND c.building_id IS DISTINCT FROM x.bid"""

_DERIVE_COMPONENT_AREAS = """
    UPDATE components c SET area_id = x.aid, updated_at = now()
    FROM (SELECT c2.id, (SELECT a.id FROM areas a WHERE ST_Intersects(a.geom, ST_PointOnSurface(c2.geom))
                         ORDER BY {rank}, ST_Area(a.geom), a.id LIMIT 1) AS aid
          FROM components c2 WHERE c2.area_derived AND (%(ids)s::bigint[] IS NULL OR c2.id = ANY(%(ids)s))) x
    WHERE c.id = x.id AND c.area_id IS DISTINCT FROM x.aid""".replace("{rank}", _LEVEL_RANK.format(a="a"))

# Components whose derived building may change when building %(building)s changes or goes.
_COMPONENTS_NEAR_BUILDING = """
    SELECT c.id FROM components c
    WHERE c.building_derived AND (c.building_id = %(building)s
        OR ST_Intersects(c.geom, (SELECT geom FROM buildings WHERE id = %(building)s)))"""


@dataclass
class Derived:
    area_parents: int = 0
    building_areas: int = 0
    component_buildings: int = 0
    component_areas: int = 0

    def total(self) -> int:
        return self.area_parents + self.building_areas + self.component_buildings + self.component_areas


def rederive(conn: psycopg.Connection, *, areas: bool = True, building_ids: list[int] | None = None,
             component_ids: list[int] | None = None, everything: bool = False) -> Derived:
    """Recompute derived links (synchronous; in the caller's transaction).

    ``everything`` (or ``areas``, after areas changed) recomputes every derived link;
    otherwise only those of the given buildings and components.
    """
    out = Derived()
    if everything or areas:
        out.area_parents = conn.execute(_DERIVE_AREA_PARENTS).rowcount
        out.building_areas = conn.execute(_DERIVE_BUILDING_AREAS, {"ids": None}).rowcount
        out.component_buildings = conn.execute(_DERIVE_COMPONENT_BUILDINGS, {"ids": None}).rowcount
        out.component_areas = conn.execute(_DERIVE_COMPONENT_AREAS, {"ids": None}).rowcount
        return out
    if building_ids:
        out.building_areas = conn.execute(_DERIVE_BUILDING_AREAS, {"ids": building_ids}).rowcount
    if component_ids:
        out.component_buildings = conn.execute(_DERIVE_COMPONENT_BUILDINGS, {"ids": component_ids}).rowcount
        out.component_areas = conn.execute(_DERIVE_COMPONENT_AREAS, {"ids": component_ids}).rowcount
    return out


async def _arederive(conn, layer: str, row_id: int | None, *, before: list[int] | None = None) -> None:
    if layer == "areas":
        await conn.execute(_DERIVE_AREA_PARENTS)
        await conn.execute(_DERIVE_BUILDING_AREAS, {"ids": None})
        await conn.execute(_DERIVE_COMPONENT_BUILDINGS, {"ids": None})
        await conn.execute(_DERIVE_COMPONENT_AREAS, {"ids": None})
    elif layer == "buildings":
        if row_id is not None:
            await conn.execute(_DERIVE_BUILDING_AREAS, {"ids": [row_id]})
        comps = list(before or [])
        if row_id is not None:
            cur = await conn.execute(_COMPONENTS_NEAR_BUILDING, {"building": row_id})
            comps += [r[0] for r in await cur.fetchall()]
        if comps:
            await conn.execute(_DERIVE_COMPONENT_BUILDINGS, {"ids": comps})
    elif layer == "components" and row_id is not None:
        await conn.execute(_DERIVE_COMPONENT_BUILDINGS, {"ids": [row_id]})
        await conn.execute(_DERIVE_COMPONENT_AREAS, {"ids": [row_id]})


# ----------------------------------------------------------------------------- CRUD

_GEOM_INPUT = {True: "ST_Multi(ST_GeomFromWKB(%s, 4326))", False: "ST_GeomFromWKB(%s, 4326)"}


def _value_sql(layer: Layer, column: str, value: Any) -> tuple[sql.Composable, list]:
    if column == "geom":
        return (sql.SQL("NULL"), []) if value is None else (sql.SQL(_GEOM_INPUT[layer.polygonal]), [value])
    if column == "properties" or isinstance(value, (dict, list)):
        return sql.SQL("%s"), [Jsonb(value)]
    return sql.SQL("%s"), [value]


async def create(pool: AsyncConnectionPool, layer_name: str, values: dict[str, Any]) -> int:
    """Insert one row (columns as in the table; ``geom`` as WKB) and derive its links."""
    layer = LAYERS[layer_name]
    cols, exprs, params = [], [], []
    for column, value in values.items():
        expr, param = _value_sql(layer, column, value)
        cols.append(sql.Identifier(column))
        exprs.append(expr)
        params += param
    query = sql.SQL("INSERT INTO {table} ({cols}) VALUES ({vals}) RETURNING id").format(
        table=sql.Identifier(layer.table), cols=sql.SQL(", ").join(cols), vals=sql.SQL(", ").join(exprs))
    with _translated(layer.table):
        async with pool.connection() as conn, conn.transaction():
            row_id = (await (await conn.execute(query, params)).fetchone())[0]
            await _arederive(conn, layer_name, row_id)
    return row_id


async def update(pool: AsyncConnectionPool, layer_name: str, row_id: int, values: dict[str, Any]) -> None:
    """Update the given columns of one row and derive its links again."""
    layer = LAYERS[layer_name]
    sets, params = [], []
    for column, value in values.items():
        expr, param = _value_sql(layer, column, value)
        sets.append(sql.SQL("{} = {}").format(sql.Identifier(column), expr))
        params += param
    if layer.table in ("areas", "buildings", "components"):
        sets.append(sql.SQL("updated_at = now()"))
    noun = _SINGULAR[layer.table]
    with _translated(layer.table):
        async with pool.connection() as conn, conn.transaction():
            before: list[int] = []
            if layer_name == "buildings" and "geom" in values:
                cur = await conn.execute(_COMPONENTS_NEAR_BUILDING, {"building": row_id})
                before = [r[0] for r in await cur.fetchall()]
            if sets:
                query = sql.SQL("UPDATE {table} SET {sets} WHERE id = %s").format(
                    table=sql.Identifier(layer.table), sets=sql.SQL(", ").join(sets))
                cur = await conn.execute(query, [*params, row_id])
                if cur.rowcount == 0:
                    raise NotFound(f"{noun} {row_id} does not exist", code=f"{noun}_not_found")
            await _arederive(conn, layer_name, row_id, before=before)


async def delete(pool: AsyncConnectionPool, layer_name: str, row_id: int) -> None:
    layer = LAYERS[layer_name]
    noun = _SINGULAR[layer.table]
    with _translated(layer.table):
        async with pool.connection() as conn, conn.transaction():
            before: list[int] = []
            if layer_name == "buildings":
                cur = await conn.execute(_COMPONENTS_NEAR_BUILDING, {"building": row_id})
                before = [r[0] for r in await cur.fetchall()]
            cur = await conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(layer.table)),
                                     (row_id,))
            if cur.rowcount == 0:
                raise NotFound(f"{noun} {row_id} does not exist", code=f"{noun}_not_found")
            if layer_name in ("areas", "buildings"):
                await _arederive(conn, layer_name, None, before=before)


async def area_level(pool: AsyncConnectionPool, area_id: int) -> str:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT level FROM areas WHERE id = %s", (area_id,))).fetchone()
    if row is None:
        raise NotFound(f"area {area_id} does not exist", code="area_not_found")
    return row[0]


async def child_levels(pool: AsyncConnectionPool, area_id: int) -> set[str]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT DISTINCT level FROM areas WHERE parent_id = %s", (area_id,))
        return {r[0] for r in await cur.fetchall()}


async def component_kinds(pool: AsyncConnectionPool) -> list[dict]:
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT code, name_en, name_zh FROM component_kinds ORDER BY code")
        return await cur.fetchall()


# ----------------------------------------------------------------------------- parties

# A webhook's signing secret is write-only: never read back out.
_PARTY_COLUMNS = "id, code, name, kind, contacts, channels #- '{webhook,secret}' AS channels, created_at"
_ASSIGNMENT_COLUMNS = """pa.id, pa.party_id, p.code AS party_code, pa.area_id, pa.building_id, pa.room_id,
                         pa.component_id, pa.component_kind, pa.role, pa.created_at"""


async def list_parties(pool: AsyncConnectionPool, *, kind: str | None, q: str | None, limit: int,
                       offset: int) -> tuple[int, list[dict]]:
    params = {"kind": kind, "q": f"%{q}%" if q else None, "limit": limit, "offset": offset}
    where = ("(%(kind)s::text IS NULL OR kind = %(kind)s) "
             "AND (%(q)s::text IS NULL OR name ILIKE %(q)s OR code ILIKE %(q)s)")
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"SELECT {_PARTY_COLUMNS} FROM parties WHERE {where} ORDER BY id LIMIT %(limit)s OFFSET %(offset)s",
            params)
        rows = await cur.fetchall()
        total = (await (await conn.execute(f"SELECT count(*) FROM parties WHERE {where}", params)).fetchone())[0]
    return total, rows


async def get_party(pool: AsyncConnectionPool, party_id: int) -> dict:
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"SELECT {_PARTY_COLUMNS} FROM parties WHERE id = %s", (party_id,))
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"party {party_id} does not exist", code="party_not_found")
    return row


async def create_party(pool: AsyncConnectionPool, values: dict) -> int:
    with _translated("parties"):
        async with pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO parties (code, name, kind, contacts, channels) VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (values["code"], values["name"], values["kind"], Jsonb(values["contacts"]),
                 Jsonb(values["channels"])))
            return (await cur.fetchone())[0]


async def update_party(pool: AsyncConnectionPool, party_id: int, values: dict) -> None:
    if not values:
        await get_party(pool, party_id)
        return
    sets = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in values)
    params = [Jsonb(v) if isinstance(v, (dict, list)) else v for v in values.values()]
    with _translated("parties"):
        async with pool.connection() as conn:
            cur = await conn.execute(sql.SQL("UPDATE parties SET {} WHERE id = %s").format(sets), [*params, party_id])
    if cur.rowcount == 0:
        raise NotFound(f"party {party_id} does not exist", code="party_not_found")


async def delete_party(pool: AsyncConnectionPool, party_id: int) -> None:
    async with pool.connection() as conn:
        cur = await conn.execute("DELETE FROM parties WHERE id = %s", (party_id,))
    if cur.rowcount == 0:
        raise NotFound(f"party {party_id} does not exist", code="party_not_found")


async def list_assignments(pool: AsyncConnectionPool, *, filters: dict[str, Any], limit: int,
                           offset: int) -> tuple[int, list[dict]]:
    allowed = ("party_id", "area_id", "building_id", "room_id", "component_id", "component_kind", "role")
    conds = [sql.SQL("pa.{} = %({})s").format(sql.Identifier(k), sql.SQL(k))
             for k, v in filters.items() if v is not None and k in allowed]
    where = sql.SQL(" AND ").join(conds) if conds else sql.SQL("true")
    params = {**filters, "limit": limit, "offset": offset}
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(sql.SQL(
            f"SELECT {_ASSIGNMENT_COLUMNS} FROM party_assignments pa JOIN parties p ON p.id = pa.party_id "
            "WHERE {where} ORDER BY pa.id LIMIT %(limit)s OFFSET %(offset)s").format(where=where), params)
        rows = await cur.fetchall()
        total = (await (await conn.execute(sql.SQL(
            "SELECT count(*) FROM party_assignments pa WHERE {where}").format(where=where), params)).fetchone())[0]
    return total, rows


async def get_assignment(pool: AsyncConnectionPool, assignment_id: int) -> dict:
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"SELECT {_ASSIGNMENT_COLUMNS} FROM party_assignments pa JOIN parties p ON p.id = pa.party_id "
            "WHERE pa.id = %s", (assignment_id,))
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"party assignment {assignment_id} does not exist", code="party_assignment_not_found")
    return row


async def create_assignment(pool: AsyncConnectionPool, values: dict) -> int:
    with _translated("party_assignments"):
        async with pool.connection() as conn:
            cur = await conn.execute(
                """INSERT INTO party_assignments (party_id, area_id, building_id, room_id, component_id,
                                                  component_kind, role)
                   VALUES (%(party_id)s, %(area_id)s, %(building_id)s, %(room_id)s, %(component_id)s,
                           %(component_kind)s, %(role)s) RETURNING id""", values)
            return (await cur.fetchone())[0]


async def delete_assignment(pool: AsyncConnectionPool, assignment_id: int) -> None:
    async with pool.connection() as conn:
        cur = await conn.execute("DELETE FROM party_assignments WHERE id = %s", (assignment_id,))
    if cur.rowcount == 0:
        raise NotFound(f"party assignment {assignment_id} does not exist", code="party_assignment_not_found")


# ----------------------------------------------------------------------------- sensors and devices

async def set_sensor_place(pool: AsyncConnectionPool, sensor_id: int, *, component_id: int | None,
                           room_id: int | None, building_id: int | None) -> None:
    with _translated("sensors"):
        async with pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE sensors SET component_id = %s, room_id = %s, building_id = %s WHERE id = %s",
                (component_id, room_id, building_id, sensor_id))
    if cur.rowcount == 0:
        raise NotFound(f"sensor {sensor_id} does not exist", code="sensor_not_found")


async def set_device_location(pool: AsyncConnectionPool, device_id: int, *, point: bytes | None) -> None:
    async with pool.connection() as conn:
        cur = await conn.execute("UPDATE devices SET geom = ST_GeomFromWKB(%s, 4326) WHERE id = %s",
                                 (point, device_id))
    if cur.rowcount == 0:
        raise NotFound(f"device {device_id} does not exist", code="device_not_found")


def set_device_locations(conn: psycopg.Connection, vendor: str, points: dict[str, bytes]) -> int:
    """Bulk: the location (WKB point) of a vendor's devices by ext_id (synchronous)."""
    n = 0
    for ext_id, wkb in points.items():
        n += conn.execute("""UPDATE devices d SET geom = ST_GeomFromWKB(%s, 4326) FROM vendors v
                             WHERE v.id = d.vendor_id AND v.code = %s AND d.ext_id = %s
                               AND d.geom IS DISTINCT FROM ST_GeomFromWKB(%s, 4326)""",
                          (wkb, vendor, ext_id, wkb)).rowcount
    return n


# ----------------------------------------------------------------------------- bulk (imports)

@dataclass
class UpsertReport:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (feature index, reason)
    derived: Derived = field(default_factory=Derived)


def _stage(conn: psycopg.Connection, name: str, columns: list[tuple[str, str]], rows: Iterable[tuple]) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
    conn.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
        sql.Identifier(name),
        sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in columns)))
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(name), sql.SQL(", ").join(sql.Identifier(c) for c, _ in columns))) as copy:
        for row in rows:
            copy.write_row(row)


def _reject(conn: psycopg.Connection, stage: str, query: str, report: UpsertReport) -> None:
    """Rows of the stage that the query finds (ord, reason) are rejected and removed."""
    bad = conn.execute(query).fetchall()
    if bad:
        report.rejected += [(int(o), r) for o, r in bad]
        conn.execute(sql.SQL("DELETE FROM {} WHERE ord = ANY(%s)").format(sql.Identifier(stage)),
                     ([int(o) for o, _ in bad],))


def _count(report: UpsertReport, returned: list[tuple], staged: int) -> None:
    report.inserted += sum(1 for _, inserted in returned if inserted)
    report.updated += sum(1 for _, inserted in returned if not inserted)
    report.unchanged += staged - len(returned)


_INVALID_IN_DB = """
    SELECT ord, 'the database finds the geometry invalid: ' || ST_IsValidReason(ST_GeomFromWKB(wkb, 4326))
    FROM {stage} WHERE NOT ST_IsValid(ST_GeomFromWKB(wkb, 4326))"""

AREA_STAGE = [("ord", "int"), ("code", "text"), ("name", "text"), ("level", "text"), ("parent_code", "text"),
              ("wkb", "bytea"), ("properties", "jsonb")]


def upsert_areas(conn: psycopg.Connection, rows: Iterable[tuple]) -> UpsertReport:
    """Insert or update areas by code (rows as AREA_STAGE), then derive every derived link."""
    report = UpsertReport()
    _stage(conn, "stage_areas", AREA_STAGE, rows)
    _reject(conn, "stage_areas", _INVALID_IN_DB.format(stage="stage_areas"), report)
    _reject(conn, "stage_areas", """
        SELECT s.ord, 'parent area ' || quote_literal(s.parent_code)
                      || CASE WHEN coalesce(ps.level, pa.level) IS NULL THEN ' does not exist'
                              ELSE ' is a ' || coalesce(ps.level, pa.level) || ', not the level above '
                                   || s.level END
        FROM stage_areas s LEFT JOIN stage_areas ps ON ps.code = s.parent_code
                           LEFT JOIN areas pa ON pa.code = s.parent_code
        WHERE s.parent_code IS NOT NULL
          AND coalesce(ps.level, pa.level) IS DISTINCT FROM
              (ARRAY['district','street','community'])[array_position(ARRAY['street','community','grid'], s.level)]""",
            report)
    staged = conn.execute("SELECT count(*) FROM stage_areas").fetchone()[0]
    returned = conn.execute("""
        INSERT INTO areas (code, name, level, geom, properties, parent_derived)
        SELECT code, name, level, ST_Multi(ST_GeomFromWKB(wkb, 4326)), properties, parent_code IS NULL
        FROM stage_areas ORDER BY array_position(ARRAY['district','street','community','grid'], level), ord
        ON CONFLICT (code) DO UPDATE SET name = excluded.name, level = excluded.level, geom = excluded.geom,
            properties = excluded.properties, parent_derived = excluded.parent_derived, updated_at = now()
        WHERE (areas.name, areas.level, areas.geom, areas.properties, areas.parent_derived)
              IS DISTINCT FROM (excluded.name, excluded.level, excluded.geom, excluded.properties,
                                excluded.parent_derived)
        RETURNING id, (xmax = 0)""").fetchall()
    changed = {r[0] for r in returned}
    linked = conn.execute("""
        UPDATE areas a SET parent_id = p.id, updated_at = now()
        FROM stage_areas s JOIN areas p ON p.code = s.parent_code
        WHERE a.code = s.code AND a.parent_id IS DISTINCT FROM p.id RETURNING a.id""").fetchall()
    extra = [(i, False) for (i,) in linked if i not in changed]
    _count(report, returned + extra, staged)
    report.derived = rederive(conn, everything=True)
    return report


BUILDING_STAGE = [("ord", "int"), ("ext_id", "text"), ("name", "text"), ("address", "text"), ("use", "text"),
                  ("height", "float8"), ("min_height", "float8"), ("floors_above", "int"), ("floors_below", "int"),
                  ("occupants", "int"), ("organisations", "int"), ("area_code", "text"), ("wkb", "bytea"),
                  ("properties", "jsonb")]
_BUILDING_VALUES = ("name", "address", "use", "height", "min_height", "floors_above", "floors_below", "occupants",
                    "organisations", "geom", "properties", "area_derived")


def upsert_buildings(conn: psycopg.Connection, rows: Iterable[tuple]) -> UpsertReport:
    """Insert or update buildings by ext_id (rows as BUILDING_STAGE); derive their areas and
    the buildings of the components around them."""
    report = UpsertReport()
    _stage(conn, "stage_buildings", BUILDING_STAGE, rows)
    _reject(conn, "stage_buildings", _INVALID_IN_DB.format(stage="stage_buildings"), report)
    _reject(conn, "stage_buildings", """
        SELECT s.ord, 'area ' || quote_literal(s.area_code) || ' does not exist' FROM stage_buildings s
        WHERE s.area_code IS NOT NULL AND NOT EXISTS (SELECT 1 FROM areas a WHERE a.code = s.area_code)""", report)
    staged = conn.execute("SELECT count(*) FROM stage_buildings").fetchone()[0]
    sets = ", ".join(f"{c} = excluded.{c}" for c in _BUILDING_VALUES)
    old = ", ".join(f"buildings.{c}" for c in _BUILDING_VALUES)
    new = ", ".join(f"excluded.{c}" for c in _BUILDING_VALUES)
    returned = conn.execute(f"""
        INSERT INTO buildings (ext_id, name, address, use, height, min_height, floors_above, floors_below,
                               occupants, organisations, area_id, area_derived, geom, properties)
        SELECT s.ext_id, s.name, s.address, s.use, s.height, coalesce(s.min_height, 0), s.floors_above,
               s.floors_below, s.occupants, s.organisations, a.id, s.area_code IS NULL,
               ST_Multi(ST_GeomFromWKB(s.wkb, 4326)), s.properties
        FROM stage_buildings s LEFT JOIN areas a ON a.code = s.area_code ORDER BY s.ord
        ON CONFLICT (ext_id) DO UPDATE SET {sets},
            area_id = CASE WHEN excluded.area_derived THEN buildings.area_id ELSE excluded.area_id END,
            updated_at = now()
        WHERE ({old}, CASE WHEN excluded.area_derived THEN NULL ELSE buildings.area_id END)
              IS DISTINCT FROM ({new}, CASE WHEN excluded.area_derived THEN NULL ELSE excluded.area_id END)
        RETURNING id, (xmax = 0)""").fetchall()
    _count(report, returned, staged)
    ids = [r[0] for r in returned]
    if ids:
        report.derived = rederive(conn, areas=False, building_ids=ids)
        comps = [r[0] for r in conn.execute("""
            SELECT c.id FROM components c WHERE c.building_derived AND EXISTS (
                SELECT 1 FROM buildings b WHERE b.id = ANY(%s) AND ST_Intersects(b.geom, c.geom))""",
                                             (ids,)).fetchall()]
        comps += [r[0] for r in conn.execute(
            "SELECT id FROM components WHERE building_derived AND building_id IS NULL").fetchall()]
        if comps:
            more = rederive(conn, areas=False, component_ids=sorted(set(comps)))
            report.derived.component_buildings += more.component_buildings
            report.derived.component_areas += more.component_areas
    return report


COMPONENT_STAGE = [("ord", "int"), ("ext_id", "text"), ("kind", "text"), ("name", "text"), ("area_code", "text"),
                   ("building_ext_id", "text"), ("wkb", "bytea"), ("properties", "jsonb")]
_COMPONENT_VALUES = ("kind", "name", "geom", "properties", "area_derived", "building_derived")


def upsert_components(conn: psycopg.Connection, rows: Iterable[tuple]) -> UpsertReport:
    """Insert or update components by ext_id (rows as COMPONENT_STAGE) and derive their links."""
    report = UpsertReport()
    _stage(conn, "stage_components", COMPONENT_STAGE, rows)
    _reject(conn, "stage_components", _INVALID_IN_DB.format(stage="stage_components"), report)
    _reject(conn, "stage_components", """
        SELECT s.ord, 'unknown component kind ' || quote_literal(s.kind) || '; known: '
                      || (SELECT string_agg(code, ', ' ORDER BY code) FROM component_kinds)
        FROM stage_components s WHERE NOT EXISTS (SELECT 1 FROM component_kinds k WHERE k.code = s.kind)""", report)
    _reject(conn, "stage_components", """
        SELECT s.ord, 'area ' || quote_literal(s.area_code) || ' does not exist' FROM stage_components s
        WHERE s.area_code IS NOT NULL AND NOT EXISTS (SELECT 1 FROM areas a WHERE a.code = s.area_code)""", report)
    _reject(conn, "stage_components", """
        SELECT s.ord, 'building ' || quote_literal(s.building_ext_id) || ' does not exist' FROM stage_components s
        WHERE s.building_ext_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM buildings b WHERE b.ext_id = s.building_ext_id)""", report)
    staged = conn.execute("SELECT count(*) FROM stage_components").fetchone()[0]
    sets = ", ".join(f"{c} = excluded.{c}" for c in _COMPONENT_VALUES)
    old = ", ".join(f"components.{c}" for c in _COMPONENT_VALUES)
    new = ", ".join(f"excluded.{c}" for c in _COMPONENT_VALUES)
    returned = conn.execute(f"""
        INSERT INTO components (ext_id, kind, name, area_id, area_derived, building_id, building_derived,
                                geom, properties)
        SELECT s.ext_id, s.kind, s.name, a.id, s.area_code IS NULL, b.id, s.building_ext_id IS NULL,
               ST_GeomFromWKB(s.wkb, 4326), s.properties
        FROM stage_components s LEFT JOIN areas a ON a.code = s.area_code
                                LEFT JOIN buildings b ON b.ext_id = s.building_ext_id
        ORDER BY s.ord
        ON CONFLICT (ext_id) DO UPDATE SET {sets},
            area_id = CASE WHEN excluded.area_derived THEN components.area_id ELSE excluded.area_id END,
            building_id = CASE WHEN excluded.building_derived THEN components.building_id
                               ELSE excluded.building_id END,
            updated_at = now()
        WHERE ({old}, CASE WHEN excluded.area_derived THEN NULL ELSE components.area_id END,
                      CASE WHEN excluded.building_derived THEN NULL ELSE components.building_id END)
              IS DISTINCT FROM ({new}, CASE WHEN excluded.area_derived THEN NULL ELSE excluded.area_id END,
                                CASE WHEN excluded.building_derived THEN NULL ELSE excluded.building_id END)
        RETURNING id, (xmax = 0)""").fetchall()
    _count(report, returned, staged)
    ids = [r[0] for r in returned]
    if ids:
        report.derived = rederive(conn, areas=False, component_ids=ids)
    return report


def existing_keys(conn: psycopg.Connection, layer: str) -> set[str]:
    """Codes (areas) or ext_ids (buildings, components) already stored."""
    column = "code" if layer == "areas" else "ext_id"
    return {r[0] for r in conn.execute(sql.SQL("SELECT {} FROM {} WHERE {} IS NOT NULL").format(
        sql.Identifier(column), sql.Identifier(layer), sql.Identifier(column)))}


def layer_counts(conn: psycopg.Connection) -> dict[str, int]:
    return {name: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(LAYERS[name].table)))
            .fetchone()[0] for name in ("areas", "buildings", "floors", "rooms", "components")}


def export_rows(conn: psycopg.Connection, layer_name: str, *, batch: int = 5000) -> Iterator[list[dict]]:
    """Every feature of a layer with its geometry as WKB (EPSG:4326), in batches, ordered by id."""
    layer = LAYERS[layer_name]
    q = FeatureQuery(layer=layer_name, srid=None)
    select = _select_list(layer, q)
    query = sql.SQL("SELECT {select} FROM {from_} ORDER BY {id}").format(
        select=select, from_=sql.SQL(layer.from_), id=sql.SQL(layer.id_expr))
    with conn.cursor(name=f"export_{layer_name}", row_factory=dict_row) as cur:
        cur.itersize = batch
        cur.execute(query)
        while rows := cur.fetchmany(batch):
            yield rows


def upsert_parties(conn: psycopg.Connection, parties: list[dict]) -> dict[str, int]:
    """Insert or update parties by code (synchronous; for the demo). Returns code → id."""
    ids = {}
    for p in parties:
        ids[p["code"]] = conn.execute(
            """INSERT INTO parties (code, name, kind, contacts, channels) VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (code) DO UPDATE SET name = excluded.name, kind = excluded.kind,
                   contacts = excluded.contacts, channels = excluded.channels RETURNING id""",
            (p["code"], p["name"], p["kind"], Jsonb(p.get("contacts", [])), Jsonb(p.get("channels", {})))
        ).fetchone()[0]
    return ids


def ensure_assignment(conn: psycopg.Connection, *, party_code: str, area_code: str | None = None,
                      building_ext_id: str | None = None, component_kind: str | None = None,
                      role: str = "responsible") -> bool:
    """Assign a party (by code) to an area or building (by key), unless already assigned."""
    row = conn.execute(
        """INSERT INTO party_assignments (party_id, area_id, building_id, component_kind, role)
           SELECT p.id, (SELECT id FROM areas WHERE code = %(area)s),
                  (SELECT id FROM buildings WHERE ext_id = %(building)s), %(kind)s, %(role)s
           FROM parties p WHERE p.code = %(party)s
           ON CONFLICT DO NOTHING RETURNING id""",
        {"party": party_code, "area": area_code, "building": building_ext_id, "kind": component_kind,
         "role": role}).fetchone()
    return row is not None
