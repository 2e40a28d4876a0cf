"""The demo district that `cimtwin up` / `cimtwin demo` load: the real OSM buildings around the Bund
and Lujiazui (© OpenStreetMap contributors, ODbL), illustrative areas and components; bulk and idempotent."""

from __future__ import annotations

import time

from cimtwin.demo import load_demo
from cimtwin.demo_district import load_demo_district

COUNTS = """SELECT (SELECT count(*) FROM areas), (SELECT count(*) FROM buildings), (SELECT count(*) FROM components),
                   (SELECT count(*) FROM parties), (SELECT count(*) FROM party_assignments),
                   (SELECT count(*) FROM devices WHERE geom IS NOT NULL)"""


def test_demo_loads_a_real_place_quickly_and_again_changes_nothing(settings, db):
    started = time.monotonic()
    assert load_demo(settings) == 3  # the demo devices, as before
    first = time.monotonic() - started
    assert db.execute(COUNTS).fetchone() == (15, 1450, 40, 5, 5, 3)
    assert first < 20, f"the demo took {first:.1f} s"
    # Every building has its area; the areas nest district → street → community → grid.
    assert db.execute("SELECT count(*) FROM buildings WHERE area_id IS NULL").fetchone()[0] == 0
    levels = db.execute("""SELECT a.level, p.level, count(*) FROM areas a LEFT JOIN areas p ON p.id = a.parent_id
                           GROUP BY 1, 2 ORDER BY 3""").fetchall()
    assert sorted(levels) == [("community", "street", 4), ("district", None, 1), ("grid", "community", 8),
                              ("street", "district", 2)]
    assert db.execute("SELECT bool_and((properties->>'illustrative')::boolean) FROM areas").fetchone()[0]
    tower = db.execute("SELECT name, height FROM buildings WHERE ext_id = '165792123'").fetchone()
    assert tower == ("上海中心大厦", 632.0)
    indoor = db.execute("""SELECT count(*) FROM components
                           WHERE kind IN ('elevator', 'smoke_detector', 'extinguisher', 'camera')
                             AND building_id IS NULL""").fetchone()[0]
    assert indoor == 0

    again = load_demo_district(settings)
    assert [(r.kind, r.inserted, r.updated, r.unchanged, len(r.rejected)) for r in again.reports] == [
        ("areas", 0, 0, 15, 0), ("buildings", 0, 0, 1450, 0), ("components", 0, 0, 40, 0)]
    assert again.assignments_added == 0 and again.devices_located == 0
    assert db.execute(COUNTS).fetchone() == (15, 1450, 40, 5, 5, 3)


def test_demo_without_the_shared_data_is_skipped_not_fatal(settings, db, tmp_path):
    result = load_demo_district(settings.model_copy(update={"data_dir": tmp_path}))
    assert result.skipped and "CIMTWIN_DATA_DIR" in result.skipped
    assert db.execute("SELECT count(*) FROM buildings").fetchone()[0] == 0
