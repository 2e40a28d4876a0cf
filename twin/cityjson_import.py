"""Import the buildings of a CityJSON city model (``cimtwin import cityjson``).

The file is read by :mod:`cimtwin.geo.cityjson` (footprint and height per Building,
its BuildingParts merged in); from there the buildings take the same path as
``cimtwin import buildings``: every footprint is checked (and safely repaired) in the
file's CRS, reprojected to EPSG:4326, checked again, and upserted by ``ext_id`` (the
CityObject id) in one transaction, so a re-import updates rather than duplicates.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import psycopg

from cimtwin.geo.cityjson import read_cityjson_buildings
from cimtwin.geo.crs import CrsLike
from cimtwin.geo.io import SourceFeatures
from cimtwin.twin import importer as _imp
from cimtwin.twin.importer import ImportReport, Progress

__all__ = ["import_cityjson"]

# Column names the building mapping recognises; a CityJSON attribute spelled like one of
# them is kept under "cityjson:<name>" so that it cannot take the place of ours.
_RESERVED = {n.lower() for names in (_imp._ID_CANDIDATES["buildings"], _imp._NAME, _imp._ADDRESS, _imp._STREET,
                                     _imp._HOUSENUMBER, _imp._USE, _imp._HEIGHT, _imp._MIN_HEIGHT,
                                     _imp._FLOORS_ABOVE, _imp._FLOORS_BELOW, _imp._EXPORT_ONLY["buildings"],
                                     ("occupants", "organisations", "organizations", "lod", "ground_z", "roof_z",
                                      "cityjson_type", "geometry"))
             for n in names}


def _whole(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if float(value).is_integer() and value >= 0 else None


def _plain(value):
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value


def _frame(buildings) -> gpd.GeoDataFrame:
    columns: dict[str, list] = {
        "ext_id": buildings.ids,
        "name": [a.get("name") if isinstance(a.get("name"), str) else None for a in buildings.attributes],
        "height": [None if not np.isfinite(h) else round(float(h), 3) for h in buildings.height],
        "floors_above": [_whole(a.get("storeysAboveGround")) for a in buildings.attributes],
        "floors_below": [_whole(a.get("storeysBelowGround")) for a in buildings.attributes],
        "lod": buildings.lod,
        "ground_z": [None if not np.isfinite(z) else round(float(z), 3) for z in buildings.ground_z],
        "roof_z": [None if not np.isfinite(z) else round(float(z), 3) for z in buildings.roof_z],
    }
    n = len(buildings)
    for i, attrs in enumerate(buildings.attributes):
        for key, value in attrs.items():
            if key in ("name",):
                continue
            col = f"cityjson:{key}" if key.lower() in _RESERVED else key
            columns.setdefault(col, [None] * n)[i] = _plain(value)
    frame = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in columns.items()})
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(list(buildings.footprints), crs=None), crs=None)


def import_cityjson(database_url: str, path: str | Path, *, crs: CrsLike | None = None, dry_run: bool = False,
                    progress: Progress | None = None, conn: psycopg.Connection | None = None) -> ImportReport:
    """Import the buildings of a CityJSON file.

    Parameters
    ----------
    database_url : str
        Where to store them (ignored when ``conn`` is given).
    path : str or Path
        The CityJSON file.
    crs : str, int or CrsRef, optional
        Overrides the file's ``metadata.referenceSystem``; compound CRSs (EPSG:7415)
        contribute their horizontal part.
    dry_run : bool
        Check everything and roll the transaction back.
    progress : callable, optional
        ``progress(stage, done, total)``.
    conn : psycopg.Connection, optional
        Use this connection instead of opening one.

    Returns
    -------
    ImportReport
        ``kind`` is ``"buildings"``; feature indices count buildings in file order.

    Raises
    ------
    FileFormatError
        Not CityJSON, or no CRS named and the coordinates are not lon/lat.
    UnknownCrsError
        ``crs=`` or the file's reference system is not a CRS cimtwin can use.
    """
    if progress:
        progress("read", 0, 1)
    buildings = read_cityjson_buildings(path, crs=crs)
    frame = _frame(buildings)
    errors = np.full(len(buildings), None, dtype=object)
    for i, geom in enumerate(buildings.footprints):
        if geom is None:
            errors[i] = f"no surface with an area in plan in its LoD{buildings.lod[i] or '?'} geometry"
    features = SourceFeatures(frame=frame, crs=buildings.crs, crs_origin=buildings.crs_origin, parse_errors=errors,
                              layer=None, driver=f"CityJSON {buildings.version}", notes=list(buildings.notes))
    lods = sorted({lod for lod in buildings.lod if lod is not None})
    report = ImportReport(kind="buildings", path=str(path), layer=None, crs=features.crs_name,
                          crs_origin=features.crs_origin, read=len(features), dry_run=dry_run,
                          notes=features.notes + [f"CityJSON {buildings.version}: {len(buildings)} buildings "
                                                  f"(BuildingParts merged), geometry from LoD {', '.join(lods)}"])
    if progress:
        progress("read", 1, 1)
    return _imp.import_features(database_url, "buildings", features, report, id_field="ext_id",
                                height_field="height", dry_run=dry_run, progress=progress, conn=conn)
