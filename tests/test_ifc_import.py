"""`cimtwin import ifc` as a real subprocess on the KIT IAI "FZK-Haus" IFC4 model
(AC20-FZK-Haus.ifc, published by KIT IAI for free use; credit: KIT IAI), read from ../shared/data.

The building footprint the rooms must lie in is made from the IFC's own outline: the
bounding box of its IfcSlab shapes (floor slabs and the roof with its 0.5 m overhang: model
x −0.5…12.5 m, y −0.5…10.5 m), placed with the same anchor and rotation as the import."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely


from cimtwin.geo.ifc import read_ifc_interior

from .blocks_data import run_cli

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
FZK = DATA / "AC20-FZK-Haus.ifc"
pytestmark = pytest.mark.skipif(not FZK.exists(), reason="shared IFC data missing")

ANCHOR = (8.436539, 49.100435)  # near the IfcSite reference 49°6'N 8°26'E
ROTATION = 30.0
NAMES = {"Schlafzimmer", "Bad", "Buero", "Wohnen", "Flur", "Küche", "Galerie"}


def slab_outline() -> shapely.Polygon:
    import ifcopenshell
    import ifcopenshell.geom

    model = ifcopenshell.open(str(FZK))
    settings = ifcopenshell.geom.settings()
    settings.set(settings.USE_WORLD_COORDS, True)
    xy = np.concatenate([np.asarray(ifcopenshell.geom.create_shape(settings, s).geometry.verts).reshape(-1, 3)
                         for s in model.by_type("IfcSlab")])[:, :2]
    return shapely.box(*xy.min(axis=0), *xy.max(axis=0))


def test_reader_storeys_and_spaces():
    interior = read_ifc_interior(FZK, anchor=ANCHOR, rotation=ROTATION)
    assert [(s.name, s.elevation, s.level) for s in interior.storeys] == [("Erdgeschoss", 0.0, 0),
                                                                         ("Dachgeschoss", 2.7, 1)]
    assert interior.georef == "anchor"
    assert {s.long_name for s in interior.spaces} == NAMES and len(interior.spaces) == 7
    outline = slab_outline()
    assert outline.bounds == pytest.approx((-0.5, -0.5, 12.5, 10.5), abs=0.01)
    for space in interior.spaces:
        assert space.local.is_valid and space.local.area > 5
        assert outline.buffer(0.01).contains(space.local)
    # the anchor is the model origin; +y points 30° east of north
    origin, north = interior.to_lonlat([shapely.Point(0, 0), shapely.Point(0, 100)])
    assert (origin.x, origin.y) == pytest.approx(ANCHOR, abs=1e-9)
    assert north.x > origin.x and north.y > origin.y

    site = read_ifc_interior(FZK)  # no anchor: the IfcSite reference point
    assert site.georef == "IfcSite reference"
    assert (p := site.to_lonlat([shapely.Point(0, 0)])[0]).y == pytest.approx(49.1, abs=0.01) \
        and p.x == pytest.approx(8.44, abs=0.01)


def test_import_ifc_into_a_building(settings, db):
    interior = read_ifc_interior(FZK, anchor=ANCHOR, rotation=ROTATION)
    footprint = interior.to_lonlat([slab_outline()])[0]
    db.execute("INSERT INTO buildings (ext_id, name, height, geom) VALUES "
               "('fzk-haus', 'FZK-Haus', 8, ST_Multi(ST_GeomFromWKB(%s, 4326)))", (shapely.to_wkb(footprint),))

    missing = run_cli(settings, "import", "ifc", FZK, "--building", "no-such", "--anchor", "8.43,49.1")
    assert missing.returncode == 1 and "no-such" in missing.stderr

    proc = run_cli(settings, "import", "ifc", FZK, "--building", "fzk-haus",
                   "--anchor", f"{ANCHOR[0]},{ANCHOR[1]}", "--rotation", str(ROTATION))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stored 2 floors (2 inserted, 0 updated) and 7 rooms (7 inserted, 0 updated); 0 rejected" in proc.stdout
    assert "warning" not in proc.stdout
    floors = db.execute("SELECT level, name, elevation, height FROM floors ORDER BY level").fetchall()
    assert floors == [(0, "Erdgeschoss", 0.0, 2.7), (1, "Dachgeschoss", 2.7, None)]
    rooms = db.execute("""
        SELECT r.name, f.level, ST_IsValid(r.geom), ST_CoveredBy(r.geom, ST_Buffer(b.geom::geography, 0.05)::geometry),
               ST_Area(r.geom::geography)
        FROM rooms r JOIN floors f ON f.id = r.floor_id JOIN buildings b ON b.id = f.building_id""").fetchall()
    assert {r[0] for r in rooms} == NAMES and len(rooms) == 7
    assert all(valid and inside for _, _, valid, inside, _ in rooms)
    by_name = {r[0]: r for r in rooms}
    assert by_name["Galerie"][1] == 1 and by_name["Küche"][1] == 0
    assert by_name["Wohnen"][4] == pytest.approx(25.99, abs=0.1)  # m², as in the model

    again = run_cli(settings, "import", "ifc", FZK, "--building", "fzk-haus",
                    "--anchor", f"{ANCHOR[0]},{ANCHOR[1]}", "--rotation", str(ROTATION))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "(0 inserted, 2 updated) and 7 rooms (0 inserted, 7 updated)" in again.stdout
    assert db.execute("SELECT count(*) FROM rooms").fetchone()[0] == 7
    assert db.execute("SELECT count(*) FROM floors").fetchone()[0] == 2
