"""Geometry checks, in the style of shapely: vectorized over arrays of geometries.

Every geometry that enters cimtwin goes through :func:`check_geometries` (files
being imported) or :func:`parse_geometry` (query parameters and request bodies).
Nothing is dropped silently: a geometry is either accepted, accepted after a
*safe* repair (reported), or rejected with a reason.

A repair is *safe* when ``shapely.make_valid`` (the "structure" method) keeps the
polygonal type and does not move the outline: the Hausdorff distance between the
input's rings and the repaired rings is at most ``repair_tolerance`` times the
diagonal of the input's bounding box.  A self-intersecting "bowtie" is safe (it
becomes two triangles with the same outline); a polygon with a long zero-width
spike is not (the spike would vanish), and neither is one that collapses to a line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import shapely

__all__ = [
    "POLYGONAL",
    "GeometryCheck",
    "check_geometries",
    "parse_geometry",
    "geodesic_bbox_area_km2",
    "in_lonlat_range",
]

#: The geometry types of areas, buildings, floors and rooms.
POLYGONAL = ("Polygon", "MultiPolygon")
_TYPE_NAMES = {0: "Point", 1: "LineString", 2: "LinearRing", 3: "Polygon", 4: "MultiPoint",
               5: "MultiLineString", 6: "MultiPolygon", 7: "GeometryCollection"}
_POLYGON_IDS = (3, 6)


@dataclass
class GeometryCheck:
    """The outcome of :func:`check_geometries`, one entry per input geometry.

    Attributes
    ----------
    geometry : ndarray of Geometry or None
        The accepted geometry (2D, repaired where that was safe); None where rejected.
    reason : ndarray of str or None
        Why the geometry was rejected; None where accepted.
    repaired : ndarray of str or None
        For geometries accepted after ``make_valid``, what was wrong with them.
    """

    geometry: np.ndarray
    reason: np.ndarray
    repaired: np.ndarray

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of accepted geometries."""
        return np.array([r is None for r in self.reason], dtype=bool)


def _polygonal_part(geom):
    """The polygons of a (repaired) geometry as one Polygon/MultiPolygon, or an empty Polygon."""
    if geom is None:
        return shapely.Polygon()
    type_id = shapely.get_type_id(geom)
    if type_id in _POLYGON_IDS:
        return geom
    parts = shapely.get_parts(geom)
    polys = [p for p in parts if shapely.get_type_id(p) in _POLYGON_IDS]
    if not polys:
        return shapely.Polygon()
    flat = shapely.get_parts(np.asarray(polys, dtype=object))
    return flat[0] if len(flat) == 1 else shapely.MultiPolygon(list(flat))


def check_geometries(geoms, *, allowed: tuple[str, ...] | None = None, repair: bool = True,
                     repair_tolerance: float = 0.01) -> GeometryCheck:
    """Check geometries for presence, type, finiteness and validity; repair what is safe.

    Parameters
    ----------
    geoms : array_like of Geometry or None
        The geometries to check, in any CRS.
    allowed : tuple of str, optional
        Geometry type names that are accepted (e.g. :data:`POLYGONAL`); any type if None.
    repair : bool, optional
        Whether invalid polygonal geometries may be repaired with ``shapely.make_valid``.
    repair_tolerance : float, optional
        The largest Hausdorff distance between input and repaired outline, as a
        fraction of the input's bounding-box diagonal, for a repair to count as safe.

    Returns
    -------
    GeometryCheck
        Per-geometry accepted geometry, rejection reason and repair note.
    """
    geoms = np.asarray(geoms, dtype=object).ravel()
    n = len(geoms)
    out = np.empty(n, dtype=object)
    reason = np.full(n, None, dtype=object)
    repaired = np.full(n, None, dtype=object)

    missing = shapely.is_missing(geoms)
    reason[missing] = "null geometry"
    present = ~missing
    empty = np.zeros(n, dtype=bool)
    empty[present] = shapely.is_empty(geoms[present])
    reason[empty] = "empty geometry"
    todo = present & ~empty

    type_ids = np.full(n, -1)
    type_ids[todo] = shapely.get_type_id(geoms[todo])
    if allowed is not None:
        wanted = [k for k, v in _TYPE_NAMES.items() if v in allowed]
        wrong = todo & ~np.isin(type_ids, wanted)
        for i in np.flatnonzero(wrong):
            reason[i] = f"expected {' or '.join(allowed)}, got {_TYPE_NAMES.get(type_ids[i], 'unknown')}"
        todo &= ~wrong

    bounds = np.full((n, 4), np.nan)
    bounds[todo] = shapely.bounds(geoms[todo])
    nonfinite = todo & ~np.isfinite(bounds).all(axis=1)
    reason[nonfinite] = "coordinates are not finite numbers"
    todo &= ~nonfinite

    flat = geoms.copy()
    has_z = np.zeros(n, dtype=bool)
    has_z[todo] = shapely.has_z(geoms[todo])
    if has_z.any():
        flat[has_z] = shapely.force_2d(geoms[has_z])

    valid = np.zeros(n, dtype=bool)
    valid[todo] = shapely.is_valid(flat[todo])
    out[todo & valid] = flat[todo & valid]

    invalid = np.flatnonzero(todo & ~valid)
    if len(invalid):
        why = shapely.is_valid_reason(flat[invalid])
        polygonal = np.isin(type_ids[invalid], _POLYGON_IDS)
        if repair and polygonal.any():
            idx = invalid[polygonal]
            fixed = shapely.make_valid(flat[idx], method="structure", keep_collapsed=False)
            fixed = np.array([_polygonal_part(g) for g in fixed], dtype=object)
            b = bounds[idx]
            diagonal = np.hypot(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
            nonempty = ~shapely.is_empty(fixed)
            moved = np.full(len(idx), np.inf)
            moved[nonempty] = shapely.hausdorff_distance(shapely.boundary(flat[idx][nonempty]),
                                                         shapely.boundary(fixed[nonempty]))
            safe = nonempty & (moved <= repair_tolerance * np.maximum(diagonal, 1e-12))
            for j, i in enumerate(idx):
                w = why[np.flatnonzero(invalid == i)[0]]
                if safe[j]:
                    out[i] = fixed[j]
                    repaired[i] = f"repaired with make_valid: {w}"
                elif not nonempty[j]:
                    reason[i] = f"invalid geometry ({w}) that collapses to nothing when repaired"
                else:
                    reason[i] = (f"invalid geometry ({w}); make_valid would move the outline by "
                                 f"{moved[j]:.6g} units, so it is not repaired")
        for k, i in enumerate(invalid):
            if out[i] is None and reason[i] is None:
                reason[i] = f"invalid geometry: {why[k]}"
    return GeometryCheck(geometry=out, reason=reason, repaired=repaired)


def in_lonlat_range(geoms) -> np.ndarray:
    """Whether each geometry's coordinates lie within lon [-180, 180] and lat [-90, 90].

    Parameters
    ----------
    geoms : array_like of Geometry
        Geometries in a lon/lat CRS; None and empty geometries count as in range.

    Returns
    -------
    ndarray of bool
    """
    geoms = np.asarray(geoms, dtype=object).ravel()
    b = np.full((len(geoms), 4), 0.0)
    ok = ~shapely.is_missing(geoms)
    ok[ok] = ~shapely.is_empty(geoms[ok])
    b[ok] = shapely.bounds(geoms[ok])
    return (b[:, 0] >= -180) & (b[:, 2] <= 180) & (b[:, 1] >= -90) & (b[:, 3] <= 90)


_XY = re.compile(r"^\s*(-?[0-9.eE+-]+)\s*,\s*(-?[0-9.eE+-]+)\s*$")


def parse_geometry(text: str, *, allowed: tuple[str, ...] | None = None, max_vertices: int | None = None):
    """Parse one geometry from WKT, GeoJSON (a geometry or a Feature) or ``x,y``.

    The geometry must be non-empty, of an allowed type, finite and valid; it is
    never repaired (the caller hears why it is invalid instead).

    Parameters
    ----------
    text : str
        ``POLYGON ((…))``, ``{"type": "Polygon", …}`` or ``121.5,31.24``.
    allowed : tuple of str, optional
        Accepted geometry type names; any if None.
    max_vertices : int, optional
        The largest number of coordinates accepted.

    Returns
    -------
    shapely.Geometry
        A 2D geometry.

    Raises
    ------
    ValueError
        With a message that says what is wrong (parse error, type, size, or
        ``shapely.is_valid_reason``).
    """
    text = (text or "").strip()
    if not text:
        raise ValueError("empty geometry text")
    if m := _XY.match(text):
        try:
            geom = shapely.Point(float(m[1]), float(m[2]))
        except ValueError:
            raise ValueError(f"{text!r} is not x,y") from None
    elif text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        if isinstance(obj, dict) and obj.get("type") == "Feature":
            obj = obj.get("geometry")
        if not isinstance(obj, dict) or "type" not in obj:
            raise ValueError("GeoJSON must be a geometry object or a Feature with a geometry")
        try:
            geom = shapely.from_geojson(json.dumps(obj))
        except shapely.errors.GEOSException as exc:
            raise ValueError(f"not a GeoJSON geometry: {exc}") from None
    else:
        try:
            geom = shapely.from_wkt(text)
        except shapely.errors.GEOSException as exc:
            raise ValueError(f"not WKT, GeoJSON or x,y: {exc}") from None
    if geom is None or geom.is_empty:
        raise ValueError("empty geometry")
    if max_vertices is not None and shapely.get_num_coordinates(geom) > max_vertices:
        raise ValueError(f"geometry has {shapely.get_num_coordinates(geom)} vertices, more than the "
                         f"limit of {max_vertices}")
    if shapely.has_z(geom):
        geom = shapely.force_2d(geom)
    checked = check_geometries([geom], allowed=allowed, repair=False)
    if checked.reason[0] is not None:
        raise ValueError(checked.reason[0])
    return checked.geometry[0]


def geodesic_bbox_area_km2(geoms) -> np.ndarray:
    """The geodesic area (WGS84 ellipsoid) of each geometry's lon/lat bounding box, in km².

    Parameters
    ----------
    geoms : array_like of Geometry
        Non-empty geometries in lon/lat.

    Returns
    -------
    ndarray of float
    """
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    geoms = np.asarray(geoms, dtype=object).ravel()
    out = np.empty(len(geoms))
    for i, (x0, y0, x1, y1) in enumerate(shapely.bounds(geoms)):
        area, _ = geod.polygon_area_perimeter([x0, x1, x1, x0], [y0, y0, y1, y1])
        out[i] = abs(area) / 1e6
    return out
