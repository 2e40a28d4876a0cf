"""Vendor onboarding end to end: profiles saved over the API, decoded by a real ingest worker
from real MQTT messages, pinned versions, dry run, bulk import, pending devices, replay."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from .helpers import wait_for

ENV_V1 = """
name: acme-env
format: json
topic: vendors/acme/env/{device}/data
device_id: "{device}"
time: {path: /ts, format: epoch_ms}
channels:
  - {name: temperature, path: /data/t, quantity: temperature, unit: °F}
  - {name: humidity, path: $.data.rh, quantity: humidity, unit: "%"}
"""


def _v2(doc: str) -> str:
    """The same profile, with temperatures now sent in °C under another key."""
    return doc.replace("{name: temperature, path: /data/t, quantity: temperature, unit: °F}",
                       "{name: temperature, path: /data/tc, quantity: temperature, unit: °C}")


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


@pytest.fixture
def acme(api):
    assert api.post("/vendors", json={"code": "acme", "name": "Acme"}).status_code == 201
    return api


def _vendor_key(api, vendor: str) -> dict:
    r = api.post("/api-keys", json={"name": f"{vendor} onboarding", "role": "vendor", "vendor": vendor})
    assert r.status_code == 201, r.text
    return {"X-API-Key": r.json()["key"]}


def _save(api, doc: str, vendor: str = "acme", **kw):
    return api.post(f"/vendors/{vendor}/profiles", content=doc.encode(),
                    headers={"Content-Type": "application/yaml", **kw.pop("headers", {})}, **kw)


def _values(db, device: str) -> dict[str, list[float]]:
    rows = db.execute("""SELECT s.channel, r.value FROM readings r JOIN sensors s ON s.id = r.sensor_id
                         JOIN devices d ON d.id = s.device_id WHERE d.ext_id = %s ORDER BY r.time""",
                      (device,)).fetchall()
    out: dict[str, list[float]] = {}
    for channel, value in rows:
        out.setdefault(channel, []).append(value)
    return out


def test_a_typo_in_a_profile_is_rejected_with_the_key_named(acme):
    r = _save(acme, ENV_V1.replace("device_id:", "device_ld:"))
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "invalid_profile"
    assert any(e["path"] == "/device_ld" for e in body["errors"]), body
    assert "device_ld" in body["detail"]
    r = _save(acme, ENV_V1.replace("unit: °F", "unit: °Q"))
    assert r.status_code == 422 and "°Q" in r.json()["detail"]
    # Another vendor's topic prefix is refused at save time.
    r = _save(acme, ENV_V1.replace("vendors/acme/", "vendors/other/"))
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "/topic"
    assert acme.get("/vendors/acme/profiles").json() == []


def test_profile_versions_and_the_served_json_schema(acme):
    r = _save(acme, ENV_V1)
    assert r.status_code == 201, r.text
    assert (r.json()["name"], r.json()["version"]) == ("acme-env", 1)
    assert _save(acme, ENV_V1).json()["version"] == 1  # unchanged: no new version
    assert _save(acme, _v2(ENV_V1)).json()["version"] == 2
    versions = acme.get("/vendors/acme/profiles/acme-env").json()
    assert [v["version"] for v in versions] == [2, 1]
    assert acme.get("/vendors/acme/profiles/acme-env/versions/1").json()["document"]["channels"][0]["unit"] == "°F"
    schema = acme.client.get("/schemas/profile", headers={"X-API-Key": ""}).json()
    assert "channels" in schema["properties"] and schema["additionalProperties"] is False
    audit = acme.get("/audit", params={"action": "profile.create"}).json()
    assert len(audit) == 2


def test_dry_run_shows_readings_or_every_error(acme):
    _save(acme, ENV_V1)
    t = datetime(2026, 11, 1, 8, tzinfo=timezone.utc)
    r = acme.post("/vendors/acme/dry-run", json={
        "profile": "acme-env", "topic": "vendors/acme/env/e1/data",
        "payload_json": {"ts": _ms(t), "data": {"t": 212, "rh": 40}}})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["ok"] and out["device"] == "e1" and out["profile"] == "acme-env@1"
    got = {x["channel"]: x["value"] for x in out["readings"]}
    assert got["temperature"] == pytest.approx(100.0) and got["humidity"] == 40
    r = acme.post("/vendors/acme/dry-run", json={
        "document": json.loads(json.dumps({"name": "x", "topic": "vendors/acme/x/{device}", "device_id": "{device}",
                                           "time": {"path": "/ts", "format": "iso8601"},
                                           "channels": [{"name": "t", "path": "/t", "quantity": "temperature",
                                                         "unit": "°C", "required": True},
                                                        {"name": "h", "path": "/h", "quantity": "humidity",
                                                         "unit": "%", "required": True}]})),
        "topic": "vendors/acme/x/e1", "payload": '{"ts": "yesterday", "t": "warm"}'})
    out = r.json()
    assert r.status_code == 200 and not out["ok"]
    paths = {e["path"] for e in out["errors"]}
    assert {"/ts", "/t", "/h"} <= paths, out["errors"]
    assert db_count_nothing_stored(acme)


def db_count_nothing_stored(api) -> bool:
    return api.get("/readings/latest").json() == []


def test_profile_messages_are_stored_by_the_pinned_version_until_moved(acme, db, ingest, publisher):
    acme_key = _vendor_key(acme, "acme")
    assert _save(acme, ENV_V1, headers=acme_key).status_code == 201
    csv_text = "ext_id,name,profile\nenv-1,Lobby,acme-env@1\n"
    r = acme.post("/vendors/acme/devices/import", content=csv_text, headers={"Content-Type": "text/csv", **acme_key})
    assert r.status_code == 200 and r.json()["created"] == 1, r.text
    worker = ingest()
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=10)
    publisher.publish("vendors/acme/env/env-1/data", {"ts": _ms(t0), "data": {"t": 212, "rh": 40}})
    wait_for(lambda: len(_values(db, "env-1").get("temperature", [])) == 1, timeout=20, message="for v1 reading")
    assert _values(db, "env-1") == {"temperature": [pytest.approx(100.0)], "humidity": [40.0]}

    # Version 2 reads /data/tc in °C; the device stays on version 1 until it is moved.
    assert _save(acme, _v2(ENV_V1), headers=acme_key).json()["version"] == 2
    t1 = t0 + timedelta(seconds=1)
    publisher.publish("vendors/acme/env/env-1/data", {"ts": _ms(t1), "data": {"t": 32, "tc": 55, "rh": 41}})
    wait_for(lambda: len(_values(db, "env-1")["temperature"]) == 2, timeout=20, message="for the pinned reading")
    assert _values(db, "env-1")["temperature"][1] == pytest.approx(0.0)

    r = acme.post("/vendors/acme/profiles/acme-env/move", json={"devices": ["env-1"]}, headers=acme_key)
    assert r.status_code == 200 and r.json()["moved"] == 1 and r.json()["profile"]["version"] == 2
    t2 = t0 + timedelta(seconds=2)
    publisher.publish("vendors/acme/env/env-1/data", {"ts": _ms(t2), "data": {"t": 32, "tc": 55, "rh": 42}})
    wait_for(lambda: len(_values(db, "env-1")["temperature"]) == 3, timeout=20, message="for the moved reading")
    assert _values(db, "env-1")["temperature"][2] == pytest.approx(55.0)
    # A version in use cannot be deleted; an unused one can.
    assert acme.client.delete("/vendors/acme/profiles/acme-env/versions/2", headers=acme_key).status_code == 409
    assert acme.client.delete("/vendors/acme/profiles/acme-env/versions/1", headers=acme_key).status_code == 204
    assert worker.statuses()


def test_a_dead_letter_replayed_after_a_profile_fix_is_stored_once(acme, db, ingest, publisher):
    broken = ENV_V1.replace("path: /data/t,", "path: /data/temp,").replace("path: $.data.rh", "path: $.data.hum")
    _save(acme, broken)
    acme.post("/vendors/acme/devices/import", content="ext_id,profile\nenv-2,acme-env\n",
              headers={"Content-Type": "text/csv"})
    ingest()
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5)
    publisher.publish("vendors/acme/env/env-2/data", {"ts": _ms(t0), "data": {"t": 50, "rh": 30}})
    letters = wait_for(lambda: acme.get("/dead-letters", params={"vendor": "acme"}).json(), timeout=20,
                       message="for the dead letter")
    assert letters[0]["vendor"] == "acme" and letters[0]["device"] == "env-2", letters

    # Replaying before the fix changes nothing and says why.
    r = acme.post("/vendors/acme/dead-letters/replay", json={}).json()
    assert (r["replayed"], r["stored"], r["still_failing"]) == (1, 0, 1) and r["items"][0]["reason"]

    _save(acme, ENV_V1)  # version 2, fixed
    acme.post("/vendors/acme/profiles/acme-env/move", json={})
    r = acme.post("/vendors/acme/dead-letters/replay", json={}).json()
    assert (r["replayed"], r["stored"], r["readings"]) == (1, 1, 2), r
    assert _values(db, "env-2") == {"temperature": [pytest.approx(10.0)], "humidity": [30.0]}
    # Replayed letters are not replayed again, even when asked by id.
    again = acme.post("/vendors/acme/dead-letters/replay", json={"ids": [letters[0]["id"]]}).json()
    assert again["replayed"] == 0
    assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == 2
    assert db.execute("SELECT replayed_at IS NOT NULL, replay_attempts FROM dead_letters").fetchone() == (True, 2)


def test_a_pending_device_is_onboarded_with_one_call(acme, db, ingest, publisher):
    _save(acme, ENV_V1)
    ingest()
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5)
    for i in range(3):
        publisher.publish("vendors/acme/env/new-7/data",
                          {"ts": _ms(t0 + timedelta(seconds=i)), "data": {"t": 50 + i, "rh": 30}})
    pending = wait_for(lambda: [p for p in acme.get("/pending-devices").json() if p["messages"] == 3],
                       timeout=20, message="for the pending device")
    assert pending[0]["ext_id"] == "new-7"
    r = acme.post("/vendors/acme/pending-devices/new-7/onboard", json={"name": "new sensor"})
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["profile"] == "acme-env@1" and sorted(out["sensors"]) == ["humidity", "temperature"]
    assert out["replay"]["stored"] == 3 and out["replay"]["readings"] == 6
    assert len(_values(db, "new-7")["temperature"]) == 3
    assert acme.get("/pending-devices").json() == []
    # The device is now known: new messages are stored directly.
    publisher.publish("vendors/acme/env/new-7/data", {"ts": _ms(t0 + timedelta(seconds=9)), "data": {"t": 41, "rh": 1}})
    wait_for(lambda: len(_values(db, "new-7")["temperature"]) == 4, timeout=20, message="for a live reading")
    assert acme.post("/vendors/acme/pending-devices/new-7/onboard", json={}).status_code == 404


def test_bulk_import_reports_every_bad_row_and_places_devices(acme, db):
    _save(acme, ENV_V1)
    building = db.execute("""INSERT INTO buildings (name, geom) VALUES ('B1',
        ST_Multi(ST_GeomFromText('POLYGON((121.50 31.23, 121.501 31.23, 121.501 31.231, 121.50 31.231, 121.50 31.23))',
        4326))) RETURNING id""").fetchone()[0]
    csv_text = (
        "ext_id,name,profile,channels,building_id,lon,lat\n"
        f"ok-1,first,acme-env,,{building},121.5005,31.2305\n"
        "ok-2,second,,co:concentration:ppm:0:1000,,,\n"
        "bad/id,x,acme-env,,,,\n"
        "no-profile,x,nope,,,,\n"
        f"bad-place,x,acme-env,,999999,,\n"
        "half-point,x,acme-env,,,121.5,\n"
        "ok-1,dup,acme-env,,,,\n")
    r = acme.post("/vendors/acme/devices/import", content=csv_text, headers={"Content-Type": "text/csv"},
                  params={"dry_run": "true"})
    assert r.status_code == 200 and r.json()["dry_run"] and r.json()["created"] == 2
    assert db.execute("SELECT count(*) FROM devices").fetchone()[0] == 0
    r = acme.post("/vendors/acme/devices/import", content=csv_text, headers={"Content-Type": "text/csv"})
    out = r.json()
    assert (out["rows"], out["created"], out["updated"]) == (7, 2, 0), out
    rejected = {e["row"]: " ".join(e["errors"]) for e in out["rejected"]}
    assert sorted(rejected) == [3, 4, 5, 6, 7]
    assert "ext_id" in rejected[3] and "nope" in rejected[4] and "999999" in rejected[5]
    assert "lon and lat" in rejected[6] and "row 1" in rejected[7]
    placed = db.execute("""SELECT s.channel, s.building_id, ST_X(d.geom) FROM sensors s JOIN devices d
                           ON d.id = s.device_id WHERE d.ext_id = 'ok-1' ORDER BY 1""").fetchall()
    assert placed == [("humidity", building, pytest.approx(121.5005)), ("temperature", building, pytest.approx(121.5005))]
    assert db.execute("SELECT unit, max_value FROM sensors WHERE channel = 'co'").fetchone() == ("ppm", 1000)

    # GeoJSON in CGCS2000, re-imported: updates, not duplicates.
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [121.502, 31.232]},
         "properties": {"ext_id": "ok-2", "name": "moved", "channels": "co:concentration:ppm"}},
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
         "properties": {"ext_id": "line"}}]}
    r = acme.post("/vendors/acme/devices/import", json=fc, params={"crs": "EPSG:4490"},
                  headers={"Content-Type": "application/geo+json"})
    out = r.json()
    assert (out["created"], out["updated"], out["format"]) == (0, 1, "geojson"), out
    assert out["rejected"][0]["row"] == 2 and "Point" in out["rejected"][0]["errors"][0]
    assert db.execute("SELECT name, ST_X(geom) FROM devices WHERE ext_id = 'ok-2'").fetchone() \
        == ("moved", pytest.approx(121.502))
    assert db.execute("SELECT count(*) FROM devices").fetchone()[0] == 2


def test_a_vendor_key_cannot_touch_another_vendors_profiles(acme):
    assert acme.post("/vendors", json={"code": "bravo", "name": "Bravo"}).status_code == 201
    _save(acme, ENV_V1)
    bravo = _vendor_key(acme, "bravo")
    assert acme.get("/vendors/acme/profiles", headers=bravo).status_code == 404
    assert acme.get("/vendors/acme/profiles/acme-env", headers=bravo).status_code == 404
    assert _save(acme, ENV_V1, headers=bravo).status_code == 403
    assert acme.post("/vendors/acme/devices/import", content="ext_id,profile\nx,acme-env\n",
                     headers={"Content-Type": "text/csv", **bravo}).status_code == 403
    assert acme.post("/vendors/acme/dead-letters/replay", json={}, headers=bravo).status_code == 403
    assert acme.post("/vendors/acme/pending-devices/x/onboard", json={}, headers=bravo).status_code == 403
    analyst = acme.post("/api-keys", json={"name": "a", "role": "analyst"}).json()["key"]
    assert acme.get("/vendors/acme/profiles", headers={"X-API-Key": analyst}).status_code == 200
    assert _save(acme, ENV_V1, headers={"X-API-Key": analyst}).status_code == 403


FORMAT_PROFILES = {
    "senml": "name: acme-senml\nformat: senml\ntopic: vendors/acme/senml/{gateway}\n",
    "ultralight": ("name: acme-ul\nformat: ultralight\ntopic: vendors/acme/ul/{device}/attrs\ndevice_id: '{device}'\n"
                   "channels:\n  - {name: t, path: t, quantity: temperature}\n"
                   "  - {name: h, path: h, quantity: humidity}\n"),
    "chirpstack": "name: acme-lora\nformat: chirpstack\ntopic: vendors/acme/application/{app}/device/{eui}/event/up\n",
    "binary": ("name: acme-bin\nformat: binary\ntopic: vendors/acme/bin/{device}\ndevice_id: '{device}'\n"
               "decoder: acme-tx200\nchannels:\n  - {name: t, path: /t, quantity: temperature}\n"),
}


def test_built_in_formats_over_mqtt_onboard_and_store(acme, db, ingest, publisher):
    for doc in FORMAT_PROFILES.values():
        assert _save(acme, doc).status_code == 201
    ingest()
    now = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=3)
    uplink = json.loads(open("../shared/data/lorawan_uplinks_chirpstack.jsonl").readline())
    envelope = dict(uplink["uplink"], time=now.isoformat())
    eui = envelope["deviceInfo"]["devEui"]
    publisher.publish("vendors/acme/senml/gw-1", json.dumps(
        [{"bn": "gw-1:", "bt": now.timestamp(), "n": "temp", "u": "Cel", "v": 21.5},
         {"n": "volt", "u": "V", "v": 3.3, "t": 1}]))
    publisher.publish("vendors/acme/ul/ul-1/attrs", f"{now.isoformat()}|t|25|h|40#t|26")
    publisher.publish(f"vendors/acme/application/app1/device/{eui}/event/up", envelope)
    publisher.publish("vendors/acme/bin/tx-1", b"\x01\x02\x03")
    pending = wait_for(lambda: {p["ext_id"] for p in acme.get("/pending-devices").json()} >= {"gw-1", "ul-1", eui}
                       and acme.get("/pending-devices").json(), timeout=20, message="for pending devices")
    assert {p["ext_id"] for p in pending} == {"gw-1", "ul-1", eui}
    letter = wait_for(lambda: [d for d in acme.get("/dead-letters").json() if d["reason_code"] == "no_decoder"],
                      timeout=20, message="for the binary device's dead letter")
    assert "no decoder for model acme-tx200" in letter[0]["reason"] and letter[0]["vendor"] == "acme"

    for ext_id in ("gw-1", "ul-1", eui):
        r = acme.post(f"/vendors/acme/pending-devices/{ext_id}/onboard", json={})
        assert r.status_code == 201, r.text
        assert r.json()["replay"]["stored"] >= 1, r.json()
    assert _values(db, "gw-1") == {"temp": [21.5], "volt": [3.3]}
    assert _values(db, "ul-1") == {"t": [25.0, 26.0], "h": [40.0]}
    lora = _values(db, eui)
    assert lora["lora_rssi"] == [-35.0] and lora["lora_spreading_factor"] == [7.0] and lora["lora_frame_counter"] == [4.0]
    units = dict(db.execute("SELECT channel, unit FROM sensors WHERE channel IN ('temp', 'volt')").fetchall())
    assert units == {"temp": "°C", "volt": "V"}


def test_ingest_rechecks_ownership_a_payload_cannot_name_another_vendors_device(acme, db, ingest, publisher, register):
    """Even past the broker (here the service account publishes), a message in acme's namespace
    only ever reaches acme's devices: naming bravo's device finds no device of acme's."""
    ids = register("bravo", {"shared-1": ["temperature"]})
    _save(acme, "name: by-id\nformat: json\ntopic: vendors/acme/by-id\ndevice_id: /id\n"
                "channels:\n  - {name: temperature, path: /t, quantity: temperature}\n")
    ingest()
    publisher.publish("vendors/acme/by-id", {"id": "shared-1", "t": 20})
    publisher.publish("cim/v1/acme/shared-1/up", {"readings": [{"channel": "temperature", "value": 21}]})
    pending = wait_for(lambda: [p for p in acme.get("/pending-devices").json() if p["messages"] == 2],
                       timeout=20, message="for acme's pending device")
    assert [(p["vendor"], p["ext_id"]) for p in pending] == [("acme", "shared-1")]
    assert db.execute("SELECT count(*) FROM readings WHERE sensor_id = %s",
                      (ids[("shared-1", "temperature")],)).fetchone()[0] == 0
