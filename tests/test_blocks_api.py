"""CRUD of the block-data model over HTTP (a real `cimtwin serve` and database): areas, buildings,
components with their links derived spatially and kept derived; floors, rooms, parties, assignments."""

from __future__ import annotations

import pyproj
import shapely
from shapely.geometry import mapping

# A small made-up district east of the Lujiazui data, in lon/lat: two streets side by side,
# a community and a grid in the west street.
D = shapely.box(121.600, 31.200, 121.620, 31.220)
S1, S2 = shapely.box(121.600, 31.200, 121.610, 31.220), shapely.box(121.610, 31.200, 121.620, 31.220)
C1 = shapely.box(121.600, 31.200, 121.610, 31.210)
G1 = shapely.box(121.600, 31.200, 121.605, 31.205)
B_IN_G1 = shapely.box(121.601, 31.201, 121.6012, 31.2012)
B_IN_S2 = shapely.box(121.615, 31.215, 121.6152, 31.2152)


def created(r) -> dict:
    assert r.status_code == 201, r.text
    assert r.headers["content-type"] == "application/geo+json"
    return r.json()


def props(api, path: str) -> dict:
    r = api.get(path)
    assert r.status_code == 200, r.text
    return r.json()["properties"]


def test_areas_buildings_components_with_links_derived_and_kept(api, db):
    d = created(api.post("/areas", json={"code": "d", "name": "District", "level": "district",
                                         "geometry": mapping(D)}))
    s1 = created(api.post("/areas", json={"code": "s1", "name": "West", "level": "street", "parent_id": d["id"],
                                          "geometry": mapping(S1)}))
    s2 = created(api.post("/areas", json={"code": "s2", "name": "East", "level": "street",
                                          "geometry": mapping(S2), "attributes": {"illustrative": True}}))
    assert s2["properties"]["parent_id"] == d["id"] and s2["properties"]["parent_derived"] is True
    assert s1["properties"]["parent_derived"] is False
    c1 = created(api.post("/areas", json={"code": "c1", "name": "C1", "level": "community", "geometry": mapping(C1)}))
    g1 = created(api.post("/areas", json={"code": "g1", "name": "G1", "level": "grid", "geometry": mapping(G1)}))
    assert (c1["properties"]["parent_code"], g1["properties"]["parent_code"]) == ("s1", "c1")

    r = api.post("/areas", json={"code": "g2", "name": "G2", "level": "grid", "parent_id": s1["id"],
                                 "geometry": mapping(G1)})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_parent") and "must be a community" in r.text
    r = api.post("/areas", json={"code": "g1", "name": "again", "level": "grid", "geometry": mapping(G1)})
    assert (r.status_code, r.json()["error"]) == (409, "conflict")

    subtree = api.get("/areas", params={"area": "s1"}).json()
    assert sorted(f["properties"]["code"] for f in subtree["features"]) == ["c1", "g1", "s1"]
    page = api.get("/areas", params={"limit": 2, "crs": "EPSG:3857"}).json()
    assert (page["numberMatched"], page["numberReturned"]) == (5, 2)
    nxt = api.get([link for link in page["links"] if link["rel"] == "next"][0]["href"]).json()
    assert nxt["numberReturned"] == 2 and nxt["features"][0]["geometry"]["coordinates"][0][0][0][0] > 1e7

    # A building given in a CGCS2000 Gauss-Krüger zone; its area is derived: the grid.
    to_gk = pyproj.Transformer.from_crs(4326, 4549, always_xy=True)
    gk = shapely.transform(B_IN_G1, lambda xy: shapely.get_coordinates(shapely.points(
        *to_gk.transform(xy[:, 0], xy[:, 1]))))
    b = created(api.post("/buildings", params={"geom-crs": "EPSG:4549"},
                         json={"ext_id": "b1", "name": "Block 1", "height": 31.5, "floors_above": 9,
                               "occupants": 120, "organisations": 3, "geometry": mapping(gk)}))
    assert (b["properties"]["area_code"], b["properties"]["area_derived"]) == ("g1", True)
    stored = shapely.geometry.shape(b["geometry"])
    assert shapely.hausdorff_distance(stored, B_IN_G1) < 1e-8  # ~1 mm

    hydrant = created(api.post("/components", json={
        "ext_id": "h1", "kind": "hydrant", "geometry": mapping(B_IN_G1.centroid)}))
    assert hydrant["properties"]["building_id"] == b["id"] and hydrant["properties"]["area_code"] == "g1"
    assert hydrant["properties"]["kind_name_zh"] == "消火栓"

    # Moving the building moves its derived area; the component it no longer holds loses it.
    moved = api.client.patch(f"/buildings/{b['id']}", json={"geometry": mapping(B_IN_S2)}).json()
    assert moved["properties"]["area_code"] == "s2"
    assert props(api, f"/components/{hydrant['id']}")["building_id"] is None
    # An explicit area stays as given, even when the footprint moves again…
    pinned = api.client.patch(f"/buildings/{b['id']}", json={"area_id": d["id"], "geometry": mapping(B_IN_G1)}).json()
    assert (pinned["properties"]["area_code"], pinned["properties"]["area_derived"]) == ("d", False)
    assert props(api, f"/components/{hydrant['id']}")["building_id"] == b["id"]
    # … and null hands it back to derivation.
    freed = api.client.patch(f"/buildings/{b['id']}", json={"area_id": None}).json()
    assert (freed["properties"]["area_code"], freed["properties"]["area_derived"]) == ("g1", True)

    # Removing the grid re-derives what pointed at it; a street with children cannot go.
    assert api.client.delete(f"/areas/{g1['id']}").status_code == 204
    assert props(api, f"/buildings/{b['id']}")["area_code"] == "c1"
    r = api.client.delete(f"/areas/{s1['id']}")
    assert (r.status_code, r.json()["error"]) == (409, "still_referenced")

    # Deleting the building leaves the component without one, until another footprint covers it.
    assert api.client.delete(f"/buildings/{b['id']}").status_code == 204
    assert props(api, f"/components/{hydrant['id']}")["building_id"] is None
    b2 = created(api.post("/buildings", json={"ext_id": "b2", "geometry": mapping(B_IN_G1.buffer(0.0001))}))
    assert props(api, f"/components/{hydrant['id']}")["building_id"] == b2["id"]
    assert api.get(f"/buildings/{b['id']}").json()["error"] == "building_not_found"

    # Geometry and reference errors are 4xx that say what is wrong.
    bowtie = {"type": "Polygon", "coordinates": [[[121.601, 31.201], [121.602, 31.202], [121.602, 31.201],
                                                  [121.601, 31.202], [121.601, 31.201]]]}
    cases = [
        ("/buildings", {"geometry": bowtie}, 400, "invalid_geometry", "Self-intersection"),
        ("/buildings", {"geometry": mapping(shapely.Point(121.6, 31.2))}, 400, "invalid_geometry",
         "expected Polygon or MultiPolygon"),
        ("/buildings", {"area_id": 999999, "geometry": mapping(B_IN_S2)}, 404, "area_not_found", "999999"),
        ("/components", {"kind": "unicorn", "geometry": mapping(shapely.Point(121.6, 31.2))}, 404,
         "component_kind_not_found", "unicorn"),
        ("/buildings", {"geometry": mapping(B_IN_S2), "attributes": {"people": [{"name": "x"}]}}, 422,
         "invalid_request", "people"),
        ("/buildings", {"geometry": mapping(B_IN_S2), "occupants": -1}, 422, "invalid_request", "occupants"),
        ("/buildings", {"geometry": mapping(B_IN_S2), "residents": ["x"]}, 422, "invalid_request", "residents"),
    ]
    for path, body, status, code, text in cases:
        r = api.post(path, json=body)
        assert (r.status_code, r.json()["error"]) == (status, code), (body, r.text)
        assert text in r.json()["detail"]
    r = api.post("/buildings", params={"geom-crs": "EPSG:99999"}, json={"geometry": mapping(B_IN_S2)})
    assert (r.status_code, r.json()["error"]) == (400, "unknown_crs") and "EPSG:99999" in r.json()["detail"]


def test_floors_rooms_parties_and_assignments(api, db):
    for path in ("/areas", "/buildings", "/floors", "/rooms", "/components"):
        assert api.get(path).json() == {
            "type": "FeatureCollection", "numberMatched": 0, "numberReturned": 0,
            "links": [{"rel": "self", "href": f"{api.url}{path}", "type": "application/geo+json"}], "features": []}
    area = created(api.post("/areas", json={"code": "d", "name": "District", "level": "district",
                                            "geometry": mapping(D)}))
    b = created(api.post("/buildings", json={"ext_id": "b1", "geometry": mapping(B_IN_G1)}))
    floors = [created(api.post("/floors", json={"building_id": b["id"], "level": lvl, "elevation": 3.2 * lvl,
                                               "height": 3.2})) for lvl in (-1, 0, 1)]
    assert [f["properties"]["level"] for f in api.get("/floors", params={"building_id": b["id"]}).json()[
        "features"]] == [-1, 0, 1]
    r = api.post("/floors", json={"building_id": b["id"], "level": 0})
    assert r.status_code == 409
    room = created(api.post("/rooms", json={"floor_id": floors[1]["id"], "ext_id": "101", "use": "shop",
                                            "occupants": 4, "organisations": 1,
                                            "geometry": mapping(B_IN_G1.buffer(-0.00005))}))
    assert room["properties"]["building_id"] == b["id"] and room["properties"]["level"] == 0
    changed = api.client.patch(f"/rooms/{room['id']}", json={"occupants": 6}).json()["properties"]
    assert (changed["occupants"], changed["organisations"], changed["use"]) == (6, 1, "shop")
    assert api.get("/rooms", params={"building_id": b["id"]}).json()["numberMatched"] == 1
    r = api.client.patch(f"/floors/{floors[0]['id']}", json={"name": "B1"})
    assert r.json()["properties"]["name"] == "B1"
    assert api.client.delete(f"/floors/{floors[2]['id']}").status_code == 204
    assert api.client.delete(f"/floors/{floors[2]['id']}").status_code == 404

    kinds = {k["code"]: k for k in api.get("/component-kinds").json()}
    assert kinds["manhole_cover"]["name_zh"] == "井盖" and len(kinds) >= 16

    party = api.post("/parties", json={"code": "pm-1", "name": "Harbour Property Management",
                                       "kind": "property_manager",
                                       "contacts": [{"label": "24h duty desk", "phone": "+86-21-0000-0000"}],
                                       "channels": {"webhook": "https://example.org/hook"}})
    assert party.status_code == 201, party.text
    pid = party.json()["id"]
    assert party.json()["channels"] == {"webhook": "https://example.org/hook"}
    assert api.post("/parties", json={"code": "pm-1", "name": "x", "kind": "other"}).status_code == 409
    assert api.post("/parties", json={"code": "p2", "name": "x", "kind": "alien"}).status_code == 422
    fire = api.post("/parties", json={"code": "fire", "name": "Fire brigade", "kind": "department"}).json()
    page = api.get("/parties", params={"kind": "department"}).json()
    assert [p["code"] for p in page["items"]] == ["fire"] and page["numberMatched"] == 1
    assert api.client.patch(f"/parties/{pid}", json={"name": "Renamed"}).json()["name"] == "Renamed"

    ok = api.post("/party-assignments", json={"party_id": pid, "building_id": b["id"]})
    assert ok.status_code == 201, ok.text
    kind_in_area = api.post("/party-assignments", json={"party_id": fire["id"], "area_id": area["id"],
                                                        "component_kind": "hydrant", "role": "maintains"})
    assert kind_in_area.status_code == 201 and kind_in_area.json()["party_code"] == "fire"
    cases = [
        ({"party_id": pid, "building_id": b["id"]}, 409),                       # the same again
        ({"party_id": pid, "building_id": b["id"], "area_id": area["id"]}, 422),  # two targets
        ({"party_id": pid, "building_id": b["id"], "component_kind": "hydrant"}, 422),  # kind needs an area
        ({"party_id": 999999, "building_id": b["id"]}, 404),
        ({"party_id": pid, "room_id": 999999}, 404),
    ]
    for body, status in cases:
        r = api.post("/party-assignments", json=body)
        assert r.status_code == status, (body, r.text)
    listed = api.get("/party-assignments", params={"party_id": pid}).json()
    assert [a["building_id"] for a in listed["items"]] == [b["id"]]
    assert api.client.delete(f"/party-assignments/{ok.json()['id']}").status_code == 204
    assert api.get(f"/party-assignments/{ok.json()['id']}").status_code == 404
    # Deleting a party takes its assignments with it.
    assert api.client.delete(f"/parties/{fire['id']}").status_code == 204
    assert api.get("/party-assignments").json()["numberMatched"] == 0
    assert api.get("/parties", params={"limit": 20_000}).json()["error"] == "limit_too_large"
