"""The twin API: a building's tree with live state and roll-ups, floor plans as GeoJSON in several CRSs,
3D attributes, 404s and roles, against a real `cimtwin serve` and database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pyproj import Transformer
from shapely.geometry import box, mapping, shape

BUILDING = box(121.5000, 31.2000, 121.5010, 31.2010)
ROOM_A = box(121.5001, 31.2001, 121.5004, 31.2004)   # ground floor
ROOM_B = box(121.5005, 31.2001, 121.5009, 31.2004)   # ground floor
ROOM_C = box(121.5001, 31.2005, 121.5004, 31.2009)   # first floor
COMPONENT_A = (121.5002, 31.2002)                      # in room A
COMPONENT_FLOOR = (121.5007, 31.2007)                  # on the ground floor, in no room


def _mp(geom) -> str:
    return json.dumps({"type": "MultiPolygon", "coordinates": [mapping(geom)["coordinates"]]})


def seed(db, register) -> dict:
    """Building with floors 0 and 1 (and a basement), rooms, components and sensors in every kind of place:

    * s_alarm on component A (room A): fresh reading and an open major alert → alarm
    * s_ok_a in room A: fresh reading → ok
    * s_stale in room B: a reading an hour old → offline
    * s_never in room B: never reported → offline
    * s_warn on the floor-level component: an acknowledged warning alert → warning
    * s_ok_c in room C (first floor): fresh → ok
    * s_bld on the building itself: fresh → ok
    """
    ids = register("acme", {"dev1": ["alarm", "ok_a", "stale", "never", "warn", "ok_c", "bld"]})
    s = {k[1]: v for k, v in ids.items()}
    b = db.execute("INSERT INTO buildings (name, height, geom) VALUES ('Tower', 30, ST_GeomFromGeoJSON(%s)) "
                   "RETURNING id", (_mp(BUILDING),)).fetchone()[0]
    floors = {}
    for level, elevation in ((-1, -3.5), (0, 0.0), (1, 3.5)):
        floors[level] = db.execute("INSERT INTO floors (building_id, level, name, elevation, height) "
                                   "VALUES (%s, %s, %s, %s, 3.5) RETURNING id",
                                   (b, level, f"L{level}", elevation)).fetchone()[0]
    rooms = {}
    for name, level, geom in (("A", 0, ROOM_A), ("B", 0, ROOM_B), ("C", 1, ROOM_C)):
        rooms[name] = db.execute("INSERT INTO rooms (floor_id, ext_id, name, geom) VALUES "
                                 "(%s, %s, %s, ST_GeomFromGeoJSON(%s)) RETURNING id",
                                 (floors[level], f"r-{name}", f"Room {name}", _mp(geom))).fetchone()[0]
    comp_a = db.execute("INSERT INTO components (kind, name, building_id, floor_id, room_id, geom) VALUES "
                        "('smoke_detector', 'Smoke A', %s, %s, %s, ST_SetSRID(ST_MakePoint(%s, %s), 4326)) "
                        "RETURNING id", (b, floors[0], rooms["A"], *COMPONENT_A)).fetchone()[0]
    comp_f = db.execute("INSERT INTO components (kind, name, floor_id, geom) VALUES "
                        "('extinguisher', 'Extinguisher 0', %s, ST_SetSRID(ST_MakePoint(%s, %s), 4326)) "
                        "RETURNING id", (floors[0], *COMPONENT_FLOOR)).fetchone()[0]
    comp_b = db.execute("INSERT INTO components (kind, name, building_id, geom) VALUES "
                        "('elevator', 'Lift', %s, ST_SetSRID(ST_MakePoint(121.5005, 31.2005), 4326)) "
                        "RETURNING id", (b,)).fetchone()[0]
    db.execute("UPDATE sensors SET component_id = %s WHERE id = %s", (comp_a, s["alarm"]))
    db.execute("UPDATE sensors SET room_id = %s WHERE id = %s", (rooms["A"], s["ok_a"]))
    db.execute("UPDATE sensors SET room_id = %s WHERE id = ANY(%s)", (rooms["B"], [s["stale"], s["never"]]))
    db.execute("UPDATE sensors SET component_id = %s WHERE id = %s", (comp_f, s["warn"]))
    db.execute("UPDATE sensors SET room_id = %s WHERE id = %s", (rooms["C"], s["ok_c"]))
    db.execute("UPDATE sensors SET building_id = %s WHERE id = %s", (b, s["bld"]))
    now = datetime.now(UTC)
    for key, t, value in (("alarm", now, 80.0), ("ok_a", now, 21.5), ("stale", now - timedelta(hours=1), 1.0),
                          ("warn", now, 2.0), ("ok_c", now, 3.0), ("bld", now, 4.0)):
        db.execute("INSERT INTO latest (sensor_id, time, value, received_at) VALUES (%s, %s, %s, now())",
                   (s[key], t, value))
    for key, severity, status in (("alarm", "major", "open"), ("warn", "warning", "acknowledged"),
                                  ("ok_a", "critical", "closed")):  # a finished alert changes nothing
        db.execute("""INSERT INTO alerts (source, kind, severity, status, title, sensor_id, raised_at, last_at,
                                          ack_due_at, close_due_at)
                      VALUES ('manual', 'test', %s, %s, 'test', %s, now(), now(), now(), now())""",
                   (severity, status, s[key]))
    return {"building": b, "floors": floors, "rooms": rooms, "sensors": s,
            "components": {"a": comp_a, "floor": comp_f, "building": comp_b}}


def _by_id(nodes: list[dict]) -> dict[int, dict]:
    return {n["id"]: n for n in nodes}


def test_building_tree_shape_and_rollups(db, register, api):
    w = seed(db, register)
    s, rooms, comps = w["sensors"], w["rooms"], w["components"]
    r = api.get(f"/twin/buildings/{w['building']}")
    assert r.status_code == 200, r.text
    t = r.json()
    assert t["node"] == "building" and t["id"] == w["building"] and t["name"] == "Tower"
    # 3D: stored height; min_height is the basement's elevation
    assert t["height"] == 30 and t["min_height"] == -3.5
    assert [f["level"] for f in t["floors"]] == [-1, 0, 1]
    fl = {f["level"]: f for f in t["floors"]}
    assert fl[1]["elevation"] == 3.5 and fl[1]["min_height"] == 3.5 and fl[1]["top"] == 7.0
    assert fl[1]["height"] == 3.5

    # sensors: their own state
    room_a = _by_id(fl[0]["rooms"])[rooms["A"]]
    comp_a = _by_id(room_a["components"])[comps["a"]]
    assert [x["id"] for x in comp_a["sensors"]] == [s["alarm"]]
    assert comp_a["sensors"][0]["state"] == "alarm" and comp_a["sensors"][0]["value"] == 80.0
    assert datetime.fromisoformat(comp_a["sensors"][0]["time"]).utcoffset() == timedelta(0)
    assert comp_a["state"] == "alarm" and comp_a["counts"] == {"ok": 0, "warning": 0, "alarm": 1, "offline": 0}
    assert [x["state"] for x in room_a["sensors"]] == ["ok"]  # a closed alert does not count
    # room A: worst wins
    assert room_a["state"] == "alarm" and room_a["counts"] == {"ok": 1, "warning": 0, "alarm": 1, "offline": 0}
    # room B: only offline sensors (one stale, one never reported)
    room_b = _by_id(fl[0]["rooms"])[rooms["B"]]
    assert {x["id"]: x["state"] for x in room_b["sensors"]} == {s["stale"]: "offline", s["never"]: "offline"}
    assert room_b["state"] == "offline" and room_b["counts"]["offline"] == 2
    # the floor-level component hangs under the floor; its sensor has an acknowledged warning alert
    assert [c["id"] for c in fl[0]["components"]] == [comps["floor"]]
    assert fl[0]["components"][0]["state"] == "warning"
    # floor 0: alarm wins over warning and ok; offline counted separately and not hiding anything
    assert fl[0]["state"] == "alarm"
    assert fl[0]["counts"] == {"ok": 1, "warning": 1, "alarm": 1, "offline": 2}
    assert fl[1]["state"] == "ok" and fl[1]["counts"] == {"ok": 1, "warning": 0, "alarm": 0, "offline": 0}
    assert fl[-1]["state"] is None and fl[-1]["counts"] == {"ok": 0, "warning": 0, "alarm": 0, "offline": 0}
    # building-level component and sensor
    assert [c["id"] for c in t["components"]] == [comps["building"]] and t["components"][0]["state"] is None
    assert [x["id"] for x in t["sensors"]] == [s["bld"]]
    assert t["state"] == "alarm" and t["counts"] == {"ok": 3, "warning": 1, "alarm": 1, "offline": 2}

    # the alarm ends → the roll-up follows at once
    db.execute("UPDATE alerts SET status = 'resolved' WHERE sensor_id = %s", (s["alarm"],))
    t = api.get(f"/twin/buildings/{w['building']}").json()
    fl = {f["level"]: f for f in t["floors"]}
    assert _by_id(fl[0]["rooms"])[rooms["A"]]["state"] == "ok"
    assert fl[0]["state"] == "warning" and t["state"] == "warning"
    assert t["counts"] == {"ok": 4, "warning": 1, "alarm": 0, "offline": 2}


def test_ogc_floors_carry_3d_attributes(db, register, api):
    w = seed(db, register)
    r = api.get("/ogc/collections/floors/items", params={"building_id": w["building"]})
    assert r.status_code == 200, r.text
    props = {f["properties"]["level"]: f["properties"] for f in r.json()["features"]}
    assert props[1]["elevation"] == 3.5 and props[1]["min_height"] == 3.5 and props[1]["top"] == 7.0
    assert props[-1]["min_height"] == -3.5 and props[-1]["top"] == 0


def test_building_min_height_without_basement(db, register, api):
    w = seed(db, register)
    db.execute("DELETE FROM floors WHERE id = %s", (w["floors"][-1],))
    db.execute("UPDATE buildings SET height = NULL WHERE id = %s", (w["building"],))
    t = api.get(f"/twin/buildings/{w['building']}").json()
    assert t["min_height"] == 0 and t["height"] == 7.0  # the top of the highest floor


def _features(fc: dict) -> dict[str, dict]:
    return {f["id"]: f for f in fc["features"]}


def test_floor_plan_geojson(db, register, api):
    w = seed(db, register)
    s, rooms, comps = w["sensors"], w["rooms"], w["components"]
    r = api.get(f"/twin/buildings/{w['building']}/floors/0")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/geo+json")
    fc = r.json()
    assert fc["type"] == "FeatureCollection" and "crs" not in fc
    feats = _features(fc)
    assert set(feats) == {f"room.{rooms['A']}", f"room.{rooms['B']}", f"component.{comps['a']}",
                          f"component.{comps['floor']}", f"sensor.{s['alarm']}", f"sensor.{s['ok_a']}",
                          f"sensor.{s['stale']}", f"sensor.{s['never']}", f"sensor.{s['warn']}"}
    ra = feats[f"room.{rooms['A']}"]
    assert ra["properties"]["kind"] == "room" and ra["properties"]["name"] == "Room A"
    assert ra["properties"]["state"] == "alarm" and ra["properties"]["counts"]["ok"] == 1
    assert shape(ra["geometry"]).equals_exact(ROOM_A, 1e-9) or shape(ra["geometry"]).buffer(0).equals(ROOM_A)
    assert feats[f"room.{rooms['B']}"]["properties"]["state"] == "offline"
    ca = feats[f"component.{comps['a']}"]["properties"]
    assert ca["kind"] == "component" and ca["component_kind"] == "smoke_detector" and ca["room_id"] == rooms["A"]
    sa = feats[f"sensor.{s['alarm']}"]
    assert sa["properties"]["kind"] == "sensor" and sa["properties"]["state"] == "alarm"
    assert sa["properties"]["value"] == 80.0
    assert datetime.fromisoformat(sa["properties"]["time"]).utcoffset() == timedelta(0)
    assert sa["properties"]["component_id"] == comps["a"]
    assert sa["geometry"] == {"type": "Point", "coordinates": list(COMPONENT_A)}
    never = feats[f"sensor.{s['never']}"]["properties"]
    assert never["state"] == "offline" and never["value"] is None and never["time"] is None
    room_sensor = feats[f"sensor.{s['ok_a']}"]
    assert room_sensor["geometry"]["type"] == "Point" and shape(room_sensor["geometry"]).within(ROOM_A)
    assert feats[f"sensor.{s['warn']}"]["properties"]["state"] == "warning"
    floor = fc["floor"]
    assert floor["level"] == 0 and floor["elevation"] == 0 and floor["top"] == 3.5 and floor["state"] == "alarm"
    assert floor["counts"] == {"ok": 1, "warning": 1, "alarm": 1, "offline": 2}

    # EPSG:3857: same features, projected coordinates, the CRS named
    r = api.get(f"/twin/buildings/{w['building']}/floors/0", params={"crs": "EPSG:3857"})
    assert r.status_code == 200, r.text
    assert "3857" in r.headers["content-crs"]
    fc3857 = r.json()
    assert "3857" in fc3857["crs"]["properties"]["name"]
    f3857 = _features(fc3857)
    assert set(f3857) == set(feats)
    x, y = Transformer.from_crs(4326, 3857, always_xy=True).transform(*COMPONENT_A)
    got = f3857[f"sensor.{s['alarm']}"]["geometry"]["coordinates"]
    assert got == pytest.approx([x, y], abs=0.01)
    # EPSG:4326 explicitly: lon/lat order kept (x/y)
    fc4326 = api.get(f"/twin/buildings/{w['building']}/floors/0", params={"crs": "EPSG:4326"}).json()
    assert _features(fc4326)[f"sensor.{s['alarm']}"]["geometry"]["coordinates"] == pytest.approx(list(COMPONENT_A))
    # GCJ-02 (reprojected in Python): shifted by a few hundred metres
    gcj = api.get(f"/twin/buildings/{w['building']}/floors/0", params={"crs": "GCJ02"})
    assert gcj.status_code == 200, gcj.text
    lon, lat = _features(gcj.json())[f"sensor.{s['alarm']}"]["geometry"]["coordinates"]
    assert 0.001 < abs(lon - COMPONENT_A[0]) < 0.01 and 0.0001 < abs(lat - COMPONENT_A[1]) < 0.01
    assert api.get(f"/twin/buildings/{w['building']}/floors/0", params={"crs": "EPSG:99999"}).status_code == 400

    # the first floor: one room, one sensor
    fc1 = api.get(f"/twin/buildings/{w['building']}/floors/1").json()
    assert set(_features(fc1)) == {f"room.{rooms['C']}", f"sensor.{s['ok_c']}"}


def test_not_found(db, register, api):
    w = seed(db, register)
    r = api.get("/twin/buildings/999999")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = api.get("/twin/buildings/999999/floors/0")
    assert r.status_code == 404 and "building" in r.json()["detail"]
    r = api.get(f"/twin/buildings/{w['building']}/floors/7")
    assert r.status_code == 404 and "level 7" in r.json()["detail"]


def test_roles(db, register, api):
    w = seed(db, register)
    keys = {}
    for role, extra in (("vendor", {"vendor": "acme"}), ("analyst", {}), ("operator", {})):
        r = api.post("/api-keys", json={"name": f"{role} desk", "role": role, **extra})
        assert r.status_code == 201, r.text
        keys[role] = r.json()["key"]
    for path in (f"/twin/buildings/{w['building']}", f"/twin/buildings/{w['building']}/floors/0"):
        with httpx.Client(base_url=api.url, timeout=10) as anon:
            assert anon.get(path).status_code == 401
            assert anon.get(path, headers={"X-API-Key": keys["vendor"]}).status_code == 403
            assert anon.get(path, headers={"X-API-Key": keys["analyst"]}).status_code == 200
            assert anon.get(path, headers={"X-API-Key": keys["operator"]}).status_code == 200
