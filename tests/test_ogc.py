"""OGC API - Features at /ogc, read with httpx, with GDAL 3.6's ogrinfo (Debian gdal-bin) and with pyogrio.

Buildings: © OpenStreetMap contributors (ODbL), see tests/blockdata.py.
"""

from __future__ import annotations

import re
import subprocess
from datetime import datetime, timedelta, timezone

import numpy as np
import pyogrio
import pytest
import shapely
from pyproj import Transformer
from shapely.geometry import box, shape

from cimtwin.geo.crs import wgs84_to_gcj02

from .blockdata import api, server, world  # noqa: F401  (fixtures)
from .blockdata import oapif_url
from .helpers import wait_for

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
GCJ02 = "urn:cimtwin:crs:gcj02"
COLLECTIONS = ["areas", "buildings", "floors", "rooms", "components", "sensors"]
# A box in the middle of the data (CRS84 lon/lat).
BOX = (121.495, 31.235, 121.505, 31.242)


def epsg(code: int) -> str:
    return f"http://www.opengis.net/def/crs/EPSG/0/{code}"


def ogrinfo(*args: str) -> str:
    proc = subprocess.run(["ogrinfo", "-ro", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def feature_count(text: str) -> int:
    return int(re.search(r"Feature Count: (\d+)", text).group(1))


def in_box(world, bounds) -> set[str]:
    frame = world.buildings
    return set(frame.loc[frame.intersects(box(*bounds)), "ext_id"])


def ext_ids(fc: dict) -> set[str]:
    return {f["properties"]["ext_id"] for f in fc["features"]}


def test_landing_page_conformance_api_and_collections(api, world):
    landing = api.get("/ogc")
    assert landing.status_code == 200 and landing.headers["content-type"].startswith("application/json")
    links = {}
    for link in landing.json()["links"]:
        links.setdefault(link["rel"], link)  # the first service-desc is the OpenAPI 3.0 of /ogc
    assert {"self", "service-desc", "service-doc", "conformance", "data"} <= links.keys()
    assert all(link["href"].startswith(api.url) for link in landing.json()["links"])

    conf = api.get(links["conformance"]["href"]).json()["conformsTo"]
    for cls in ("ogcapi-features-1/1.0/conf/core", "ogcapi-features-1/1.0/conf/geojson",
                "ogcapi-features-1/1.0/conf/oas30", "ogcapi-features-2/1.0/conf/crs"):
        assert f"http://www.opengis.net/spec/{cls}" in conf

    oas = api.get(links["service-desc"]["href"])
    assert oas.headers["content-type"].startswith("application/vnd.oai.openapi+json")
    doc = oas.json()
    assert doc["openapi"].startswith("3.0") and doc["servers"][0]["url"] == f"{api.url}/ogc"
    params = doc["paths"]["/collections/components/items"]["get"]["parameters"]
    assert {"name": "kind", "in": "query"}.items() <= next(p for p in params if p.get("name") == "kind").items()
    assert doc["components"]["parameters"]["limit"]["schema"]["maximum"] == 10_000

    body = api.get(links["data"]["href"]).json()
    assert [c["id"] for c in body["collections"]] == COLLECTIONS
    for c in body["collections"]:
        assert c["itemType"] == "feature" and c["storageCrs"] == CRS84
        assert {CRS84, epsg(4326), epsg(4490), epsg(3857), epsg(4513), epsg(4554), GCJ02} <= set(c["crs"])
        items = next(link for link in c["links"] if link["rel"] == "items")
        assert items["type"] == "application/geo+json" and items["href"] == f"{api.url}/ogc/collections/{c['id']}/items"
    buildings = api.get("/ogc/collections/buildings").json()
    assert buildings["extent"]["spatial"]["crs"] == CRS84
    np.testing.assert_allclose(buildings["extent"]["spatial"]["bbox"][0], world.buildings.total_bounds, atol=1e-8)
    sensors = api.get("/ogc/collections/sensors").json()
    assert sensors["extent"]["temporal"]["interval"][0][1].startswith(world.now.strftime("%Y-%m-%d"))
    queryables = api.get("/ogc/collections/buildings/queryables")
    assert queryables.headers["content-type"].startswith("application/schema+json")
    assert queryables.json()["properties"]["height"]["type"] == "number"


def test_items_paging_filters_bbox_and_datetime(api, world):
    r = api.get("/ogc/collections/buildings/items", params={"limit": 150})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/geo+json" and r.headers["content-crs"] == f"<{CRS84}>"
    page = r.json()
    assert (page["numberMatched"], page["numberReturned"]) == (400, 150)
    assert "prev" not in {link["rel"] for link in page["links"]}
    seen = [f["id"] for f in page["features"]]
    pages = 1
    while nxt := next((link["href"] for link in page["links"] if link["rel"] == "next"), None):
        assert nxt.startswith(f"{api.url}/ogc/collections/buildings/items?")
        page = api.get(nxt).json()
        assert "prev" in {link["rel"] for link in page["links"]}
        seen += [f["id"] for f in page["features"]]
        pages += 1
    assert pages == 3 and seen == sorted(world.building_ids.values())
    default = api.get("/ogc/collections/buildings/items").json()
    assert default["numberReturned"] == 100

    hydrants = api.get("/ogc/collections/components/items", params={"kind": "hydrant"}).json()
    assert hydrants["numberMatched"] == 3 and {f["properties"]["kind"] for f in hydrants["features"]} == {"hydrant"}
    tallest = world.buildings["height"].max()
    tall = api.get("/ogc/collections/buildings/items", params={"height": tallest}).json()
    assert ext_ids(tall) == set(world.buildings.loc[world.buildings["height"] == tallest, "ext_id"])
    offline = api.get("/ogc/collections/sensors/items", params={"status": "offline"}).json()
    assert [f["id"] for f in offline["features"]] == [world.sensor_ids["room_temp"]]

    expected = in_box(world, BOX)
    assert 10 < len(expected) < 400
    got = api.get("/ogc/collections/buildings/items", params={"bbox": ",".join(map(str, BOX)), "limit": 400}).json()
    assert ext_ids(got) == expected and got["numberMatched"] == len(expected)
    # The same box as EPSG:4326 (lat/lon axis order), Web Mercator, and GCJ-02 boxes that contain it.
    lat_lon = f"{BOX[1]},{BOX[0]},{BOX[3]},{BOX[2]}"
    got = api.get("/ogc/collections/buildings/items", params={"bbox": lat_lon, "bbox-crs": epsg(4326),
                                                             "limit": 400}).json()
    assert ext_ids(got) == expected
    to_merc = Transformer.from_crs("OGC:CRS84", "EPSG:3857", always_xy=True)
    (x0, x1), (y0, y1) = to_merc.transform([BOX[0], BOX[2]], [BOX[1], BOX[3]])
    got = api.get("/ogc/collections/buildings/items", params={"bbox": f"{x0},{y0},{x1},{y1}", "bbox-crs": epsg(3857),
                                                             "limit": 400}).json()
    assert ext_ids(got) == expected
    gx, gy = wgs84_to_gcj02([BOX[0], BOX[2]], [BOX[1], BOX[3]])
    got = api.get("/ogc/collections/buildings/items", params={"bbox": f"{gx[0]},{gy[0]},{gx[1]},{gy[1]}",
                                                             "bbox-crs": GCJ02, "limit": 400}).json()
    assert expected <= ext_ids(got) and len(ext_ids(got)) <= len(expected) + 5

    hits = api.get("/ogc/collections/buildings/items", params={"bbox": ",".join(map(str, BOX)),
                                                               "resultType": "hits"}).json()
    assert (hits["numberMatched"], hits["features"]) == (len(expected), [])

    hour_ago = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    old = api.get("/ogc/collections/sensors/items", params={"datetime": f"../{hour_ago}"}).json()
    assert [f["id"] for f in old["features"]] == [world.sensor_ids["room_temp"]]
    recent = api.get("/ogc/collections/sensors/items", params={"datetime": f"{hour_ago}/.."}).json()
    assert recent["numberMatched"] == 3


def _coords(feature: dict) -> np.ndarray:
    return shapely.get_coordinates(shape(feature["geometry"]))


def test_crs_output_in_the_axis_order_of_the_crs(api, world):
    fid = world.building_ids[world.buildings.ext_id.iloc[7]]
    base = api.get(f"/ogc/collections/buildings/items/{fid}").json()
    lonlat = _coords(base)
    np.testing.assert_allclose(lonlat, shapely.get_coordinates(world.buildings.geometry.iloc[7]), atol=1e-9)
    for code, geographic in ((4326, True), (4490, True), (3857, False), (4549, False), (4528, False)):
        _check_crs_round_trip(api, fid, lonlat, code, geographic)


def _check_crs_round_trip(api, fid: int, lonlat: np.ndarray, code: int, geographic: bool) -> None:
    r = api.get(f"/ogc/collections/buildings/items/{fid}", params={"crs": epsg(code)})
    assert r.status_code == 200 and r.headers["content-crs"] == f"<{epsg(code)}>"
    got = _coords(r.json())
    # pyproj without always_xy gives the CRS's own axis order: lat/lon for 4326/4490,
    # northing/easting for the CGCS2000 Gauss-Krüger CRSs, easting/northing for 3857.
    a, b = Transformer.from_crs("OGC:CRS84", f"EPSG:{code}").transform(lonlat[:, 0], lonlat[:, 1])
    np.testing.assert_allclose(got, np.column_stack([a, b]), rtol=0, atol=1e-8 if geographic else 1e-3)
    if code in (4326, 4490):
        assert 31 < got[0, 0] < 32 and 121 < got[0, 1] < 122  # latitude first
    if code == 4528:
        assert 40_000_000 < got[0, 1] < 41_000_000  # zone-prefixed easting, second

    # The same through /items, with a bbox in that CRS around the building.
    lo, hi = got.min(axis=0), got.max(axis=0)
    page = api.get("/ogc/collections/buildings/items", params={
        "crs": epsg(code), "bbox-crs": epsg(code), "bbox": f"{lo[0]},{lo[1]},{hi[0]},{hi[1]}", "limit": 50}).json()
    match = next(f for f in page["features"] if f["id"] == fid)
    np.testing.assert_allclose(_coords(match), got, atol=1e-9)


def test_gcj02_output(api, world):
    fid = world.sensor_ids["pressure"]
    r = api.get(f"/ogc/collections/sensors/items/{fid}", params={"crs": "GCJ-02"})
    assert r.status_code == 200 and r.headers["content-crs"] == f"<{GCJ02}>"
    lon, lat = r.json()["geometry"]["coordinates"]
    exp_lon, exp_lat = wgs84_to_gcj02(121.5001, 31.2381)
    assert abs(lon - exp_lon) < 1e-9 and abs(lat - exp_lat) < 1e-9
    assert 0.002 < abs(lon - 121.5001) < 0.01  # the GCJ-02 offset is hundreds of metres here
    page = api.get("/ogc/collections/buildings/items", params={"crs": GCJ02, "limit": 5}).json()
    first = world.buildings.geometry.iloc[0]
    xy = shapely.get_coordinates(first)
    gx, gy = wgs84_to_gcj02(xy[:, 0], xy[:, 1])
    np.testing.assert_allclose(_coords(page["features"][0]), np.column_stack([gx, gy]), atol=1e-9)


def test_sensors_have_a_place_and_a_status(api, world, db):
    def sensors() -> dict:
        fc = api.get("/ogc/collections/sensors/items").json()
        return {f["id"]: f for f in fc["features"]}

    ids = world.sensor_ids
    feats = sensors()
    assert {name: feats[sid]["properties"]["status"] for name, sid in ids.items()} == {
        "pressure": "ok", "smoke": "ok", "room_temp": "offline", "bldg_power": "no_data",
        "device_rssi": "ok", "nowhere": "no_data"}
    assert {name: feats[sid]["properties"]["placed_by"] for name, sid in ids.items()} == {
        "pressure": "component", "smoke": "component", "room_temp": "room", "bldg_power": "building",
        "device_rssi": "device", "nowhere": None}
    assert feats[ids["pressure"]]["geometry"]["coordinates"] == pytest.approx([121.5001, 31.2381], abs=1e-12)
    assert feats[ids["device_rssi"]]["geometry"]["coordinates"] == pytest.approx([121.5031, 31.2391], abs=1e-12)
    assert feats[ids["nowhere"]]["geometry"] is None
    room_pt = db.execute("SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_PointOnSurface(geom) p FROM rooms "
                         "WHERE id = %s) x", (world.room_ids["G-02"],)).fetchone()
    assert feats[ids["room_temp"]]["geometry"]["coordinates"] == pytest.approx(list(room_pt), abs=1e-9)
    props = feats[ids["pressure"]]["properties"]
    assert (props["vendor"], props["device"], props["channel"], props["unit"], props["value"]) == \
        ("acme", "gw-1", "p1", "MPa", 0.31)
    assert datetime.fromisoformat(props["time"]) > world.now - timedelta(minutes=2)

    # The default offline threshold is 900 s; no_data becomes ok with a first reading.
    now = datetime.now(timezone.utc)
    db.execute("UPDATE latest SET time = %s WHERE sensor_id = %s", (now - timedelta(minutes=14), ids["pressure"]))
    db.execute("UPDATE latest SET time = %s WHERE sensor_id = %s", (now - timedelta(minutes=16), ids["smoke"]))
    db.execute("INSERT INTO latest VALUES (%s, %s, 4.2, %s)", (ids["bldg_power"], now, now))
    feats = sensors()
    assert [feats[ids[n]]["properties"]["status"] for n in ("pressure", "smoke", "bldg_power")] == \
        ["ok", "offline", "ok"]


def test_sensor_status_follows_its_alerts(api, world, db, ingest, publisher):
    """A critical alert raised from a published reading: the sensor is 'alarm' (and found by
    ?status=alarm) while the alert is unfinished, 'ok' again once it is closed."""
    def status_of(name: str) -> str:
        r = api.get(f"/ogc/collections/sensors/items/{world.sensor_ids[name]}")
        assert r.status_code == 200, r.text
        return r.json()["properties"]["status"]

    queryables = api.get("/ogc/collections/sensors/queryables").json()
    assert queryables["properties"]["status"]["enum"] == ["alarm", "warning", "offline", "no_data", "ok"]
    r = api.get("/ogc/collections/sensors/items", params={"status": "alarmed"})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_filter") and "alarm, warning" in r.json()["detail"]

    pressure = world.sensor_ids["pressure"]
    r = api.post("/rules", json={"name": "hydrant pressure high", "kind": "threshold", "severity": "critical",
                                 "scope": {"sensor_id": pressure}, "condition": {"op": ">", "value": 1.0}})
    assert r.status_code == 201, r.text
    ingest()
    publisher.publish("cim/v1/acme/gw-1/up", {"time": datetime.now(timezone.utc).isoformat(),
                                              "readings": [{"channel": "p1", "value": 1.9}]})
    alert_id = wait_for(lambda: db.execute("SELECT id FROM alerts WHERE sensor_id = %s AND status = 'open'",
                                           (pressure,)).fetchone(), timeout=30, message="for the alert")[0]
    assert status_of("pressure") == "alarm"
    alarmed = api.get("/ogc/collections/sensors/items", params={"status": "alarm"}).json()
    assert [f["id"] for f in alarmed["features"]] == [pressure] and alarmed["numberMatched"] == 1
    party = api.post("/parties", json={"code": "water-co", "name": "Water Co", "kind": "enterprise"}).json()["id"]
    assert api.post(f"/alerts/{alert_id}/dispatch", json={"party_id": party}).status_code == 200
    assert status_of("pressure") == "alarm"  # dispatched is unfinished
    assert api.post(f"/alerts/{alert_id}/resolve", json={}).status_code == 200
    assert api.post(f"/alerts/{alert_id}/close", json={}).status_code == 200
    assert status_of("pressure") == "ok"
    assert api.get("/ogc/collections/sensors/items", params={"status": "alarm"}).json()["numberMatched"] == 0


ERROR_CASES = [
    ("/ogc/collections/buildings/items", {"crs": "EPSG:99999"}, 400, "unknown_crs", "EPSG:99999"),
    ("/ogc/collections/buildings/items", {"crs": epsg(32651)}, 400, "unknown_crs", epsg(32651)),
    ("/ogc/collections/buildings/items/1", {"crs": "urn:nope"}, 400, "unknown_crs", "urn:nope"),
    ("/ogc/collections/buildings/items", {"bbox": "1,2,3,4", "bbox-crs": "EPSG:0"}, 400, "unknown_crs", "EPSG:0"),
    ("/ogc/collections/buildings/items", {"limit": "10001"}, 400, "limit_too_large", "10000"),
    ("/ogc/collections/buildings/items", {"limit": "0"}, 400, "invalid_parameter", "limit"),
    ("/ogc/collections/buildings/items", {"limit": "many"}, 400, "invalid_parameter", "limit"),
    ("/ogc/collections/buildings/items", {"offset": "-5"}, 400, "invalid_parameter", "offset"),
    ("/ogc/collections/buildings/items", {"bbox": "-180,-90,180,90"}, 400, "bbox_too_large", "bbox"),
    ("/ogc/collections/buildings/items", {"bbox": "-2e7,-2e7,2e7,2e7", "bbox-crs": epsg(3857)}, 400,
     "bbox_too_large", "bbox"),
    ("/ogc/collections/buildings/items", {"bbox": "100,20,110,30"}, 400, "bbox_too_large", "km²"),
    ("/ogc/collections/buildings/items", {"bbox": "1e15,1e15,1e16,1e16", "bbox-crs": epsg(4549)}, 400,
     "invalid_bbox", "EPSG:4549"),
    ("/ogc/collections/buildings/items", {"bbox": "121.5,31.2,121.4,31.3"}, 400, "invalid_bbox", "lower corner"),
    ("/ogc/collections/buildings/items", {"bbox": "1,2,3"}, 400, "invalid_bbox", "1,2,3"),
    ("/ogc/collections/buildings/items", {"bbox": "0,95,1,96"}, 400, "invalid_bbox", "latitude"),
    ("/ogc/collections/buildings/items", {"colour": "red"}, 400, "unknown_parameter", "colour"),
    ("/ogc/collections/buildings/items", {"height": "tall"}, 400, "invalid_filter", "height"),
    ("/ogc/collections/buildings/items", {"datetime": "2026-01-01T00:00:00Z"}, 400, "invalid_parameter",
     "datetime"),
    ("/ogc/collections/sensors/items", {"datetime": "yesterday"}, 400, "invalid_datetime", "yesterday"),
    ("/ogc/collections/buildings/items", {"f": "html"}, 400, "invalid_parameter", "html"),
    ("/ogc/collections/roads/items", {}, 404, "collection_not_found", "roads"),
    ("/ogc/collections/roads", {}, 404, "collection_not_found", "roads"),
    ("/ogc/collections/buildings/items/99999999", {}, 404, "feature_not_found", "99999999"),
    ("/ogc/collections/buildings/items/abc", {}, 404, "feature_not_found", "abc"),
]


def test_errors_are_clear_4xx(api, world):
    for path, params, status, code, names in ERROR_CASES:
        r = api.get(path, params=params)
        assert (r.status_code, r.json().get("error")) == (status, code), (path, params, r.text[:300])
        assert names in r.json()["detail"], (path, params, r.text)


def test_gdal_36_ogrinfo_reads_the_collections(api, world):
    url = oapif_url(api)
    listing = ogrinfo("-so", url)
    for i, name in enumerate(COLLECTIONS, start=1):
        assert re.search(rf"^{i}: {name} \(title: ", listing, re.M), listing

    summary = ogrinfo("-al", "-so", url, "buildings")
    assert feature_count(summary) == 400
    w, s, e, n = world.buildings.total_bounds
    assert f"Extent: ({w:.6f}, {s:.6f}) - ({e:.6f}, {n:.6f})" in summary
    assert re.search(r"^height: Real", summary, re.M) and re.search(r"^updated_at: DateTime", summary, re.M)

    # Filters go to the server: ?kind=hydrant from -where, bbox= from -spat (counted with resultType=hits).
    assert feature_count(ogrinfo("-al", "-so", url, "components", "-where", "kind = 'hydrant'")) == 3
    assert feature_count(ogrinfo("-al", "-so", url, "buildings", "-spat", *map(str, BOX))) == len(in_box(world, BOX))

    # A full read follows the next links page by page.
    full = ogrinfo("-al", "-q", "-oo", "PAGE_SIZE=150", url, "buildings")
    assert len(re.findall(r"^OGRFeature\(buildings\):(\d+)$", full, re.M)) == 400
    sensors = ogrinfo("-al", "-q", "-oo", "PAGE_SIZE=2", url, "sensors")
    fids = [int(x) for x in re.findall(r"^OGRFeature\(sensors\):(\d+)$", sensors, re.M)]
    assert fids == sorted(world.sensor_ids.values())
    assert "POINT (121.5001 31.2381)" in sensors
    assert sorted(re.findall(r"status \(String\) = (\w+)", sensors)) == \
        ["no_data", "no_data", "offline", "ok", "ok", "ok"]


def test_pyogrio_reads_in_crs84_and_in_other_crs(api, world):
    url = oapif_url(api)
    assert [name for name, _ in pyogrio.list_layers(url)] == COLLECTIONS
    frame = pyogrio.read_dataframe(url, layer="buildings")
    assert len(frame) == 400 and frame.crs.equals("OGC:CRS84")
    source = world.buildings.set_index("ext_id").loc[frame["ext_id"]]
    np.testing.assert_allclose(shapely.get_coordinates(frame.geometry.values),
                               shapely.get_coordinates(source.geometry.values), atol=1e-9)
    # GDAL ≥ 3.7 asks for crs= (Part 2) and reads the CRS's axis order back into x/y.
    for code, tolerance in ((4490, 1e-8), (3857, 1e-3), (4549, 1e-3)):
        other = pyogrio.read_dataframe(url, layer="buildings", CRS=f"EPSG:{code}")
        assert len(other) == 400 and other.crs.to_epsg() == code
        expected = source.to_crs(epsg=code)
        np.testing.assert_allclose(shapely.get_coordinates(other.geometry.values),
                                   shapely.get_coordinates(expected.geometry.values), rtol=0, atol=tolerance)
