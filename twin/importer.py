"""Import areas, buildings and components from vector files into the block-data model.

One pipeline for the ``cimtwin import`` command and the demo loader: read the file
(:mod:`cimtwin.geo.io`), map its columns to the model, check every geometry
(:mod:`cimtwin.geo.checks`) in the file's CRS, reproject to EPSG:4326, check again,
and upsert in one transaction (:mod:`cimtwin.store.blocks`). Every feature ends up
inserted, updated, unchanged or rejected with a reason; none is dropped silently.
Re-importing a file upserts on the features' ids (``--id-field``), so it updates
rather than duplicates.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import shapely

from cimtwin.geo.checks import POLYGONAL, check_geometries, in_lonlat_range
from cimtwin.geo.crs import CRS84, CrsLike
from cimtwin.geo.io import FileFormatError, SourceFeatures, read_features, to_lonlat
from cimtwin.store import blocks as store
from cimtwin.store.db import connect

KINDS = ("areas", "buildings", "components")
AREA_LEVELS = ("district", "street", "community", "grid")  # as schemas.blocks.AREA_LEVELS
Progress = Callable[[str, int, int], None]  # (stage, done, total)

_ID_CANDIDATES = {
    "areas": ("code", "adcode", "area_code", "id"),
    "buildings": ("ext_id", "id", "osm_id", "building_id", "bldg_id", "code", "fid"),
    "components": ("ext_id", "id", "code", "component_id", "fid"),
}
_NAME = ("name", "name:zh", "name_zh", "name:en", "name_en")
_ADDRESS = ("address", "addr", "addr_full", "addr:full")
_STREET = ("addr_street", "addr:street")
_HOUSENUMBER = ("addr_housenumber", "addr:housenumber")
_USE = ("use", "building_use", "usage")
_HEIGHT = ("height", "building_height", "height_m")
_MIN_HEIGHT = ("min_height",)
_FLOORS_ABOVE = ("floors_above", "floors", "building:levels", "building_levels", "levels", "storeys")
_FLOORS_BELOW = ("floors_below", "building:levels:underground", "levels_underground")
_LEVEL = ("level", "area_level")
_PARENT = ("parent_code", "parent")
_KIND = ("kind", "component_kind", "type", "category")
_CHUNK = 2000
# Columns `cimtwin export` writes that describe the stored row rather than the feature.
_EXPORT_ONLY = {
    "areas": ("id", "parent_id", "parent_derived", "created_at", "updated_at"),
    "buildings": ("id", "area_id", "area_code", "area_derived", "created_at", "updated_at"),
    "components": ("id", "kind_name_en", "kind_name_zh", "area_id", "area_code", "area_derived", "building_id",
                   "building_ext_id", "building_derived", "floor_id", "room_id", "created_at", "updated_at"),
}


@dataclass
class FeatureIssue:
    index: int
    id: str | None
    reason: str

    def __str__(self) -> str:
        who = f"feature #{self.index}" + (f" (id {self.id!r})" if self.id is not None else "")
        return f"{who}: {self.reason}"


@dataclass
class ImportReport:
    kind: str
    path: str
    layer: str | None
    crs: str
    crs_origin: str
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[FeatureIssue] = field(default_factory=list)
    repaired: list[FeatureIssue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    derived: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    def as_dict(self) -> dict:
        return {"kind": self.kind, "path": self.path, "layer": self.layer, "crs": self.crs,
                "crs_origin": self.crs_origin, "read": self.read, "inserted": self.inserted,
                "updated": self.updated, "unchanged": self.unchanged, "dry_run": self.dry_run,
                "rejected": [vars(r) for r in self.rejected], "repaired": [vars(r) for r in self.repaired],
                "derived": self.derived, "notes": self.notes}


# ----------------------------------------------------------------------------- columns

class _Columns:
    """Case-insensitive column lookup that remembers which columns the model used."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self.by_lower = {str(c).lower(): c for c in frame.columns if c != frame.geometry.name}
        self.used: set[str] = set()

    def find(self, names: tuple[str, ...]) -> str | None:
        for name in names:
            col = self.by_lower.get(name.lower())
            if col is not None:
                self.used.add(col)
                return col
        return None

    def require(self, name: str, what: str) -> str:
        col = self.by_lower.get(name.lower())
        if col is None:
            columns = ", ".join(map(str, self.by_lower.values()))
            raise FileFormatError(f"no column {name!r} for {what}; columns: {columns}")
        self.used.add(col)
        return col

    def values(self, col: str | None) -> list:
        return [None] * len(self.frame) if col is None else list(self.frame[col])

    def rest(self) -> list[str]:
        return [c for c in self.by_lower.values() if c not in self.used]


def _blank(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if value is pd.NaT or (not isinstance(value, (str, bytes, list, dict)) and pd.isna(value)):
        return True
    return isinstance(value, str) and value.strip() == ""


def _text(value) -> str | None:
    if _blank(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (np.integer,)):
        return str(int(value))
    return str(value).strip()


def _number(value, name: str, *, integer: bool = False, minimum: float | None = 0.0):
    """(value, error) for a numeric attribute; blank is (None, None)."""
    if _blank(value):
        return None, None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, f"{name} {value!r} is not a number"
    if not math.isfinite(number):
        return None, f"{name} {value!r} is not a finite number"
    if minimum is not None and number < minimum:
        return None, f"{name} {number:g} is negative"
    if integer:
        if not number.is_integer():
            return None, f"{name} {value!r} is not a whole number"
        return int(number), None
    return number, None


def _jsonable(value):
    if _blank(value):
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (datetime, date, pd.Timestamp)):
        return value.isoformat()
    if isinstance(value, (int, str)):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _attributes(columns: dict[str, list], i: int) -> dict:
    out = {}
    for name, values in columns.items():
        value = _jsonable(values[i])
        if value is not None:
            out[name] = value
    return out


def _geometry_key(wkb: bytes) -> str:
    return "geom:" + hashlib.sha1(wkb).hexdigest()[:16]


# ----------------------------------------------------------------------------- pipeline

def _resolve_crs(features: SourceFeatures, report: ImportReport):
    if features.crs is not None:
        return features.crs
    geoms = features.frame.geometry.values
    present = np.asarray([g is not None and not g.is_empty for g in geoms], dtype=bool)
    if present.any() and in_lonlat_range(np.asarray(geoms, dtype=object)[present]).all():
        report.crs, report.crs_origin = CRS84.code, "assumed"
        report.notes.append("the file names no CRS; its coordinates were taken as WGS84 lon/lat "
                            "(pass --crs to say otherwise)")
        return CRS84
    raise FileFormatError("the file names no CRS and its coordinates are not lon/lat; pass --crs "
                          "(e.g. --crs EPSG:4549)")


def _check(features: SourceFeatures, kind: str, src, progress: Progress | None,
           report: ImportReport) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per feature: lon/lat geometry (or None), rejection reason (or None), repair note (or None)."""
    n = len(features)
    allowed = POLYGONAL if kind in ("areas", "buildings") else None
    geoms = np.asarray(features.frame.geometry.values, dtype=object)
    out = np.full(n, None, dtype=object)
    reason = features.parse_errors.copy()
    repaired = np.full(n, None, dtype=object)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        todo = np.array([r is None for r in reason[sl]], dtype=bool)
        idx = np.arange(sl.start, sl.stop)[todo]
        if len(idx):
            first = check_geometries(geoms[idx], allowed=allowed)
            reason[idx] = first.reason
            repaired[idx] = first.repaired
            ok = idx[first.ok]
            if len(ok):
                try:
                    with np.errstate(all="ignore"):
                        projected = to_lonlat(first.geometry[first.ok], src=src)
                except Exception as exc:  # a PROJ failure for the whole chunk
                    raise FileFormatError(f"cannot reproject from {report.crs}: {exc}") from None
                in_range = in_lonlat_range(projected)
                second = check_geometries(projected, allowed=allowed)
                for j, i in enumerate(ok):
                    if not in_range[j] or (second.reason[j] is not None and "not finite" in second.reason[j]):
                        reason[i] = (f"coordinates fall outside lon/lat after reprojection from {report.crs} "
                                     f"(is the CRS right? pass --crs)")
                    elif second.reason[j] is not None:
                        reason[i] = f"{second.reason[j]} (after reprojection to EPSG:4326)"
                    else:
                        out[i] = second.geometry[j]
                        if second.repaired[j] is not None:
                            note = f"{second.repaired[j]} (after reprojection to EPSG:4326)"
                            repaired[i] = note if repaired[i] is None else f"{repaired[i]}; {note}"
        if progress:
            progress("check", sl.stop, n)
    return out, reason, repaired


def _map_rows(kind: str, features: SourceFeatures, geoms: np.ndarray, reason: np.ndarray, *,
              id_field: str | None, height_field: str | None, area_field: str | None,
              building_field: str | None, level: str | None, component_kind: str | None,
              report: ImportReport) -> tuple[list[tuple], list[str | None]]:
    """Stage rows for the store (in its column order) and each feature's id."""
    frame = features.frame
    cols = _Columns(frame)
    n = len(frame)
    if id_field:
        id_col = cols.require(id_field, "--id-field")
    else:
        id_col = cols.find(_ID_CANDIDATES[kind])
        if id_col is None and kind == "areas":
            raise FileFormatError(f"no area code column ({'/'.join(_ID_CANDIDATES['areas'])}); pass --id-field; "
                                  f"columns: {', '.join(map(str, cols.by_lower.values()))}")
        if id_col is None:
            report.notes.append("no id column found: features are keyed by a hash of their geometry, so a "
                                "re-import matches only features whose shape is unchanged (pass --id-field)")
    if id_col is not None:
        report.notes.append(f"ids from column {id_col!r}")
    ignored = [cols.by_lower[c] for c in _EXPORT_ONLY[kind] if c in cols.by_lower
               and cols.by_lower[c] not in cols.used]
    if ignored:
        cols.used.update(ignored)
        report.notes.append(f"ignored the columns cimtwin export writes about stored rows: {', '.join(ignored)}")
    ids = [_text(v) for v in cols.values(id_col)]
    name_col = cols.find(_NAME)
    names = [_text(v) for v in cols.values(name_col)]
    area_col = cols.require(area_field, "--area-field") if area_field else None
    areas = [_text(v) for v in cols.values(area_col)]

    rows: list[tuple] = []
    seen: dict[str, int] = {}
    wkbs = shapely.to_wkb(np.where(shapely.is_missing(geoms), None, geoms), output_dimension=2)

    if kind == "areas":
        level_col = None if level else cols.find(_LEVEL)
        if not level and level_col is None:
            raise FileFormatError("no 'level' column; pass --level district|street|community|grid")
        levels = [level] * n if level else [_text(v) for v in cols.values(level_col)]
        parents = [_text(v) for v in cols.values(cols.find(_PARENT))]
    elif kind == "buildings":
        h_col = cols.require(height_field, "--height-field") if height_field else cols.find(_HEIGHT)
        numeric = {
            "height": (cols.values(h_col), False), "min_height": (cols.values(cols.find(_MIN_HEIGHT)), False),
            "floors_above": (cols.values(cols.find(_FLOORS_ABOVE)), True),
            "floors_below": (cols.values(cols.find(_FLOORS_BELOW)), True),
            "occupants": (cols.values(cols.find(("occupants",))), True),
            "organisations": (cols.values(cols.find(("organisations", "organizations"))), True),
        }
        address_col = cols.find(_ADDRESS)
        street = cols.values(cols.find(_STREET))
        number = cols.values(cols.find(_HOUSENUMBER))
        addresses = [_text(a) for a in cols.values(address_col)]
        for i in range(n):
            if addresses[i] is None and (_text(street[i]) or _text(number[i])):
                addresses[i] = " ".join(p for p in (_text(street[i]), _text(number[i])) if p)
        uses = [_text(v) for v in cols.values(cols.find(_USE))]
    else:
        kind_col = None if component_kind else cols.find(_KIND)
        if not component_kind and kind_col is None:
            raise FileFormatError("no 'kind' column; pass --kind (a code from GET /component-kinds)")
        kinds = [component_kind] * n if component_kind else [_text(v) for v in cols.values(kind_col)]
        bcol = cols.require(building_field, "--building-field") if building_field else None
        bldgs = [_text(v) for v in cols.values(bcol)]
    rest = {str(c): cols.frame[c].tolist() for c in cols.rest()}

    for i in range(n):
        if reason[i] is not None:
            continue
        key = ids[i]
        if key is None and id_col is not None:
            reason[i] = f"no id in column {id_col!r}"
            continue
        if key is None:
            key = _geometry_key(wkbs[i])
            if kind == "components":
                key = f"{kinds[i]}:{key}"
            ids[i] = key
        if key in seen:
            reason[i] = f"duplicate id {key!r} (also feature #{seen[key]})"
            continue
        attrs = _attributes(rest, i)
        if kind == "areas":
            if levels[i] not in AREA_LEVELS:
                reason[i] = f"level {levels[i]!r} is not one of {', '.join(AREA_LEVELS)}"
                continue
            if levels[i] == "district" and parents[i]:
                reason[i] = "a district has no parent area"
                continue
            row = (i, key, names[i] or key, levels[i], parents[i], wkbs[i], attrs)
        elif kind == "buildings":
            values, errs = {}, []
            for name, (vals, integer) in numeric.items():
                values[name], err = _number(vals[i], name, integer=integer)
                if err:
                    errs.append(err)
            if errs:
                reason[i] = "; ".join(errs)
                continue
            row = (i, key, names[i], addresses[i], uses[i], values["height"], values["min_height"],
                   values["floors_above"], values["floors_below"], values["occupants"], values["organisations"],
                   areas[i], wkbs[i], attrs)
        else:
            if not kinds[i]:
                reason[i] = "no component kind"
                continue
            row = (i, key, kinds[i], names[i], areas[i], bldgs[i], wkbs[i], attrs)
        seen[key] = i
        rows.append(row)
    return rows, ids


def import_file(database_url: str, kind: str, path: str | Path, *, crs: CrsLike | None = None,
                layer: str | None = None, id_field: str | None = None, height_field: str | None = None,
                area_field: str | None = None, building_field: str | None = None, level: str | None = None,
                component_kind: str | None = None, geometry_field: str | None = None, dry_run: bool = False,
                progress: Progress | None = None, conn: psycopg.Connection | None = None) -> ImportReport:
    """Import one layer of a file as areas, buildings or components.

    Raises FileFormatError (unreadable file, missing columns, no CRS) and
    UnknownCrsError before anything is written; feature-level problems are in the
    report's ``rejected`` list instead.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    if level is not None and level not in AREA_LEVELS:
        raise FileFormatError(f"--level {level!r} is not one of {', '.join(AREA_LEVELS)}")
    if progress:
        progress("read", 0, 1)
    features = read_features(path, layer=layer, crs=crs, geometry_field=geometry_field)
    report = ImportReport(kind=kind, path=str(path), layer=features.layer, crs=features.crs_name,
                          crs_origin=features.crs_origin, read=len(features), dry_run=dry_run,
                          notes=list(features.notes))
    if progress:
        progress("read", 1, 1)
    return import_features(database_url, kind, features, report, id_field=id_field, height_field=height_field,
                           area_field=area_field, building_field=building_field, level=level,
                           component_kind=component_kind, dry_run=dry_run, progress=progress, conn=conn)


def import_features(database_url: str, kind: str, features: SourceFeatures, report: ImportReport, *,
                    id_field: str | None = None, height_field: str | None = None, area_field: str | None = None,
                    building_field: str | None = None, level: str | None = None,
                    component_kind: str | None = None, dry_run: bool = False, progress: Progress | None = None,
                    conn: psycopg.Connection | None = None) -> ImportReport:
    """Check, map and upsert features already read (from a file or another reader such as
    CityJSON's); fills and returns ``report``."""
    src = _resolve_crs(features, report)
    geoms, reason, repaired = _check(features, kind, src, progress, report)
    rows, ids = _map_rows(kind, features, geoms, reason, id_field=id_field, height_field=height_field,
                          area_field=area_field, building_field=building_field, level=level,
                          component_kind=component_kind, report=report)
    upsert = {"areas": store.upsert_areas, "buildings": store.upsert_buildings,
              "components": store.upsert_components}[kind]

    def staged():
        for k, row in enumerate(rows, 1):
            yield row
            if progress and (k % _CHUNK == 0 or k == len(rows)):
                progress("store", k, len(rows))

    own = conn is None
    conn = conn or connect(database_url, application_name="cimtwin-import")
    try:
        with conn.transaction() as tx:
            result = upsert(conn, _jsonb_rows(staged()))
            if dry_run:
                raise psycopg.Rollback(tx)
    finally:
        if own:
            conn.close()
    for index, why in result.rejected:
        reason[index] = why
    report.inserted, report.updated, report.unchanged = result.inserted, result.updated, result.unchanged
    report.derived = {k: v for k, v in vars(result.derived).items() if v}
    report.rejected = [FeatureIssue(int(i), ids[i], reason[i]) for i in range(len(reason)) if reason[i] is not None]
    report.repaired = [FeatureIssue(int(i), ids[i], repaired[i]) for i in range(len(repaired))
                       if repaired[i] is not None and reason[i] is None]
    return report


def _jsonb_rows(rows):
    from psycopg.types.json import Jsonb

    for row in rows:
        yield row[:-1] + (Jsonb(row[-1]),)
