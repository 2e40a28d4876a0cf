"""The live state of buildings: each building's sensors counted by state, and the state rolled up.

A sensor's state is :data:`cimtwin.store.sensor_state.STATUS` (the tiles' and OGC's), with
``no_data`` counted as ``offline``. A building's state is the worst over its sensors, alarm >
warning > ok; ``offline`` only when every one of them is offline (or has never reported).
Buildings without sensors have no state and are left out.

Which sensors are a building's is :data:`SENSOR_BUILDINGS`, the rule of the twin tree
(store/twin.py): a sensor on a component belongs to every building the component is in (its
building, its floor's or its room's); a sensor without a component to its room's building, and to
its own ``building_id`` when its room is not in that building.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import QueryTimeout

from . import sensor_state

#: ``(sensor_id, building_id)``, one row per sensor and building it belongs to. Use it as a
#: subquery (not a CTE), so that a filter on either column reaches the arms and their indexes.
SENSOR_BUILDINGS = """
SELECT s.id AS sensor_id, cb.building_id
  FROM sensors s
  JOIN (SELECT c.id AS component_id, c.building_id FROM components c WHERE c.building_id IS NOT NULL
        UNION
        SELECT c.id, f.building_id FROM components c JOIN floors f ON f.id = c.floor_id
        UNION
        SELECT c.id, f.building_id FROM components c JOIN rooms r ON r.id = c.room_id
          JOIN floors f ON f.id = r.floor_id) cb ON cb.component_id = s.component_id
UNION ALL
SELECT s.id, f.building_id
  FROM sensors s JOIN rooms r ON r.id = s.room_id JOIN floors f ON f.id = r.floor_id
 WHERE s.component_id IS NULL
UNION ALL
SELECT s.id, s.building_id
  FROM sensors s
 WHERE s.component_id IS NULL AND s.building_id IS NOT NULL
   AND NOT EXISTS (SELECT FROM rooms r JOIN floors f ON f.id = r.floor_id
                    WHERE r.id = s.room_id AND f.building_id = s.building_id)"""

_STATES = sql.SQL("""
SELECT b.id, b.area_id, x.ok, x.warning, x.alarm, x.offline,
       CASE WHEN x.alarm > 0 THEN 'alarm' WHEN x.warning > 0 THEN 'warning' WHEN x.ok > 0 THEN 'ok'
            ELSE 'offline' END AS state,
       now() AS as_of
  FROM (SELECT st.building_id,
               count(*) FILTER (WHERE st.state = 'ok') AS ok,
               count(*) FILTER (WHERE st.state = 'warning') AS warning,
               count(*) FILTER (WHERE st.state = 'alarm') AS alarm,
               count(*) FILTER (WHERE st.state IN ('offline', 'no_data')) AS offline
          FROM (SELECT sb.building_id, {status} AS state
                  FROM ({sensor_buildings}) sb
                  JOIN sensors s ON s.id = sb.sensor_id
                  LEFT JOIN latest l ON l.sensor_id = s.id
                 WHERE {where}
                OFFSET 0) st  -- a fence: otherwise each count(*) FILTER evaluates the state again
         GROUP BY st.building_id) x
  JOIN buildings b ON b.id = x.building_id
 ORDER BY b.id""")

_ALL, _SOME = (_STATES.format(status=sql.SQL(sensor_state.STATUS), sensor_buildings=sql.SQL(SENSOR_BUILDINGS),
                              where=sql.SQL(where))
               for where in ("TRUE", "sb.building_id = ANY(%(ids)s::bigint[])"))
_BUILDINGS_OF_SENSORS = sql.SQL("SELECT DISTINCT building_id FROM ({}) sb WHERE sensor_id = ANY(%s::bigint[])").format(
    sql.SQL(SENSOR_BUILDINGS))
_BUILDINGS_IN_AREAS = "SELECT id FROM buildings WHERE area_id = ANY(%s::bigint[])"


@dataclass(frozen=True, slots=True)
class BuildingState:
    id: int
    area_id: int | None
    state: str                 # alarm | warning | ok | offline
    counts: dict[str, int]     # ok, warning, alarm, offline (no_data counted as offline)


@dataclass(frozen=True, slots=True)
class StatesRead:
    as_of: datetime                      # the statement's time
    states: dict[int, BuildingState]     # by building id; buildings without sensors are absent
    scope: list[int] | None              # the buildings looked at; None: all


async def building_states(pool: AsyncConnectionPool, *, offline_after_s: float,
                          building_ids: list[int] | None = None, sensor_ids: list[int] | None = None,
                          area_ids: list[int] | None = None) -> StatesRead:
    """The state of every building that has sensors.

    With any of ``building_ids``, ``sensor_ids`` (their buildings) or ``area_ids`` (the buildings
    whose area is one of them), only those buildings; their union when several are given."""
    try:
        async with pool.connection() as conn:
            ids: list[int] | None = None
            if building_ids is not None or sensor_ids is not None or area_ids is not None:
                ids = list(building_ids or ())
                if sensor_ids:
                    cur = await conn.execute(_BUILDINGS_OF_SENSORS, (list(sensor_ids),))
                    ids += [r[0] for r in await cur.fetchall()]
                if area_ids:
                    cur = await conn.execute(_BUILDINGS_IN_AREAS, (list(area_ids),))
                    ids += [r[0] for r in await cur.fetchall()]
                ids = sorted(set(ids))
            cur = await conn.execute(_ALL if ids is None else _SOME, {"offline_after_s": offline_after_s, "ids": ids})
            rows = await cur.fetchall()
            as_of = rows[0][7] if rows else (await (await conn.execute("SELECT now()")).fetchone())[0]
    except psycopg.errors.QueryCanceled:
        raise QueryTimeout("reading the buildings' states took longer than the statement timeout") from None
    states = {r[0]: BuildingState(r[0], r[1], r[6], {"ok": r[2], "warning": r[3], "alarm": r[4], "offline": r[5]})
              for r in rows}
    return StatesRead(as_of, states, ids)
