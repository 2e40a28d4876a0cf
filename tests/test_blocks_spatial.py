"""Spatial queries against the real demo district (1,450 OSM buildings, © OpenStreetMap contributors,
ODbL; illustrative areas and components), each answer checked against shapely/pyproj on the same data."""

from __future__ import annotations

import json
import time

import geopandas as gpd
import numpy as np
import psycopg
import pyproj
import pytest
import shapely

from cimtwin.demo_district import load_demo_district
from cimtwin.geo.crs import gcj02_to_wgs84, wgs84_to_gcj02

from .blocks_data import DEMO_AREAS, DEMO_COMPONENTS, geodesic_distance_m, shanghai
from .helpers import ApiServer

# Near the Oriental Pearl Tower / Lujiazui ring; and a polygon over the Lujiazui core.
POINT = shapely.Point(121.4995, 31.2405)
LUJIAZUI = shapely.Polygon([(121.4980, 31.2350), (121.5060, 31.2335), (121.5085, 31.2390),
                            (121.5040, 31.2440), (121.4995, 31.2430), (121.4970, 31.2395)])


@pytest.fixture(scope="module")
def district(base_settings, database_url):
    """The demo district loaded once for this module (bulk, as `cimtwin demo` does)."""
    settings = base_settings.model_copy(update={"database_url": database_url, "api_max_geometry_vertices": 500})
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE party_assignments, parties, components, rooms, floors, buildings, areas, latest, "
                     "sensors, devices, vendors RESTART IDENTITY CASCADE")
    load_demo_district(settings)
    return settings


@pytest.fixture(scope="module")
def server(district):
    api = ApiServer(district)
    api.start()
    yield api
    api.stop()


def fetch_all(server, path: str, params: dict) -> tuple[list[dict], int]:
    """Every feature, following the next links; checks the paging bookkeeping on the way."""
    features, url, matched = [], path, None
    body = server.get(url, params=params).json()
    while True:
        assert body["type"] == "FeatureCollection", body
        matched = body["numberMatched"] if matched is None else matched
        assert body["numberMatched"] == matched and body["numberReturned"] == len(body["features"])
        features += body["features"]
        nxt = [link["href"] for link in body["links"] if link["rel"] == "next"]
        if not nxt:
            break
        body = server.get(nxt[0]).json()
    assert len(features) == matched
    return features, matched


def ext_ids(features) -> set[str]:
    return {f["properties"]["ext_id"] for f in features}


@pytest.fixture(scope="module")
def buildings():
    return shanghai()


@pytest.fixture(scope="module")
def components():
    frame = gpd.read_file(DEMO_COMPONENTS)
    return frame


def test_within_a_polygon_matches_shapely(server, buildings, components):
    params = {"geom": LUJIAZUI.wkt, "limit": 40}
    got, matched = fetch_all(server, "/spatial/buildings", params)
    expected = set(buildings["ext_id"][buildings.intersects(LUJIAZUI)])
    assert ext_ids(got) == expected and matched == len(expected) > 40
    assert len({f["id"] for f in got}) == matched  # pages neither overlap nor skip

    within, _ = fetch_all(server, "/spatial/buildings", {**params, "relation": "within"})
    assert ext_ids(within) == set(buildings["ext_id"][buildings.covered_by(LUJIAZUI)])
    assert len(within) < len(got)

    comps, _ = fetch_all(server, "/spatial/components", {"geom": json.dumps(shapely.geometry.mapping(LUJIAZUI))})
    assert ext_ids(comps) == set(components["ext_id"][components.intersects(LUJIAZUI)]) != set()

    hydrants, _ = fetch_all(server, "/components", {"geom": LUJIAZUI.wkt, "kind": "hydrant"})
    assert ext_ids(hydrants) == set(components["ext_id"][components.intersects(LUJIAZUI)
                                                         & (components["kind"] == "hydrant")])


def test_bbox_in_web_mercator_and_gauss_kruger_matches_shapely(server, buildings):
    to_3857 = pyproj.Transformer.from_crs(4326, 3857, always_xy=True)
    x0, y0 = to_3857.transform(121.486, 31.232)
    x1, y1 = to_3857.transform(121.494, 31.240)
    got, _ = fetch_all(server, "/spatial/buildings", {"bbox": f"{x0},{y0},{x1},{y1}", "bbox-crs": "EPSG:3857",
                                                      "limit": 500})
    box_ll = shapely.box(*to_3857.transform(x0, y0, direction="INVERSE"), *to_3857.transform(x1, y1,
                                                                                             direction="INVERSE"))
    assert ext_ids(got) == set(buildings["ext_id"][buildings.intersects(box_ll)])

    gk = buildings.to_crs(4549)
    gx0, gy0, gx1, gy1 = 641800.0, 3457600.0, 642600.0, 3458400.0
    got, _ = fetch_all(server, "/buildings", {"bbox": f"{gx0},{gy0},{gx1},{gy1}", "bbox-crs": "EPSG:4549",
                                              "limit": 500})
    box = shapely.box(gx0, gy0, gx1, gy1)
    expected = set(gk["ext_id"][gk.intersects(box)])
    # A straight edge in the projection is (nearly) straight in lon/lat: allow 10 cm at the edges.
    near_edge = set(gk["ext_id"][gk.distance(box.boundary) < 0.1])
    assert (ext_ids(got) ^ expected) <= near_edge
    assert len(expected) > 20


def test_within_200_m_of_a_point_matches_geodesic_distances(server, buildings, components):
    for layer, frame, radius in (("buildings", buildings, 200), ("components", components, 500)):
        got, _ = fetch_all(server, f"/spatial/{layer}", {"point": f"{POINT.x},{POINT.y}", "distance": radius,
                                                         "limit": 25})
        d = geodesic_distance_m(POINT, frame.geometry.values)
        expected = set(frame["ext_id"][d <= radius])
        borderline = set(frame["ext_id"][np.abs(d - radius) < 0.5])
        assert (ext_ids(got) ^ expected) <= borderline and len(expected) > 3, layer
        by_id = dict(zip(frame["ext_id"], d))
        for f in got:
            assert f["properties"]["distance_m"] == pytest.approx(by_id[f["properties"]["ext_id"]], abs=0.5)
        distances = [f["properties"]["distance_m"] for f in got]
        assert distances == sorted(distances)  # ordered by distance, across pages


def test_nearest_n_are_in_geodesic_order(server, buildings, components):
    for layer, frame, n in (("buildings", buildings, 12), ("components", components, 5)):
        body = server.get(f"/spatial/{layer}", params={"point": POINT.wkt, "nearest": n}).json()
        assert body["numberReturned"] == n and not [link for link in body["links"] if link["rel"] == "next"]
        d = geodesic_distance_m(POINT, frame.geometry.values)
        order = np.argsort(d, kind="stable")
        got = [f["properties"]["distance_m"] for f in body["features"]]
        assert got == pytest.approx(list(d[order[:n]]), abs=0.5)
        # The same features, up to ties closer than half a metre.
        cutoff = d[order[n - 1]]
        sure = set(frame["ext_id"].values[order[:n]][d[order[:n]] < cutoff - 0.5])
        assert sure <= ext_ids(body["features"])


def _expected_chain(point):
    areas = gpd.read_file(DEMO_AREAS)
    holders = areas[areas.intersects(point)]
    if holders.empty:
        return []
    rank = {"grid": 0, "community": 1, "street": 2, "district": 3}
    start = min(holders.itertuples(), key=lambda a: (rank[a.level], a.geometry.area))
    chain, parents = [start.code], dict(zip(areas["code"], areas["parent_code"]))
    while isinstance(parents.get(chain[-1]), str):
        chain.append(parents[chain[-1]])
    return chain


def test_containment_chain_of_a_point(server, buildings):
    tower = buildings[buildings["name:en"] == "Shanghai Tower"].iloc[0]
    inside = tower.geometry.representative_point()
    body = server.get("/spatial/containment", params={"point": f"{inside.x},{inside.y}"}).json()
    layers = [f["properties"]["layer"] for f in body["features"]]
    assert layers == ["building", "area", "area", "area", "area"]
    holders = buildings[buildings.intersects(inside)]
    smallest = holders["ext_id"].values[int(np.argmin(shapely.area(holders.geometry.values)))]
    assert body["features"][0]["properties"]["ext_id"] == smallest
    assert [a["code"] for a in body["chain"]] == _expected_chain(inside)
    assert [a["level"] for a in body["chain"]] == ["grid", "community", "street", "district"]

    street = shapely.Point(121.4880, 31.2380)  # the Bund, between buildings
    assert not buildings.intersects(street).any()
    body = server.get("/spatial/containment", params={"point": street.wkt}).json()
    assert body["building_id"] is None and [f["properties"]["layer"] for f in body["features"]] == ["area"] * 4
    assert [a["code"] for a in body["chain"]] == _expected_chain(street) and body["chain"][2]["code"] == "demo-01"

    # The same place given in GCJ-02 holds the same things.
    gx, gy = wgs84_to_gcj02(inside.x, inside.y)
    body = server.get("/spatial/containment", params={"point": f"{gx},{gy}", "geom-crs": "GCJ02"}).json()
    assert body["features"][0]["properties"]["ext_id"] == smallest

    far = server.get("/spatial/containment", params={"point": "116.39,39.91"}).json()
    assert far["chain"] == [] and far["features"] == []


def _vertices(geometry: dict) -> np.ndarray:
    return shapely.get_coordinates(shapely.geometry.shape(geometry))


def test_crs_round_trips_within_half_a_metre(server):
    fid = server.get("/buildings", params={"q": "上海中心大厦"}).json()["features"][0]["id"]
    base = _vertices(server.get(f"/buildings/{fid}").json()["geometry"])
    geod = pyproj.Geod(ellps="WGS84")
    for crs in ("EPSG:4490", "EPSG:3857", "EPSG:4549", "EPSG:32651", "GCJ02"):
        r = server.get(f"/buildings/{fid}", params={"crs": crs})
        assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
        xy = _vertices(r.json()["geometry"])
        if crs == "GCJ02":
            lon, lat = gcj02_to_wgs84(xy[:, 0], xy[:, 1])
            assert r.headers["content-crs"] == "<urn:cimtwin:crs:gcj02>"
        else:
            lon, lat = pyproj.Transformer.from_crs(crs, 4326, always_xy=True).transform(xy[:, 0], xy[:, 1])
            assert r.headers["content-crs"].endswith(f"/EPSG/0/{crs.split(':')[1]}>")
        offsets = geod.inv(base[:, 0], base[:, 1], lon, lat)[2]
        assert offsets.max() < 0.5, (crs, offsets.max())
    # GCJ-02 visibly moves Shanghai by hundreds of metres: the transform really happened.
    gcj = _vertices(server.get(f"/buildings/{fid}", params={"crs": "GCJ02"}).json()["geometry"])
    assert geod.inv(base[0, 0], base[0, 1], gcj[0, 0], gcj[0, 1])[2] > 300

    collection = server.get("/spatial/buildings", params={"point": POINT.wkt, "nearest": 3, "crs": "EPSG:4490"})
    assert collection.json()["crs"]["properties"]["name"] == "http://www.opengis.net/def/crs/EPSG/0/4490"
    # A query point in GCJ-02 finds the same nearest buildings.
    gx, gy = wgs84_to_gcj02(POINT.x, POINT.y)
    same = server.get("/spatial/buildings", params={"point": f"{gx},{gy}", "geom-crs": "GCJ02", "nearest": 3})
    assert [f["id"] for f in same.json()["features"]] == [f["id"] for f in collection.json()["features"]]


def test_unknown_crs_is_a_400_that_names_it(server):
    for params, name in [({"crs": "EPSG:99999"}, "EPSG:99999"),
                         ({"bbox": "1,2,3,4", "bbox-crs": "EPSG:4979"}, "EPSG:4979"),
                         ({"point": "1,2", "distance": 5, "geom-crs": "not-a-crs"}, "not-a-crs")]:
        r = server.get("/spatial/buildings", params=params)
        assert (r.status_code, r.json()["error"]) == (400, "unknown_crs"), r.text
        assert name in r.json()["detail"] and r.json()["crs"] == name
    assert server.get("/buildings/1", params={"crs": "EPSG:99999"}).json()["error"] == "unknown_crs"


def test_limits_and_bad_input_are_clear_4xx(server):
    big = shapely.Point(121.5, 31.24).buffer(0.01, quad_segs=200)  # 801 vertices > this server's 500
    cases = [
        ({"limit": 10_001}, "limit_too_large"),
        ({"point": "121.5,31.24", "nearest": 20_000}, "limit_too_large"),
        ({"bbox": "100,20,125,40"}, "bbox_too_large"),
        ({"geom": shapely.box(110, 20, 125, 35).wkt}, "bbox_too_large"),
        ({"point": "121.5,31.24", "distance": 100_000}, "distance_too_large"),
        ({"geom": big.wkt}, "invalid_geometry"),
        ({"geom": "POLYGON((121.49 31.23, 121.5 31.24, 121.5 31.23, 121.49 31.24, 121.49 31.23))"},
         "invalid_geometry"),
        ({"geom": "POLYGON((1 2, 3 4"}, "invalid_geometry"),
        ({"bbox": "121.5,31.24,121.4,31.25"}, "invalid_bbox"),
        ({"bbox": "a,b,c,d"}, "invalid_bbox"),
        ({"bbox": "500000,3400000,500100,3400100"}, "invalid_geometry"),  # metres given as lon/lat
        ({"distance": 50}, "point_required"),
        ({"point": "LINESTRING(121.5 31.2, 121.6 31.3)", "distance": 50}, "invalid_geometry"),
        ({"relation": "touches", "geom": "POINT(121.5 31.24)"}, "invalid_relation"),
    ]
    for params, code in cases:
        r = server.get("/spatial/buildings", params=params)
        assert (r.status_code, r.json()["error"]) == (400, code), (params, r.text)
        assert r.json()["detail"]
    r = server.get("/spatial/buildings", params={"geom": "POLYGON((121.49 31.23, 121.5 31.24, 121.5 31.23, "
                                                         "121.49 31.24, 121.49 31.23))"})
    assert "Self-intersection" in r.json()["detail"]
    assert server.get("/spatial/buildings", params={"geom": big.wkt}).json()["detail"].endswith("limit of 500")
    assert server.get("/spatial/nope").status_code == 422
    assert server.get("/spatial/buildings", params={"distance": -1, "point": "1,2"}).status_code == 422
    assert server.get("/buildings", params={"kind": "x", "limit": 0}).status_code == 422


def test_statement_timeout_is_a_400_not_a_hang(district, database_url):
    slow = ApiServer(district.model_copy(update={"api_statement_timeout_ms": 300}))
    slow.start()
    try:
        with psycopg.connect(database_url) as locker:
            locker.execute("LOCK TABLE buildings IN ACCESS EXCLUSIVE MODE")  # every read of buildings waits
            started = time.monotonic()
            r = slow.get("/spatial/buildings", params={"point": POINT.wkt, "distance": 100})
            elapsed = time.monotonic() - started
            started = time.monotonic()
            posted = slow.post("/spatial/buildings/search", json={"geometry": shapely.geometry.mapping(LUJIAZUI)})
            post_elapsed = time.monotonic() - started
            locker.rollback()
        assert (r.status_code, r.json()["error"]) == (400, "query_timeout"), r.text
        assert (posted.status_code, posted.json()["error"]) == (400, "query_timeout"), posted.text
        assert elapsed < 5 and post_elapsed < 5
        assert slow.get("/spatial/buildings", params={"point": POINT.wkt, "nearest": 1}).status_code == 200
    finally:
        slow.stop()


def test_sensors_are_where_their_component_room_building_or_device_is(server, district, buildings, components):
    with psycopg.connect(district.database_url, autocommit=True) as conn:
        vendor = conn.execute("INSERT INTO vendors (code, name) VALUES ('acme', 'ACME') RETURNING id").fetchone()[0]
        sensors = {}
        for ext in ("on-hydrant", "in-tower", "in-room", "on-pole", "nowhere"):
            device = conn.execute("INSERT INTO devices (vendor_id, ext_id) VALUES (%s, %s) RETURNING id",
                                  (vendor, ext)).fetchone()[0]
            sensors[ext] = (device, conn.execute(
                "INSERT INTO sensors (device_id, channel, quantity, unit) VALUES (%s, 't', 'temperature', '°C') "
                "RETURNING id", (device,)).fetchone()[0])
    hydrant = components[components["ext_id"] == "demo-hydrant-01"].iloc[0]
    hydrant_id = server.get("/components", params={"ext_id": "demo-hydrant-01"}).json()["features"][0]["id"]
    tower = buildings[buildings["ext_id"] == "165792123"].iloc[0]
    tower_id = server.get("/buildings", params={"ext_id": "165792123"}).json()["features"][0]["id"]
    floor = server.post("/floors", json={"building_id": tower_id, "level": 118, "elevation": 546})
    room_shape = shapely.box(*tower.geometry.representative_point().buffer(0.00005).bounds)
    room = server.post("/rooms", json={"floor_id": floor.json()["id"], "ext_id": "observation-deck",
                                       "occupants": 40, "geometry": shapely.geometry.mapping(room_shape)})
    assert room.status_code == 201, room.text
    pole = shapely.Point(121.4990, 31.2410)

    for ext, body in (("on-hydrant", {"component_id": hydrant_id}), ("in-tower", {"building_id": tower_id}),
                      ("in-room", {"room_id": room.json()["id"]})):
        r = server.client.put(f"/sensors/{sensors[ext][1]}/place", json=body)
        assert r.status_code == 200, r.text
    r = server.client.put(f"/devices/{sensors['on-pole'][0]}/location",
                          json={"geometry": {"type": "Point", "coordinates": [pole.x, pole.y]}})
    assert r.status_code == 204, r.text
    bad = server.client.put(f"/devices/{sensors['on-pole'][0]}/location",
                            json={"geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}})
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_geometry")

    place = server.get(f"/sensors/{sensors['on-hydrant'][1]}/place").json()
    assert place["properties"]["place"] == "component" and shapely.geometry.shape(place["geometry"]).equals(
        hydrant.geometry)
    places = {f["properties"]["device"]: f for f in fetch_all(server, "/spatial/sensors",
                                                              {"bbox": "121.4,31.2,121.6,31.3"})[0]}
    assert {k: v["properties"]["place"] for k, v in places.items()} == {
        "on-hydrant": "component", "in-tower": "building", "in-room": "room", "on-pole": "device"}
    assert places["in-room"]["properties"]["building_id"] == tower_id

    # Within 150 m of the pole: compare with geodesic distances to each sensor's geometry.
    geoms = {"on-hydrant": hydrant.geometry, "in-tower": tower.geometry, "in-room": room_shape, "on-pole": pole}
    for radius in (150, 600):
        got = {f["properties"]["device"] for f in fetch_all(server, "/spatial/sensors",
                                                            {"point": pole.wkt, "distance": radius})[0]}
        d = geodesic_distance_m(pole, list(geoms.values()))
        assert got == {k for k, dist in zip(geoms, d) if dist <= radius}
    nearest = server.get("/spatial/sensors", params={"point": pole.wkt, "nearest": 2}).json()
    assert [f["properties"]["device"] for f in nearest["features"]][0] == "on-pole"


# ----------------------------------------------------------------------------- exactness of the fast paths

def _sample_points(conn, n: int) -> list[shapely.Point]:
    """Points on, inside and between the demo buildings (deterministic)."""
    rows = conn.execute("SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_PointOnSurface(geom) AS p FROM buildings "
                        "ORDER BY id) x").fetchall()
    rng = np.random.default_rng(7)
    picks = rng.choice(len(rows), size=n, replace=False)
    out = []
    for k, i in enumerate(picks):
        x, y = rows[i]
        if k % 3:  # two in three jittered off the building, up to ±300 m
            dx, dy = rng.uniform(-300, 300, size=2)
            x, y = x + dx / (111_320 * np.cos(np.radians(y))), y + dy / 111_320
        out.append(shapely.Point(x, y))
    return out


def test_distance_predicate_is_exactly_the_geodesic_one(district):
    """The planar band (geo/dwithin.py) only decides rows it is sure of: the ids equal plain
    ST_DWithin on geography for every layer, including radii that fall exactly on a feature's
    distance and areas much larger than the guard box."""
    from cimtwin.geo.dwithin import scaled_band
    from cimtwin.store import blocks as store

    with psycopg.connect(district.database_url, autocommit=True) as conn:
        points = _sample_points(conn, 24)
        checked = settled = 0
        for layer in ("buildings", "components", "areas"):
            table = "areas" if layer == "areas" else layer
            for k, p in enumerate(points):
                wkb = shapely.to_wkb(p)
                dists = [d for (d,) in conn.execute(
                    f"SELECT ST_Distance(geom::geography, ST_GeomFromWKB(%s, 4326)::geography) FROM {table} "
                    f"ORDER BY 1 LIMIT 40", (wkb,))]
                tie = dists[min(len(dists) - 1, 5 + k % 20)]
                for r in (25.0, 200.0, 1234.5, 5_000.0, 40_000.0, tie, tie + 1e-7, max(tie - 1e-7, 1e-3)):
                    q = store.FeatureQuery(layer=layer, point=wkb, distance_m=r, band=scaled_band(p.x, p.y, r))
                    query, params = store.matching_ids_sql(q)
                    got = {i for (i,) in conn.execute(query, params)}
                    want = {i for (i,) in conn.execute(
                        f"SELECT id FROM {table} WHERE ST_DWithin(geom::geography, "
                        f"ST_GeomFromWKB(%s, 4326)::geography, %s)", (wkb, r))}
                    assert got == want, (layer, p.wkt, r, got ^ want)
                    checked += 1
                    if layer == "buildings" and r == 200.0:
                        # how many candidates the planar test settled without the exact one
                        band = q.band
                        settled += conn.execute(
                            "SELECT count(*) FILTER (WHERE geom @ ST_MakeEnvelope(%s, %s, %s, %s, 4326) AND ("
                            " ST_DWithin(ST_Scale(geom, %s, 1), ST_SetSRID(ST_MakePoint(%s, %s), 4326), %s)"
                            " OR NOT ST_DWithin(ST_Scale(geom, %s, 1), ST_SetSRID(ST_MakePoint(%s, %s), 4326), %s)))"
                            " * 1.0 / greatest(count(*), 1) FROM buildings WHERE geom::geography && "
                            "_ST_Expand(ST_GeomFromWKB(%s, 4326)::geography, 200)",
                            (*band.guard, band.kx, band.x, band.y, band.inner, band.kx, band.x, band.y,
                             band.outer, wkb)).fetchone()[0]
        assert checked == 3 * 24 * 8
        # The band is not a no-op: nearly every candidate is settled by the planar test.
        assert settled / len(points) > 0.9


def test_scaled_band_is_withheld_near_the_poles_and_the_antimeridian():
    from cimtwin.geo.dwithin import scaled_band

    assert scaled_band(121.5, 31.24, 200) is not None
    assert scaled_band(121.5, 79.99, 200) is not None and scaled_band(121.5, 79.99, 5_000) is None
    assert scaled_band(179.999, 10.0, 200) is None and scaled_band(-179.999, -10.0, 200) is None
    band = scaled_band(121.5, 31.24, 200)
    assert 0 < band.inner < band.outer and band.outer / band.inner < 1.01


def test_distance_band_allows_for_postgis_closest_point_on_the_sphere(district):
    """A point in a notch between two edges: PostGIS measures to the edge nearer on the sphere,
    0.4 % farther on the ellipsoid than the other; the planar band must not call it within r
    for radii between the two (it did, with a 10⁻³ margin)."""
    from cimtwin.geo.dwithin import scaled_band
    from cimtwin.store import blocks as store

    x, y, e = POINT.x, POINT.y, 0.0004  # small enough for the band's guard box
    dlon = 0.0003
    dlat = dlon * np.cos(np.radians(y)) * 1.001
    notch = (f"POLYGON(({x + dlon} {y - e}, {x + dlon} {y + dlat}, {x - e} {y + dlat}, {x - e} {y + e}, "
             f"{x + e} {y + e}, {x + e} {y - e}, {x + dlon} {y - e}))")
    with psycopg.connect(district.database_url, autocommit=True) as conn:
        cid = conn.execute("INSERT INTO components (ext_id, kind, geom) VALUES ('test-notch', 'gas_pipe', "
                           "ST_GeomFromText(%s, 4326)) RETURNING id", (notch,)).fetchone()[0]
        try:
            wkb = shapely.to_wkb(POINT)
            d = conn.execute("SELECT ST_Distance(geom::geography, ST_GeomFromWKB(%s, 4326)::geography) "
                             "FROM components WHERE id = %s", (wkb, cid)).fetchone()[0]
            for r in np.linspace(d * 0.995, d * 1.001, 13):
                q = store.FeatureQuery(layer="components", point=wkb, distance_m=float(r),
                                       filters={"kind": ["gas_pipe"]}, band=scaled_band(x, y, float(r)))
                query, params = store.matching_ids_sql(q)
                got = cid in {i for (i,) in conn.execute(query, params)}
                want = conn.execute("SELECT ST_DWithin(geom::geography, ST_GeomFromWKB(%s, 4326)::geography, %s) "
                                    "FROM components WHERE id = %s", (wkb, float(r), cid)).fetchone()[0]
                assert got == want, (r, d, got, want)
        finally:
            conn.execute("DELETE FROM components WHERE id = %s", (cid,))


def test_nearest_is_exactly_the_geodesic_ranking(district, server):
    """The nearest N (planar KNN for a radius, the geography index's candidates, ranked by
    distance bounds with exact distances where bounds overlap) equals a full ranking by
    geodesic distance, with filters, through the API."""
    with psycopg.connect(district.database_url, autocommit=True) as conn:
        points = _sample_points(conn, 15)
        for k, p in enumerate(points):
            for layer, n, params, where in (("buildings", 1 + k % 12, {}, "TRUE"),
                                            ("components", 3, {"kind": "hydrant"}, "kind = 'hydrant'"),
                                            ("areas", 2, {}, "TRUE")):
                body = server.get(f"/spatial/{layer}", params={"point": p.wkt, "nearest": n, **params}).json()
                want = [i for (i,) in conn.execute(
                    f"SELECT id FROM {layer} WHERE {where} ORDER BY "
                    f"ST_Distance(geom::geography, ST_GeomFromWKB(%s, 4326)::geography), id LIMIT %s",
                    (shapely.to_wkb(p), n))]
                assert [f["id"] for f in body["features"]] == want, (layer, p.wkt, n)


def _strained_components(p: shapely.Point) -> list[str]:
    """WKT of components around p that strain the nearest bounds (geo/dwithin.py, "Nearest N")."""
    x, y = p.x, p.y
    dlon = 0.0003
    dlat = dlon * np.cos(np.radians(y)) * 1.001  # 0.1 % farther north than east, on the sphere
    return [
        # 38 km east–west line 55 m north of p: its great circle bows ~17 m further north
        f"LINESTRING({x - 0.2} {y + 0.0005}, {x + 0.2} {y + 0.0005})",
        # the same outside the guard box: exact distance
        f"LINESTRING({x - 0.6} {y - 0.0007}, {x + 0.6} {y - 0.0007})",
        # p in a notch between an east edge and a north edge: PostGIS measures to the one nearer
        # on the sphere (east), which on the ellipsoid is 0.4 % farther than the other
        (f"POLYGON(({x + dlon} {y - 0.0005}, {x + dlon} {y + dlat}, {x - 0.0005} {y + dlat}, "
         f"{x - 0.0005} {y + 0.001}, {x + 0.001} {y + 0.001}, {x + 0.001} {y - 0.0005}, {x + dlon} {y - 0.0005}))"),
        # a collection; a polygon holding p and a point on p (distance 0, a tie)
        (f"GEOMETRYCOLLECTION(POINT({x + 0.0004} {y - 0.0002}), LINESTRING({x - 0.0003} {y - 0.0004}, "
         f"{x + 0.0002} {y - 0.0006}), POLYGON(({x} {y - 0.001}, {x + 0.0002} {y - 0.001}, "
         f"{x + 0.0001} {y - 0.0009}, {x} {y - 0.001})))"),
        (f"POLYGON(({x - 0.00001} {y - 0.00001}, {x + 0.00001} {y - 0.00001}, {x} {y + 0.00001}, "
         f"{x - 0.00001} {y - 0.00001}))"),
        f"POINT({x} {y})",
    ]


def test_nearest_distance_bounds_hold_for_every_row(district):
    """lo <= ST_Distance(geography) <= hi (geo/dwithin.py, "Nearest N") for every row of every
    layer, for points in, between and far from the district, with geometries that strain the
    bounds (long lines, a notch, collections, the district's areas); and the bounds are tight."""
    from cimtwin.geo.dwithin import nearest_band
    from cimtwin.store import blocks as store

    with psycopg.connect(district.database_url, autocommit=True) as conn:
        points = _sample_points(conn, 10) + [POINT, shapely.Point(121.7, 31.1), shapely.Point(122.5, 30.0)]
        added = [conn.execute("INSERT INTO components (ext_id, kind, geom) VALUES (%s, 'gas_pipe', "
                              "ST_GeomFromText(%s, 4326)) RETURNING id", (f"test-strain-{k}", wkt)).fetchone()[0]
                 for k, wkt in enumerate(_strained_components(POINT))]
        try:
            checked = 0
            for p in points:
                band = nearest_band(p.x, p.y)
                params = store._nearest_params(band, p)
                for table in ("buildings", "components", "areas"):
                    rows = conn.execute(
                        f"SELECT id, {store._NEAREST_LO}, {store._NEAREST_HI}, "
                        f"{store._NN_DISTANCE.format(g='geom')}, d IS NULL, s, diag "
                        f"FROM (SELECT t.id, t.geom, {store._NEAREST_ROW} FROM {table} t) x", params).fetchall()
                    for row_id, lo, hi, exact, banded, s, diag in rows:
                        assert lo <= exact <= hi, (table, row_id, p.wkt, lo, exact, hi)
                        if banded:  # the SQL and NearestBand.bounds are the same formula
                            assert band.bounds(s, diag) == pytest.approx((lo, hi), rel=1e-12, abs=1e-9)
                        if banded and table == "buildings" and exact < 1000:
                            assert hi - lo < 0.0065 * exact + 0.02, (row_id, p.wkt, lo, exact, hi)
                    checked += len(rows)
            assert checked > 13 * 1450
            # the notch: PostGIS's distance is above the ellipsoidal minimum, and within hi
            notch = conn.execute("SELECT ST_Distance(geom::geography, ST_GeomFromWKB(%s, 4326)::geography) "
                                 "FROM components WHERE id = %s", (shapely.to_wkb(POINT), added[2])).fetchone()[0]
            north = pyproj.Geod(ellps="WGS84").inv(POINT.x, POINT.y, POINT.x,
                                                   POINT.y + 0.0003 * np.cos(np.radians(POINT.y)))[2]
            assert notch > north + 0.05
        finally:
            conn.execute("DELETE FROM components WHERE id = ANY(%s)", (added,))


def test_nearest_ranking_with_ties_far_points_and_few_features(district, server):
    """Exact ranking (distance, then id) where bounds cannot decide: identical buildings,
    zero distances, collections; points far from everything, near the antimeridian and the
    pole (every distance exact there); N larger than the number of features."""
    from cimtwin.store import blocks as store

    with psycopg.connect(district.database_url, autocommit=True) as conn:
        src = conn.execute("SELECT id FROM buildings ORDER BY geom <-> ST_SetSRID(ST_MakePoint(%s, %s), 4326) "
                           "LIMIT 1", (POINT.x, POINT.y)).fetchone()[0]
        twins = [conn.execute("INSERT INTO buildings (ext_id, geom) SELECT %s, geom FROM buildings WHERE id = %s "
                              "RETURNING id", (f"test-twin-{k}", src)).fetchone()[0] for k in range(2)]
        added = [conn.execute("INSERT INTO components (ext_id, kind, geom) VALUES (%s, 'gas_pipe', "
                              "ST_GeomFromText(%s, 4326)) RETURNING id", (f"test-rank-{k}", wkt)).fetchone()[0]
                 for k, wkt in enumerate(_strained_components(POINT))]
        vertex = shapely.Point(*conn.execute("SELECT ST_X(g), ST_Y(g) FROM ST_DumpPoints((SELECT geom FROM buildings "
                                             "WHERE id = %s)) d(path, g) LIMIT 1", (src,)).fetchone())
        try:
            points = [POINT, vertex, shapely.Point(121.5, 31.0), shapely.Point(0.0, 0.0),
                      shapely.Point(-150.0, -45.0), shapely.Point(179.99, 31.2), shapely.Point(-179.99, 31.2),
                      shapely.Point(121.5, 85.0)]
            cases = [("buildings", {}, "TRUE", n) for n in (1, 3, 12)] + [
                ("buildings", {"use": None}, "TRUE", 1600),
                ("components", {}, "TRUE", 8), ("components", {"kind": ["gas_pipe"]}, "kind = 'gas_pipe'", 50),
                ("components", {"kind": ["hydrant"]}, "kind = 'hydrant'", 30), ("areas", {}, "TRUE", 40)]
            for p in points:
                wkb = shapely.to_wkb(p)
                for layer, filters, where, n in cases:
                    want = [i for (i,) in conn.execute(
                        f"SELECT id FROM {layer} WHERE {where} ORDER BY "
                        f"ST_Distance(geom::geography, ST_GeomFromWKB(%s, 4326)::geography), id LIMIT %s", (wkb, n))]
                    query, params = store.matching_ids_sql(store.FeatureQuery(layer=layer, filters=filters, point=wkb,
                                                                             nearest=n))
                    got = [i for (i,) in conn.execute(query, params)]
                    assert got == want, (layer, filters, p.wkt, n)
            # through the API (the full query), ties included
            for p in (POINT, vertex):
                want = [i for (i,) in conn.execute(
                    "SELECT id FROM buildings ORDER BY ST_Distance(geom::geography, "
                    "ST_GeomFromWKB(%s, 4326)::geography), id LIMIT 6", (shapely.to_wkb(p),))]
                body = server.get("/spatial/buildings", params={"point": p.wkt, "nearest": 6}).json()
                assert [f["id"] for f in body["features"]] == want, p.wkt
                d = [f["properties"]["distance_m"] for f in body["features"]]
                assert d == sorted(d)
            assert {src, *twins} <= set(want) and d[:3] == [0, 0, 0]
            body = server.get("/spatial/components", params={"point": POINT.wkt, "nearest": 6}).json()
            assert [f["id"] for f in body["features"]][:2] == sorted(added[-2:])
            assert [f["properties"]["distance_m"] for f in body["features"]][:2] == [0, 0]
        finally:
            conn.execute("DELETE FROM components WHERE id = ANY(%s)", (added,))
            conn.execute("DELETE FROM buildings WHERE id = ANY(%s)", (twins,))


def test_distance_and_nearest_take_any_geometry_type(server, district):
    """Components may be any geometry, collections included: distances still come out."""
    gc = "GEOMETRYCOLLECTION(POINT(121.5001 31.2401),LINESTRING(121.4999 31.2402,121.5003 31.2404))"
    with psycopg.connect(district.database_url, autocommit=True) as conn:
        cid = conn.execute("INSERT INTO components (ext_id, kind, geom) VALUES ('test-gc', 'gas_pipe', "
                           "ST_GeomFromText(%s, 4326)) RETURNING id", (gc,)).fetchone()[0]
        try:
            p = shapely.Point(121.5, 31.24)
            want = conn.execute("SELECT ST_Distance(geom::geography, ST_GeomFromWKB(%s, 4326)::geography) "
                                "FROM components WHERE id = %s", (shapely.to_wkb(p), cid)).fetchone()[0]
            for params in ({"distance": 50}, {"nearest": 1}):
                r = server.get("/spatial/components", params={"point": p.wkt, "kind": "gas_pipe", **params})
                assert r.status_code == 200, r.text
                feats = r.json()["features"]
                assert [f["id"] for f in feats] == [cid] and feats[0]["geometry"]["type"] == "GeometryCollection"
                assert feats[0]["properties"]["distance_m"] == pytest.approx(want, abs=0.0005)
        finally:
            conn.execute("DELETE FROM components WHERE id = %s", (cid,))


def test_api_pool_runs_without_parallel_plans(district):
    import asyncio

    from cimtwin.store.db import open_async_pool

    async def show() -> tuple[str, str]:
        pool = open_async_pool(district.database_url, max_size=1)
        await pool.open()
        try:
            async with pool.connection() as conn:
                off = (await (await conn.execute("SHOW max_parallel_workers_per_gather")).fetchone())[0]
        finally:
            await pool.close()
        pool = open_async_pool(district.database_url, max_size=1, parallel=True)
        await pool.open()
        try:
            async with pool.connection() as conn:
                on = (await (await conn.execute("SHOW max_parallel_workers_per_gather")).fetchone())[0]
        finally:
            await pool.close()
        return off, on

    off, on = asyncio.run(show())
    assert off == "0" and on != "0"


# ----------------------------------------------------------------------------- POST search

def post_all(server, path: str, body: dict) -> tuple[list[dict], int]:
    """Every feature of a POST search, following its next links (POST, body merged)."""
    features, matched = [], None
    r = server.post(path, json=body)
    while True:
        assert r.status_code == 200, r.text
        page = r.json()
        matched = page["numberMatched"] if matched is None else matched
        assert page["numberMatched"] == matched and page["numberReturned"] == len(page["features"])
        features += page["features"]
        nxt = [link for link in page["links"] if link["rel"] == "next"]
        if not nxt:
            break
        assert nxt[0]["method"] == "POST" and nxt[0]["merge"] is True
        r = server.post(nxt[0]["href"], json={**body, **nxt[0]["body"]})
    assert len(features) == matched
    return features, matched


def test_post_search_answers_like_the_get_form(server, buildings, components):
    lujiazui = shapely.geometry.mapping(LUJIAZUI)
    got, matched = post_all(server, "/spatial/buildings/search", {"geometry": lujiazui, "limit": 40})
    assert ext_ids(got) == set(buildings["ext_id"][buildings.intersects(LUJIAZUI)]) and matched > 40
    assert len({f["id"] for f in got}) == matched

    get_page = server.get("/spatial/buildings", params={"geom": LUJIAZUI.wkt, "limit": 1000, "crs": "EPSG:4549"})
    post_page = server.post("/spatial/buildings/search", json={"geometry": lujiazui, "limit": 1000,
                                                               "crs": "EPSG:4549"})
    assert post_page.headers["content-crs"] == get_page.headers["content-crs"]
    assert post_page.json()["features"] == get_page.json()["features"]

    within, _ = post_all(server, "/spatial/buildings/search", {"geometry": lujiazui, "relation": "within"})
    assert ext_ids(within) == set(buildings["ext_id"][buildings.covered_by(LUJIAZUI)])

    hydrants, _ = post_all(server, "/spatial/components/search", {"geometry": lujiazui,
                                                                  "filters": {"kind": ["hydrant"]}})
    assert ext_ids(hydrants) == set(components["ext_id"][components.intersects(LUJIAZUI)
                                                         & (components["kind"] == "hydrant")]) != set()

    # bbox in another CRS, point + distance, nearest; a GCJ-02 point
    to_3857 = pyproj.Transformer.from_crs(4326, 3857, always_xy=True)
    x0, y0 = to_3857.transform(121.486, 31.232)
    x1, y1 = to_3857.transform(121.494, 31.240)
    boxed, _ = post_all(server, "/spatial/buildings/search", {"bbox": [x0, y0, x1, y1], "bbox-crs": "EPSG:3857"})
    box_ll = shapely.box(121.486, 31.232, 121.494, 31.240)
    near_edge = set(buildings["ext_id"][shapely.distance(buildings.geometry.values, box_ll.boundary) < 1e-6])
    assert (ext_ids(boxed) ^ set(buildings["ext_id"][buildings.intersects(box_ll)])) <= near_edge
    assert len(boxed) > 20

    near, _ = post_all(server, "/spatial/buildings/search", {"point": [POINT.x, POINT.y], "distance": 200,
                                                             "limit": 25})
    d = geodesic_distance_m(POINT, buildings.geometry.values)
    assert (ext_ids(near) ^ set(buildings["ext_id"][d <= 200])) <= set(buildings["ext_id"][np.abs(d - 200) < 0.5])
    gx, gy = wgs84_to_gcj02(POINT.x, POINT.y)
    nearest = server.post("/spatial/buildings/search", json={
        "point": {"type": "Point", "coordinates": [float(gx), float(gy)]}, "geom-crs": "GCJ02", "nearest": 5})
    by_get = server.get("/spatial/buildings", params={"point": POINT.wkt, "nearest": 5})
    assert [f["id"] for f in nearest.json()["features"]] == [f["id"] for f in by_get.json()["features"]]


def test_post_search_limits_are_clear_4xx(server):
    big = shapely.geometry.mapping(shapely.Point(121.5, 31.24).buffer(0.01, quad_segs=200))  # 801 vertices > 500
    cases = [
        ({"limit": 10_001}, 400, "limit_too_large"),
        ({"point": [121.5, 31.24], "nearest": 20_000}, 400, "limit_too_large"),
        ({"bbox": [100, 20, 125, 40]}, 400, "bbox_too_large"),
        ({"geometry": shapely.geometry.mapping(shapely.box(110, 20, 125, 35))}, 400, "bbox_too_large"),
        ({"point": [121.5, 31.24], "distance": 100_000}, 400, "distance_too_large"),
        ({"geometry": big}, 400, "invalid_geometry"),
        ({"geometry": {"type": "Polygon", "coordinates": [[[1, 2], [3, 4]]]}}, 400, "invalid_geometry"),
        ({"bbox": [121.5, 31.24, 121.4, 31.25]}, 400, "invalid_bbox"),
        ({"distance": 50}, 400, "point_required"),
        ({"point": {"type": "LineString", "coordinates": [[121.5, 31.2], [121.6, 31.3]]}, "distance": 50}, 400,
         "invalid_geometry"),
        ({"geometry": {"type": "Point", "coordinates": [121.5, 31.24]}, "crs": "EPSG:99999"}, 400, "unknown_crs"),
        ({"filters": {"kind": ["hydrant"]}}, 400, "invalid_filter"),  # buildings have no kind
    ]
    for body, status, code in cases:
        r = server.post("/spatial/buildings/search", json=body)
        assert (r.status_code, r.json()["error"]) == (status, code), (body, r.text)
        assert r.json()["detail"]
    for body in ({"limit": 0}, {"distance": -1, "point": [1, 2]}, {"nope": 1}, {"filters": {"nope": 1}},
                 {"relation": "touches"}, {"point": [1, 2, 3, 4]}, {"bbox": [1, 2, 3]}):
        assert server.post("/spatial/buildings/search", json=body).status_code == 422, body
    assert server.post("/spatial/nope/search", json={}).status_code == 422


def test_one_bbox_limit_for_spatial_and_ogc_and_post_takes_polygons_too_long_for_a_url(district):
    """A district-sized bbox passes (QGIS asks for a layer's whole extent); one setting limits
    /spatial and /ogc alike; and a query polygon of thousands of vertices goes by POST."""
    # the default limit (250,000 km²): a 60 km × 55 km bbox over the whole district is fine
    wide = ApiServer(district.model_copy(update={"api_max_geometry_vertices": 10_000}))
    wide.start()
    try:
        body = wide.get("/spatial/buildings", params={"bbox": "121.2,31.0,121.83,31.5", "limit": 1}).json()
        assert body["numberMatched"] == 1450
        # ~5,000 vertices: far past what a URL carries, fine in a body
        ring = shapely.Point(121.5, 31.24).buffer(0.004, quad_segs=1250)
        assert len(ring.exterior.coords) > 5000 and len(ring.wkt) > 100_000
        got, _ = post_all(wide, "/spatial/buildings/search", {"geometry": shapely.geometry.mapping(ring),
                                                              "limit": 1000})
        expected = set(shanghai()["ext_id"][shanghai().intersects(ring)])
        assert ext_ids(got) == expected and len(expected) > 30
    finally:
        wide.stop()
    tight = ApiServer(district.model_copy(update={"max_bbox_km2": 1_000.0}))
    tight.start()
    try:
        box = "121.3,31.1,121.7,31.4"  # ~38 km × 33 km
        for path, params in (("/spatial/buildings", {"bbox": box}), ("/ogc/collections/buildings/items",
                                                                     {"bbox": box})):
            r = tight.get(path, params=params)
            assert (r.status_code, r.json()["error"]) == (400, "bbox_too_large"), (path, r.text)
        r = tight.post("/spatial/buildings/search", json={"bbox": [121.3, 31.1, 121.7, 31.4]})
        assert (r.status_code, r.json()["error"]) == (400, "bbox_too_large")
        assert tight.get("/spatial/buildings", params={"bbox": "121.48,31.22,121.52,31.26"}).status_code == 200
    finally:
        tight.stop()
