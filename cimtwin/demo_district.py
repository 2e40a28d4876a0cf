"""The demo district: real buildings around the Bund and Lujiazui, Shanghai, so that a
newcomer's first `cimtwin up` shows a real place.

- Buildings: ``<data_dir>/shanghai_huangpu_lujiazui_osm_buildings.geojson``, 1,450 OSM
  footprints with heights. © OpenStreetMap contributors, ODbL 1.0.
- Areas: ``demo_data/bund_lujiazui_areas.geojson``, a district → 2 streets → 4 communities
  → 8 grids, hand-drawn along the Huangpu around the buildings. They are illustrative,
  not official boundaries, and say so in their attributes.
- Components: ``demo_data/bund_lujiazui_components.geojson``, 40 hydrants, manhole covers,
  cameras, lamps, … placed next to, on or inside real buildings (illustrative).
- A few responsible parties and their assignments, and locations for the demo devices.

Everything goes through the same import pipeline as ``cimtwin import`` in bulk, and
re-running changes nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import shapely

from cimtwin.settings import Settings
from cimtwin.store import blocks as store
from cimtwin.store.db import connect
from cimtwin.twin.importer import ImportReport, import_file

log = logging.getLogger("cimtwin.demo")

DEMO_DATA = Path(__file__).with_name("demo_data")
BUILDINGS_FILE = "shanghai_huangpu_lujiazui_osm_buildings.geojson"
AREAS_FILE = DEMO_DATA / "bund_lujiazui_areas.geojson"
COMPONENTS_FILE = DEMO_DATA / "bund_lujiazui_components.geojson"
OSM_CREDIT = "© OpenStreetMap contributors (ODbL 1.0)"

_DUTY = [{"label": "24h duty desk (placeholder)", "phone": "+86-21-0000-0000"}]
DEMO_PARTIES = [
    {"code": "demo-office-bund", "name": "外滩街道办事处（示意） Bund street office (illustrative)",
     "kind": "street_office", "contacts": _DUTY},
    {"code": "demo-office-lujiazui", "name": "陆家嘴街道办事处（示意） Lujiazui street office (illustrative)",
     "kind": "street_office", "contacts": _DUTY},
    {"code": "demo-fire-brigade", "name": "区消防救援支队（示意） District fire and rescue (illustrative)",
     "kind": "department", "contacts": _DUTY},
    {"code": "demo-drainage", "name": "区排水管理所（示意） District drainage office (illustrative)",
     "kind": "department", "contacts": _DUTY},
    {"code": "demo-pm-shanghai-tower", "name": "上海中心物业（示意） Shanghai Tower property management (illustrative)",
     "kind": "property_manager", "contacts": _DUTY},
]
DEMO_ASSIGNMENTS = [
    {"party_code": "demo-office-bund", "area_code": "demo-01"},
    {"party_code": "demo-office-lujiazui", "area_code": "demo-02"},
    {"party_code": "demo-fire-brigade", "area_code": "demo", "component_kind": "hydrant"},
    {"party_code": "demo-drainage", "area_code": "demo", "component_kind": "manhole_cover"},
    {"party_code": "demo-pm-shanghai-tower", "building_ext_id": "165792123"},
]
# The demo air-quality devices stand by these demo components (lamp posts, a valve).
DEVICE_SPOTS = {"aq-0001": "demo-street-lamp-01", "aq-0002": "demo-street-lamp-04", "aq-0003": "demo-gas-valve-01"}


@dataclass
class DemoDistrict:
    reports: list[ImportReport] = field(default_factory=list)
    parties: int = 0
    assignments_added: int = 0
    devices_located: int = 0
    skipped: str | None = None

    def summary(self) -> str:
        if self.skipped:
            return f"demo district skipped: {self.skipped}"
        parts = [f"{r.kind} {r.read} ({r.inserted} new, {r.updated} updated, {r.unchanged} unchanged"
                 + (f", {len(r.rejected)} rejected" if r.rejected else "") + ")" for r in self.reports]
        return f"demo district Bund–Lujiazui: {'; '.join(parts)}; {self.parties} parties. Buildings {OSM_CREDIT}"


def buildings_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / BUILDINGS_FILE


def load_demo_district(settings: Settings) -> DemoDistrict:
    """Load (or refresh) the demo district; skipped with a warning if the shared data is missing."""
    out = DemoDistrict()
    source = buildings_path(settings)
    if not source.is_file():
        out.skipped = f"{source} not found (set CIMTWIN_DATA_DIR to the shared data directory)"
        log.warning(out.summary())
        return out
    with connect(settings.database_url, application_name="cimtwin-demo") as conn:
        out.reports.append(import_file(settings.database_url, "areas", AREAS_FILE, conn=conn))
        out.reports.append(import_file(settings.database_url, "buildings", source, id_field="osm_id",
                                       height_field="height", conn=conn))
        out.reports.append(import_file(settings.database_url, "components", COMPONENTS_FILE, conn=conn))
        with conn.transaction():
            out.parties = len(store.upsert_parties(conn, DEMO_PARTIES))
            out.assignments_added = sum(store.ensure_assignment(conn, **a) for a in DEMO_ASSIGNMENTS)
            spots = _component_points()
            points = {dev: shapely.to_wkb(spots[comp]) for dev, comp in DEVICE_SPOTS.items() if comp in spots}
            out.devices_located = store.set_device_locations(conn, "demo", points)
    for r in out.reports:
        for issue in r.rejected:
            log.warning("demo %s: %s", r.kind, issue)
    log.info(out.summary())
    return out


def _component_points() -> dict[str, shapely.Point]:
    data = json.loads(COMPONENTS_FILE.read_text(encoding="utf-8"))
    return {f["properties"]["ext_id"]: shapely.geometry.shape(f["geometry"]) for f in data["features"]}
