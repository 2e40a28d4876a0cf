"""The real stack the console tests drive, and Debian's Chromium through Playwright.

One stack per module: the demo district (1,450 OSM buildings around Lujiazui, as `cimtwin up`
loads it), the KIT "FZK-Haus" IFC model (credit: KIT IAI) imported as the floors and rooms of a
building placed among them, a device whose sensor sits in one of its rooms, a threshold rule
on that sensor, an operator key, a real ingest worker and a real `cimtwin serve`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import shapely
from shapely.geometry import mapping

from cimtwin.demo_district import load_demo_district
from cimtwin.geo.ifc import read_ifc_interior
from cimtwin.settings import REPO_ROOT, Settings
from cimtwin.twin.ifc_import import import_ifc

from .helpers import ApiServer, IngestProcess, clear_mqtt_session

CHROMIUM = Path("/usr/bin/chromium")
# What makes WebGL (MapLibre) draw in headless Chromium without a GPU: ANGLE on SwiftShader.
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
DIST = REPO_ROOT / "web" / "dist"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "console"

FZK = Path(__file__).resolve().parents[2] / "shared" / "data" / "AC20-FZK-Haus.ifc"
if not FZK.exists():
    FZK = Path("/work/shared/data/AC20-FZK-Haus.ifc")
FZK_ANCHOR = (121.5060, 31.2360)  # an open spot in Lujiazui, 40 m from the nearest OSM building
VENDOR, DEVICE, CHANNEL = "kit", "fzk-co-1", "co"
ROOM_WITH_SENSOR = "Wohnen"
THRESHOLD = 50.0


@dataclass
class Stack:
    settings: Settings
    api: ApiServer
    ingest: IngestProcess
    operator_key: str
    building_id: int
    building_name: str
    room_id: int
    sensor_id: int
    rule_id: int


def chromium_or_fail() -> None:
    """The browser tests never skip quietly: without Chromium or a built console they fail and say why."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the console tests drive Debian's chromium; "
                    "run ./deploy/bootstrap.sh --test (it installs it)", pytrace=False)
    if not (DIST / "index.html").exists():
        pytest.fail(f"{DIST}/index.html is missing: build the console with ./deploy/bootstrap.sh "
                    "(or: cd web && npm ci && npm run build)", pytrace=False)


def _created(r: httpx.Response) -> dict:
    assert r.status_code == 201, r.text
    return r.json()


def _empty_database(database_url: str) -> None:
    from .conftest import DATA_TABLES

    with psycopg.connect(database_url, autocommit=True) as conn:
        tables = [t for t in DATA_TABLES
                  if conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", (t,)).fetchone()
                  in (("r",), ("p",))]
        conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


def seed(settings: Settings, api: ApiServer) -> dict:
    """The district, the FZK-Haus with its interior, the sensor in a room, the rule and an operator key."""
    report = load_demo_district(settings)
    assert report.skipped is None, report.skipped
    interior = read_ifc_interior(FZK, anchor=FZK_ANCHOR)
    rooms_ll = interior.to_lonlat([s.local for s in interior.spaces])
    footprint = shapely.union_all(rooms_ll).envelope.buffer(0.00001, join_style="mitre")
    building = _created(api.post("/buildings", json={"ext_id": "fzk-haus", "name": "FZK-Haus", "height": 8,
                                                     "geometry": mapping(footprint)}))
    ifc = import_ifc(settings.database_url, FZK, building="fzk-haus", anchor=FZK_ANCHOR)
    assert ifc.rooms == 7 and not ifc.rejected and not ifc.outside, ifc

    tree = api.get(f"/twin/buildings/{building['id']}").json()
    room = next(r for f in tree["floors"] for r in f["rooms"] if r["name"] == ROOM_WITH_SENSOR)
    _created(api.post("/vendors", json={"code": VENDOR, "name": "KIT demo"}))
    device = _created(api.post("/devices", json={"vendor": VENDOR, "ext_id": DEVICE, "sensors": [
        {"channel": CHANNEL, "quantity": "co", "unit": "ppm"}]}))
    sensor_id = device["sensors"][0]["id"]
    r = api.client.put(f"/sensors/{sensor_id}/place", json={"room_id": room["id"]})
    assert r.status_code == 200, r.text
    rule = _created(api.post("/rules", json={
        "name": "CO above 50 ppm in the FZK-Haus", "kind": "threshold", "severity": "critical",
        "condition": {"op": ">", "value": THRESHOLD, "clear_value": 30.0, "hold_s": 0},
        "scope": {"sensor_id": sensor_id}, "ack_sla_s": 600, "close_sla_s": 3600}))
    key = _created(api.post("/api-keys", json={"name": "console test desk", "role": "operator"}))["key"]
    return {"building": building, "room": room, "sensor_id": sensor_id, "rule_id": rule["id"], "key": key}


def start_stack(base_settings: Settings, database_url: str):
    """Yields a seeded Stack; stops the API and the worker afterwards."""
    settings = base_settings.model_copy(update={
        "database_url": database_url, "ingest_client_id": f"console-{uuid.uuid4().hex[:10]}",
        "ingest_session_expiry_s": 600, "ingest_status_interval_s": 0.5})
    _empty_database(database_url)
    for old in [*ARTIFACTS.glob("*.png"), *ARTIFACTS.glob("*.json")]:  # this run's artifacts only
        old.unlink()
    api, ingest = ApiServer(settings), IngestProcess(settings)
    try:
        api.start()
        seeded = seed(settings, api)
        ingest.start()
        yield Stack(settings=settings, api=api, ingest=ingest, operator_key=seeded["key"],
                    building_id=seeded["building"]["id"], building_name=seeded["building"]["properties"]["name"],
                    room_id=seeded["room"]["id"], sensor_id=seeded["sensor_id"], rule_id=seeded["rule_id"])
    finally:
        ingest.stop()
        for client_id in ingest.client_ids():
            clear_mqtt_session(settings, client_id)
        api.stop()


def latest_value(api: ApiServer, sensor_id: int):
    rows = api.get("/readings/latest").json()
    return next((r["value"] for r in rows if r["sensor_id"] == sensor_id), None)

