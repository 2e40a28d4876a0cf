"""Vector tiles (/tiles) decoded with mapbox-vector-tile and with GDAL's MVT driver; TileJSON; caching.

Buildings: © OpenStreetMap contributors (ODbL), see tests/blockdata.py.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from datetime import datetime, timezone

import mapbox_vector_tile
import psycopg
import pytest
from pyproj import Transformer
from shapely import wkt as shapely_wkt
from shapely.geometry import box

from .blockdata import api, server, world  # noqa: F401  (fixtures)
from .helpers import ApiServer, wait_for

WORLD = 20037508.342789244
CENTRE = (121.5005, 31.2375)  # Lujiazui, inside the seeded data


def tile_at(lon: float, lat: float, z: int) -> tuple[int, int, int]:
    n = 2 ** z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return z, x, y


def envelope(z: int, x: int, y: int, margin: float = 0.0) -> tuple[float, float, float, float]:
    size = 2 * WORLD / 2 ** z
    minx, maxy = -WORLD + x * size, WORLD - y * size
    return minx - margin * size, maxy - size - margin * size, minx + size + margin * size, maxy + margin * size


def decode(content: bytes) -> dict:
    return mapbox_vector_tile.decode(content)


def ids_in(world, bounds_3857) -> set[int]:
    merc = world.buildings.to_crs(3857)
    hit = merc.loc[merc.intersects(box(*bounds_3857)), "ext_id"]
    return {world.building_ids[e] for e in hit}


def test_layers_and_tilejson(api, world):
    layers = api.get("/tiles").json()["layers"]
    assert [layer["id"] for layer in layers] == ["areas", "buildings", "components", "sensors"]
    for layer in layers:
        tj = api.get(f"/tiles/{layer['id']}.json")
        assert tj.status_code == 200
        doc = tj.json()
        assert doc["tilejson"] == "3.0.0" and doc["scheme"] == "xyz"
        assert doc["tiles"] == [f"{api.url}/tiles/{layer['id']}/{{z}}/{{x}}/{{y}}.mvt"]
        assert 0 <= doc["minzoom"] <= doc["maxzoom"] == 22
        assert doc["vector_layers"][0]["id"] == layer["id"]
        z, x, y = tile_at(*CENTRE, max(doc["minzoom"], 14))
        assert api.get(doc["tiles"][0].format(z=z, x=x, y=y).removeprefix(api.url)).status_code == 200
    buildings = api.get("/tiles/buildings.json").json()
    assert buildings["bounds"] == pytest.approx(list(world.buildings.total_bounds), abs=1e-8)
    assert {"height": "Number", "min_height": "Number", "render_height": "Number"}.items() <= \
        buildings["vector_layers"][0]["fields"].items()
    assert buildings["vector_layers"][0]["fields"]["name"] == "String"
    assert api.get("/tiles/sensors.json").json()["vector_layers"][0]["fields"]["status"] == "String"
    r = api.get("/tiles/roads.json")
    assert (r.status_code, r.json()["error"]) == (404, "layer_not_found")


def test_building_tile_decodes_with_mapbox_vector_tile_and_gdal(api, world, tmp_path):
    z, x, y = tile_at(*CENTRE, 15)
    r = api.get(f"/tiles/buildings/{z}/{x}/{y}.mvt")
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    layer = decode(r.content)["buildings"]
    assert layer["extent"] == 4096
    got = {f["id"] for f in layer["features"]}
    # Everything that touches the tile is in it; nothing beyond the 64/4096 buffer is.
    inside, buffered = ids_in(world, envelope(z, x, y)), ids_in(world, envelope(z, x, y, 64 / 4096))
    assert len(inside) > 20 and inside <= got <= buffered
    frame = world.buildings.set_index("ext_id")
    by_id = {world.building_ids[e]: e for e in frame.index}
    tall = [f for f in layer["features"] if frame.loc[by_id[f["id"]], "height"] > 0]
    assert tall
    for f in tall:
        assert f["properties"]["height"] == pytest.approx(frame.loc[by_id[f["id"]], "height"])
        assert f["properties"]["render_height"] == f["properties"]["height"]
        min_height = frame.loc[by_id[f["id"]], "min_height"]
        assert f["properties"]["min_height"] == pytest.approx(0.0 if min_height != min_height else min_height)
    assert all(f["properties"]["render_height"] == 10.0 for f in layer["features"] if f["id"] not in
               {t["id"] for t in tall})

    # GDAL's MVT driver georeferences a single tile from its z/x/y path.
    path = tmp_path / str(z) / str(x) / f"{y}.mvt"
    path.parent.mkdir(parents=True)
    path.write_bytes(r.content)
    out = subprocess.run(["ogrinfo", "-ro", "-al", "-so", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "Layer name: buildings" in out.stdout
    assert int(re.search(r"Feature Count: (\d+)", out.stdout).group(1)) == len(layer["features"])
    ext = [float(v) for v in re.search(r"Extent: \(([-\d.]+), ([-\d.]+)\) - \(([-\d.]+), ([-\d.]+)\)",
                                       out.stdout).groups()]
    minx, miny, maxx, maxy = envelope(z, x, y)
    assert minx - 1 <= ext[0] < ext[2] <= maxx + 1 and miny - 1 <= ext[1] < ext[3] <= maxy + 1
    # ... and the coordinates agree with the source footprints.
    fid, ext_id = next((fid, e) for fid, e in by_id.items() if fid in inside and frame.loc[e].geometry.within(
        box(*Transformer.from_crs(3857, 4326, always_xy=True).transform_bounds(*envelope(z, x, y)))))
    one = subprocess.run(["ogrinfo", "-ro", "-al", "-where", f"mvt_id = {fid}", str(path)], capture_output=True,
                         text=True, timeout=30).stdout
    wkt = re.search(r"((?:MULTI)?POLYGON \(.*\))", one).group(1)
    source = world.buildings.set_index("ext_id").to_crs(3857).loc[ext_id].geometry
    tile_geom = shapely_wkt.loads(wkt)
    pixel = (maxx - minx) / 4096
    assert tile_geom.symmetric_difference(source).area < source.length * pixel  # within a pixel along the outline


def test_static_tile_etag_304_and_change(api, world, db):
    z, x, y = tile_at(*CENTRE, 15)
    url = f"/tiles/buildings/{z}/{x}/{y}.mvt"
    first = api.get(url)
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "public, max-age=60" and re.fullmatch(r'"[0-9a-f]{32}"', etag)
    again = api.get(url, headers={"If-None-Match": etag})
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
    assert again.headers["cache-control"] == "public, max-age=60"

    # A change elsewhere leaves the tile's ETag alone; a change under the tile does not.
    minx, miny, maxx, maxy = envelope(z, x, y, 0.05)
    far = db.execute("SELECT id FROM buildings WHERE NOT ST_Intersects(geom, ST_Transform("
                     "ST_MakeEnvelope(%s, %s, %s, %s, 3857), 4326)) LIMIT 1", (minx, miny, maxx, maxy)).fetchone()[0]
    db.execute("UPDATE buildings SET height = 99 WHERE id = %s", (far,))
    assert api.get(url, headers={"If-None-Match": etag}).status_code == 304

    target = next(f for f in decode(first.content)["buildings"]["features"] if "height" in f["properties"])
    db.execute("UPDATE buildings SET height = 123.5 WHERE id = %s", (target["id"],))
    changed = api.get(url, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    feats = {f["id"]: f for f in decode(changed.content)["buildings"]["features"]}
    assert feats[target["id"]]["properties"]["height"] == 123.5

    db.execute("DELETE FROM buildings WHERE id = %s", (target["id"],))
    gone = api.get(url, headers={"If-None-Match": changed.headers["etag"]})
    assert gone.status_code == 200
    assert target["id"] not in {f["id"] for f in decode(gone.content)["buildings"]["features"]}


def _statuses(response) -> dict[int, str]:
    return {f["id"]: f["properties"]["status"] for f in decode(response.content)["sensors"]["features"]}


def test_sensor_tile_is_never_served_stale(api, world, db, tmp_path):
    ids = world.sensor_ids
    z, x, y = tile_at(*CENTRE, 14)
    url = f"/tiles/sensors/{z}/{x}/{y}.mvt"
    first = api.get(url)
    assert first.status_code == 200 and first.headers["cache-control"] == "no-cache"
    assert _statuses(first) == {ids["pressure"]: "ok", ids["smoke"]: "ok", ids["room_temp"]: "offline",
                                ids["bldg_power"]: "no_data", ids["device_rssi"]: "ok"}
    etag = first.headers["etag"]
    assert api.get(url, headers={"If-None-Match": etag}).status_code == 304

    # The hydrant's pressure sensor stops reporting: the next request sees it offline.
    db.execute("UPDATE latest SET time = now() - interval '1 hour' WHERE sensor_id = %s", (ids["pressure"],))
    second = api.get(url, headers={"If-None-Match": etag})
    assert second.status_code == 200 and second.headers["etag"] != etag
    assert _statuses(second)[ids["pressure"]] == "offline"
    # A first reading turns no_data into ok.
    db.execute("INSERT INTO latest VALUES (%s, now(), 5.5, now())", (ids["bldg_power"],))
    third = api.get(url, headers={"If-None-Match": second.headers["etag"]})
    assert third.status_code == 200 and _statuses(third)[ids["bldg_power"]] == "ok"
    values = {f["id"]: f["properties"].get("value") for f in decode(third.content)["sensors"]["features"]}
    assert values[ids["bldg_power"]] == 5.5

    # GDAL reads the same statuses.
    path = tmp_path / str(z) / str(x) / f"{y}.mvt"
    path.parent.mkdir(parents=True)
    path.write_bytes(third.content)
    out = subprocess.run(["ogrinfo", "-ro", "-al", str(path)], capture_output=True, text=True, timeout=30)
    assert sorted(re.findall(r"status \(String\) = (\w+)", out.stdout)) == ["offline", "offline", "ok", "ok", "ok"]


def test_sensor_goes_offline_with_time_alone(settings, world):
    """No row changes, only the clock: the tile must still not be served stale."""
    threshold = 3.0
    server = ApiServer(settings.model_copy(update={"sensor_offline_after_s": threshold}))
    server.start()
    try:
        url = "/tiles/sensors/{}/{}/{}.mvt".format(*tile_at(*CENTRE, 14))
        pressure = world.sensor_ids["pressure"]
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute("UPDATE latest SET time = now() WHERE sensor_id = %s", (pressure,))
        reported = time.monotonic()
        first = server.get(url)
        assert time.monotonic() - reported < threshold, "too slow to see the fresh state"
        assert _statuses(first)[pressure] == "ok"
        time.sleep(max(0.0, reported + threshold + 0.3 - time.monotonic()))
        later = server.get(url, headers={"If-None-Match": first.headers["etag"]})
        assert later.status_code == 200 and _statuses(later)[pressure] == "offline"
        assert later.headers["etag"] != first.headers["etag"]
    finally:
        server.stop()


def _open_alerts(db, n: int) -> dict[int, int] | None:
    """{sensor_id: alert_id} of the open alerts, once there are ``n``."""
    rows = dict(db.execute("SELECT sensor_id, id FROM alerts WHERE status = 'open'").fetchall())
    return rows if len(rows) == n else None


def test_sensor_tile_shows_alerts_and_is_not_served_stale_after_them(api, world, db, ingest, publisher):
    """An alert raised by the engine from a published reading makes its sensor 'alarm' (major) or
    'warning' (info) in the next tile, whatever the client's ETag; resolving it makes it 'ok' again."""
    ids = world.sensor_ids
    url = "/tiles/sensors/{}/{}/{}.mvt".format(*tile_at(*CENTRE, 14))
    first = api.get(url)
    assert (_statuses(first)[ids["pressure"]], _statuses(first)[ids["smoke"]]) == ("ok", "ok")
    for name, severity in (("pressure", "major"), ("smoke", "info")):
        r = api.post("/rules", json={"name": f"{name} high", "kind": "threshold", "severity": severity,
                                     "scope": {"sensor_id": ids[name]}, "condition": {"op": ">", "value": 1.0}})
        assert r.status_code == 201, r.text
    ingest()
    publisher.publish("cim/v1/acme/gw-1/up", {"time": datetime.now(timezone.utc).isoformat(),
                                              "readings": [{"channel": "p1", "value": 1.6},
                                                           {"channel": "smoke", "value": 2.5}]})
    alerts = wait_for(lambda: _open_alerts(db, 2), timeout=30, message="for both alerts")
    assert alerts.keys() == {ids["pressure"], ids["smoke"]}

    second = api.get(url, headers={"If-None-Match": first.headers["etag"]})
    assert second.status_code == 200 and second.headers["etag"] != first.headers["etag"]
    assert (_statuses(second)[ids["pressure"]], _statuses(second)[ids["smoke"]]) == ("alarm", "warning")
    assert api.get(url, headers={"If-None-Match": second.headers["etag"]}).status_code == 304

    # An acknowledged alert is unfinished: still alarm. Resolved, the sensor is ok again (its
    # reading is fresh); so is the other one when its alert is closed.
    assert api.post(f"/alerts/{alerts[ids['pressure']]}/acknowledge", json={}).status_code == 200
    assert _statuses(api.get(url))[ids["pressure"]] == "alarm"
    assert api.post(f"/alerts/{alerts[ids['pressure']]}/resolve", json={"note": "valve fixed"}).status_code == 200
    third = api.get(url, headers={"If-None-Match": second.headers["etag"]})
    assert third.status_code == 200
    assert (_statuses(third)[ids["pressure"]], _statuses(third)[ids["smoke"]]) == ("ok", "warning")
    assert api.post(f"/alerts/{alerts[ids['smoke']]}/resolve", json={}).status_code == 200
    assert api.post(f"/alerts/{alerts[ids['smoke']]}/close", json={}).status_code == 200
    fourth = api.get(url, headers={"If-None-Match": third.headers["etag"]})
    assert fourth.status_code == 200 and _statuses(fourth)[ids["smoke"]] == "ok"


def test_tile_errors_empty_tiles_and_minzoom(api, world):
    for path, status, code, names in (
        ("/tiles/buildings/15/32768/0.mvt", 400, "tile_out_of_range", "15/32768/0"),
        ("/tiles/buildings/15/0/40000.mvt", 400, "tile_out_of_range", "15/0/40000"),
        ("/tiles/buildings/-1/0/0.mvt", 400, "tile_out_of_range", "-1"),
        ("/tiles/buildings/23/0/0.mvt", 400, "tile_out_of_range", "23"),
        ("/tiles/roads/14/0/0.mvt", 404, "layer_not_found", "roads"),
    ):
        r = api.get(path)
        assert (r.status_code, r.json()["error"]) == (status, code), r.text
        assert names in r.json()["detail"]
    assert api.get("/tiles/buildings/a/b/c.mvt").status_code == 422

    # Nothing there (the South Atlantic): 204 with the cache headers; so is a zoom below minzoom.
    empty = api.get("/tiles/buildings/15/16384/16384.mvt")
    assert (empty.status_code, empty.content) == (204, b"") and empty.headers["cache-control"] == "public, max-age=60"
    assert api.get("/tiles/buildings/15/16384/16384.mvt",
                   headers={"If-None-Match": empty.headers["etag"]}).status_code == 304
    low = api.get("/tiles/buildings/{}/{}/{}.mvt".format(*tile_at(*CENTRE, 8)))
    assert low.status_code == 204 and "etag" in low.headers
    areas = decode(api.get("/tiles/areas/{}/{}/{}.mvt".format(*tile_at(*CENTRE, 8))).content)["areas"]
    assert sorted(f["properties"]["code"] for f in areas["features"]) == ["310101", "310115", "310115-ljz"]
    # At zoom 0 the areas are specks; what is left of them is still a valid tile.
    assert api.get("/tiles/areas/0/0/0.mvt").status_code in (200, 204)
