"""`cimtwin import cityjson` as a real subprocess, on real CityJSON 2.0 files from
cityjson/cjio's test data (MIT; the Delft LoD1 model is made from Dutch BGT/AHN open
data, the Rotterdam LoD2 subset from Rotterdam open data), read from ../shared/data."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import shapely
from cimtwin.geo.cityjson import horizontal_crs, read_cityjson_buildings

from .blocks_data import run_cli, stored_geometries

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
DELFT = DATA / "delft_cityjson2_lod1.city.json"
ROTTERDAM = DATA / "rotterdam_subset_lod2.city.json"

pytestmark = pytest.mark.skipif(not (DELFT.exists() and ROTTERDAM.exists()), reason="shared CityJSON data missing")

SUMMARY = re.compile(r"read (\d+) features .* stored (\d+): (\d+) inserted, (\d+) updated, (\d+) unchanged; "
                     r"(\d+) repaired; (\d+) rejected")


def summary(proc) -> dict:
    m = SUMMARY.search(proc.stdout)
    assert m, f"no summary line in:\n{proc.stdout}\n{proc.stderr}"
    keys = ("read", "stored", "inserted", "updated", "unchanged", "repaired", "rejected")
    return dict(zip(keys, map(int, m.groups())))


def building_ids(path: Path) -> set[str]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    return {k for k, o in doc["CityObjects"].items() if o["type"] == "Building"}


# ----------------------------------------------------------------------------- reader (no database)

def test_compound_crs_gives_its_horizontal_part():
    ref, note = horizontal_crs("https://www.opengis.net/def/crs/EPSG/0/7415")
    assert ref.code == "EPSG:28992" and "NAP" in note
    assert horizontal_crs("urn:ogc:def:crs:EPSG::7415")[0].code == "EPSG:28992"
    assert horizontal_crs("EPSG:28992") == (ref, None)


def test_reader_footprints_and_heights_in_rd_new():
    delft = read_cityjson_buildings(DELFT)
    assert len(delft) == 160 and delft.crs.code == "EPSG:28992" and delft.crs_origin == "file"
    assert set(delft.lod) == {"1"}
    assert all(g is not None and g.is_valid and g.geom_type in ("Polygon", "MultiPolygon") for g in delft.footprints)
    assert not any(shapely.has_z(g) for g in delft.footprints)
    # RD New metres, inside the file's own geographicalExtent
    minx, miny, maxx, maxy = shapely.total_bounds(delft.footprints)
    assert 84616 <= minx < maxx <= 85141 and 447422 <= miny < maxy <= 447751
    # measuredHeight where the file has it, else the solid's z extent
    measured = np.array([a.get("measuredHeight", np.nan) for a in delft.attributes], dtype=float)
    has = np.isfinite(measured)
    assert np.allclose(delft.height[has], measured[has])
    assert np.allclose(delft.height[~has], (delft.roof_z - delft.ground_z)[~has])
    assert ((delft.height > 0) & (delft.height < 200)).all()

    rotterdam = read_cityjson_buildings(ROTTERDAM, crs="EPSG:28992")
    assert len(rotterdam) == 16 and set(rotterdam.lod) == {"2"} and rotterdam.crs_origin == "option"
    assert np.allclose(rotterdam.height, rotterdam.roof_z - rotterdam.ground_z)
    assert all(g.is_valid and g.area > 20 for g in rotterdam.footprints)


# ----------------------------------------------------------------------------- CLI + database

def test_import_delft_lod1_then_reimport_updates(settings, db, tmp_path):
    first = run_cli(settings, "import", "cityjson", DELFT)
    assert first.returncode == 0, first.stdout + first.stderr
    assert summary(first) == {"read": 160, "stored": 160, "inserted": 160, "updated": 0, "unchanged": 0,
                              "repaired": 0, "rejected": 0}
    assert "EPSG:28992 (file)" in first.stdout and "NAP height" in first.stdout
    assert db.execute("SELECT count(*) FROM buildings").fetchone()[0] == 160
    stored = stored_geometries(db)
    assert set(stored) == building_ids(DELFT)
    assert all(g.is_valid and g.geom_type in ("Polygon", "MultiPolygon") for g in stored.values())
    minx, miny, maxx, maxy = shapely.total_bounds(np.array(list(stored.values()), dtype=object))
    assert 4.3 < minx < maxx < 4.4 and 51.99 < miny < maxy < 52.02  # central Delft
    heights = [h for (h,) in db.execute("SELECT height FROM buildings").fetchall()]
    assert all(h is not None and 0 < h < 200 for h in heights)
    props = db.execute("SELECT properties FROM buildings WHERE ext_id = 'b1105d28c-00ba-11e6-b420-2bdcc4ab5d7f'"
                       ).fetchone()[0]
    assert props["lod"] == "1" and props["identificatiebagpnd"] == "503100000000035"
    assert props["measuredHeight"] == 6 and props["ground_z"] < props["roof_z"]

    again = run_cli(settings, "import", "cityjson", DELFT)
    assert again.returncode == 0, again.stdout + again.stderr
    assert summary(again)["unchanged"] == 160 and summary(again)["inserted"] == 0

    # the same model with one building's measuredHeight changed: updated in place, not duplicated
    doc = json.loads(DELFT.read_text(encoding="utf-8"))
    doc["CityObjects"]["b1105d28c-00ba-11e6-b420-2bdcc4ab5d7f"]["attributes"]["measuredHeight"] = 7.5
    changed_path = tmp_path / "delft_changed.city.json"
    changed_path.write_text(json.dumps(doc), encoding="utf-8")
    changed = run_cli(settings, "import", "cityjson", changed_path)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert summary(changed) == {"read": 160, "stored": 160, "inserted": 0, "updated": 1, "unchanged": 159,
                                "repaired": 0, "rejected": 0}
    assert db.execute("SELECT count(*) FROM buildings").fetchone()[0] == 160
    assert db.execute("SELECT height FROM buildings WHERE ext_id = 'b1105d28c-00ba-11e6-b420-2bdcc4ab5d7f'"
                      ).fetchone()[0] == 7.5


def test_import_rotterdam_lod2_needs_and_takes_crs(settings, db, tmp_path):
    # the file names no CRS and its coordinates are RD New metres: a clear error, nothing stored
    bare = run_cli(settings, "import", "cityjson", ROTTERDAM)
    assert bare.returncode == 1
    assert "names no CRS" in bare.stderr and "--crs" in bare.stderr
    assert db.execute("SELECT count(*) FROM buildings").fetchone()[0] == 0

    proc = run_cli(settings, "import", "cityjson", ROTTERDAM, "--crs", "EPSG:28992")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary(proc) == {"read": 16, "stored": 16, "inserted": 16, "updated": 0, "unchanged": 0,
                             "repaired": 0, "rejected": 0}
    rows = db.execute("SELECT ext_id, height, ST_X(ST_Centroid(geom)), ST_Y(ST_Centroid(geom)), "
                      "ST_IsValid(geom), properties->>'lod' FROM buildings").fetchall()
    assert {r[0] for r in rows} == building_ids(ROTTERDAM)
    for ext_id, height, lon, lat, valid, lod in rows:
        assert valid and lod == "2"
        assert 5 < height < 60, (ext_id, height)  # LoD2 roofs: max z - min z
        assert 4.40 < lon < 4.55 and 51.88 < lat < 51.95, (ext_id, lon, lat)  # Rotterdam

    # a compound CRS works as well and changes nothing
    compound = run_cli(settings, "import", "cityjson", ROTTERDAM, "--crs", "EPSG:7415")
    assert compound.returncode == 0, compound.stdout + compound.stderr
    assert summary(compound)["unchanged"] == 16
    assert db.execute("SELECT count(*) FROM buildings").fetchone()[0] == 16


def test_bad_crs_is_named_and_nothing_is_written(settings, db, tmp_path):
    proc = run_cli(settings, "import", "cityjson", DELFT, "--crs", "EPSG:99999")
    assert proc.returncode == 1
    assert "EPSG:99999" in proc.stderr and "unknown CRS" in proc.stderr
    assert db.execute("SELECT count(*) FROM buildings").fetchone()[0] == 0

    not_city = tmp_path / "not.city.json"
    shutil.copy(DATA / "senml_rfc8428_examples.json", not_city)
    proc = run_cli(settings, "import", "cityjson", not_city)
    assert proc.returncode == 1 and "not CityJSON" in proc.stderr
