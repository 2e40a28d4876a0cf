"""Rules (validation, versions, audit), the alert lifecycle, dispatch along the area chain,
escalation and the events API, against a real `cimtwin serve` and database."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import httpx
import psycopg
import pytest
from shapely.geometry import box, mapping

from cimtwin.geo.crs import wgs84_to_gcj02
from cimtwin.settings import settings_env
from cimtwin.store.alerts import escalate_due

from .helpers import ApiServer

# A district → street → community → grid, nested boxes near the Bund; the building lies in the grid.
DISTRICT = box(121.40, 31.10, 121.60, 31.30)
STREET = box(121.45, 31.15, 121.55, 31.25)
COMMUNITY = box(121.48, 31.18, 121.52, 31.22)
GRID = box(121.49, 31.19, 121.51, 31.21)
BUILDING = box(121.5000, 31.2000, 121.5010, 31.2010)
IN_BUILDING = (121.5005, 31.2005)
NOWHERE = (100.0, 10.0)  # in no area at all


@dataclass
class District:
    areas: dict[str, int]
    building: int
    parties: dict[str, int]


def _created(r: httpx.Response) -> dict:
    assert r.status_code == 201, r.text
    return r.json()


def seed_district(api: ApiServer) -> District:
    """The areas, a building (its area derived) and parties for the community and the street, through the API."""
    areas: dict[str, int] = {}
    parent = None
    for code, level, geom in (("d1", "district", DISTRICT), ("s1", "street", STREET),
                              ("c1", "community", COMMUNITY), ("g1", "grid", GRID)):
        body = {"code": code, "name": f"{level} {code}", "level": level, "geometry": mapping(geom)}
        if parent is not None:
            body["parent_id"] = parent
        parent = areas[code] = _created(api.post("/areas", json=body))["id"]
    building = _created(api.post("/buildings", json={"ext_id": "b-1", "name": "Block 1",
                                                     "geometry": mapping(BUILDING)}))
    assert building["properties"]["area_id"] == areas["g1"]  # derived: the most specific area
    parties = {}
    for code, kind, area in (("community-c1", "community_committee", "c1"), ("street-s1", "street_office", "s1")):
        parties[code] = _created(api.post("/parties", json={"code": code, "name": code.title(), "kind": kind}))["id"]
        _created(api.post("/party-assignments", json={"party_id": parties[code], "area_id": areas[area]}))
    return District(areas, building["id"], parties)


def event(api: ApiServer, *, at=IN_BUILDING, params: dict | None = None, **fields) -> dict:
    body = {"source": "hotline", "kind": "gas_smell", "severity": "major", "title": "Gas smell reported",
            "external_ref": "12345-0001", **fields}
    if at is not None:
        body["location"] = {"type": "Point", "coordinates": list(at)}
    return _created(api.post("/events", json=body, params=params))


def key_client(api: ApiServer, role: str) -> httpx.Client:
    r = api.post("/api-keys", json={"name": f"{role} desk", "role": role})
    assert r.status_code == 201, r.text
    return httpx.Client(base_url=api.url, headers={"X-API-Key": r.json()["key"]}, timeout=10)


def error(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json().get("error")


THRESHOLD = {"name": "gas LEL > 20% for 30 s in basements", "kind": "threshold", "severity": "critical",
             "condition": {"op": ">", "value": 20.0, "clear_value": 15.0, "hold_s": 30},
             "scope": {"quantity": "gas_lel", "floor_max": -1}, "ack_sla_s": 300, "close_sla_s": 3600,
             "auto_clear": False}


# ----------------------------------------------------------------------------- rules

def test_rules_are_validated_per_kind(api, db):
    r = api.post("/rules", json={**THRESHOLD, "condition": {"op": ">", "valeu": 20.0}})
    assert r.status_code == 422
    assert "valeu" in r.json()["detail"] and "Extra inputs" in r.json()["detail"]
    r = api.post("/rules", json={**THRESHOLD, "scope": {"quantity": "gas_lel", "floormax": -1}})
    assert r.status_code == 422 and "floormax" in r.json()["detail"]
    r = api.post("/rules", json={**THRESHOLD, "condition": {"op": ">", "value": 20.0, "clear_value": 25.0}})
    assert r.status_code == 422 and "clear_value 25 must not be above value 20" in r.json()["detail"]
    r = api.post("/rules", json={**THRESHOLD, "condition": {"op": "<", "value": 5.0, "clear_value": 4.0}})
    assert r.status_code == 422 and "clear_value 4 must not be below value 5" in r.json()["detail"]
    for bad in ({"op": ">", "value": 20.0, "hold_s": -1}, {"op": "=>", "value": 20.0}, {"op": ">"}):
        assert api.post("/rules", json={**THRESHOLD, "condition": bad}).status_code == 422, bad
    for bad in ({"kind": "offline", "condition": {"silent_s": 0}},
                {"kind": "rate", "condition": {"op": ">", "per_s": 0.000833}},
                {"kind": "composite", "condition": {"mode": "all", "conditions": []}},
                {"kind": "telepathy", "condition": {}},
                {"scope": {"floor_min": 3, "floor_max": 1}}, {"ack_sla_s": 0}, {"severity": "apocalyptic"},
                {"unknown_field": 1}):
        assert api.post("/rules", json={**THRESHOLD, **bad}).status_code == 422, bad
    r = api.post("/rules", json={**THRESHOLD, "scope": {"area_id": 999999}})
    assert r.status_code == 422 and "area_id 999999 does not exist" in r.json()["detail"]
    assert api.get("/rules").json()["numberMatched"] == 0

    # Every kind in its valid form; the scope is stored with only the keys given.
    for rule in (THRESHOLD,
                 {"name": "water rising > 5 cm/min", "kind": "rate", "severity": "major",
                  "condition": {"op": ">", "per_s": 0.000833, "window_s": 300}, "scope": {"quantity": "water_level"}},
                 {"name": "smoke detector silent 10 min", "kind": "offline", "severity": "warning",
                  "condition": {"silent_s": 600}, "scope": {"component_kind": "smoke_detector"}},
                 {"name": "co and no2 high", "kind": "composite", "severity": "major",
                  "condition": {"mode": "all", "hold_s": 0, "conditions": [
                      {"quantity": "co", "op": ">", "value": 5}, {"quantity": "no2", "op": ">=", "value": 200}]}}):
        created = _created(api.post("/rules", json=rule))
        assert created["version"] == 1 and created["kind"] == rule["kind"]
        assert created["scope"] == rule.get("scope", {})
        assert created["created_by"] == "admin-setting"
    stored = api.get("/rules", params={"kind": "threshold"}).json()["items"][0]
    assert stored["condition"] == {"op": ">", "value": 20.0, "clear_value": 15.0, "hold_s": 30.0}
    assert db.execute("SELECT scope FROM alert_rules WHERE kind = 'threshold'").fetchone()[0] == \
        {"quantity": "gas_lel", "floor_max": -1}


def test_rules_are_versioned_and_audited(api, db):
    rule = _created(api.post("/rules", json=THRESHOLD))
    rid = rule["id"]
    r = api.client.patch(f"/rules/{rid}", json={"condition": {"op": ">", "value": 25.0, "clear_value": 18.0, "hold_s": 10}})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2 and r.json()["condition"]["value"] == 25.0
    # The merged rule is validated: a condition of another kind, or bad hysteresis, is refused.
    r = api.client.patch(f"/rules/{rid}", json={"condition": {"silent_s": 60}})
    assert r.status_code == 422 and "silent_s" in r.json()["detail"]
    r = api.client.patch(f"/rules/{rid}", json={"condition": {"op": ">", "value": 25.0, "clear_value": 30.0}})
    assert r.status_code == 422 and "clear_value" in r.json()["detail"]
    assert api.client.patch(f"/rules/{rid}", json={"severity": None}).status_code == 422
    assert api.client.patch(f"/rules/{rid}", json={"sevrity": "info"}).status_code == 422
    # Changing kind and condition together is a new version too.
    r = api.client.patch(f"/rules/{rid}", json={"kind": "offline", "condition": {"silent_s": 600}})
    assert r.status_code == 200 and r.json()["version"] == 3 and r.json()["kind"] == "offline"
    # No change, no new version.
    assert api.client.patch(f"/rules/{rid}", json={"severity": "critical"}).json()["version"] == 3

    versions = api.get(f"/rules/{rid}/versions").json()
    assert [(v["version"], v["current"]) for v in versions] == [(1, False), (2, False), (3, True)]
    assert versions[0]["snapshot"]["condition"] == THRESHOLD["condition"] | {"hold_s": 30.0}
    assert versions[1]["snapshot"]["condition"]["value"] == 25.0
    assert versions[0]["superseded_by"] == "admin-setting" and versions[2]["superseded_at"] is None

    assert api.client.delete(f"/rules/{rid}").status_code == 204
    gone = api.get(f"/rules/{rid}").json()
    assert gone["deleted_at"] is not None and gone["enabled"] is False and gone["version"] == 4
    assert api.get("/rules").json()["numberMatched"] == 0
    assert api.get("/rules", params={"include_deleted": "true"}).json()["numberMatched"] == 1
    assert error(api.client.patch(f"/rules/{rid}", json={"name": "x"})) == (409, "rule_deleted")
    assert error(api.client.delete(f"/rules/{rid}")) == (409, "rule_deleted")
    assert error(api.get("/rules/999999")) == (404, "rule_not_found")

    entries = api.get("/audit", params={"target": f"alert_rule:{rid}"}).json()
    assert [e["action"] for e in reversed(entries)] == ["alert_rule.create", "alert_rule.update",
                                                        "alert_rule.update", "alert_rule.delete"]
    assert all(e["actor"] == "admin-setting" for e in entries)
    update = entries[2]  # the first update, newest first
    assert update["detail"]["version"] == 2
    assert update["detail"]["changes"]["condition"]["from"]["value"] == 20.0
    assert update["detail"]["changes"]["condition"]["to"]["value"] == 25.0


def test_roles(api, db):
    analyst, operator = key_client(api, "analyst"), key_client(api, "operator")
    seed_district(api)
    alert = event(api)
    assert analyst.get("/alerts").status_code == 200
    assert analyst.get(f"/alerts/{alert['id']}").status_code == 200
    assert analyst.get("/rules").status_code == 200
    for path, body in ((f"/alerts/{alert['id']}/acknowledge", {}), ("/rules", THRESHOLD),
                       ("/events", {"source": "manual", "kind": "x", "title": "t"})):
        assert error(analyst.post(path, json=body)) == (403, "forbidden_role"), path
    r = operator.post(f"/alerts/{alert['id']}/acknowledge", json={"note": "on it"})
    assert r.status_code == 200 and r.json()["events"][-1]["actor"].endswith(":operator desk")
    assert operator.post("/rules", json=THRESHOLD).status_code == 201


# ----------------------------------------------------------------------------- lifecycle

def test_lifecycle_happy_path_with_trail_and_timestamps(api, db):
    seed_district(api)
    alert = event(api, media=["https://cdn.example.org/p/1.jpg",
                              {"url": "https://cdn.example.org/v/1.mp4", "type": "video", "caption": "cam 7"}],
                  description="residents smell gas near the stairwell")
    aid = alert["id"]
    assert alert["status"] == "open" and alert["source"] == "hotline" and alert["external_ref"] == "12345-0001"
    assert alert["media"] == [{"url": "https://cdn.example.org/p/1.jpg", "type": "other"},
                              {"url": "https://cdn.example.org/v/1.mp4", "type": "video", "caption": "cam 7"}]
    assert [e["action"] for e in alert["events"]] == ["raised"]

    steps = [("acknowledge", {"note": "seen"}, "acknowledged", "acknowledged_at"),
             ("dispatch", {"note": "property manager on the way"}, "dispatched", "dispatched_at"),
             ("resolve", {"note": "valve closed"}, "resolved", "resolved_at"),
             ("close", {"note": "checked by the community"}, "closed", "closed_at")]
    for action, body, status, stamp in steps:
        r = api.post(f"/alerts/{aid}/{action}", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == status and r.json()[stamp] is not None
    final = api.get(f"/alerts/{aid}").json()
    trail = final["events"]
    assert [(e["action"], e["from_status"], e["to_status"]) for e in trail] == [
        ("raised", None, "open"), ("acknowledged", "open", "acknowledged"),
        ("dispatched", "acknowledged", "dispatched"), ("resolved", "dispatched", "resolved"),
        ("closed", "resolved", "closed")]
    assert [e["note"] for e in trail[1:]] == [s[1]["note"] for s in steps]
    assert all(e["actor"] == "admin-setting" for e in trail)
    stamps = [final[k] for k in ("created_at", "acknowledged_at", "dispatched_at", "resolved_at", "closed_at")]
    assert stamps == sorted(stamps)
    assert [e["id"] for e in trail] == sorted(e["id"] for e in trail)

    # Closed is final: every step but a note is a 409 naming the status.
    for action in ("acknowledge", "dispatch", "resolve", "close"):
        r = api.post(f"/alerts/{aid}/{action}", json={})
        assert error(r) == (409, "invalid_transition") and r.json()["status"] == "closed", action
        assert f"alert {aid} is closed" in r.json()["detail"]
    assert api.post(f"/alerts/{aid}/reopen", json={"note": "again"}).status_code == 409
    r = api.post(f"/alerts/{aid}/notes", json={"note": "post-incident review done"})
    assert r.status_code == 200 and r.json()["events"][-1]["action"] == "note"
    assert r.json()["status"] == "closed"
    assert api.post(f"/alerts/{aid}/notes", json={}).status_code == 422
    assert error(api.post("/alerts/999999/acknowledge", json={})) == (404, "alert_not_found")
    # The trail is append-only.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("UPDATE alert_events SET note = 'x' WHERE alert_id = %s", (aid,))


def test_other_transitions(api, db):
    district = seed_district(api)
    # open → dispatched directly acknowledges too; a party override is a manual dispatch.
    a = event(api)
    r = api.post(f"/alerts/{a['id']}/dispatch", json={"party_id": district.parties["street-s1"]})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "dispatched" and body["acknowledged_at"] is not None
    assert body["party_id"] == district.parties["street-s1"] and body["dispatch_level"] == "manual"
    assert body["events"][-1]["detail"]["previous_party_id"] == district.parties["community-c1"]
    assert error(api.post(f"/alerts/{a['id']}/acknowledge", json={})) == (409, "invalid_transition")
    assert error(api.post(f"/alerts/{a['id']}/dispatch", json={"party_id": 999999})) == (404, "party_not_found")
    # Any unfinished alert resolves; a resolved one reopens to open with a fresh SLA.
    b = event(api)
    assert error(api.post(f"/alerts/{b['id']}/close", json={})) == (409, "invalid_transition")
    assert api.post(f"/alerts/{b['id']}/resolve", json={}).json()["status"] == "resolved"
    assert api.post(f"/alerts/{b['id']}/reopen", json={}).status_code == 422  # a reason is required
    r = api.post(f"/alerts/{b['id']}/reopen", json={"note": "still smells"})
    assert r.status_code == 200 and r.json()["status"] == "open" and r.json()["resolved_at"] is None
    assert r.json()["events"][-1]["action"] == "reopened"
    # Nobody to dispatch to: a 409 that says so.
    c = event(api, at=NOWHERE)
    assert error(api.post(f"/alerts/{c['id']}/dispatch", json={})) == (409, "no_party")


# ----------------------------------------------------------------------------- dispatch

def test_events_are_dispatched_to_the_most_specific_party(api, db):
    district = seed_district(api)
    a = event(api)
    assert a["party_id"] == district.parties["community-c1"] and a["dispatch_level"] == "community"
    assert a["party_code"] == "community-c1" and a["escalation_level"] == 0
    assert a["area_id"] == district.areas["g1"] and a["area_code"] == "g1" and a["area_level"] == "grid"
    assert a["building_id"] == district.building
    assert a["geometry"] == {"type": "Point", "coordinates": list(IN_BUILDING)}
    assert a["events"][0]["detail"]["dispatch"] == {"party_id": district.parties["community-c1"],
                                                   "level": "community", "rank": 0}
    # The same point given in GCJ-02, and named by building only.
    gx, gy = wgs84_to_gcj02(*IN_BUILDING)
    assert (gx, gy) != IN_BUILDING
    b = event(api, at=(float(gx), float(gy)), params={"geom-crs": "GCJ02"})
    assert b["building_id"] == district.building and b["party_id"] == district.parties["community-c1"]
    assert b["geometry"]["coordinates"] == pytest.approx(list(IN_BUILDING), abs=1e-7)
    c = event(api, at=None, building_id=district.building, source="video_ai", kind="smoke")
    assert c["dispatch_level"] == "community" and c["area_id"] == district.areas["g1"]
    assert c["geometry"]["type"] == "Point"
    # Output in another CRS.
    r = api.get(f"/alerts/{a['id']}", params={"crs": "EPSG:3857"})
    assert r.headers["Content-Crs"] == "<http://www.opengis.net/def/crs/EPSG/0/3857>"
    assert r.json()["geometry"]["coordinates"][0] == pytest.approx(13_524_000, rel=1e-3)
    # A point in the street but outside the community: the street's party.
    d = event(api, at=(121.46, 31.16))
    assert d["party_id"] == district.parties["street-s1"] and d["dispatch_level"] == "street"
    assert d["area_id"] == district.areas["s1"]


def test_nobody_assigned_is_visible_never_dropped(api, db):
    district = seed_district(api)
    lost = event(api, at=NOWHERE, external_ref="12345-0002")
    assert lost["party_id"] is None and lost["dispatch_level"] == "none" and lost["area_id"] is None
    assert lost["geometry"]["coordinates"] == list(NOWHERE)
    placeless = event(api, at=None, source="manual", kind="other", title="Caller gave no address")
    assert placeless["dispatch_level"] == "none" and placeless["geometry"] is None
    found = event(api)

    page = api.get("/alerts", params={"status": ["open", "acknowledged"]}).json()
    assert page["numberMatched"] == 3
    assert [a["id"] for a in page["items"]] == [found["id"], placeless["id"], lost["id"]]  # newest first
    by_id = {a["id"]: a for a in page["items"]}
    assert by_id[lost["id"]]["dispatch_level"] == "none" and by_id[lost["id"]]["party_id"] is None
    # Filters: the area and all inside it, building, source, severity, several statuses, time.
    in_district = api.get("/alerts", params={"area_id": district.areas["d1"]}).json()
    assert [a["id"] for a in in_district["items"]] == [found["id"]]
    assert api.get("/alerts", params={"area_id": district.areas["g1"]}).json()["numberMatched"] == 1
    assert api.get("/alerts", params={"building_id": district.building}).json()["numberMatched"] == 1
    assert api.get("/alerts", params={"source": "manual"}).json()["numberMatched"] == 1
    assert api.get("/alerts", params={"severity": ["info", "warning"]}).json()["numberMatched"] == 0
    assert api.get("/alerts", params={"status": "closed"}).json()["numberMatched"] == 0
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    assert api.get("/alerts", params={"since": future}).json()["numberMatched"] == 0
    assert api.get("/alerts", params={"until": future}).json()["numberMatched"] == 3
    assert api.get("/alerts", params={"status": "opened"}).status_code == 422


def test_alerts_page_newest_first(api, db):
    times = ["2026-01-01T08:00:00Z", "2026-01-01T09:00:00Z", "2026-01-01T07:00:00Z"]
    ids = [event(api, at=NOWHERE, observed_at=t)["id"] for t in times]
    page = api.get("/alerts", params={"limit": 2}).json()
    assert [a["id"] for a in page["items"]] == [ids[1], ids[0]]
    assert page["numberMatched"] == 3 and page["numberReturned"] == 2
    nxt = next(link for link in page["links"] if link["rel"] == "next")["href"]
    rest = api.get(nxt).json()
    assert [a["id"] for a in rest["items"]] == [ids[2]]
    assert api.get("/alerts", params={"limit": 10**9}).status_code == 400


def test_sensor_place_and_component_levels(api, db):
    """The SQL functions the engine uses: a sensor on a component in a room of the building, and
    assignments at the component, room and building, and of the component's kind in the street."""
    district = seed_district(api)
    floor = db.execute("INSERT INTO floors (building_id, level) VALUES (%s, -1) RETURNING id",
                       (district.building,)).fetchone()[0]
    room = db.execute("INSERT INTO rooms (floor_id, ext_id, geom) VALUES (%s, 'B1-01', ST_Multi(ST_MakeEnvelope("
                      "121.5000, 31.2000, 121.5005, 31.2005, 4326))) RETURNING id", (floor,)).fetchone()[0]
    comp = _created(api.post("/components", json={"ext_id": "gd-1", "kind": "gas_detector", "room_id": room,
                                                  "floor_id": floor,
                                                  "geometry": {"type": "Point", "coordinates": [121.5002, 31.2002]}}))
    comp_id = comp["id"]
    vendor = db.execute("INSERT INTO vendors (code, name) VALUES ('acme', 'ACME') RETURNING id").fetchone()[0]
    device = db.execute("INSERT INTO devices (vendor_id, ext_id) VALUES (%s, 'gd') RETURNING id",
                        (vendor,)).fetchone()[0]
    sensor = db.execute("INSERT INTO sensors (device_id, channel, quantity, unit, component_id) "
                        "VALUES (%s, 'lel', 'gas_lel', '%%', %s) RETURNING id", (device, comp_id)).fetchone()[0]
    place = db.execute("SELECT ST_AsText(geom), area_id, building_id, floor_id, room_id, component_id "
                       "FROM cimtwin_sensor_place(%s)", (sensor,)).fetchall()
    assert place == [("POINT(121.5002 31.2002)", district.areas["g1"], district.building, floor, room, comp_id)]
    assert db.execute("SELECT count(*) FROM cimtwin_sensor_place(-1) WHERE geom IS NULL").fetchone()[0] == 1

    def chain():
        return db.execute("SELECT rank, level, party_id FROM cimtwin_dispatch_chain(ST_SetSRID(ST_MakePoint("
                          "121.5002, 31.2002), 4326), %s, %s, %s, %s)",
                          (district.areas["g1"], district.building, room, comp_id)).fetchall()

    c1, s1 = district.parties["community-c1"], district.parties["street-s1"]
    assert chain() == [(0, "community", c1), (1, "street", s1)]
    gas = _created(api.post("/parties", json={"code": "gas-co", "name": "Gas Co", "kind": "enterprise"}))["id"]
    _created(api.post("/party-assignments", json={"party_id": gas, "area_id": district.areas["s1"],
                                                  "component_kind": "gas_detector"}))
    # The kind's assignment wins at the street level; a plain area assignment elsewhere stays.
    assert chain() == [(0, "community", c1), (1, "street", gas)]
    other = _created(api.post("/parties", json={"code": "pm", "name": "PM", "kind": "property_manager"}))["id"]
    for target in ({"building_id": district.building}, {"room_id": room}, {"component_id": comp_id}):
        _created(api.post("/party-assignments", json={"party_id": other, **target}))
    assert chain() == [(0, "component", other), (1, "room", other), (2, "building", other),
                       (3, "community", c1), (4, "street", gas)]
    # A hydrant elsewhere in the street does not get the gas company.
    assert db.execute("SELECT level, party_id FROM cimtwin_dispatch_chain(ST_SetSRID(ST_MakePoint(121.46, 31.16), "
                      "4326), NULL, NULL, NULL, NULL)").fetchall() == [("street", s1)]


# ----------------------------------------------------------------------------- escalation

def _overdue(db, alert_id: int) -> None:
    db.execute("UPDATE alerts SET ack_due_at = now() - interval '1 second' WHERE id = %s", (alert_id,))


def test_escalation_walks_up_the_chain_until_acknowledged(api, db):
    district = seed_district(api)
    a = event(api, ack_sla_s=600)
    b = event(api, external_ref="12345-0003")
    now = datetime.now(timezone.utc)
    assert escalate_due(db, now=now) == 0  # nothing is due yet

    _overdue(db, a["id"])
    _overdue(db, b["id"])
    api.post(f"/alerts/{b['id']}/acknowledge", json={"note": "community on it"})  # acknowledging stops it
    assert escalate_due(db, now=datetime.now(timezone.utc), default_ack_sla_s=120) == 1
    up = api.get(f"/alerts/{a['id']}").json()
    assert up["party_id"] == district.parties["street-s1"] and up["dispatch_level"] == "street"
    assert up["escalation_level"] == 1 and up["status"] == "open"
    last = up["events"][-1]
    assert last["action"] == "escalated" and last["actor"] == "escalation"
    assert last["detail"]["from_party_id"] == district.parties["community-c1"]
    assert last["detail"]["to_party_id"] == district.parties["street-s1"] and last["detail"]["to_level"] == "street"
    # The next deadline counts from the escalation, with the default SLA of events.
    due = datetime.fromisoformat(up["ack_due_at"])
    assert timedelta(seconds=100) < due - datetime.now(timezone.utc) <= timedelta(seconds=120)
    still = api.get(f"/alerts/{b['id']}").json()
    assert still["party_id"] == district.parties["community-c1"] and still["escalation_level"] == 0
    assert escalate_due(db, now=datetime.now(timezone.utc)) == 0  # not due again yet

    # The street is the top (the district has nobody): noted once, then escalation stops.
    _overdue(db, a["id"])
    assert escalate_due(db, now=datetime.now(timezone.utc)) == 1
    top = api.get(f"/alerts/{a['id']}").json()
    assert top["party_id"] == district.parties["street-s1"] and top["escalation_ended_at"] is not None
    assert top["events"][-1]["detail"]["top"] is True
    assert "no higher level" in top["events"][-1]["detail"]["reason"]
    assert escalate_due(db, now=datetime.now(timezone.utc) + timedelta(hours=1)) == 0
    assert [e["action"] for e in top["events"]].count("escalated") == 2

    # An alert with nobody assigned records that once too.
    lost = event(api, at=NOWHERE)
    _overdue(db, lost["id"])
    assert escalate_due(db, now=datetime.now(timezone.utc)) == 1
    trail = api.get(f"/alerts/{lost['id']}").json()["events"]
    assert trail[-1]["detail"]["top"] is True and "nobody is assigned" in trail[-1]["detail"]["reason"]


def test_escalation_skips_alerts_someone_holds(api, db, database_url):
    seed_district(api)
    a = event(api)
    _overdue(db, a["id"])
    with psycopg.connect(database_url) as other:
        other.execute("SELECT 1 FROM alerts WHERE id = %s FOR UPDATE", (a["id"],))  # another timer, mid-work
        assert escalate_due(db, now=datetime.now(timezone.utc)) == 0
        other.rollback()
    assert escalate_due(db, now=datetime.now(timezone.utc)) == 1
    assert escalate_due(db, now=datetime.now(timezone.utc)) == 0
    events = db.execute("SELECT count(*) FROM alert_events WHERE alert_id = %s AND action = 'escalated'",
                        (a["id"],)).fetchone()[0]
    assert events == 1


def test_alerts_timer_command_escalates(api, db, settings):
    district = seed_district(api)
    rule = _created(api.post("/rules", json={**THRESHOLD, "ack_sla_s": 45}))
    a = event(api)
    # A rule's alert escalates with the rule's SLA.
    db.execute("UPDATE alerts SET rule_id = %s, source = 'rule' WHERE id = %s", (rule["id"], a["id"]))
    _overdue(db, a["id"])
    out = subprocess.run([sys.executable, "-m", "cimtwin.cli", "alerts-timer", "--once"],
                         env=settings_env(settings), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "escalate_due: 1 alert(s)" in out.stderr
    up = api.get(f"/alerts/{a['id']}").json()
    assert up["party_id"] == district.parties["street-s1"]
    assert up["events"][-1]["detail"]["ack_sla_s"] == 45
