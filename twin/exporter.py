"""Export a block layer as a GeoJSON, GeoPackage, … file in any supported CRS.

Columns are the layer's fields; free attributes become columns of their own (prefixed
``attr_`` where a name is taken). A file exported here imports back unchanged
(``cimtwin import buildings|components FILE``): the columns that only describe the
stored row (ids, derived links, timestamps) are ignored by the importer.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from cimtwin.geo.crs import CRS84, CrsLike, parse_crs
from cimtwin.geo.io import FileFormatError, from_lonlat, write_features
from cimtwin.store import blocks as store
from cimtwin.store.db import connect

EXPORT_LAYERS = ("areas", "buildings", "floors", "rooms", "components", "sensors")


def _column(values: list) -> list:
    """One type per column: mixed (or non-scalar) values become text."""
    kinds = {type(v) for v in values if v is not None}
    if len(kinds) <= 1 and not kinds & {dict, list}:
        if kinds & {datetime, date}:
            return [v.isoformat() if v is not None else None for v in values]
        return values
    if kinds <= {int, float}:
        return [float(v) if v is not None else None for v in values]
    return [None if v is None else (v if isinstance(v, str) else str(v)) for v in values]


def export_layer(database_url: str, layer: str, path: str | Path, *, crs: CrsLike = CRS84,
                 progress: Callable[[str, int, int], None] | None = None) -> tuple[int, str]:
    """Write every feature of ``layer`` to ``path``; returns (count, GDAL driver)."""
    if layer not in EXPORT_LAYERS:
        raise FileFormatError(f"unknown layer {layer!r}; use one of {', '.join(EXPORT_LAYERS)}")
    ref = parse_crs(crs)
    rows: list[dict] = []
    with connect(database_url, application_name="cimtwin-export") as conn:
        total = store.layer_counts(conn).get(layer) if layer != "sensors" else None
        for batch in store.export_rows(conn, layer):
            rows += batch
            if progress:
                progress("export", len(rows), total or len(rows))
    fixed = [k for k in (rows[0].keys() if rows else []) if k not in ("attributes", "geometry", "distance_m")]
    data: dict[str, list] = {k: [r[k] for r in rows] for k in fixed}
    extra: dict[str, list] = {}
    for i, row in enumerate(rows):
        for key, value in (row.get("attributes") or {}).items():
            name = key if key not in data and key != "geometry" else f"attr_{key}"
            extra.setdefault(name, [None] * len(rows))[i] = value
    data.update(extra)
    frame = pd.DataFrame({k: _column(v) for k, v in data.items()})
    wkb = np.array([r["geometry"] for r in rows], dtype=object)
    geoms = np.full(len(rows), None, dtype=object)
    present = np.array([g is not None for g in wkb], dtype=bool)
    if present.any():
        geoms[present] = from_lonlat(shapely.from_wkb(wkb[present]), dst=ref)
    out = gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(geoms, index=frame.index))
    driver = write_features(out, path, crs=ref, layer=layer)
    return len(rows), driver
