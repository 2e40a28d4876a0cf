"""Reading building interiors from IFC (2x3, 4) with ifcopenshell: storeys and spaces.

* ``IfcBuildingStorey`` → floors. Levels are numbered by elevation: the lowest storey
  at or above elevation 0 (± 5 cm) is level 0, the ones above 1, 2, …, the ones below
  −1, −2, …; a floor's height is the gap to the next storey's elevation.
* ``IfcSpace`` → rooms. The footprint is the 2D union of the space's triangulated
  shape (ifcopenshell.geom, world coordinates) projected onto the x/y plane, snapped
  to 0.1 mm; the space's storey is its spatial container.

Georeferencing, in this order:

1. ``IfcMapConversion`` (IFC4): easting/northing offsets, x-axis rotation and scale into
   its ``IfcProjectedCRS`` (a compound CRS contributes its horizontal part).
2. ``anchor=(lon, lat)`` with ``rotation`` (degrees clockwise from true north to the
   model's +y axis): the model origin is placed at the anchor in a local azimuthal
   equidistant projection (metres, exact enough over a building).
3. The first ``IfcSite``'s ``RefLatitude``/``RefLongitude`` as that anchor, with
   ``rotation`` (default 0: the model's +y taken as north).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyproj
import shapely
from cimtwin.geo.io import FileFormatError

__all__ = ["IfcInterior", "IfcSpaceFootprint", "IfcStorey", "read_ifc_interior"]

_GROUND_TOLERANCE_M = 0.05
_GRID_M = 1e-4


@dataclass
class IfcStorey:
    guid: str
    name: str | None
    elevation: float
    level: int
    height: float | None


@dataclass
class IfcSpaceFootprint:
    guid: str
    name: str | None
    long_name: str | None
    storey_guid: str | None
    local: shapely.Geometry | None  # model x/y metres
    z_min: float
    z_max: float


@dataclass
class IfcInterior:
    """Storeys and spaces of one IFC building, with a transform to lon/lat.

    Attributes
    ----------
    storeys : list of IfcStorey
        In level order.
    spaces : list of IfcSpaceFootprint
        In file order.
    georef : str
        How the model is placed: ``"IfcMapConversion (EPSG:…)"``, ``"anchor"`` or
        ``"IfcSite reference"``.
    schema : str
        The IFC schema (``IFC4``, ``IFC2X3``).
    notes : list of str
    """

    storeys: list[IfcStorey]
    spaces: list[IfcSpaceFootprint]
    georef: str
    schema: str
    _to_lonlat: object = field(repr=False)
    notes: list[str] = field(default_factory=list)

    def to_lonlat(self, geoms):
        """Model x/y (metres) geometries → EPSG:4326 lon/lat (None passes through)."""
        return np.asarray(shapely.transform(np.asarray(geoms, dtype=object), self._to_lonlat), dtype=object)


def _unit_scale(model) -> float:
    try:
        from ifcopenshell.util import unit

        return float(unit.calculate_unit_scale(model))
    except Exception:  # pragma: no cover - very old files
        return 1.0


def _site_anchor(model) -> tuple[float, float] | None:
    def degrees(dms) -> float | None:
        if not dms:
            return None
        parts = list(dms) + [0] * (4 - len(dms))
        sign = -1.0 if any(p < 0 for p in parts[:4]) else 1.0
        d, m, s, micro = (abs(p) for p in parts[:4])
        return sign * (d + m / 60 + (s + micro / 1e6) / 3600)

    for site in model.by_type("IfcSite"):
        lat, lon = degrees(site.RefLatitude), degrees(site.RefLongitude)
        if lat is not None and lon is not None:
            return lon, lat
    return None


def _anchored(lon: float, lat: float, rotation: float):
    aeqd = pyproj.CRS.from_proj4(f"+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m +no_defs")
    to_ll = pyproj.Transformer.from_crs(aeqd, "EPSG:4326", always_xy=True)
    theta = np.radians(rotation)
    c, s = np.cos(theta), np.sin(theta)

    def fn(xy: np.ndarray) -> np.ndarray:
        east = xy[:, 0] * c + xy[:, 1] * s
        north = -xy[:, 0] * s + xy[:, 1] * c
        return np.column_stack(to_ll.transform(east, north))

    return fn


def _map_conversion(model, scale_to_m: float):
    from cimtwin.geo.cityjson import horizontal_crs

    conversions = model.by_type("IfcMapConversion") if model.schema != "IFC2X3" else []
    if not conversions:
        return None, None
    mc = conversions[0]
    target = mc.TargetCRS
    ref, _ = horizontal_crs(target.Name)
    a, b = (mc.XAxisAbscissa or 1.0), (mc.XAxisOrdinate or 0.0)
    norm = float(np.hypot(a, b)) or 1.0
    a, b = a / norm, b / norm
    k = float(mc.Scale or 1.0)
    e0, n0 = float(mc.Eastings), float(mc.Northings)
    to_ll = pyproj.Transformer.from_crs(ref.to_pyproj(), "EPSG:4326", always_xy=True)

    def fn(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0] * k, xy[:, 1] * k  # model metres → map units (assumed metres)
        return np.column_stack(to_ll.transform(e0 + x * a - y * b, n0 + x * b + y * a))

    return fn, f"IfcMapConversion ({ref.code})"


def _footprint(shape) -> shapely.Geometry | None:
    verts = np.asarray(shape.geometry.verts, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(shape.geometry.faces, dtype=np.int64).reshape(-1, 3)
    if len(faces) == 0:
        return None
    tris = shapely.polygons(verts[faces][:, :, :2])
    tris = tris[shapely.area(tris) > 1e-9]  # vertical triangles vanish in plan
    if len(tris) == 0:
        return None
    union = shapely.set_precision(shapely.union_all(tris), _GRID_M)
    return None if union.is_empty else union


def read_ifc_interior(path: str | Path, *, anchor: tuple[float, float] | None = None,
                      rotation: float = 0.0) -> IfcInterior:
    """Read the storeys and spaces of an IFC file.

    Parameters
    ----------
    path : str or Path
        The ``.ifc`` file.
    anchor : (lon, lat), optional
        Where the model origin is, when the file has no IfcMapConversion (it overrides
        the IfcSite reference point).
    rotation : float
        Degrees clockwise from true north to the model's +y axis (with ``anchor`` or the
        IfcSite reference).

    Returns
    -------
    IfcInterior

    Raises
    ------
    FileFormatError
        Not an IFC file, no storeys, or no way to place the model.
    """
    try:
        import ifcopenshell
        import ifcopenshell.geom
        from ifcopenshell.util import element
    except ImportError:  # pragma: no cover
        raise FileFormatError("IFC import needs ifcopenshell (pip install ifcopenshell)") from None
    try:
        model = ifcopenshell.open(str(path))
    except Exception as exc:
        raise FileFormatError(f"cannot read {Path(path).name} as IFC: {exc}") from None
    scale = _unit_scale(model)
    notes: list[str] = []

    raw = [(s.GlobalId, s.Name, float(s.Elevation or 0.0) * scale) for s in model.by_type("IfcBuildingStorey")]
    if not raw:
        raise FileFormatError(f"{Path(path).name} has no IfcBuildingStorey")
    raw.sort(key=lambda s: s[2])
    elevations = np.array([e for _, _, e in raw])
    ground = int(np.argmax(elevations >= -_GROUND_TOLERANCE_M)) if (elevations >= -_GROUND_TOLERANCE_M).any() \
        else len(raw)
    storeys = []
    for i, (guid, name, elevation) in enumerate(raw):
        nxt = elevations[i + 1] - elevation if i + 1 < len(raw) else None
        storeys.append(IfcStorey(guid=guid, name=name, elevation=round(elevation, 4), level=i - ground,
                                 height=round(float(nxt), 4) if nxt and nxt > 0 else None))

    settings = ifcopenshell.geom.settings()
    settings.set(settings.USE_WORLD_COORDS, True)
    spaces = []
    for space in model.by_type("IfcSpace"):
        container = element.get_container(space)
        if container is None and space.Decomposes:
            container = space.Decomposes[0].RelatingObject
        storey = container.GlobalId if container is not None and container.is_a("IfcBuildingStorey") else None
        try:
            shape = ifcopenshell.geom.create_shape(settings, space)
            local = _footprint(shape)
            z = np.asarray(shape.geometry.verts, dtype=np.float64).reshape(-1, 3)[:, 2]
            z_min, z_max = (float(z.min()), float(z.max())) if len(z) else (np.nan, np.nan)
        except Exception as exc:
            notes.append(f"space {space.GlobalId} ({space.Name}): no geometry ({exc})")
            local, z_min, z_max = None, np.nan, np.nan
        spaces.append(IfcSpaceFootprint(guid=space.GlobalId, name=space.Name, long_name=space.LongName,
                                        storey_guid=storey, local=local, z_min=z_min, z_max=z_max))

    fn, georef = _map_conversion(model, scale)
    if fn is not None:
        if anchor is not None:
            notes.append("the file has an IfcMapConversion; --anchor and --rotation were ignored")
    elif anchor is not None:
        fn, georef = _anchored(anchor[0], anchor[1], rotation), "anchor"
    elif (site := _site_anchor(model)) is not None:
        fn, georef = _anchored(site[0], site[1], rotation), "IfcSite reference"
        notes.append(f"placed at the IfcSite reference point {site[1]:.6f}N {site[0]:.6f}E, rotation "
                     f"{rotation:g}° (no IfcMapConversion; pass --anchor lon,lat and --rotation to place it)")
    else:
        raise FileFormatError("the IFC file has no IfcMapConversion and no IfcSite reference point; "
                              "pass --anchor lon,lat (and --rotation deg)")
    return IfcInterior(storeys=storeys, spaces=spaces, georef=georef, schema=model.schema, _to_lonlat=fn,
                       notes=notes)
