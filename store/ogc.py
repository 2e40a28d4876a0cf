"""Queries behind OGC API Features (/ogc).

Every collection is a fixed definition below: the FROM clause, the geometry, the feature id
and the properties, each an SQL expression written here. Requests choose among them by name
only; values (bbox, filter values, limits) are always bound parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import QueryTimeout

from . import sensor_state


@dataclass(frozen=True)
class Prop:
    name: str
    expr: str
    type: str  # JSON Schema type: string | integer | number | boolean | object; "date-time" is a string format
    title: str = ""
    queryable: bool = False
    enum: tuple[str, ...] | None = None  # the values it can take, when they are a fixed list


@dataclass(frozen=True)
class CollectionDef:
    id: str
    title: str
    description: str
    from_: str
    geom: str            # EPSG:4326 geometry expression (may be NULL for some rows)
    geometry_type: str   # GeoJSON type name of the geometries, for schemas
    props: tuple[Prop, ...]
    id_expr: str
    temporal: str | None = None   # timestamptz expression that `datetime` filters on
    by_name: dict[str, Prop] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        self.by_name.update({p.name: p for p in self.props})

    @property
    def queryables(self) -> list[Prop]:
        return [p for p in self.props if p.queryable]


def _p(name, expr, type_, title="", q=False, enum=None) -> Prop:
    return Prop(name, expr, type_, title, q, enum)


COLLECTIONS: dict[str, CollectionDef] = {c.id: c for c in (
    CollectionDef(
        id="areas", title="Areas", geometry_type="MultiPolygon", id_expr="a.id",
        description="Administrative blocks: district, street (街道), community (社区) and grid (网格).",
        from_="areas a LEFT JOIN areas ap ON ap.id = a.parent_id", geom="a.geom",
        props=(
            _p("code", "a.code", "string", "Area code (adcode or grid code)", True),
            _p("name", "a.name", "string", "Name", True),
            _p("level", "a.level", "string", "district | street | community | grid", True),
            _p("parent_id", "a.parent_id", "integer", "Parent area id", True),
            _p("parent_code", "ap.code", "string", "Parent area code", True),
            _p("attributes", "a.properties", "object", "Further attributes"),
            _p("updated_at", "a.updated_at", "date-time", "Last change"),
        )),
    CollectionDef(
        id="buildings", title="Buildings", geometry_type="MultiPolygon", id_expr="b.id",
        description="Building footprints with height (metres) and floor counts.",
        from_="buildings b LEFT JOIN areas ba ON ba.id = b.area_id", geom="b.geom",
        props=(
            _p("ext_id", "b.ext_id", "string", "Id in the source data (e.g. OSM way/123)", True),
            _p("name", "b.name", "string", "Name", True),
            _p("address", "b.address", "string", "Address"),
            _p("use", "b.use", "string", "Use", True),
            _p("height", "b.height", "number", "Height in metres", True),
            _p("min_height", "b.min_height", "number", "Height of the lowest part above ground, metres"),
            _p("floors_above", "b.floors_above", "integer", "Floors above ground", True),
            _p("floors_below", "b.floors_below", "integer", "Floors below ground", True),
            _p("occupants", "b.occupants", "integer", "Occupants (a count)"),
            _p("organisations", "b.organisations", "integer", "Registered organisations (a count)"),
            _p("area_id", "b.area_id", "integer", "Area id", True),
            _p("area_code", "ba.code", "string", "Area code", True),
            _p("attributes", "b.properties", "object", "Further attributes"),
            _p("updated_at", "b.updated_at", "date-time", "Last change"),
        )),
    CollectionDef(
        id="floors", title="Floors", geometry_type="MultiPolygon", id_expr="f.id",
        description="Floors of buildings; a floor without its own outline has its building's footprint.",
        from_="floors f JOIN buildings fb ON fb.id = f.building_id", geom="COALESCE(f.geom, fb.geom)",
        props=(
            _p("building_id", "f.building_id", "integer", "Building id", True),
            _p("level", "f.level", "integer", "Level: 0 ground, -1 first basement", True),
            _p("name", "f.name", "string", "Name", True),
            _p("elevation", "f.elevation", "number", "Metres above the building's base"),
            _p("height", "f.height", "number", "Floor height, metres"),
            _p("min_height", "f.elevation", "number", "Base of the floor for 3D stacking (= elevation), metres"),
            _p("top", "f.elevation + f.height", "number", "Top of the floor (elevation + height), metres"),
            _p("own_outline", "f.geom IS NOT NULL", "boolean", "False when the outline is the building's"),
            _p("attributes", "f.properties", "object", "Further attributes"),
        )),
    CollectionDef(
        id="rooms", title="Rooms", geometry_type="MultiPolygon", id_expr="r.id",
        description="Rooms and units (房屋) on floors.",
        from_="rooms r JOIN floors rf ON rf.id = r.floor_id", geom="r.geom",
        props=(
            _p("floor_id", "r.floor_id", "integer", "Floor id", True),
            _p("building_id", "rf.building_id", "integer", "Building id", True),
            _p("level", "rf.level", "integer", "Floor level", True),
            _p("ext_id", "r.ext_id", "string", "Id in the source data", True),
            _p("name", "r.name", "string", "Name", True),
            _p("use", "r.use", "string", "Use", True),
            _p("occupants", "r.occupants", "integer", "Occupants (a count)"),
            _p("organisations", "r.organisations", "integer", "Registered organisations (a count)"),
            _p("attributes", "r.properties", "object", "Further attributes"),
        )),
    CollectionDef(
        id="components", title="Components", geometry_type="Geometry", id_expr="c.id",
        description="City components (部件): hydrants, manhole covers, gas valves, elevators, detectors…",
        from_="components c JOIN component_kinds ck ON ck.code = c.kind", geom="c.geom",
        props=(
            _p("ext_id", "c.ext_id", "string", "Id in the source data", True),
            _p("kind", "c.kind", "string", "Kind code, e.g. hydrant", True),
            _p("kind_name_en", "ck.name_en", "string", "Kind (English)"),
            _p("kind_name_zh", "ck.name_zh", "string", "Kind (Chinese)"),
            _p("name", "c.name", "string", "Name", True),
            _p("area_id", "c.area_id", "integer", "Area id", True),
            _p("building_id", "c.building_id", "integer", "Building id", True),
            _p("floor_id", "c.floor_id", "integer", "Floor id", True),
            _p("room_id", "c.room_id", "integer", "Room id", True),
            _p("attributes", "c.properties", "object", "Further attributes"),
            _p("updated_at", "c.updated_at", "date-time", "Last change"),
        )),
    CollectionDef(
        id="sensors", title="Sensors", geometry_type="Point", id_expr="s.id",
        description="One point per sensor channel with its latest value and live status "
                    "(alarm, warning: an unfinished alert of that weight; offline: no reading for too long; "
                    "no_data: never reported; else ok).",
        from_=sensor_state.FROM, geom=sensor_state.GEOM, temporal="l.time",
        props=(
            _p("vendor", "v.code", "string", "Vendor code", True),
            _p("device", "d.ext_id", "string", "Device id (as on the wire)", True),
            _p("device_id", "d.id", "integer", "Device id (internal)", True),
            _p("channel", "s.channel", "string", "Channel", True),
            _p("quantity", "s.quantity", "string", "Measured quantity", True),
            _p("unit", "s.unit", "string", "Unit", True),
            _p("min_value", "s.min_value", "number", "Lowest valid value"),
            _p("max_value", "s.max_value", "number", "Highest valid value"),
            _p("component_id", "s.component_id", "integer", "Component id", True),
            _p("room_id", "s.room_id", "integer", "Room id", True),
            _p("building_id", "s.building_id", "integer", "Building id", True),
            _p("placed_by", sensor_state.PLACED_BY, "string",
               "Where the point comes from: component | room | building | device", True),
            _p("value", "l.value", "number", "Latest value"),
            _p("time", "l.time", "date-time", "Time of the latest value"),
            _p("received_at", "l.received_at", "date-time", "When the latest value was received"),
            _p("status", sensor_state.STATUS, "string", sensor_state.STATUS_DESCRIPTION, True,
               enum=sensor_state.STATUSES),
        )),
)}


def _properties_json(c: CollectionDef) -> sql.Composable:
    pairs = [sql.SQL("{}, {}").format(sql.Literal(p.name), sql.SQL(p.expr)) for p in c.props]
    return sql.SQL("json_build_object({})::text").format(sql.SQL(", ").join(pairs))


def _geometry_json(c: CollectionDef, *, srid: int, flip: bool, decimals: int) -> sql.Composable:
    geom = sql.SQL(c.geom)
    if srid != 4326:
        geom = sql.SQL("ST_Transform({}, {})").format(geom, sql.Literal(int(srid)))
    if flip:
        geom = sql.SQL("ST_FlipCoordinates({})").format(geom)
    return sql.SQL("ST_AsGeoJSON({}, {}, 0)::text").format(geom, sql.Literal(int(decimals)))


def _where(c: CollectionDef, *, bbox, filters, interval) -> tuple[sql.Composable, dict]:
    parts: list[sql.Composable] = [sql.SQL("TRUE")]
    params: dict = {}
    if bbox is not None:
        parts.append(sql.SQL("ST_Intersects({}, ST_MakeEnvelope(%(xmin)s, %(ymin)s, %(xmax)s, %(ymax)s, 4326))")
                     .format(sql.SQL(c.geom)))
        params.update(xmin=bbox[0], ymin=bbox[1], xmax=bbox[2], ymax=bbox[3])
    for i, (name, value) in enumerate(filters or ()):
        key = f"f{i}"
        parts.append(sql.SQL("({}) = {}").format(sql.SQL(c.by_name[name].expr), sql.Placeholder(key)))
        params[key] = value
    if interval is not None:
        start, end = interval
        if c.temporal is None:
            parts.append(sql.SQL("FALSE"))
        else:
            t = sql.SQL(c.temporal)
            if start is not None:
                parts.append(sql.SQL("{} >= %(t_start)s").format(t))
                params["t_start"] = start
            if end is not None:
                parts.append(sql.SQL("{} <= %(t_end)s").format(t))
                params["t_end"] = end
    return sql.SQL(" AND ").join(parts), params


async def _fetch(pool: AsyncConnectionPool, query: sql.Composable, params: dict) -> list[dict]:
    try:
        async with pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(query, params)
            return await cur.fetchall()
    except psycopg.errors.QueryCanceled:
        raise QueryTimeout("the query ran longer than the statement timeout; narrow the bbox, add filters "
                           "or lower the limit") from None


async def count_items(pool: AsyncConnectionPool, *, collection: str, bbox=None, filters=(), interval=None,
                      offline_after_s: float) -> int:
    c = COLLECTIONS[collection]
    where, params = _where(c, bbox=bbox, filters=filters, interval=interval)
    query = sql.SQL("SELECT count(*) AS n FROM {} WHERE {}").format(sql.SQL(c.from_), where)
    rows = await _fetch(pool, query, {**params, "offline_after_s": offline_after_s})
    return rows[0]["n"]


async def items(pool: AsyncConnectionPool, *, collection: str, bbox=None, filters=(), interval=None,
                limit: int, offset: int, srid: int = 4326, flip: bool = False, decimals: int = 9,
                offline_after_s: float) -> list[dict]:
    """Rows of (id, geometry: GeoJSON text or None, properties: JSON text), ordered by id.

    ``bbox`` is (xmin, ymin, xmax, ymax) in EPSG:4326 lon/lat; ``filters`` are (property, value)
    pairs of queryable properties; ``interval`` is (start, end) with None for an open end.
    """
    c = COLLECTIONS[collection]
    where, params = _where(c, bbox=bbox, filters=filters, interval=interval)
    # The page's ids first, then the GeoJSON and properties of those rows only: PostgreSQL
    # computes the select list of every row an OFFSET skips, so a page deep into a large
    # collection otherwise renders all the rows before it (bench/geo.py: 0.9 s at offset
    # 99,000 of 100k buildings, 55 ms this way).
    query = sql.SQL("""SELECT {id} AS id, {geom} AS geometry, {props} AS properties
                       FROM {from_}
                       WHERE {id} IN (SELECT {id} FROM {from_} WHERE {where}
                                      ORDER BY {id} LIMIT %(limit)s OFFSET %(offset)s)
                       ORDER BY {id}""").format(
        id=sql.SQL(c.id_expr), geom=_geometry_json(c, srid=srid, flip=flip, decimals=decimals),
        props=_properties_json(c), from_=sql.SQL(c.from_), where=where)
    return await _fetch(pool, query, {**params, "limit": limit, "offset": offset,
                                      "offline_after_s": offline_after_s})


async def item(pool: AsyncConnectionPool, *, collection: str, feature_id: int, srid: int = 4326,
               flip: bool = False, decimals: int = 9, offline_after_s: float) -> dict | None:
    c = COLLECTIONS[collection]
    query = sql.SQL("""SELECT {id} AS id, {geom} AS geometry, {props} AS properties
                       FROM {from_} WHERE {id} = %(fid)s""").format(
        id=sql.SQL(c.id_expr), geom=_geometry_json(c, srid=srid, flip=flip, decimals=decimals),
        props=_properties_json(c), from_=sql.SQL(c.from_))
    rows = await _fetch(pool, query, {"fid": feature_id, "offline_after_s": offline_after_s})
    return rows[0] if rows else None


async def extents(pool: AsyncConnectionPool, *, collections: list[str]) -> dict[str, dict]:
    """{collection: {"bbox": [xmin, ymin, xmax, ymax] | None, "start": …, "end": …}} in EPSG:4326."""
    selects = []
    for name in collections:
        c = COLLECTIONS[name]
        temporal = (sql.SQL("min({t}) AS t_start, max({t}) AS t_end").format(t=sql.SQL(c.temporal)) if c.temporal
                    else sql.SQL("NULL::timestamptz AS t_start, NULL::timestamptz AS t_end"))
        selects.append(sql.SQL("""SELECT {name} AS collection, ST_XMin(e) AS xmin, ST_YMin(e) AS ymin,
                                         ST_XMax(e) AS xmax, ST_YMax(e) AS ymax, t_start, t_end
                                  FROM (SELECT ST_Extent({geom}) AS e, {temporal} FROM {from_}) x""").format(
            name=sql.Literal(name), geom=sql.SQL(c.geom), from_=sql.SQL(c.from_), temporal=temporal))
    rows = await _fetch(pool, sql.SQL(" UNION ALL ").join(selects), {})
    out = {}
    for r in rows:
        bbox = None if r["xmin"] is None else [r["xmin"], r["ymin"], r["xmax"], r["ymax"]]
        out[r["collection"]] = {"bbox": bbox, "start": r["t_start"], "end": r["t_end"]}
    return out
