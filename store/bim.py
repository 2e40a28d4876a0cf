"""Floors and rooms of one building, as imported from BIM (``cimtwin import ifc``)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

__all__ = ["InteriorCounts", "find_building", "upsert_interior"]


@dataclass
class InteriorCounts:
    floors_inserted: int = 0
    floors_updated: int = 0
    rooms_inserted: int = 0
    rooms_updated: int = 0
    rooms_outside: list[str] | None = None


def find_building(conn: psycopg.Connection, ref: str) -> tuple[int, str | None] | None:
    """(id, ext_id) of the building whose ext_id is ``ref``, else whose numeric id is ``ref``."""
    row = conn.execute("SELECT id, ext_id FROM buildings WHERE ext_id = %s", (ref,)).fetchone()
    if row is None and ref.isdigit():
        row = conn.execute("SELECT id, ext_id FROM buildings WHERE id = %s", (int(ref),)).fetchone()
    return None if row is None else (row[0], row[1])


def upsert_interior(conn: psycopg.Connection, building_id: int, floors: list[tuple], rooms: list[tuple]
                    ) -> InteriorCounts:
    """Upsert floors ``(level, name, elevation, height, wkb or None, properties)`` on (building, level) and
    rooms ``(level, ext_id, name, use, wkb, properties)`` on (floor, ext_id); a room that moved to
    another floor of the building is moved. Lists the rooms not within the building's footprint
    (10 cm tolerance)."""
    counts = InteriorCounts(rooms_outside=[])
    floor_ids: dict[int, int] = {}
    for level, name, elevation, height, wkb, props in floors:
        fid, inserted = conn.execute("""
            INSERT INTO floors (building_id, level, name, elevation, height, geom, properties)
            VALUES (%s, %s, %s, %s, %s, ST_Multi(ST_GeomFromWKB(%s, 4326)), %s)
            ON CONFLICT (building_id, level) DO UPDATE SET name = excluded.name, elevation = excluded.elevation,
                height = excluded.height, geom = excluded.geom, properties = floors.properties || excluded.properties
            RETURNING id, (xmax = 0)""", (building_id, level, name, elevation, height, wkb, Jsonb(props))).fetchone()
        floor_ids[level] = fid
        if inserted:
            counts.floors_inserted += 1
        else:
            counts.floors_updated += 1
    for level, ext_id, name, use, wkb, props in rooms:
        fid = floor_ids[level]
        conn.execute("""DELETE FROM rooms r USING floors f WHERE r.floor_id = f.id AND f.building_id = %s
                        AND r.ext_id = %s AND r.floor_id <> %s""", (building_id, ext_id, fid))
        inserted, outside = conn.execute("""
            INSERT INTO rooms (floor_id, ext_id, name, use, geom, properties)
            VALUES (%s, %s, %s, %s, ST_Multi(ST_GeomFromWKB(%s, 4326)), %s)
            ON CONFLICT (floor_id, ext_id) DO UPDATE SET name = excluded.name, use = excluded.use,
                geom = excluded.geom, properties = rooms.properties || excluded.properties
            RETURNING (xmax = 0), NOT EXISTS (SELECT 1 FROM buildings b WHERE b.id = %s
                AND ST_CoveredBy(rooms.geom, ST_Buffer(b.geom::geography, 0.1)::geometry))
            """, (fid, ext_id, name, use, wkb, Jsonb(props), building_id)).fetchone()
        if inserted:
            counts.rooms_inserted += 1
        else:
            counts.rooms_updated += 1
        if outside:
            counts.rooms_outside.append(ext_id)
    return counts
