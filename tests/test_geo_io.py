"""`cimtwin import` / `cimtwin export` as real subprocesses, on files generated at test time from
the real Shanghai buildings (© OpenStreetMap contributors, ODbL), in several formats and CRSs;
plus the geometry checks they rely on."""

from __future__ import annotations

import json
import re

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely

from cimtwin.geo.checks import POLYGONAL, check_geometries, parse_geometry
from cimtwin.geo.crs import UnknownCrsError
from cimtwin.geo.io import FileFormatError, read_features
from cimtwin.twin.exporter import export_layer
from cimtwin.twin.importer import import_file

from .blocks_data import DEMO_AREAS, max_offset_m, run_cli, stored_geometries, subset

SUMMARY = re.compile(r"read (\d+) features .* stored (\d+): (\d+) inserted, (\d+) updated, (\d+) unchanged; "
                     r"(\d+) repaired; (\d+) rejected")


def summary(proc) -> dict:
    m = SUMMARY.search(proc.stdout)
    assert m, f"no summary line in:\n{proc.stdout}\n{proc.stderr}"
    keys = ("read", "stored", "inserted", "updated", "unchanged", "repaired", "rejected")
    return dict(zip(keys, map(int, m.groups())))


# ----------------------------------------------------------------------------- geometry checks (no database)

def test_check_geometries_repairs_only_what_is_safe():
    bowtie = shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)])
    spike = shapely.Polygon([(0, 0), (10, 0), (10, 10), (5, 10), (5, 30), (5, 10), (0, 10), (0, 0)])
    flat = shapely.Polygon([(0, 0), (1, 0), (2, 0), (0, 0)])
    good = shapely.box(0, 0, 1, 1)
    out = check_geometries([good, bowtie, spike, flat, None, shapely.Polygon(), shapely.Point(1, 2),
                            shapely.Polygon([(0, 0, 5), (1, 0, 5), (1, 1, 5), (0, 0, 5)])], allowed=POLYGONAL)
    assert list(out.ok) == [True, True, False, False, False, False, False, True]
    assert out.geometry[0] is good
    assert out.geometry[1].geom_type == "MultiPolygon" and out.geometry[1].area == pytest.approx(0.5)
    assert out.repaired[1] == "repaired with make_valid: Self-intersection[0.5 0.5]"
    assert "make_valid would move the outline by 20" in out.reason[2]
    assert "collapses to nothing" in out.reason[3]
    assert out.reason[4:7].tolist() == ["null geometry", "empty geometry",
                                        "expected Polygon or MultiPolygon, got Point"]
    assert not shapely.has_z(out.geometry[7])


def test_parse_geometry_names_what_is_wrong():
    assert parse_geometry("121.5, 31.2").equals(shapely.Point(121.5, 31.2))
    assert parse_geometry('{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}').x == 1
    for text, message in [("POLYGON((0 0,1 1,1 0,0 1,0 0))", "Self-intersection"), ("POINT EMPTY", "empty"),
                          ("nonsense", "not WKT, GeoJSON or x,y"), ('{"type": "Polygon"}', "coordinates")]:
        with pytest.raises(ValueError, match=message):
            parse_geometry(text)
    with pytest.raises(ValueError, match="expected Point"):
        parse_geometry("LINESTRING(0 0, 1 1)", allowed=("Point",))


# ----------------------------------------------------------------------------- import, re-import

def test_import_geojson_then_reimport_updates_instead_of_duplicating(settings, db, tmp_path):
    sample = subset(10)  # 145 real buildings
    path = tmp_path / "lujiazui.geojson"
    sample.to_file(path, driver="GeoJSON")

    first = run_cli(settings, "import", "buildings", path, "--id-field", "osm_id", "--height-field", "height")
    assert first.returncode == 0, first.stdout + first.stderr
    assert summary(first) == {"read": 145, "stored": 145, "inserted": 145, "updated": 0, "unchanged": 0,
                              "repaired": 0, "rejected": 0}
    assert db.execute("SELECT count(*) FROM buildings").fetchone()[0] == 145
    stored = stored_geometries(db)
    assert set(stored) == set(sample["ext_id"])
    assert max(max_offset_m(g, stored[e]) for e, g in zip(sample["ext_id"], sample.geometry)) < 0.001
    heights = dict(db.execute("SELECT ext_id, height FROM buildings WHERE height IS NOT NULL").fetchall())
    expected = {e: h for e, h in zip(sample["ext_id"], sample["height"]) if pd.notna(h)}
    assert heights == pytest.approx(expected)
    # OSM attributes travel as attributes, the credit among them.
    assert db.execute("SELECT count(*) FROM buildings WHERE properties->>'source' = 'openstreetmap.org'"
                      ).fetchone()[0] == 145

    again = run_cli(settings, "import", "buildings", path, "--id-field", "osm_id")
    assert summary(again)["unchanged"] == 145 and summary(again)["inserted"] == 0

    sample.loc[:4, "name"] = [f"renamed {i}" for i in range(5)]
    sample.loc[5, "height"] = 123.5
    sample.to_file(path, driver="GeoJSON")
    changed = run_cli(settings, "import", "buildings", path, "--id-field", "osm_id")
    assert changed.returncode == 0
    assert summary(changed) == {"read": 145, "stored": 145, "inserted": 0, "updated": 6, "unchanged": 139,
                                "repaired": 0, "rejected": 0}
    assert db.execute("SELECT count(*) FROM buildings").fetchone()[0] == 145
    assert db.execute("SELECT name FROM buildings WHERE ext_id = %s", (sample["ext_id"][2],)).fetchone()[0] \
        == "renamed 2"
    assert db.execute("SELECT height FROM buildings WHERE ext_id = %s", (sample["ext_id"][5],)).fetchone()[0] \
        == 123.5


def test_import_gpkg_shapefile_csv_in_cgcs2000_and_gauss_kruger(settings, db, tmp_path):
    sample = subset(25)  # 58 buildings
    n = len(sample)
    original = dict(zip(sample["ext_id"], sample.geometry))

    def check(proc, *, updated_ok=True):
        assert proc.returncode == 0, proc.stdout + proc.stderr
        s = summary(proc)
        assert (s["read"], s["stored"], s["rejected"]) == (n, n, 0)
        assert db.execute("SELECT count(*) FROM buildings").fetchone()[0] == n
        stored = stored_geometries(db)
        worst = max(max_offset_m(original[e], stored[e]) for e in original)
        assert worst < 0.01, f"moved by {worst} m"
        return s

    # GeoPackage with two layers: the layer must be chosen.
    gpkg = tmp_path / "district.gpkg"
    sample[["ext_id", "name", "height", "geometry"]].to_file(gpkg, layer="footprints", driver="GPKG")
    gpd.GeoDataFrame({"n": [1]}, geometry=[shapely.Point(121.5, 31.2)], crs=4326).to_file(
        gpkg, layer="other", driver="GPKG")
    with pytest.raises(FileFormatError, match="choose one with --layer"):
        import_file(settings.database_url, "buildings", gpkg)
    assert check(run_cli(settings, "import", "buildings", gpkg, "--layer", "footprints"))["inserted"] == n

    # Shapefile in a CGCS2000 3-degree Gauss-Krüger zone (northing/easting CRS, written x/y).
    shp = tmp_path / "gk.shp"
    sample[["ext_id", "name", "height", "geometry"]].to_crs(4549).to_file(shp, driver="ESRI Shapefile")
    s = check(run_cli(settings, "import", "buildings", shp))
    assert s["inserted"] == 0  # same ids: updated or unchanged, never new rows

    # GeoJSON in CGCS2000 geographic (EPSG:4490, with a crs member).
    cgcs = tmp_path / "cgcs2000.geojson"
    sample[["ext_id", "name", "height", "geometry"]].to_crs(4490).to_file(cgcs, driver="GeoJSON")
    assert "EPSG::4490" in cgcs.read_text()
    proc = run_cli(settings, "import", "buildings", cgcs)
    assert "in EPSG:4490 (file)" in proc.stdout
    check(proc)

    # CSV with WKT in EPSG:4549: no CRS in the file, so --crs is needed.
    csv = tmp_path / "gk.csv"
    gk = sample.to_crs(4549)
    pd.DataFrame({"ext_id": gk["ext_id"], "name": gk["name"], "WKT": gk.geometry.to_wkt()}).to_csv(csv, index=False)
    no_crs = run_cli(settings, "import", "buildings", csv)
    assert no_crs.returncode == 1 and "pass --crs" in no_crs.stderr
    proc = run_cli(settings, "import", "buildings", csv, "--crs", "EPSG:4549")
    assert "in EPSG:4549 (option)" in proc.stdout
    check(proc)

    with pytest.raises(UnknownCrsError, match="unknown CRS 'EPSG:99999'"):
        import_file(settings.database_url, "buildings", csv, crs="EPSG:99999")


def _feature(fid, geometry, **props):
    return {"type": "Feature", "properties": {"bid": fid, **props}, "geometry": geometry}


def test_broken_features_are_each_reported_and_the_rest_stored(settings, db, tmp_path):
    real = subset(50)
    poly = [json.loads(shapely.to_geojson(g)) for g in real.geometry]
    x0, y0, x1, y1 = real.geometry[1].bounds
    bowtie = {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y1], [x1, y0], [x0, y1], [x0, y0]]]}
    cx, cy = real.geometry[6].centroid.coords[0]
    spike = {"type": "Polygon", "coordinates": [[[cx, cy], [cx + 1e-4, cy], [cx + 1e-4, cy + 1e-4],
                                                 [cx + 5e-5, cy + 1e-4], [cx + 5e-5, cy + 3e-3],
                                                 [cx + 5e-5, cy + 1e-4], [cx, cy + 1e-4], [cx, cy]]]}
    features = [
        _feature("ok-0", poly[0], height=10),
        _feature("bowtie-1", bowtie),
        _feature("empty-2", {"type": "Polygon", "coordinates": []}),
        _feature("point-3", {"type": "Point", "coordinates": [cx, cy]}),
        _feature("null-4", None),
        _feature("tall-5", poly[5], height="tall"),
        _feature("ok-0", poly[3]),
        _feature("spike-7", spike),
        _feature("ok-8", poly[8], height=30),
    ]
    path = tmp_path / "broken.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    report = tmp_path / "report.json"

    proc = run_cli(settings, "import", "buildings", path, "--id-field", "bid", "--report", report)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert summary(proc) == {"read": 9, "stored": 3, "inserted": 3, "updated": 0, "unchanged": 0, "repaired": 1,
                             "rejected": 6}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("rejected", "repaired"))]
    assert len(lines) == 7, proc.stdout
    assert lines[0].startswith("repaired feature #1 (id 'bowtie-1'): repaired with make_valid: Self-intersection")
    assert lines[1:6] == [
        "rejected feature #2 (id 'empty-2'): empty geometry",
        "rejected feature #3 (id 'point-3'): expected Polygon or MultiPolygon, got Point",
        "rejected feature #4 (id 'null-4'): null geometry",
        "rejected feature #5 (id 'tall-5'): height 'tall' is not a number",
        "rejected feature #6 (id 'ok-0'): duplicate id 'ok-0' (also feature #0)",
    ]
    assert lines[6].startswith("rejected feature #7 (id 'spike-7'): invalid geometry (Self-intersection")
    assert "make_valid would move the outline" in lines[6]
    assert sorted(r[0] for r in db.execute("SELECT ext_id FROM buildings")) == ["bowtie-1", "ok-0", "ok-8"]
    repaired = db.execute("SELECT ST_GeometryType(geom), ST_NumGeometries(geom), ST_IsValid(geom) FROM buildings "
                          "WHERE ext_id = 'bowtie-1'").fetchone()
    assert repaired == ("ST_MultiPolygon", 2, True)
    full = json.loads(report.read_text())
    assert [r["index"] for r in full["rejected"]] == [2, 3, 4, 5, 6, 7]
    assert full["repaired"][0]["id"] == "bowtie-1"

    # A dry run checks the same way and writes nothing.
    db.execute("TRUNCATE buildings RESTART IDENTITY CASCADE")
    dry = import_file(settings.database_url, "buildings", path, id_field="bid", dry_run=True)
    assert (dry.inserted, len(dry.rejected), len(dry.repaired)) == (3, 6, 1)
    assert db.execute("SELECT count(*) FROM buildings").fetchone()[0] == 0


def test_buildings_get_their_area_and_components_their_building_spatially(settings, db, tmp_path):
    sample = subset(5)  # 290 buildings
    bpath = tmp_path / "b.gpkg"
    sample[["ext_id", "name", "height", "geometry"]].to_file(bpath, driver="GPKG")
    # Buildings first: no areas yet, so no area; importing the areas afterwards derives them.
    assert run_cli(settings, "import", "buildings", bpath).returncode == 0
    assert db.execute("SELECT count(*) FROM buildings WHERE area_id IS NULL").fetchone()[0] == len(sample)
    areas = import_file(settings.database_url, "areas", DEMO_AREAS)
    assert (areas.inserted, areas.rejected) == (15, [])
    assert areas.derived == {"building_areas": len(sample)}  # parents are given in the file

    grids = gpd.read_file(DEMO_AREAS)
    grids = grids[grids["level"] == "grid"].reset_index(drop=True)
    points = sample.geometry.representative_point()
    expected = {}
    for ext_id, p in zip(sample["ext_id"], points):
        holders = grids[grids.intersects(p)]
        expected[ext_id] = holders["code"].iloc[int(np.argmin(shapely.area(holders.geometry.values)))]
    got = dict(db.execute("SELECT b.ext_id, a.code FROM buildings b JOIN areas a ON a.id = b.area_id").fetchall())
    assert got == expected
    parents = dict(db.execute("SELECT c.code, p.code FROM areas c JOIN areas p ON p.id = c.parent_id").fetchall())
    assert parents["demo-02-01-02"] == "demo-02-01" and parents["demo-02"] == "demo" and len(parents) == 14

    # Components from a CSV with lon/lat columns: inside a building, on a facade, in the street.
    rows = []
    for i, g in enumerate(sample.geometry[:30]):
        inside = g.representative_point()
        outside = shapely.Point(g.bounds[2] + 0.0003, g.bounds[3] + 0.0003)
        rows += [{"id": f"in-{i}", "kind": "smoke_detector", "lon": inside.x, "lat": inside.y},
                 {"id": f"out-{i}", "kind": "hydrant", "lon": outside.x, "lat": outside.y}]
    rows.append({"id": "bad-kind", "kind": "unicorn", "lon": 121.5, "lat": 31.24})
    cpath = tmp_path / "components.csv"
    pd.DataFrame(rows).to_csv(cpath, index=False)
    proc = run_cli(settings, "import", "components", cpath)
    assert proc.returncode == 3
    assert "rejected feature #60 (id 'bad-kind'): unknown component kind 'unicorn'; known:" in proc.stdout
    tree = shapely.STRtree(sample.geometry.values)
    expected_building = {}
    for r in rows[:-1]:
        hits = tree.query(shapely.Point(r["lon"], r["lat"]), predicate="intersects")
        expected_building[r["id"]] = min(hits, key=lambda k: sample.geometry.values[k].area) if len(hits) else None
    got = dict(db.execute("SELECT c.ext_id, b.ext_id FROM components c LEFT JOIN buildings b ON b.id = c.building_id"
                          ).fetchall())
    assert got == {k: (sample["ext_id"][v] if v is not None else None) for k, v in expected_building.items()}
    assert all(got[f"in-{i}"] is not None for i in range(30))
    # Every component has its (derived) area too.
    assert db.execute("SELECT count(*) FROM components WHERE area_id IS NULL OR NOT area_derived").fetchone()[0] == 0


def test_export_geojson_and_geopackage_then_import_back_unchanged(settings, db, tmp_path):
    sample = subset(20)
    path = tmp_path / "in.geojson"
    sample.to_file(path, driver="GeoJSON")
    assert run_cli(settings, "import", "buildings", path).returncode == 0
    n = len(sample)

    out_json, out_gpkg = tmp_path / "out.geojson", tmp_path / "out.gpkg"
    proc = run_cli(settings, "export", "buildings", out_json)
    assert proc.returncode == 0 and f"wrote {n} features" in proc.stdout
    assert export_layer(settings.database_url, "buildings", out_gpkg, crs="EPSG:4490") == (n, "GPKG")
    assert pyogrio.read_info(out_gpkg)["crs"] == "EPSG:4490"
    exported = read_features(out_json).frame
    assert len(exported) == n and {"ext_id", "height", "name:en", "source"} <= set(exported.columns)

    back = run_cli(settings, "import", "buildings", out_json)
    assert summary(back)["unchanged"] == n, back.stdout
    back = import_file(settings.database_url, "buildings", out_gpkg)
    assert back.inserted == 0 and back.updated + back.unchanged == n and back.crs == "EPSG:4490"
    assert db.execute("SELECT count(*) FROM buildings").fetchone()[0] == n
