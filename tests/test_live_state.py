"""The buildings' live state: ``GET /twin/states``, and ``building_state`` events on the SSE stream
when an alert is raised or resolved and when sensors go offline or come back."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from psycopg.types.json import Jsonb

from .helpers import ApiServer, wait_for
from .test_notifications import SseClient

_FRESH, _STALE, _NEVER = "fresh", "stale", "never"


def _box(x: float, y: float, size: float = 0.001) -> str:
    return (f"SRID=4326;MULTIPOLYGON((({x} {y},{x + size} {y},{x + size} {y + size},"
            f"{x} {y + size},{x} {y})))")


@dataclass
class Town:
    areas: dict[str, int] = field(default_factory=dict)
    buildings: dict[str, int] = field(default_factory=dict)
    sensors: dict[str, int] = field(default_factory=dict)
    channels: dict[str, str] = field(default_factory=dict)   # sensor name → channel on device "dev-1"


def seed(db, *, stale_min: int = 120) -> Town:
    """Districts D1 ⊃ street S1, and D2; buildings with sensors placed every way a sensor can be.

    B1 (S1): sensors on a component of the building, of its floor and of its room, one in the
    room and one on the building itself (never reported);
    B2 (D2): one sensor per state (alarm, warning, offline, ok);
    B3 (D1): an acknowledged info alert, an ok sensor and one whose major alert is closed;
    B4 (S1): only offline / never-reported sensors; B5: no sensors; B6 (no area): one ok sensor."""
    t = Town()
    t.areas["D1"] = db.execute("INSERT INTO areas (code, name, level, geom) VALUES ('d1', 'D1', 'district', %s) "
                               "RETURNING id", (_box(121.0, 31.0, 0.5),)).fetchone()[0]
    t.areas["S1"] = db.execute("INSERT INTO areas (code, name, level, parent_id, geom) VALUES "
                               "('s1', 'S1', 'street', %s, %s) RETURNING id",
                               (t.areas["D1"], _box(121.1, 31.1, 0.1))).fetchone()[0]
    t.areas["D2"] = db.execute("INSERT INTO areas (code, name, level, geom) VALUES ('d2', 'D2', 'district', %s) "
                               "RETURNING id", (_box(122.0, 31.0, 0.5),)).fetchone()[0]
    for name, area, x in (("B1", "S1", 121.11), ("B2", "D2", 122.1), ("B3", "D1", 121.3), ("B4", "S1", 121.12),
                          ("B5", "S1", 121.13), ("B6", None, 120.0)):
        t.buildings[name] = db.execute("INSERT INTO buildings (ext_id, name, area_id, geom) VALUES (%s, %s, %s, %s) "
                                       "RETURNING id", (name, name, t.areas.get(area), _box(x, 31.15))).fetchone()[0]
    b1 = t.buildings["B1"]
    floor = db.execute("INSERT INTO floors (building_id, level) VALUES (%s, 0) RETURNING id", (b1,)).fetchone()[0]
    room = db.execute("INSERT INTO rooms (floor_id, ext_id) VALUES (%s, 'R1') RETURNING id", (floor,)).fetchone()[0]
    comps = {}
    for name, building, floor_id, room_id in (("C-building", b1, None, None), ("C-floor", None, floor, None),
                                              ("C-room", None, None, room)):
        comps[name] = db.execute("INSERT INTO components (ext_id, kind, building_id, floor_id, room_id, geom) "
                                 "VALUES (%s, 'smoke_detector', %s, %s, %s, 'SRID=4326;POINT(121.1105 31.1505)') "
                                 "RETURNING id", (name, building, floor_id, room_id)).fetchone()[0]
    vendor = db.execute("INSERT INTO vendors (code, name) VALUES ('acme', 'ACME') RETURNING id").fetchone()[0]
    device = db.execute("INSERT INTO devices (vendor_id, ext_id) VALUES (%s, 'dev-1') RETURNING id",
                        (vendor,)).fetchone()[0]
    # name, component, room, building, latest
    placements = [
        ("b1_comp_building", comps["C-building"], None, None, _FRESH),
        ("b1_comp_floor", comps["C-floor"], None, None, _FRESH),
        ("b1_comp_room", comps["C-room"], None, None, _FRESH),
        ("b1_room", None, room, None, _FRESH),
        ("b1_building", None, None, b1, _NEVER),
        ("b2_alarm", None, None, t.buildings["B2"], _FRESH),
        ("b2_warning", None, None, t.buildings["B2"], _FRESH),
        ("b2_offline", None, None, t.buildings["B2"], _STALE),
        ("b2_ok", None, None, t.buildings["B2"], _FRESH),
        ("b3_ack_info", None, None, t.buildings["B3"], _STALE),  # an alert outranks offline
        ("b3_ok", None, None, t.buildings["B3"], _FRESH),
        ("b3_closed", None, None, t.buildings["B3"], _FRESH),
        ("b4_offline", None, None, t.buildings["B4"], _STALE),
        ("b4_never", None, None, t.buildings["B4"], _NEVER),
        ("b6_ok", None, None, t.buildings["B6"], _FRESH),
    ]
    now = datetime.now(timezone.utc)
    for i, (name, comp, room_id, building, latest) in enumerate(placements):
        t.channels[name] = f"ch{i}"
        t.sensors[name] = db.execute(
            "INSERT INTO sensors (device_id, channel, quantity, unit, component_id, room_id, building_id) "
            "VALUES (%s, %s, 'temperature', 'Cel', %s, %s, %s) RETURNING id",
            (device, t.channels[name], comp, room_id, building)).fetchone()[0]
        if latest != _NEVER:
            when = now if latest == _FRESH else now - timedelta(minutes=stale_min)
            db.execute("INSERT INTO latest (sensor_id, time, value, received_at) VALUES (%s, %s, 20.0, %s)",
                       (t.sensors[name], when, when))
    for name, severity, status in (("b2_alarm", "critical", "open"), ("b2_alarm", "info", "open"),
                                   ("b2_warning", "warning", "dispatched"), ("b3_ack_info", "info", "acknowledged"),
                                   ("b3_closed", "major", "closed"), ("b3_closed", "major", "resolved")):
        db.execute("""INSERT INTO alerts (source, kind, severity, status, title, sensor_id, raised_at, last_at,
                                          ack_due_at, close_due_at, media)
                      VALUES ('manual', 'test', %s, %s, 'test', %s, now(), now(), now(), now(), %s)""",
                   (severity, status, t.sensors[name], Jsonb([])))
    return t


def _counts(ok=0, warning=0, alarm=0, offline=0) -> dict:
    return {"ok": ok, "warning": warning, "alarm": alarm, "offline": offline}


def _states(api: ApiServer, **params) -> dict[int, dict]:
    r = api.get("/twin/states", params=params)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert datetime.fromisoformat(doc["as_of"]).utcoffset() == timedelta(0)
    assert [b["id"] for b in doc["buildings"]] == sorted(b["id"] for b in doc["buildings"])
    return {b.pop("id"): b for b in doc["buildings"]}


def test_states_worst_wins_offline_only_when_all_and_area_filter(api, db):
    t = seed(db)
    b, a = t.buildings, t.areas
    expected = {
        b["B1"]: {"state": "ok", "area_id": a["S1"], "counts": _counts(ok=4, offline=1)},
        b["B2"]: {"state": "alarm", "area_id": a["D2"], "counts": _counts(ok=1, warning=1, alarm=1, offline=1)},
        b["B3"]: {"state": "warning", "area_id": a["D1"], "counts": _counts(ok=2, warning=1)},
        b["B4"]: {"state": "offline", "area_id": a["S1"], "counts": _counts(offline=2)},
        b["B6"]: {"state": "ok", "area_id": None, "counts": _counts(ok=1)},
    }
    assert _states(api) == expected  # B5 has no sensors: no state
    assert _states(api, area_id=a["S1"]) == {k: expected[k] for k in (b["B1"], b["B4"])}
    assert _states(api, area_id=a["D1"]) == {k: expected[k] for k in (b["B1"], b["B3"], b["B4"])}
    assert _states(api, area_id=a["D2"]) == {b["B2"]: expected[b["B2"]]}
    r = api.get("/twin/states", params={"area_id": 999999})
    assert (r.status_code, r.json()["error"]) == (404, "area_not_found")

    # The twin tree counts a building's sensors by the same rule.
    for name, building in b.items():
        tree = api.get(f"/twin/buildings/{building}")
        assert tree.status_code == 200, tree.text
        got = tree.json()
        want = expected.get(building, {"state": None, "counts": _counts()})
        assert (got["state"], got["counts"]) == (want["state"], want["counts"]), name

    # A sensor that reports again is ok; the building with only offline sensors becomes ok.
    db.execute("UPDATE latest SET time = now() WHERE sensor_id = %s", (t.sensors["b4_offline"],))
    assert _states(api)[b["B4"]] == {"state": "ok", "area_id": a["S1"], "counts": _counts(ok=1, offline=1)}


def test_states_need_a_reader_key(api, db):
    seed(db)
    assert httpx.get(f"{api.url}/twin/states", timeout=5).status_code == 401
    r = api.post("/api-keys", json={"name": "analyst desk", "role": "analyst"})
    with httpx.Client(base_url=api.url, headers={"X-API-Key": r.json()["key"]}, timeout=10) as analyst:
        assert analyst.get("/twin/states").status_code == 200
    r = api.post("/api-keys", json={"name": "acme", "role": "vendor", "vendor": "acme"})
    with httpx.Client(base_url=api.url, headers={"X-API-Key": r.json()["key"]}, timeout=10) as vendor:
        assert vendor.get("/twin/states").status_code == 403


def _building_states(client: SseClient, building_id: int) -> list[tuple[int | None, dict]]:
    return [(e[0], e[2]) for e in client.events if e[1] == "building_state" and e[2]["building_id"] == building_id]


@pytest.fixture
def stream_server(settings, db):
    servers: list[ApiServer] = []

    def start(**overrides) -> ApiServer:
        server = ApiServer(settings.model_copy(update={"stream_keepalive_s": 0.3, **overrides}))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_an_alert_changes_its_building_state_on_the_stream(db, stream_server, ingest, publisher):
    """A published reading breaks a rule on a sensor of B1 (on a component in a room of B1): the
    stream sends the alert, then B1's state alarm (previous ok), without an id; resolving the
    alert sends ok again. The area filter applies to these events, the severity filter does not."""
    t = seed(db)
    b1, sensor = t.buildings["B1"], t.sensors["b1_comp_room"]
    api = stream_server()
    r = api.post("/rules", json={"name": "hot", "kind": "threshold", "severity": "major",
                                 "scope": {"sensor_id": sensor}, "condition": {"op": ">", "value": 50.0}})
    assert r.status_code == 201, r.text
    everything = SseClient(api)
    in_d1_info_only = SseClient(api, params={"area_id": t.areas["D1"], "severity": "info"})
    in_d2 = SseClient(api, params={"area_id": t.areas["D2"]})
    ingest()
    publisher.publish("cim/v1/acme/dev-1/up", {"time": datetime.now(timezone.utc).isoformat(),
                                               "readings": [{"channel": t.channels["b1_comp_room"], "value": 80.0}]})
    wait_for(lambda: _building_states(everything, b1), timeout=20, message="for B1's state")
    (event_id, doc), = _building_states(everything, b1)
    assert event_id is None
    assert {k: v for k, v in doc.items() if k != "at"} == {
        "version": 1, "building_id": b1, "area_id": t.areas["S1"], "state": "alarm", "previous": "ok",
        "counts": _counts(ok=3, alarm=1, offline=1)}
    assert abs(datetime.fromisoformat(doc["at"]) - datetime.now(timezone.utc)) < timedelta(minutes=1)
    alert_id = db.execute("SELECT id FROM alerts WHERE sensor_id = %s", (sensor,)).fetchone()[0]
    kinds = [(e[1], e[2]["alert"]["id"] if e[1] == "alert" else e[2]["building_id"]) for e in everything.events]
    assert kinds == [("alert", alert_id), ("building_state", b1)]  # the alert first; no other building changed
    wait_for(lambda: _building_states(in_d1_info_only, b1), timeout=10, message="for B1's state (D1, info)")
    assert [e[1] for e in in_d1_info_only.events] == ["building_state"]  # a major alert: not for this client

    api.post(f"/alerts/{alert_id}/resolve", json={"note": "aired"}).raise_for_status()
    wait_for(lambda: len(_building_states(everything, b1)) == 2, timeout=20, message="for B1 back to ok")
    (_, back) = _building_states(everything, b1)[1]
    assert (back["state"], back["previous"], back["counts"]) == ("ok", "alarm", _counts(ok=4, offline=1))

    # D2's client got nothing of B1: an event in D2 (a marker) comes, and nothing before it.
    r = api.post("/events", json={"source": "hotline", "kind": "fire", "severity": "info", "title": "marker",
                                  "area_id": t.areas["D2"]})
    assert r.status_code == 201, r.text
    marker = r.json()["id"]
    for client in (everything, in_d2):
        wait_for(lambda: any(e[1] == "alert" and e[2]["alert"]["id"] == marker for e in client.events),
                 timeout=10, message="for the marker")
    assert [(e[1], e[2]["alert"]["title"]) for e in in_d2.events] == [("alert", "marker")]

    # building_state frames never move the cursor: a client resuming gets the alert events only.
    resumed = SseClient(api, headers={"Last-Event-ID": "0"})
    ids = [e[0] for e in everything.events if e[1] == "alert"]
    resumed.wait_for_ids(ids)
    assert [e[1] for e in resumed.events] == ["alert"] * len(ids)
    for client in (everything, in_d1_info_only, in_d2, resumed):
        client.close()


def test_sensors_going_offline_and_back_reach_the_stream(db, stream_server):
    """No alert at all: the periodic read of every building finds B6's only sensor ok, then
    offline once its reading is older than the threshold, then ok again when it reports."""
    offline_after_s = 6.0  # the read runs every 3 s (half of it)
    t = seed(db)
    b6, sensor = t.buildings["B6"], t.sensors["b6_ok"]
    db.execute("UPDATE latest SET time = now() - interval '1 hour' WHERE sensor_id = %s", (sensor,))
    api = stream_server(sensor_offline_after_s=offline_after_s)
    client = SseClient(api, params={"severity": "critical"})  # the severity filter does not apply

    def changes() -> list[tuple[str, str]]:
        return [(doc["previous"], doc["state"]) for _, doc in _building_states(client, b6)]

    # It reports (the hub may or may not have read the building's state before that: it started
    # with the API), stops, goes offline; then it reports again.
    db.execute("UPDATE latest SET time = now() WHERE sensor_id = %s", (sensor,))
    wait_for(lambda: ("ok", "offline") in changes(), timeout=30, message="for B6 offline")
    db.execute("UPDATE latest SET time = now() WHERE sensor_id = %s", (sensor,))
    wait_for(lambda: changes()[-1] == ("offline", "ok"), timeout=30, message="for B6 back to ok")
    got = changes()
    assert got[-2:] == [("ok", "offline"), ("offline", "ok")] and len(got) in (2, 3)
    assert all(prev[1] == nxt[0] for prev, nxt in zip(got, got[1:]))  # each previous is the state before
    docs = [doc for _, doc in _building_states(client, b6)]
    assert [doc["counts"] for doc in docs[-2:]] == [_counts(offline=1), _counts(ok=1)]
    assert {doc["area_id"] for doc in docs} == {None}
    client.close()
