"""Import a building's interior from IFC (``cimtwin import ifc``): storeys → floors, spaces → rooms.

The IFC is read by :mod:`cimtwin.geo.ifc`; room footprints are checked with
:func:`cimtwin.geo.checks.check_geometries` after placing them in EPSG:4326, and the
floors and rooms are upserted in one transaction (floors on (building, level), rooms on
(floor, IfcSpace GlobalId)), so a re-import updates rather than duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg
import shapely
from cimtwin.geo.checks import POLYGONAL, check_geometries
from cimtwin.geo.ifc import read_ifc_interior
from cimtwin.geo.io import FileFormatError
from cimtwin.store import bim
from cimtwin.store.db import connect

__all__ = ["IfcImportReport", "import_ifc"]


@dataclass
class IfcImportReport:
    path: str
    building_id: int
    georef: str
    floors: list[dict] = field(default_factory=list)
    rooms: int = 0
    floors_inserted: int = 0
    floors_updated: int = 0
    rooms_inserted: int = 0
    rooms_updated: int = 0
    rejected: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> dict:
        return dict(vars(self))


def import_ifc(database_url: str, path: str | Path, *, building: str, anchor: tuple[float, float] | None = None,
               rotation: float = 0.0, dry_run: bool = False, conn: psycopg.Connection | None = None
               ) -> IfcImportReport:
    """Import the storeys and spaces of an IFC file as floors and rooms of ``building``.

    Parameters
    ----------
    database_url : str
    path : str or Path
    building : str
        The building's ext_id, or its numeric id.
    anchor : (lon, lat), optional
        The model origin, when the file has no IfcMapConversion.
    rotation : float
        Degrees clockwise from north to the model's +y axis.
    dry_run : bool
        Check everything, roll back.

    Raises
    ------
    FileFormatError
        Unreadable IFC, no storeys, no placement, or no such building.
    """
    interior = read_ifc_interior(path, anchor=anchor, rotation=rotation)
    own = conn is None
    conn = conn or connect(database_url, application_name="cimtwin-import", autocommit=True)
    try:
        found = bim.find_building(conn, building)
        if found is None:
            raise FileFormatError(f"no building with ext_id or id {building!r}; import the building first")
        report = IfcImportReport(path=str(path), building_id=found[0], georef=interior.georef, dry_run=dry_run,
                                 notes=list(interior.notes))
        by_guid = {s.guid: s for s in interior.storeys}
        lonlat = interior.to_lonlat([s.local for s in interior.spaces])
        checked = check_geometries(lonlat, allowed=POLYGONAL)
        rooms, per_level = [], {}
        for i, space in enumerate(interior.spaces):
            storey = by_guid.get(space.storey_guid)
            who = f"IfcSpace {space.guid} ({space.name} {space.long_name or ''})".replace(" )", ")")
            if storey is None:
                report.rejected.append(f"{who}: not in an IfcBuildingStorey")
                continue
            if space.local is None or not checked.ok[i]:
                report.rejected.append(f"{who}: {checked.reason[i] or 'no geometry'}")
                continue
            geom = checked.geometry[i]
            per_level.setdefault(storey.level, []).append(geom)
            props = {"source": "ifc", "ifc_guid": space.guid, "ifc_name": space.name,
                     "z_min": round(space.z_min, 4), "z_max": round(space.z_max, 4)}
            rooms.append((storey.level, space.guid, space.long_name or space.name, None,
                          shapely.to_wkb(geom, output_dimension=2), props))
        floors = []
        for s in interior.storeys:
            outline = shapely.union_all(per_level[s.level]) if s.level in per_level else None
            wkb = shapely.to_wkb(outline, output_dimension=2) if outline is not None and outline.is_valid else None
            floors.append((s.level, s.name, s.elevation, s.height, wkb, {"source": "ifc", "ifc_guid": s.guid}))
            report.floors.append({"level": s.level, "name": s.name, "elevation": s.elevation,
                                  "rooms": len(per_level.get(s.level, []))})
        report.rooms = len(rooms)
        with conn.transaction() as tx:
            counts = bim.upsert_interior(conn, found[0], floors, rooms)
            if dry_run:
                raise psycopg.Rollback(tx)
    finally:
        if own:
            conn.close()
    report.floors_inserted, report.floors_updated = counts.floors_inserted, counts.floors_updated
    report.rooms_inserted, report.rooms_updated = counts.rooms_inserted, counts.rooms_updated
    report.outside = counts.rooms_outside or []
    return report


def parse_anchor(text: str | None) -> tuple[float, float] | None:
    """``"lon,lat"`` → (lon, lat), checked."""
    if text is None:
        return None
    try:
        lon, lat = (float(p) for p in text.split(","))
    except ValueError:
        raise FileFormatError(f"--anchor {text!r} is not lon,lat") from None
    if not (-180 <= lon <= 180 and -90 <= lat <= 90) or not np.isfinite([lon, lat]).all():
        raise FileFormatError(f"--anchor {text!r} is not a lon,lat in degrees")
    return lon, lat
