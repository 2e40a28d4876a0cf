"""Vector tiles (Mapbox Vector Tile 2.1) made by PostGIS: ST_TileEnvelope, ST_AsMVTGeom, ST_AsMVT.

Each layer is a fixed definition below. Tiles are Web Mercator (EPSG:3857) XYZ tiles with an
extent of 4096 and a 64-unit buffer. Static layers also get a fingerprint of the rows under a
tile (their ids and row versions), which changes with any insert, update or delete there, so a
tile's ETag can be checked without rendering it.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import QueryTimeout

from . import sensor_state

EXTENT = 4096
BUFFER = 64
_WORLD = 20037508.342789244


@dataclass(frozen=True)
class Attr:
    name: str
    expr: str
    type: str  # TileJSON field type: String | Number | Boolean
    description: str = ""


@dataclass(frozen=True)
class LayerDef:
    id: str
    description: str
    from_: str
    geom: str               # EPSG:4326
    id_expr: str
    attrs: tuple[Attr, ...]
    minzoom: int
    live: bool = False      # carries state that changes without its rows changing (time, alerts): never cached
    version: str | None = None  # per-row version expression for the fingerprint (static layers)


LAYERS: dict[str, LayerDef] = {layer.id: layer for layer in (
    LayerDef(
        id="areas", description="Administrative areas (district, street, community, grid)",
        from_="areas a", geom="a.geom", id_expr="a.id", minzoom=0,
        version="a.id::text || ':' || a.xmin::text",
        attrs=(Attr("code", "a.code", "String", "area code"), Attr("name", "a.name", "String", "name"),
               Attr("level", "a.level", "String", "district | street | community | grid"),
               Attr("parent_id", "a.parent_id", "Number", "parent area id"))),
    LayerDef(
        id="buildings", description="Building footprints for 2D fills and 3D extrusion",
        from_="buildings b", geom="b.geom", id_expr="b.id", minzoom=12,
        version="b.id::text || ':' || b.xmin::text",
        attrs=(Attr("name", "b.name", "String", "name"), Attr("use", "b.use", "String", "use"),
               Attr("height", "b.height", "Number", "height in metres, when known"),
               Attr("min_height", "b.min_height", "Number", "height of the lowest part, metres"),
               Attr("floors_above", "b.floors_above", "Number", "floors above ground"),
               Attr("render_height", "COALESCE(b.height, b.floors_above * 3.0, 10.0)", "Number",
                    "height for extrusion: height, else 3 m a floor, else 10 m"),
               Attr("render_min_height", "b.min_height", "Number", "base for extrusion, metres"))),
    LayerDef(
        id="components", description="City components (部件)",
        from_="components c", geom="c.geom", id_expr="c.id", minzoom=12,
        version="c.id::text || ':' || c.xmin::text",
        attrs=(Attr("kind", "c.kind", "String", "kind code, e.g. hydrant"), Attr("name", "c.name", "String", "name"),
               Attr("building_id", "c.building_id", "Number", "building id"),
               Attr("floor_id", "c.floor_id", "Number", "floor id"),
               Attr("room_id", "c.room_id", "Number", "room id"))),
    LayerDef(
        id="sensors", description="Sensors with their latest value and live status",
        from_=sensor_state.FROM, geom=sensor_state.GEOM, id_expr="s.id", minzoom=10, live=True,
        attrs=(Attr("status", sensor_state.STATUS, "String", sensor_state.STATUS_DESCRIPTION),
               Attr("vendor", "v.code", "String", "vendor code"), Attr("device", "d.ext_id", "String", "device id"),
               Attr("channel", "s.channel", "String", "channel"), Attr("quantity", "s.quantity", "String", "quantity"),
               Attr("unit", "s.unit", "String", "unit"), Attr("value", "l.value", "Number", "latest value"),
               Attr("time", """to_char(l.time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')""", "String",
                    "time of the latest value (UTC)"),
               Attr("component_id", "s.component_id", "Number", "component id"),
               Attr("room_id", "s.room_id", "Number", "room id"),
               Attr("building_id", "s.building_id", "Number", "building id"))),
)}

# The tile's envelope, and the search box in EPSG:4326: the envelope with the buffer, kept
# inside the Web Mercator world so that longitudes never wrap.
_ENVELOPES = sql.SQL("""
    env AS (SELECT ST_TileEnvelope(%(z)s, %(x)s, %(y)s) AS tile,
                   ST_TileEnvelope(%(z)s, %(x)s, %(y)s, margin => %(margin)s) AS m),
    box AS (SELECT tile, ST_Transform(ST_MakeEnvelope(
                greatest(ST_XMin(m), -{w}), greatest(ST_YMin(m), -{w}),
                least(ST_XMax(m), {w}), least(ST_YMax(m), {w}), 3857), 4326) AS search
            FROM env)""").format(w=sql.Literal(_WORLD))


def _params(z: int, x: int, y: int, **extra) -> dict:
    return {"z": z, "x": x, "y": y, "margin": BUFFER / EXTENT, **extra}


async def _one(pool: AsyncConnectionPool, query: sql.Composable, params: dict) -> dict:
    try:
        async with pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(query, params)
            return await cur.fetchone()
    except psycopg.errors.QueryCanceled:
        raise QueryTimeout("the tile took longer than the statement timeout to make; zoom in") from None


async def tile(pool: AsyncConnectionPool, *, layer: str, z: int, x: int, y: int, max_features: int,
               offline_after_s: float) -> bytes:
    """The MVT bytes of one layer in one tile; b'' when nothing is in it."""
    ld = LAYERS[layer]
    attrs = sql.SQL(", ").join(sql.SQL("{} AS {}").format(sql.SQL(a.expr), sql.Identifier(a.name))
                               for a in ld.attrs)
    query = sql.SQL("""
        WITH {envelopes},
        feats AS (
            SELECT {id} AS id, {attrs},
                   ST_AsMVTGeom(ST_Transform({geom}, 3857), box.tile, {extent}, {buffer}, true) AS mvtgeom
            FROM {from_}, box
            WHERE {geom} && box.search
            ORDER BY {id}
            LIMIT %(max_features)s)
        SELECT ST_AsMVT(feats.*, %(layer)s, {extent}, 'mvtgeom', 'id') AS mvt
        FROM feats WHERE mvtgeom IS NOT NULL""").format(
        envelopes=_ENVELOPES, id=sql.SQL(ld.id_expr), attrs=attrs, geom=sql.SQL(ld.geom),
        from_=sql.SQL(ld.from_), extent=sql.Literal(EXTENT), buffer=sql.Literal(BUFFER))
    row = await _one(pool, query, _params(z, x, y, max_features=max_features, layer=layer,
                                          offline_after_s=offline_after_s))
    return bytes(row["mvt"] or b"")


async def fingerprint(pool: AsyncConnectionPool, *, layer: str, z: int, x: int, y: int) -> str:
    """md5 over (id, row version) of the rows a static layer's tile is made from."""
    ld = LAYERS[layer]
    if ld.version is None:
        raise ValueError(f"layer {layer} has no row versions")
    query = sql.SQL("""
        WITH {envelopes}
        SELECT count(*) AS n, md5(coalesce(string_agg({version}, ',' ORDER BY {id}), '')) AS digest
        FROM {from_}, box WHERE {geom} && box.search""").format(
        envelopes=_ENVELOPES, version=sql.SQL(ld.version), id=sql.SQL(ld.id_expr),
        from_=sql.SQL(ld.from_), geom=sql.SQL(ld.geom))
    row = await _one(pool, query, _params(z, x, y))
    return f"{row['n']}:{row['digest']}"


async def bounds(pool: AsyncConnectionPool, *, layer: str) -> list[float] | None:
    """[west, south, east, north] of the layer's data in EPSG:4326, or None when it is empty."""
    ld = LAYERS[layer]
    query = sql.SQL("""SELECT ST_XMin(e) AS xmin, ST_YMin(e) AS ymin, ST_XMax(e) AS xmax, ST_YMax(e) AS ymax
                       FROM (SELECT ST_Extent({geom}) AS e FROM {from_}) x""").format(
        geom=sql.SQL(ld.geom), from_=sql.SQL(ld.from_))
    row = await _one(pool, query, {})
    return None if row["xmin"] is None else [row["xmin"], row["ymin"], row["xmax"], row["ymax"]]
