"""The HTTP API against a real database, broker and ingest worker."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from .helpers import wait_for

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc)


def _register_via_api(api):
    assert api.post("/vendors", json={"code": "acme", "name": "ACME"}).status_code == 201
    r = api.post("/devices", json={"vendor": "acme", "ext_id": "aq-1", "sensors": [
        {"channel": "co", "quantity": "co_concentration", "unit": "mg/m3", "min_value": 0, "max_value": 100},
        {"channel": "no2", "quantity": "no2_concentration", "unit": "ug/m3"}]})
    assert r.status_code == 201, r.text
    return {s["channel"]: s["id"] for s in r.json()["sensors"]}


def test_publish_then_query_raw_bucketed_and_latest(api, ingest, publisher, db):
    sensors = _register_via_api(api)
    ingest()
    # 3 hours of one reading a minute, with a known pattern.
    for i in range(180):
        publisher.publish("cim/v1/acme/aq-1/up", {"time": (T0 + timedelta(minutes=i)).isoformat(),
                                                  "readings": [{"channel": "co", "value": float(i % 60)},
                                                               {"channel": "no2", "value": 100 + i}]})
    publisher.flush()
    wait_for(lambda: db.execute("SELECT count(*) FROM readings").fetchone()[0] == 360, timeout=20)
    co = sensors["co"]
    window = {"start": T0.isoformat(), "end": (T0 + timedelta(hours=3)).isoformat()}

    raw = api.get(f"/sensors/{co}/readings", params={**window, "limit": 100}).json()
    assert [r["value"] for r in raw["readings"]] == [float(i % 60) for i in range(100)]
    assert raw["unit"] == "mg/m3" and "next" in raw
    page2 = api.get(raw["next"]).json()
    assert [r["value"] for r in page2["readings"]] == [float(i % 60) for i in range(100, 180)]
    assert "next" not in page2

    hourly = api.get(f"/sensors/{co}/readings", params={**window, "bucket": "1h"}).json()["buckets"]
    assert [(b["count"], b["min"], b["max"], b["avg"]) for b in hourly] == [(60, 0.0, 59.0, 29.5)] * 3
    quarter = api.get(f"/sensors/{co}/readings", params={**window, "bucket": "15m"}).json()["buckets"]
    assert len(quarter) == 12 and quarter[1]["min"] == 15.0 and quarter[1]["count"] == 15

    latest = api.get("/readings/latest", params={"vendor": "acme"}).json()
    assert {(x["channel"], x["value"]) for x in latest} == {("co", 59.0), ("no2", 279.0)}
    assert all(x["time"].startswith("2026-11-02T10:59") for x in latest)


def test_clear_4xx_errors(api, db):
    sensors = _register_via_api(api)
    co = sensors["co"]
    cases = [
        (f"/sensors/{co}/readings?bucket=7x", 400, "invalid_bucket"),
        (f"/sensors/{co}/readings?limit=999999999", 400, "limit_too_large"),
        (f"/sensors/{co}/readings?bucket=1m&start=2000-01-01T00:00:00Z", 400, "query_too_large"),
        (f"/sensors/{co}/readings?start=2026-02-01T00:00:00Z&end=2026-01-01T00:00:00Z", 400, "invalid_range"),
        (f"/sensors/{co}/readings?start=yesterday", 422, "invalid_request"),
        ("/sensors/999999/readings", 404, "sensor_not_found"),
        ("/schemas/nope", 404, "not_found"),
    ]
    for path, status, code in cases:
        r = api.get(path)
        assert (r.status_code, r.json()["error"]) == (status, code), (path, r.text)
        assert r.json()["detail"]

    assert api.post("/vendors", json={"code": "acme", "name": "again"}).status_code == 409
    r = api.post("/vendors", json={"code": "Bad Code", "name": "x"})
    assert r.status_code == 422 and "body.code" in r.json()["detail"]
    r = api.post("/devices", json={"vendor": "nobody", "ext_id": "d", "sensors": [
        {"channel": "t", "quantity": "temperature", "unit": "°C"}]})
    assert (r.status_code, r.json()["error"]) == (404, "vendor_not_found")
    r = api.post("/devices", json={"vendor": "acme", "ext_id": "d/1#", "sensors": []})
    assert r.status_code == 422


def test_schema_endpoint_serves_the_canonical_message_schema(api):
    body = api.get("/schemas/canonical-message")
    assert body.headers["content-type"].startswith("application/schema+json")
    schema = body.json()
    assert schema["$schema"].endswith("2020-12/schema")
    assert schema["required"] == ["readings"]
    reading = schema["$defs"]["CanonicalReading"]
    assert reading["additionalProperties"] is False and set(reading["required"]) == {"channel", "value"}
    assert {s["name"] for s in api.get("/schemas").json()["schemas"]} >= {"canonical-message", "device"}


def test_health_reports_database_broker_and_ingest(api, ingest):
    r = wait_for(lambda: (resp := api.get("/health")).status_code == 503 and resp, timeout=10)
    assert r.json()["ingest"]["problems"] == ["no ingest worker is running"]
    assert r.json()["database"]["ok"] and r.json()["broker"]["ok"]
    worker = ingest()
    body = wait_for(lambda: (resp := api.get("/health")).status_code == 200 and resp.json(), timeout=10)
    assert body["status"] == "ok" and body["ingest"]["lag_s"] == 0.0
    assert [w["worker"] for w in body["ingest"]["workers"] if w["state"] == "running"] == worker.client_ids()
    worker.stop()
    body = wait_for(lambda: (resp := api.get("/health")).status_code == 503 and resp.json(), timeout=10)
    mine = [w for w in body["ingest"]["workers"] if w["worker"] == worker.client_ids()[0]]
    assert [w["state"] for w in mine] == ["offline"]
