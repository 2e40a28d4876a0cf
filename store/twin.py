"""Queries behind the twin API: one building's tree and one floor's plan, with each sensor's live state.

A sensor's state is :data:`cimtwin.store.sensor_state.STATUS` (the tiles' and OGC's: alarm,
warning, offline, ok) with ``no_data`` (it never reported) shown as ``offline``; both queries use it.

Where things are: a component belongs to the building when its building, its floor or its room
is in it; it hangs under its room (if that room is in the building), else its floor, else the
building. A sensor on a component hangs under that component; a sensor without a component under
its room, else the building. Everything is fetched with set-based queries, never one per node:
a tree is one statement for its structure (which the API caches) and one for its live part; a
floor plan is four small ones. Times are RFC 3339 with the session's offset (the API's connections
run in UTC: "…+00:00").
"""

from __future__ import annotations

from operator import itemgetter

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import NotFound, QueryTimeout

from . import sensor_state
from .blocks import geometry_sql

# Aliases: s sensors (only s.id is read), l latest (left-joined). Binds offline_after_s. STATUS is
# never null, so nullif/coalesce maps no_data to offline with STATUS evaluated once.
_STATE = f"coalesce(nullif({sensor_state.STATUS}, 'no_data'), 'offline')"

_TIME = "(to_json(l.time) #>> '{}')"


# ----------------------------------------------------------------------------- the tree
#
# The tree is served in two parts (api/services/twin.py puts them together):
#
# * its structure: every node's fixed fields as JSON text, and where the node hangs. The API
#   caches it per building and checks ``twin_structure_state.generation`` (moved by triggers on
#   buildings, floors, rooms, components, sensors and device renames, migration 0013) on every
#   request, in the same statement that reads the live part;
# * its live part, never cached: each sensor's latest value and time and its state, in the
#   structure's sensor order.
#
# The fixed fields are written by string concatenation, not with json_build_object, which costs
# about three times as much per node (a 10,000-sensor building has 14,000 nodes). Free text goes
# through to_json (escaping); device ids and channels are safe by their CHECK constraints
# (letters, digits and ._:-) and are quoted as they are.

NODE_BUILDING, NODE_FLOOR, NODE_ROOM, NODE_COMPONENT, NODE_SENSOR = range(5)


def _str(expr: str) -> str:
    """A JSON string, or null."""
    return f"coalesce(to_json({expr})::text, 'null')"


def _num(expr: str) -> str:
    """A JSON number, or null (also for NaN and infinities, which JSON cannot hold)."""
    return (f"CASE WHEN ({expr}) > '-Infinity'::float8 AND ({expr}) < 'Infinity'::float8 "
            f"THEN ({expr})::text ELSE 'null' END")


def _int(expr: str) -> str:
    return f"coalesce(({expr})::text, 'null')"


# Each node's fields up to its "state" (exclusive): the text ends with a comma.
_BUILDING_HEAD = ("""'{"id":' || b.id || ',"node":"building","ext_id":' || """ + _str("b.ext_id")
                  + """ || ',"name":' || """ + _str("b.name") + """ || ',"address":' || """ + _str("b.address")
                  + """ || ',"use":' || """ + _str("b.use") + """ || ',"area_id":' || """ + _int("b.area_id")
                  + """ || ',"floors_above":' || """ + _int("b.floors_above")
                  + """ || ',"floors_below":' || """ + _int("b.floors_below")
                  + """ || ',"height":' || """ + _num("coalesce(b.height, bz.top)")
                  + """ || ',"min_height":' || """
                  + _num("CASE WHEN bz.lowest < 0 THEN bz.lowest ELSE b.min_height END")
                  + " || ','")

_FLOOR_HEAD = ("""'{"id":' || fl.id || ',"node":"floor","level":' || fl.level || ',"name":' || """ + _str("fl.name")
               + """ || ',"elevation":' || """ + _num("fl.elevation") + """ || ',"height":' || """
               + _num("fl.height") + """ || ',"min_height":' || """ + _num("fl.elevation")
               + """ || ',"top":' || """ + _num("fl.elevation + fl.height") + " || ','")

_ROOM_HEAD = ("""'{"id":' || rm.id || ',"node":"room","ext_id":' || """ + _str("rm.ext_id")
              + """ || ',"name":' || """ + _str("rm.name") + """ || ',"use":' || """ + _str("rm.use") + " || ','")

_COMPONENT_HEAD = ("""'{"id":' || cp.id || ',"node":"component","ext_id":' || """ + _str("cp.ext_id")
                   + """ || ',"component_kind":"' || cp.kind || '","name":' || """ + _str("cp.name") + " || ','")

# A sensor's, up to its "value" (value, time and state are live).
_SENSOR_HEAD = ("""'{"id":' || sp.id || ',"node":"sensor","device":"' || d.ext_id || '","channel":"' || sp.channel """
                f"""|| '","quantity":' || {_str("sp.quantity")} || ',"unit":' || {_str("sp.unit")} || ',"value":'""")

# Rows (kind, id, floor_id, room_id, component_id, head, generation, ord): where each node hangs
# and its fixed fields; the generation on the building's row (same snapshot); ord orders floors
# (their level) and the rest (their id). Unordered: sorting them here cost more than in Python.
# No building row: no such building.
_STRUCTURE = f"""
WITH fl AS (SELECT f.id, f.level, f.name, f.elevation, f.height FROM floors f WHERE f.building_id = %(building_id)s),
rm AS (SELECT r.id, r.floor_id, r.ext_id, r.name, r.use FROM rooms r JOIN fl ON fl.id = r.floor_id),
cp AS (
    SELECT c.id, c.ext_id, c.kind, c.name, rm.id AS room_id, coalesce(rm.floor_id, fl.id) AS floor_id
      FROM components c
      LEFT JOIN rm ON rm.id = c.room_id
      LEFT JOIN fl ON fl.id = c.floor_id
     WHERE c.id IN (SELECT id FROM components WHERE building_id = %(building_id)s
                    UNION ALL SELECT c2.id FROM components c2 JOIN fl ON fl.id = c2.floor_id
                    UNION ALL SELECT c3.id FROM components c3 JOIN rm ON rm.id = c3.room_id)),
-- each sensor's place: its component (in the building), else its room, else the building
sp AS (
    SELECT s.id, s.device_id, s.channel, s.quantity, s.unit, cp.id AS component_id, cp.room_id, cp.floor_id
      FROM sensors s JOIN cp ON cp.id = s.component_id
    UNION ALL
    SELECT s.id, s.device_id, s.channel, s.quantity, s.unit, NULL, rm.id, rm.floor_id
      FROM sensors s JOIN rm ON rm.id = s.room_id WHERE s.component_id IS NULL
    UNION ALL
    SELECT s.id, s.device_id, s.channel, s.quantity, s.unit, NULL, NULL, NULL FROM sensors s
     WHERE s.building_id = %(building_id)s AND s.component_id IS NULL
       AND NOT EXISTS (SELECT 1 FROM rm WHERE rm.id = s.room_id)),
bz AS (SELECT min(elevation) AS lowest, max(elevation + height) AS top FROM fl)
SELECT {NODE_BUILDING} AS kind, b.id, NULL::bigint AS floor_id, NULL::bigint AS room_id,
       NULL::bigint AS component_id, {_BUILDING_HEAD} AS head,
       (SELECT generation FROM twin_structure_state) AS generation, 0 AS ord
  FROM buildings b, bz WHERE b.id = %(building_id)s
UNION ALL
SELECT {NODE_FLOOR}, fl.id, fl.id, NULL, NULL, {_FLOOR_HEAD}, NULL, fl.level FROM fl
UNION ALL
SELECT {NODE_ROOM}, rm.id, rm.floor_id, rm.id, NULL, {_ROOM_HEAD}, NULL, rm.id FROM rm
UNION ALL
SELECT {NODE_COMPONENT}, cp.id, cp.floor_id, cp.room_id, cp.id, {_COMPONENT_HEAD}, NULL, cp.id FROM cp
UNION ALL
SELECT {NODE_SENSOR}, sp.id, sp.floor_id, sp.room_id, sp.component_id, {_SENSOR_HEAD}, NULL, sp.id
  FROM sp JOIN devices d ON d.id = sp.device_id"""


async def tree_structure(pool: AsyncConnectionPool, *, building_id: int) -> tuple[int, list[tuple]]:
    """(generation, rows) of one building's structure: rows (kind, id, floor_id, room_id, component_id,
    head) as in ``_STRUCTURE``, the building first, then the floors by level, then rooms, components
    and sensors, each by id. Raises NotFound."""
    try:
        async with pool.connection() as conn:
            cur = await conn.execute(_STRUCTURE, {"building_id": building_id})
            rows = await cur.fetchall()
    except psycopg.errors.QueryCanceled:
        raise QueryTimeout("the twin query took longer than the statement timeout") from None
    rows.sort(key=itemgetter(0, 7))
    if not rows or rows[0][0] != NODE_BUILDING:
        raise NotFound(f"building {building_id} does not exist", code="not_found")
    return rows[0][6], [r[:6] for r in rows]


# The live part for the sensors of ``ids`` (an int8[] literal, in the structure's order): the
# structure generation (same snapshot), and per sensor the second letter of its state (one of
# STATE_LETTERS) and the JSON text `<value>,"time":<time>,"state":"<state>"`, all joined by '|'.
STATE_LETTERS = {"k": "ok", "a": "warning", "l": "alarm", "f": "offline"}
_LIVE = f"""
WITH ids AS (SELECT u.id, u.n FROM unnest(%(ids)s::bigint[]) WITH ORDINALITY u(id, n)),
ss AS (SELECT s.n, l.value, l.time, {_STATE} AS state
         FROM ids s LEFT JOIN latest l ON l.sensor_id = s.id
        OFFSET 0)  -- a fence: otherwise the state is evaluated again for each use below
SELECT (SELECT generation FROM twin_structure_state),
       string_agg(substr(state, 2, 1) || '|' || {_num("value")} || ',"time":' || coalesce(to_json(time)::text, 'null')
                  || ',"state":"' || state || '"', '|' ORDER BY n)
  FROM ss"""


async def tree_live(pool: AsyncConnectionPool, *, ids: str, offline_after_s: float) -> tuple[int, str]:
    """(generation, live part) for the sensors of ``ids`` (see ``_LIVE``)."""
    try:
        async with pool.connection() as conn:
            # never prepared: a generic plan cannot see how many ids there are, and probes latest
            # once per id where a hash join would be cheaper
            cur = await conn.execute(_LIVE, {"ids": ids, "offline_after_s": offline_after_s}, prepare=False)
            generation, live = await cur.fetchone()
    except psycopg.errors.QueryCanceled:
        raise QueryTimeout("the twin query took longer than the statement timeout") from None
    return generation, live or ""


# ----------------------------------------------------------------------------- a floor plan

_FLOOR = """
SELECT f.id, f.building_id, f.level, f.name, f.elevation, f.height
  FROM floors f WHERE f.building_id = %(building_id)s AND f.level = %(level)s"""

_FLOOR_ROOMS = """
SELECT r.id, r.ext_id, r.name, r.use, r.occupants, {geom} AS geometry
  FROM rooms r WHERE r.floor_id = %(floor_id)s ORDER BY r.id"""

_FLOOR_COMPONENTS = """
SELECT c.id, c.ext_id, c.kind, c.name, r.id AS room_id, {geom} AS geometry
  FROM components c
  LEFT JOIN rooms r ON r.id = c.room_id AND r.floor_id = %(floor_id)s
 WHERE c.id IN (SELECT id FROM components WHERE floor_id = %(floor_id)s
                UNION SELECT c2.id FROM components c2 JOIN rooms r2 ON r2.id = c2.room_id
                 WHERE r2.floor_id = %(floor_id)s)
 ORDER BY c.id"""

_FLOOR_SENSORS = """
WITH ids AS (SELECT s.id FROM sensors s WHERE s.component_id = ANY(%(component_ids)s)
             UNION SELECT s.id FROM sensors s JOIN rooms r ON r.id = s.room_id
              WHERE r.floor_id = %(floor_id)s AND s.component_id IS NULL)
SELECT s.id, s.component_id, CASE WHEN s.component_id IS NULL THEN s.room_id END AS room_id,
       d.ext_id AS device, v.code AS vendor, s.channel, s.quantity, s.unit, l.value, {utc} AS time,
       {state} AS state, sp.place AS placed_by, {geom} AS geometry
  FROM ids JOIN sensors s ON s.id = ids.id
  JOIN devices d ON d.id = s.device_id
  JOIN vendors v ON v.id = d.vendor_id
  LEFT JOIN latest l ON l.sensor_id = s.id
  LEFT JOIN sensor_places sp ON sp.sensor_id = s.id
 ORDER BY s.id"""


async def floor_plan(pool: AsyncConnectionPool, *, building_id: int, level: int, offline_after_s: float,
                     srid: int | None, digits: int) -> dict:
    """A floor's rooms, components and sensors (geometry: GeoJSON text in ``srid``, or WKB when srid is None).

    Raises NotFound for an unknown building or level."""
    p = {"building_id": building_id, "level": level}
    try:
        async with pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(_FLOOR, p)
            floor = await cur.fetchone()
            if floor is None:
                await cur.execute("SELECT 1 FROM buildings WHERE id = %(building_id)s", p)
                if await cur.fetchone() is None:
                    raise NotFound(f"building {building_id} does not exist", code="not_found")
                raise NotFound(f"building {building_id} has no floor at level {level}", code="not_found")
            fp = {"floor_id": floor["id"]}
            await cur.execute(sql.SQL(_FLOOR_ROOMS).format(geom=geometry_sql(srid, digits, "r.geom")), fp)
            rooms = await cur.fetchall()
            await cur.execute(sql.SQL(_FLOOR_COMPONENTS).format(geom=geometry_sql(srid, digits, "c.geom")), fp)
            components = await cur.fetchall()
            query = sql.SQL(_FLOOR_SENSORS).format(
                utc=sql.SQL(_TIME), state=sql.SQL(_STATE),
                geom=geometry_sql(srid, digits, sensor_state.GEOM))
            await cur.execute(query, {**fp, "component_ids": [c["id"] for c in components],
                                      "offline_after_s": offline_after_s})
            sensors = await cur.fetchall()
    except psycopg.errors.QueryCanceled:
        raise QueryTimeout("the floor query took longer than the statement timeout") from None
    return {"floor": floor, "rooms": rooms, "components": components, "sensors": sensors}
