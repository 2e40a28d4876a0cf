"""Queries behind the twin API: one building's tree and one floor's plan, with each sensor's live state.

A sensor's state is computed here in SQL, in one expression shared by both queries:

* ``alarm``: it has an unfinished alert (open, acknowledged or dispatched) of severity major/critical;
* ``warning``: it has an unfinished alert of severity info/warning;
* ``offline``: its latest reading is older than ``offline_after_s`` seconds, or it never reported;
* ``ok``: otherwise.

Where things are: a component belongs to the building when its building, its floor or its room
is in it; it hangs under its room (if that room is in the building), else its floor, else the
building. A sensor on a component hangs under that component; a sensor without a component under
its room, else the building. Everything is fetched with set-based queries, never one per node:
the tree is one statement that also rolls the states up; a floor plan is four small ones.
Times are RFC 3339 with the session's offset (the API's connections run in UTC: "…+00:00").
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import NotFound, QueryTimeout

from . import sensor_state

# Unfinished alerts per sensor of ``ids``, reduced to a rank: 2 = alarm (major/critical), 1 = warning.
_ALERT_RANK = """SELECT a.sensor_id, max(CASE WHEN a.severity IN ('major', 'critical') THEN 2 ELSE 1 END) AS rank
    FROM alerts a
   WHERE a.status IN ('open', 'acknowledged', 'dispatched') AND a.sensor_id IN (SELECT id FROM ids)
   GROUP BY a.sensor_id"""

# Aliases: l latest, ar the alert rank.
_STATE = """CASE WHEN ar.rank = 2 THEN 'alarm' WHEN ar.rank = 1 THEN 'warning'
     WHEN l.time IS NULL OR l.time < (SELECT now() - make_interval(secs => %(offline_after_s)s)) THEN 'offline'
     ELSE 'ok' END"""

_TIME = "(to_json(l.time) #>> '{}')"


# ----------------------------------------------------------------------------- the tree
#
# The tree is one JSON document written by PostgreSQL in one statement: every step is a set-based
# join or GROUP BY over the building's rows. It is written by string concatenation, not with
# json_build_object, which costs about three times as much per node (a 10,000-sensor building has
# 14,000 nodes). Free text goes through to_json (escaping); device ids and channels are safe by
# their CHECK constraints (letters, digits and ._:-) and are quoted as they are.


def _str(expr: str) -> str:
    """A JSON string, or null."""
    return f"coalesce(to_json({expr})::text, 'null')"


def _num(expr: str) -> str:
    """A JSON number, or null (also for NaN and infinities, which JSON cannot hold)."""
    return (f"CASE WHEN ({expr}) > '-Infinity'::float8 AND ({expr}) < 'Infinity'::float8 "
            f"THEN ({expr})::text ELSE 'null' END")


def _int(expr: str) -> str:
    return f"coalesce(({expr})::text, 'null')"


def _counts_json(a: str) -> str:
    return (f"""'{{"ok":' || coalesce({a}.ok, 0) || ',"warning":' || coalesce({a}.warning, 0) || """
            f"""',"alarm":' || coalesce({a}.alarm, 0) || ',"offline":' || coalesce({a}.offline, 0) || '}}'""")


def _rolled_up(a: str) -> str:
    """A node's state from its sensors' counts: worst of alarm > warning > ok; offline when all are; else null."""
    return (f"""coalesce('"' || CASE WHEN {a}.alarm > 0 THEN 'alarm' WHEN {a}.warning > 0 THEN 'warning' """
            f"""WHEN {a}.ok > 0 THEN 'ok' WHEN {a}.offline > 0 THEN 'offline' END || '"', 'null')""")


def _list(expr: str) -> str:
    return f"'[' || coalesce({expr}, '') || ']'"


_COUNTS = """count(*) FILTER (WHERE state = 'ok') AS ok, count(*) FILTER (WHERE state = 'warning') AS warning,
       count(*) FILTER (WHERE state = 'alarm') AS alarm, count(*) FILTER (WHERE state = 'offline') AS offline"""

_SENSOR_JSON = ("""'{"id":' || s.id || ',"node":"sensor","device":"' || d.ext_id || '","channel":"' || s.channel """
                f"""|| '","quantity":' || {_str("s.quantity")} || ',"unit":' || {_str("s.unit")} """
                f"""|| ',"value":' || {_num("l.value")} || ',"time":' || coalesce(to_json(l.time)::text, 'null') """
                """|| ',"state":"' || st.state || '"}'""")

_COMPONENT_JSON = ("""'{"id":' || cp.id || ',"node":"component","ext_id":' || """ + _str("cp.ext_id")
                   + """ || ',"component_kind":"' || cp.kind || '","name":' || """ + _str("cp.name")
                   + """ || ',"state":' || """ + _rolled_up("cc") + """ || ',"counts":' || """ + _counts_json("cc")
                   + """ || ',"sensors":' || """ + _list("cc.sensors") + " || '}'")

_ROOM_JSON = ("""'{"id":' || rm.id || ',"node":"room","ext_id":' || """ + _str("rm.ext_id")
              + """ || ',"name":' || """ + _str("rm.name") + """ || ',"use":' || """ + _str("rm.use")
              + """ || ',"state":' || """ + _rolled_up("rc") + """ || ',"counts":' || """ + _counts_json("rc")
              + """ || ',"components":' || """ + _list("cj_room.list")
              + """ || ',"sensors":' || """ + _list("rc.sensors") + " || '}'")

_FLOOR_JSON = ("""'{"id":' || fl.id || ',"node":"floor","level":' || fl.level || ',"name":' || """ + _str("fl.name")
               + """ || ',"elevation":' || """ + _num("fl.elevation") + """ || ',"height":' || """
               + _num("fl.height") + """ || ',"min_height":' || """ + _num("fl.elevation")
               + """ || ',"top":' || """ + _num("fl.elevation + fl.height")
               + """ || ',"state":' || """ + _rolled_up("fc") + """ || ',"counts":' || """ + _counts_json("fc")
               + """ || ',"rooms":' || """ + _list("rj.list")
               + """ || ',"components":' || """ + _list("cj_floor.list") + " || '}'")

_BUILDING_JSON = ("""'{"id":' || b.id || ',"node":"building","ext_id":' || """ + _str("b.ext_id")
                  + """ || ',"name":' || """ + _str("b.name") + """ || ',"address":' || """ + _str("b.address")
                  + """ || ',"use":' || """ + _str("b.use") + """ || ',"area_id":' || """ + _int("b.area_id")
                  + """ || ',"floors_above":' || """ + _int("b.floors_above")
                  + """ || ',"floors_below":' || """ + _int("b.floors_below")
                  + """ || ',"height":' || """ + _num("coalesce(b.height, bz.top)")
                  + """ || ',"min_height":' || """ + _num("CASE WHEN bz.lowest < 0 THEN bz.lowest ELSE b.min_height END")
                  + """ || ',"state":' || """ + _rolled_up("bc") + """ || ',"counts":' || """ + _counts_json("bc")
                  + """ || ',"floors":' || """ + _list("fj.list")
                  + """ || ',"components":' || """ + _list("cj_building.list")
                  + """ || ',"sensors":' || """ + _list("bc.sensors") + " || '}'")

_TREE = f"""
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
-- every sensor's unfinished alerts (few, whatever the building): cheaper than joining them to sp first
ar AS (SELECT a.sensor_id, max(CASE WHEN a.severity IN ('major', 'critical') THEN 2 ELSE 1 END) AS rank
         FROM alerts a
        WHERE a.status IN ('open', 'acknowledged', 'dispatched') AND a.sensor_id IS NOT NULL
        GROUP BY a.sensor_id),
ss AS (
    SELECT s.id, s.component_id, s.room_id, s.floor_id, st.state, {_SENSOR_JSON} AS j
      FROM sp s
      JOIN devices d ON d.id = s.device_id
      LEFT JOIN latest l ON l.sensor_id = s.id
      LEFT JOIN ar ON ar.sensor_id = s.id
      CROSS JOIN LATERAL (SELECT {_STATE} AS state) st),
cc AS (SELECT component_id AS id, {_COUNTS}, string_agg(j, ',' ORDER BY id) AS sensors
         FROM ss WHERE component_id IS NOT NULL GROUP BY component_id),
rc AS (SELECT room_id AS id, {_COUNTS}, string_agg(j, ',' ORDER BY id) FILTER (WHERE component_id IS NULL) AS sensors
         FROM ss WHERE room_id IS NOT NULL GROUP BY room_id),
fc AS (SELECT floor_id AS id, {_COUNTS} FROM ss WHERE floor_id IS NOT NULL GROUP BY floor_id),
bc AS (SELECT {_COUNTS},
              string_agg(j, ',' ORDER BY id) FILTER (WHERE component_id IS NULL AND room_id IS NULL) AS sensors
         FROM ss),
cj AS (SELECT cp.id, cp.room_id, cp.floor_id, {_COMPONENT_JSON} AS j FROM cp LEFT JOIN cc ON cc.id = cp.id),
cj_room AS (SELECT room_id, string_agg(j, ',' ORDER BY id) AS list FROM cj WHERE room_id IS NOT NULL GROUP BY room_id),
cj_floor AS (SELECT floor_id, string_agg(j, ',' ORDER BY id) AS list FROM cj
              WHERE room_id IS NULL AND floor_id IS NOT NULL GROUP BY floor_id),
cj_building AS (SELECT string_agg(j, ',' ORDER BY id) AS list FROM cj WHERE room_id IS NULL AND floor_id IS NULL),
rj AS (SELECT rm.floor_id, string_agg({_ROOM_JSON}, ',' ORDER BY rm.id) AS list
         FROM rm LEFT JOIN rc ON rc.id = rm.id LEFT JOIN cj_room ON cj_room.room_id = rm.id
        GROUP BY rm.floor_id),
fj AS (SELECT string_agg({_FLOOR_JSON}, ',' ORDER BY fl.level) AS list
         FROM fl LEFT JOIN fc ON fc.id = fl.id LEFT JOIN rj ON rj.floor_id = fl.id
         LEFT JOIN cj_floor ON cj_floor.floor_id = fl.id),
bz AS (SELECT min(elevation) AS lowest, max(elevation + height) AS top FROM fl)
SELECT {_BUILDING_JSON} AS tree
  FROM buildings b, bz, bc, fj, cj_building
 WHERE b.id = %(building_id)s"""


async def building_tree(pool: AsyncConnectionPool, *, building_id: int, offline_after_s: float) -> str:
    """One building's tree as JSON text. Raises NotFound for an unknown building."""
    try:
        async with pool.connection() as conn:
            cur = await conn.execute(_TREE, {"building_id": building_id, "offline_after_s": offline_after_s})
            row = await cur.fetchone()
    except psycopg.errors.QueryCanceled:
        raise QueryTimeout("the twin query took longer than the statement timeout") from None
    if row is None:
        raise NotFound(f"building {building_id} does not exist", code="not_found")
    return row[0]


# ----------------------------------------------------------------------------- a floor plan

def _geometry_sql(expr: str, srid: int | None, digits: int) -> sql.Composable:
    if srid is None:
        return sql.SQL("ST_AsBinary({})").format(sql.SQL(expr))
    if srid == 4326:
        return sql.SQL("ST_AsGeoJSON({}, {}, 0)").format(sql.SQL(expr), sql.Literal(digits))
    return sql.SQL("ST_AsGeoJSON(ST_Transform({}, {}), {}, 0)").format(sql.SQL(expr), sql.Literal(srid),
                                                                     sql.Literal(digits))


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
              WHERE r.floor_id = %(floor_id)s AND s.component_id IS NULL),
     ar AS ({alert_rank})
SELECT s.id, s.component_id, CASE WHEN s.component_id IS NULL THEN s.room_id END AS room_id,
       d.ext_id AS device, v.code AS vendor, s.channel, s.quantity, s.unit, l.value, {utc} AS time,
       {state} AS state, sp.place AS placed_by, {geom} AS geometry
  FROM ids JOIN sensors s ON s.id = ids.id
  JOIN devices d ON d.id = s.device_id
  JOIN vendors v ON v.id = d.vendor_id
  LEFT JOIN latest l ON l.sensor_id = s.id
  LEFT JOIN ar ON ar.sensor_id = s.id
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
            await cur.execute(sql.SQL(_FLOOR_ROOMS).format(geom=_geometry_sql("r.geom", srid, digits)), fp)
            rooms = await cur.fetchall()
            await cur.execute(sql.SQL(_FLOOR_COMPONENTS).format(geom=_geometry_sql("c.geom", srid, digits)), fp)
            components = await cur.fetchall()
            query = sql.SQL(_FLOOR_SENSORS).format(
                alert_rank=sql.SQL(_ALERT_RANK),
                utc=sql.SQL(_TIME), state=sql.SQL(_STATE),
                geom=_geometry_sql(sensor_state.GEOM, srid, digits))
            await cur.execute(query, {**fp, "component_ids": [c["id"] for c in components],
                                      "offline_after_s": offline_after_s})
            sensors = await cur.fetchall()
    except psycopg.errors.QueryCanceled:
        raise QueryTimeout("the floor query took longer than the statement timeout") from None
    return {"floor": floor, "rooms": rooms, "components": components, "sensors": sensors}
