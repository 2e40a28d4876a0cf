"""The twin API: a building's tree with live state and roll-ups, floor plans as GeoJSON in several CRSs,
3D attributes, 404s and roles, against a real `cimtwin serve` and database."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from pyproj import Transformer
from shapely.geometry import box, mapping, shape

from .helpers import ApiServer

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


def _tree(server, building: int) -> dict:
    r = server.get(f"/twin/buildings/{building}")
    assert r.status_code == 200, r.text
    return r.json()


def _places(tree: dict) -> dict[tuple[str, int], tuple[str, int]]:
    """(node, id) → (parent node, parent id) for every node beneath the building."""
    places = {}

    def walk(node):
        for key in ("floors", "rooms", "components", "sensors"):
            for child in node.get(key, []):
                places[(child["node"], child["id"])] = (node["node"], node["id"])
                walk(child)
    walk(tree)
    return places


def _find(tree: dict, node: str, id_: int) -> dict:
    found = []

    def walk(n):
        if n["node"] == node and n["id"] == id_:
            found.append(n)
        for key in ("floors", "rooms", "components", "sensors"):
            for child in n.get(key, []):
                walk(child)
    walk(tree)
    assert len(found) == 1, (node, id_, len(found))
    return found[0]


def test_tree_follows_structure_changes(db, register, api):
    """The API caches a building's structure: every change to it shows in the next tree."""
    w = seed(db, register)
    b, s, rooms, comps, floors = w["building"], w["sensors"], w["rooms"], w["components"], w["floors"]
    before = _tree(api, b)
    assert _places(before)[("sensor", s["ok_c"])] == ("room", rooms["C"])
    # a change to another building moves the generation too; this tree stays as it was
    db.execute("INSERT INTO buildings (name, geom) VALUES ('Elsewhere', ST_GeomFromGeoJSON(%s))",
               (_mp(box(121.6, 31.3, 121.601, 31.301)),))
    assert _tree(api, b) == before

    # a new room with a new sensor (never reported) on the first floor
    new = register("acme", {"dev2": ["new"]})[("dev2", "new")]
    room_d = db.execute("INSERT INTO rooms (floor_id, ext_id, name) VALUES (%s, 'r-D', 'Room D') RETURNING id",
                        (floors[1],)).fetchone()[0]
    db.execute("UPDATE sensors SET room_id = %s WHERE id = %s", (room_d, new))
    t = _tree(api, b)
    assert _places(t)[("room", room_d)] == ("floor", floors[1])
    d = _find(t, "room", room_d)
    assert d["name"] == "Room D" and [x["id"] for x in d["sensors"]] == [new] and d["state"] == "offline"
    assert _find(t, "floor", floors[1])["counts"] == {"ok": 1, "warning": 0, "alarm": 0, "offline": 1}
    assert t["counts"] == {"ok": 3, "warning": 1, "alarm": 1, "offline": 3}

    # a sensor moves from room C (first floor) to room A (ground floor)
    db.execute("UPDATE sensors SET room_id = %s WHERE id = %s", (rooms["A"], s["ok_c"]))
    t = _tree(api, b)
    assert _places(t)[("sensor", s["ok_c"])] == ("room", rooms["A"])
    assert _find(t, "room", rooms["C"])["state"] is None and _find(t, "room", rooms["C"])["sensors"] == []
    assert _find(t, "room", rooms["A"])["counts"] == {"ok": 2, "warning": 0, "alarm": 1, "offline": 0}
    assert _find(t, "floor", floors[1])["counts"] == {"ok": 0, "warning": 0, "alarm": 0, "offline": 1}

    # component A goes; its sensor (placed only on it) leaves the tree, and with it the alarm
    db.execute("DELETE FROM components WHERE id = %s", (comps["a"],))
    t = _tree(api, b)
    assert ("component", comps["a"]) not in _places(t) and ("sensor", s["alarm"]) not in _places(t)
    assert _find(t, "room", rooms["A"])["components"] == [] and _find(t, "room", rooms["A"])["state"] == "ok"
    assert t["state"] == "warning" and t["counts"] == {"ok": 3, "warning": 1, "alarm": 0, "offline": 3}

    # renamed device and building
    db.execute("UPDATE devices SET ext_id = 'dev1b' WHERE ext_id = 'dev1'")
    db.execute("UPDATE buildings SET name = 'Tower B' WHERE id = %s", (b,))
    t = _tree(api, b)
    assert t["name"] == "Tower B" and _find(t, "sensor", s["ok_a"])["device"] == "dev1b"

    # the first floor goes, with its room D; the sensor in it has no place left
    db.execute("DELETE FROM floors WHERE id = %s", (floors[1],))
    t = _tree(api, b)
    assert [f["level"] for f in t["floors"]] == [-1, 0]
    assert ("room", room_d) not in _places(t) and ("sensor", new) not in _places(t)
    assert t["height"] == 30 and t["counts"] == {"ok": 3, "warning": 1, "alarm": 0, "offline": 2}

    # the building goes
    db.execute("DELETE FROM buildings WHERE id = %s", (b,))
    assert api.get(f"/twin/buildings/{b}").status_code == 404


def test_tree_live_part_is_never_cached(db, register, api):
    """Readings and alerts show in the next tree, whatever the cache holds."""
    w = seed(db, register)
    b, s, rooms, floors = w["building"], w["sensors"], w["rooms"], w["floors"]
    _tree(api, b)
    # the sensor that never reported reports; the stale one reports again
    db.execute("INSERT INTO latest (sensor_id, time, value, received_at) VALUES (%s, now(), 5.5, now())",
               (s["never"],))
    db.execute("UPDATE latest SET time = now(), value = 7.25 WHERE sensor_id = %s", (s["stale"],))
    t = _tree(api, b)
    room_b = _find(t, "room", rooms["B"])
    assert {x["id"]: (x["value"], x["state"]) for x in room_b["sensors"]} == {s["never"]: (5.5, "ok"),
                                                                             s["stale"]: (7.25, "ok")}
    assert all(x["time"] is not None for x in room_b["sensors"])
    assert room_b["state"] == "ok" and t["counts"] == {"ok": 5, "warning": 1, "alarm": 1, "offline": 0}

    # a new critical alert on the first floor's sensor, then it is closed
    alert = db.execute("""INSERT INTO alerts (source, kind, severity, status, title, sensor_id, raised_at, last_at,
                                              ack_due_at, close_due_at)
                          VALUES ('manual', 'test', 'critical', 'open', 'test', %s, now(), now(), now(), now())
                          RETURNING id""", (s["ok_c"],)).fetchone()[0]
    t = _tree(api, b)
    assert _find(t, "sensor", s["ok_c"])["state"] == "alarm" and _find(t, "floor", floors[1])["state"] == "alarm"
    assert t["counts"] == {"ok": 4, "warning": 1, "alarm": 2, "offline": 0}
    db.execute("UPDATE alerts SET status = 'closed' WHERE id = %s", (alert,))
    t = _tree(api, b)
    assert _find(t, "floor", floors[1])["state"] == "ok" and t["counts"]["alarm"] == 1

    # a reading goes stale: the sensor is offline (the request's now(), not the cached one's)
    db.execute("UPDATE latest SET time = now() - interval '2 hours' WHERE sensor_id = %s", (s["bld"],))
    t = _tree(api, b)
    assert [x["state"] for x in t["sensors"]] == ["offline"] and t["counts"]["offline"] == 1


def test_structure_generation_moves_with_the_structure_only(db, register):
    w = seed(db, register)
    b, s = w["building"], w["sensors"]

    def generation() -> int:
        return db.execute("SELECT generation FROM twin_structure_state").fetchone()[0]

    for statement in ("UPDATE latest SET value = value + 1",
                      "UPDATE alerts SET status = 'resolved'",
                      "UPDATE devices SET name = 'renamed', geom = ST_SetSRID(ST_MakePoint(121.5, 31.2), 4326)"):
        before = generation()
        assert db.execute(statement).rowcount > 0
        assert generation() == before, statement
    for statement, params in (
            ("UPDATE buildings SET name = 'X' WHERE id = %s", (b,)),
            ("UPDATE floors SET name = 'X' WHERE id = %s", (w["floors"][0],)),
            ("UPDATE rooms SET use = 'office' WHERE id = %s", (w["rooms"]["A"],)),
            ("UPDATE components SET name = 'X' WHERE id = %s", (w["components"]["a"],)),
            ("UPDATE sensors SET unit = 'Cel' WHERE id = %s", (s["ok_a"],)),
            ("UPDATE devices SET ext_id = 'dev9' WHERE ext_id = 'dev1'", ()),
            ("DELETE FROM devices WHERE ext_id = 'dev9'", ()),  # its sensors go with it
            ("DELETE FROM rooms WHERE id = %s", (w["rooms"]["B"],))):
        before = generation()
        assert db.execute(statement, params).rowcount > 0
        assert generation() > before, statement


def test_structure_writers_do_not_deadlock_on_the_generation(db, register, database_url):
    """The generation moves at commit: a writer holding it never waits on another lock. (Moved at
    once, this interleaving deadlocks with the sensors → alert_rules_state trigger.)"""
    w = seed(db, register)
    s = w["sensors"]
    before = db.execute("SELECT generation FROM twin_structure_state").fetchone()[0]
    options = "-c lock_timeout=10000"
    with psycopg.connect(database_url, options=options) as first, \
            psycopg.connect(database_url, options=options) as second, ThreadPoolExecutor(2) as threads:
        first.execute("UPDATE rooms SET name = 'x' WHERE id = %s", (w["rooms"]["A"],))
        threads.submit(second.execute, "UPDATE sensors SET unit = 'u' WHERE id = %s", (s["ok_a"],)).result()
        # waits for the second transaction's lock on alert_rules_state
        waiting = threads.submit(first.execute, "UPDATE sensors SET unit = 'v' WHERE id = %s", (s["ok_c"],))
        second.commit()
        waiting.result()
        first.commit()
    assert db.execute("SELECT generation FROM twin_structure_state").fetchone()[0] == before + 2


def test_concurrent_trees_after_a_change_all_show_it(db, register, api):
    w = seed(db, register)
    b = w["building"]
    _tree(api, b)
    db.execute("UPDATE rooms SET name = 'Room A2' WHERE id = %s", (w["rooms"]["A"],))

    def get(_):
        with httpx.Client(base_url=api.url, headers=api.headers, timeout=30) as client:
            return client.get(f"/twin/buildings/{b}")
    with ThreadPoolExecutor(8) as threads:
        responses = list(threads.map(get, range(16)))
    assert all(r.status_code == 200 for r in responses)
    assert {r.text for r in responses} == {responses[0].text}  # nothing live changed meanwhile
    assert _find(responses[0].json(), "room", w["rooms"]["A"])["name"] == "Room A2"


def test_tree_statement_timeout(db, register, settings):
    """A tree query cut off by the statement timeout is a query_timeout, cached structure or not."""
    w = seed(db, register)
    slow = ApiServer(settings.model_copy(update={"api_statement_timeout_ms": 300}))
    slow.start()
    try:
        path = f"/twin/buildings/{w['building']}"
        assert slow.get(path).status_code == 200  # the structure is cached now
        for table, change in (("latest", None),  # the live part waits
                              ("rooms", "UPDATE buildings SET name = 'Y'")):  # the structure is read anew and waits
            if change:
                db.execute(change)
            with psycopg.connect(settings.database_url) as locker:
                locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                r = slow.get(path)
                locker.rollback()
            assert (r.status_code, r.json()["error"]) == (400, "query_timeout"), r.text
        assert slow.get(path).json()["name"] == "Y"
    finally:
        slow.stop()


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
