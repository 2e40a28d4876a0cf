"""Shared helpers for the block-data tests: the real Shanghai buildings (generated into
tmp_path at test time, never copied into the repository), the demo areas, and the CLI.

Buildings: /work/shared/data/shanghai_huangpu_lujiazui_osm_buildings.geojson,
© OpenStreetMap contributors, ODbL 1.0.
"""

from __future__ import annotations

import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import geopandas as gpd
import numpy as np
import psycopg
import pyproj
import shapely
import shapely.ops

from cimtwin.settings import REPO_ROOT, Settings, settings_env

BUILDINGS_FILE = "shanghai_huangpu_lujiazui_osm_buildings.geojson"
DEMO_AREAS = REPO_ROOT / "cimtwin" / "demo_data" / "bund_lujiazui_areas.geojson"
DEMO_COMPONENTS = REPO_ROOT / "cimtwin" / "demo_data" / "bund_lujiazui_components.geojson"
BLOCK_TABLES = "party_assignments, parties, components, rooms, floors, buildings, areas"
GEOD = pyproj.Geod(ellps="WGS84")


def data_dir() -> Path:
    for candidate in (Settings().data_dir, Path("/work/shared/data")):
        if (Path(candidate) / BUILDINGS_FILE).is_file():
            return Path(candidate)
    raise FileNotFoundError(f"{BUILDINGS_FILE} not found in the shared data directory")


@lru_cache
def shanghai() -> gpd.GeoDataFrame:
    """The 1,450 OSM buildings, with ``ext_id`` as the importer derives it from osm_id."""
    frame = gpd.read_file(data_dir() / BUILDINGS_FILE)
    frame["ext_id"] = frame["osm_id"].astype("int64").astype(str)
    return frame


def subset(step: int = 10) -> gpd.GeoDataFrame:
    """Every ``step``-th building: a spread-out, deterministic sample."""
    return shanghai().iloc[::step].reset_index(drop=True).copy()


def run_cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real ``cimtwin`` command as a subprocess."""
    return subprocess.run([sys.executable, "-m", "cimtwin.cli", *map(str, args)], env=settings_env(settings),
                          capture_output=True, text=True, timeout=timeout)


def stored_geometries(conn: psycopg.Connection, table: str = "buildings") -> dict[str, shapely.Geometry]:
    rows = conn.execute(f"SELECT ext_id, ST_AsBinary(geom) FROM {table}").fetchall()
    return {ext_id: shapely.from_wkb(bytes(wkb)) for ext_id, wkb in rows}


def max_offset_m(a: shapely.Geometry, b: shapely.Geometry) -> float:
    """The Hausdorff distance between two lon/lat geometries, in metres (near Shanghai)."""
    degrees = shapely.hausdorff_distance(a, b)
    return float(degrees * 111_320.0)


def geodesic_distance_m(point: shapely.Point, geoms) -> np.ndarray:
    """Geodesic distance (WGS84 ellipsoid) from a lon/lat point to each lon/lat geometry: 0 inside,
    else to the nearest point, found in an azimuthal equidistant projection centred on the point
    (whose distances from the centre are exact geodesic distances)."""
    aeqd = pyproj.Transformer.from_crs(
        "EPSG:4326", pyproj.CRS.from_proj4(f"+proj=aeqd +lat_0={point.y} +lon_0={point.x} +ellps=WGS84 +units=m"),
        always_xy=True)
    projected = shapely.transform(np.asarray(geoms, dtype=object),
                                  lambda xy: np.column_stack(aeqd.transform(xy[:, 0], xy[:, 1])))
    # The nearest point in the projection, measured back on the ellipsoid.
    origin = shapely.Point(0, 0)
    out = np.empty(len(projected))
    back = pyproj.Transformer.from_crs(aeqd.target_crs, "EPSG:4326", always_xy=True)
    for i, g in enumerate(projected):
        if g.covers(origin):
            out[i] = 0.0
            continue
        near = shapely.ops.nearest_points(origin, g)[1]
        lon, lat = back.transform(near.x, near.y)
        out[i] = GEOD.inv(point.x, point.y, lon, lat)[2]
    return out
