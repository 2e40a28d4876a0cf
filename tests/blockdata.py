"""Block data for the OGC API Features and vector tile tests, inserted straight into the tables.

Buildings are real: OpenStreetMap footprints around the Bund and Lujiazui, Shanghai, from
/work/shared/data/shanghai_huangpu_lujiazui_osm_buildings.geojson
(© OpenStreetMap contributors, ODbL 1.0). The areas, components and sensors around them are
small hand-made additions so that every collection and every sensor placement has a case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

import geopandas as gpd
import pytest
import shapely
from shapely.geometry import MultiPolygon, Point, box

from .helpers import ApiServer

BUILDINGS_FILE = "shanghai_huangpu_lujiazui_osm_buildings.geojson"
N_BUILDINGS = 400


def shared_data(name: str) -> Path:
    for folder in (Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data")):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(name)


@lru_cache(maxsize=1)
def osm_buildings() -> gpd.GeoDataFrame:
    """The first N_BUILDINGS footprints by OSM id (CRS84), with ext_id 'osm:<osm_id>'."""
    frame = gpd.read_file(shared_data(BUILDINGS_FILE))
    frame = frame.sort_values("osm_id").head(N_BUILDINGS).reset_index(drop=True)
    frame["ext_id"] = "osm:" + frame["osm_id"].astype("int64").astype(str)
    return frame


@dataclass
class Seeded:
    buildings: gpd.GeoDataFrame
    building_ids: dict[str, int] = field(default_factory=dict)   # ext_id → id
    area_ids: dict[str, int] = field(default_factory=dict)       # code → id
    component_ids: dict[str, int] = field(default_factory=dict)  # ext_id → id
    room_ids: dict[str, int] = field(default_factory=dict)
    sensor_ids: dict[str, int] = field(default_factory=dict)     # name → id
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def _wkt(geom) -> str:
    return shapely.to_wkt(geom, rounding_precision=-1)


def seed(db) -> Seeded:
    """Areas, buildings, a floor with rooms, components, a vendor with devices and sensors, latest values."""
    frame = osm_buildings()
    out = Seeded(buildings=frame)
    west, south, east, north = frame.total_bounds
    mid = (west + east) / 2
    for code, name, level, parent, geom in (
        ("310115", "浦东新区 (test)", "district", None, box(mid - 0.05, south - 0.05, east + 0.05, north + 0.05)),
        ("310115-ljz", "陆家嘴街道 (test)", "street", "310115", box(mid, south - 0.01, east + 0.01, north + 0.01)),
        ("310101", "黄浦区 (test)", "district", None, box(west - 0.05, south - 0.05, mid - 0.0001, north + 0.05)),
    ):
        out.area_ids[code] = db.execute(
            "INSERT INTO areas (code, name, level, parent_id, geom) VALUES (%s, %s, %s, %s, "
            "ST_GeomFromText(%s, 4326)) RETURNING id",
            (code, name, level, out.area_ids.get(parent), _wkt(MultiPolygon([geom])))).fetchone()[0]

    rows = []
    for rec in frame.itertuples():
        height = None if rec.height != rec.height else float(rec.height)
        min_height = None if rec.min_height != rec.min_height else float(rec.min_height)
        name = rec.name if isinstance(rec.name, str) else None
        rows.append((rec.ext_id, name, height, min_height or 0.0, _wkt(MultiPolygon([rec.geometry])),
                     json.dumps({"osm_id": int(rec.osm_id), "source": "openstreetmap.org"})))
    with db.cursor() as cur:
        cur.executemany("INSERT INTO buildings (ext_id, name, height, min_height, geom, properties) "
                        "VALUES (%s, %s, %s, %s, ST_GeomFromText(%s, 4326), %s)", rows)
    out.building_ids = dict(db.execute("SELECT ext_id, id FROM buildings").fetchall())

    # The tallest building gets two floors (one with its own outline) and two rooms.
    tall = frame.loc[frame["height"].idxmax()]
    b_id = out.building_ids[tall.ext_id]
    footprint = tall.geometry
    f0 = db.execute("INSERT INTO floors (building_id, level, name, elevation, height, geom) VALUES "
                    "(%s, 0, 'G', 0, 5, ST_GeomFromText(%s, 4326)) RETURNING id",
                    (b_id, _wkt(MultiPolygon([footprint])))).fetchone()[0]
    db.execute("INSERT INTO floors (building_id, level, name, elevation, height) VALUES (%s, 1, 'L1', 5, 4)",
               (b_id,))
    minx, miny, maxx, maxy = footprint.bounds
    cx = (minx + maxx) / 2
    for ext, geom in (("G-01", box(minx, miny, cx, maxy).intersection(footprint)),
                      ("G-02", box(cx, miny, maxx, maxy).intersection(footprint))):
        geom = geom if geom.geom_type == "Polygon" else max(geom.geoms, key=lambda g: g.area)
        out.room_ids[ext] = db.execute(
            "INSERT INTO rooms (floor_id, ext_id, name, use, geom) VALUES (%s, %s, %s, 'office', "
            "ST_GeomFromText(%s, 4326)) RETURNING id", (f0, ext, f"Room {ext}", _wkt(MultiPolygon([geom])))
        ).fetchone()[0]

    # Components: three hydrants on the street, a gas valve, a smoke detector in a room.
    comps = [("hyd-1", "hydrant", Point(121.50010, 31.23810), None),
             ("hyd-2", "hydrant", Point(121.50520, 31.24020), None),
             ("hyd-3", "hydrant", Point(121.49005, 31.23300), None),
             ("gv-1", "gas_valve", Point(121.50700, 31.23650), None),
             ("sd-1", "smoke_detector", footprint.representative_point(), b_id)]
    for ext, kind, geom, building in comps:
        out.component_ids[ext] = db.execute(
            "INSERT INTO components (ext_id, kind, name, building_id, room_id, geom) VALUES (%s, %s, %s, %s, %s, "
            "ST_GeomFromText(%s, 4326)) RETURNING id",
            (ext, kind, f"{kind} {ext}", building, out.room_ids["G-01"] if building else None, _wkt(geom))
        ).fetchone()[0]

    vendor = db.execute("INSERT INTO vendors (code, name) VALUES ('acme', 'ACME') RETURNING id").fetchone()[0]
    dev_fixed = db.execute("INSERT INTO devices (vendor_id, ext_id, geom) VALUES (%s, 'gw-1', "
                           "ST_GeomFromText('POINT(121.5031 31.2391)', 4326)) RETURNING id", (vendor,)).fetchone()[0]
    dev_plain = db.execute("INSERT INTO devices (vendor_id, ext_id) VALUES (%s, 'gw-2') RETURNING id",
                           (vendor,)).fetchone()[0]
    some_building = out.building_ids[frame.ext_id.iloc[0]]
    sensors = [  # name, device, channel, quantity, unit, component, room, building
        ("pressure", dev_fixed, "p1", "water_pressure", "MPa", out.component_ids["hyd-1"], None, None),
        ("smoke", dev_fixed, "smoke", "smoke_density", "dB/m", out.component_ids["sd-1"], None, None),
        ("room_temp", dev_fixed, "t-room", "temperature", "°C", None, out.room_ids["G-02"], None),
        ("bldg_power", dev_fixed, "kw", "power", "kW", None, None, some_building),
        ("device_rssi", dev_fixed, "rssi", "rssi", "dBm", None, None, None),
        ("nowhere", dev_plain, "x", "temperature", "°C", None, None, None),
    ]
    for name, device, channel, quantity, unit, comp, room, building in sensors:
        out.sensor_ids[name] = db.execute(
            "INSERT INTO sensors (device_id, channel, quantity, unit, component_id, room_id, building_id) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (device, channel, quantity, unit, comp, room, building)).fetchone()[0]
    fresh, stale = out.now - timedelta(minutes=1), out.now - timedelta(hours=2)
    for name, t, value in (("pressure", fresh, 0.31), ("smoke", fresh, 0.0), ("room_temp", stale, 22.5),
                           ("device_rssi", fresh, -71.0)):
        db.execute("INSERT INTO latest (sensor_id, time, value, received_at) VALUES (%s, %s, %s, %s)",
                   (out.sensor_ids[name], t, value, t))
    return out


def oapif_url(api: ApiServer) -> str:
    """GDAL's OAPIF connection string with the API key in the URL: GDAL adds it to every request it
    builds, and the paging links carry it. (GDAL 3.6's OAPIF driver also honours GDAL_HTTP_HEADERS;
    later ones send their own headers instead, so the URL is the way that works for all.)"""
    return f"OAPIF:{api.url}/ogc?api_key={api.headers['X-API-Key']}"


# Fixtures shared by the OGC and tile tests: one API server per module, data seeded per test.
@pytest.fixture
def world(db):
    return seed(db)


@pytest.fixture(scope="module")
def server(base_settings, database_url):
    """One `cimtwin serve` for the module; `db` empties the tables before each test."""
    srv = ApiServer(base_settings.model_copy(update={"database_url": database_url}))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def api(server, world):
    """The module's API server, with this test's data seeded (overrides conftest's per-test server)."""
    return server
