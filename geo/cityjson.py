"""Reading CityJSON (1.0, 1.1, 2.0) city models as building footprints with heights.

Only ``Building`` city objects are read; their ``BuildingPart`` children (and the
parts' own children) are merged into them, so one building is one feature keyed by
its CityObject id. Each building's geometry is taken from the highest LoD it carries
(LoD2 before LoD1.3 before LoD1, …); ``Solid``, ``CompositeSolid``, ``MultiSolid``,
``MultiSurface`` and ``CompositeSurface`` are all accepted, and template geometries
(``GeometryInstance``) are skipped.

Footprint
    The 2D union of every non-vertical surface of that geometry, projected onto the
    x/y plane. For a prism (LoD1) that is the ground face; for LoD2 it is the roof's
    outline (overhangs included), which is what a map shows. Vertical walls project to
    nothing and drop out. A surface whose projection is self-intersecting is repaired
    with ``make_valid`` before the union; the union is snapped to the file's precision
    (``transform.scale``, else 1 mm) to drop zero-area holes and slivers, and the caller
    checks it (:func:`cimtwin.geo.checks.check_geometries`).
Height
    ``max z − min z`` of the chosen geometry (all parts), or the ``measuredHeight``
    attribute when the building has a positive one. ``min z`` and ``max z`` (the
    elevation of the ground and of the roof, in the file's vertical datum) are kept
    as ``ground_z`` and ``roof_z``.

CRS
    ``metadata.referenceSystem`` (a URL or URN naming an EPSG code). A compound CRS
    such as EPSG:7415 (RD New + NAP height) contributes its horizontal part
    (EPSG:28992). ``crs=`` overrides the file, and may itself be compound.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyproj
import shapely
from cimtwin.geo.crs import CrsLike, CrsRef, UnknownCrsError, parse_crs
from cimtwin.geo.io import FileFormatError
from pyproj.exceptions import CRSError

__all__ = ["CityBuildings", "horizontal_crs", "read_cityjson_buildings"]

_SOLID_DEPTH = {"MultiSurface": 0, "CompositeSurface": 0, "Solid": 1, "MultiSolid": 2, "CompositeSolid": 2}
_EPSG_IN_TEXT = re.compile(r"epsg(?:/[^/]*/|:[^:]*:|:)(\d+)\s*$", re.IGNORECASE)
#: A projected surface smaller than this (in squared CRS units) is a wall seen edge-on.
_MIN_FACE_AREA = 1e-6


@dataclass
class CityBuildings:
    """The buildings of one CityJSON file, in file order.

    Attributes
    ----------
    ids : list of str
        The CityObject ids (stable across exports; used as ``ext_id``).
    footprints : ndarray of shapely.Geometry
        2D (Multi)Polygons in ``crs``; None for a building without usable geometry.
    height, ground_z, roof_z : ndarray of float
        Building height in metres, and the lowest and highest z (NaN where unknown).
    lod : list of str or None
        The LoD the footprint and height were taken from.
    attributes : list of dict
        Each building's ``attributes`` (its parts' attributes are not merged).
    crs : CrsRef or None
        The horizontal CRS of the coordinates; None when neither the file nor
        ``crs=`` names one.
    crs_origin : str
        ``"option"``, ``"file"`` or ``"none"``.
    version : str
        The file's CityJSON version.
    notes : list of str
        What the reader did that the user should know (e.g. compound CRS → horizontal).
    """

    ids: list[str]
    footprints: np.ndarray
    height: np.ndarray
    ground_z: np.ndarray
    roof_z: np.ndarray
    lod: list[str | None]
    attributes: list[dict]
    crs: CrsRef | None
    crs_origin: str
    version: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def horizontal_crs(value: CrsLike | str) -> tuple[CrsRef, str | None]:
    """The 2D CRS for x/y of a CRS name, taking the horizontal part of a compound CRS.

    Parameters
    ----------
    value : str, int or CrsRef
        Anything :func:`cimtwin.geo.crs.parse_crs` accepts, or an EPSG code of a
        compound or 3D CRS (``EPSG:7415``, ``https://www.opengis.net/def/crs/EPSG/0/7415``,
        ``urn:ogc:def:crs:EPSG::7415``).

    Returns
    -------
    (CrsRef, str or None)
        The horizontal CRS, and a note when it differs from ``value``.

    Raises
    ------
    UnknownCrsError
        When the value names no CRS PROJ knows, or one without a horizontal EPSG part.
    """
    try:
        return parse_crs(value), None
    except UnknownCrsError as first:
        text = str(value).strip()
        m = _EPSG_IN_TEXT.search(text) or re.fullmatch(r"(\d+)", text)
        if m is None:
            raise
        try:
            crs = pyproj.CRS.from_epsg(int(m.group(1)))
        except CRSError:
            raise first from None
        parts = crs.sub_crs_list if crs.is_compound else [crs.to_2d()] if len(crs.axis_info) > 2 else []
        for part in parts:
            epsg = part.to_epsg(min_confidence=70)
            if epsg is not None and (part.is_projected or part.is_geographic):
                try:
                    ref = parse_crs(epsg)
                except UnknownCrsError:
                    continue
                return ref, f"{value} is {crs.name}; x/y are read in its horizontal part {ref.code} ({part.name})"
        raise UnknownCrsError(value, "no horizontal EPSG CRS in it") from None


def _reference_system(meta: dict) -> str | None:
    ref = meta.get("referenceSystem") if isinstance(meta, dict) else None
    if isinstance(ref, dict):  # some 1.0 writers: {"type": "name", "properties": {"name": "..."}}
        ref = ref.get("properties", {}).get("name")
    if ref in (None, ""):
        return None
    return str(ref)


def _lod_key(lod) -> float:
    try:
        return float(lod)
    except (TypeError, ValueError):
        return -1.0


def _surfaces(geometry: dict):
    """Every surface (a list of rings of vertex indices) of one CityJSON geometry."""
    depth = _SOLID_DEPTH.get(geometry.get("type"))
    if depth is None:
        return
    boundaries = geometry.get("boundaries") or []
    if depth == 0:
        yield from boundaries
    elif depth == 1:
        for shell in boundaries:
            yield from shell
    else:
        for solid in boundaries:
            for shell in solid:
                yield from shell


def _collect(objects: dict, root: str) -> list[str]:
    """The building and its parts, recursively (BuildingPart, BuildingInstallation, …)."""
    out, todo, seen = [], [root], set()
    while todo:
        oid = todo.pop()
        if oid in seen or oid not in objects:
            continue
        seen.add(oid)
        out.append(oid)
        if oid == root or objects[oid].get("type", "").startswith("BuildingPart"):
            todo.extend(objects[oid].get("children") or [])
    return [o for o in out if o == root or objects[o].get("type", "").startswith("BuildingPart")]


def _footprint(rings: list[list[int]], ring_face: np.ndarray, xyz: np.ndarray, grid: float):
    """2D union of the projected, non-degenerate faces; ``rings`` are ordered face by face.

    The union is snapped to ``grid`` (the file's own precision), which removes the
    zero-area holes and slivers left where faces meet."""
    keep = [i for i, r in enumerate(rings) if len(r) >= 3]
    if not keep:
        return None
    lengths = np.fromiter((len(rings[i]) for i in keep), dtype=np.int64, count=len(keep))
    index = np.fromiter((v for i in keep for v in rings[i]), dtype=np.int64, count=int(lengths.sum()))
    ring_ids = np.repeat(np.arange(len(keep)), lengths)
    lines = shapely.linearrings(xyz[index, :2], indices=ring_ids)
    faces = ring_face[keep]
    # the first ring of each face is its shell, the rest its holes
    polys = shapely.polygons(lines, indices=np.unique(faces, return_inverse=True)[1])
    bad = ~shapely.is_valid(polys)
    if bad.any():  # a face seen obliquely can fold over itself in plan: keep its polygonal parts
        fixed = shapely.get_parts(shapely.make_valid(polys[bad]))
        polys = np.concatenate([polys[~bad], fixed[np.isin(shapely.get_type_id(fixed), (3, 6))]])
    polys = polys[shapely.area(polys) > _MIN_FACE_AREA]  # walls seen edge-on
    if len(polys) == 0:
        return None
    union = shapely.set_precision(shapely.union_all(polys), grid)
    return None if union.is_empty else union


def read_cityjson_buildings(path: str | Path, *, crs: CrsLike | None = None) -> CityBuildings:
    """Read the buildings of a CityJSON file as footprints with heights.

    Parameters
    ----------
    path : str or Path
        A ``.city.json`` / ``.json`` file (CityJSON 1.0, 1.1 or 2.0; not CityJSONSeq).
    crs : str, int or CrsRef, optional
        The CRS of the coordinates, overriding ``metadata.referenceSystem``; a
        compound CRS (``EPSG:7415``) contributes its horizontal part.

    Returns
    -------
    CityBuildings

    Raises
    ------
    FileFormatError
        When the file is not CityJSON.
    UnknownCrsError
        When ``crs=`` (or the file's reference system) names no usable CRS.
    """
    notes: list[str] = []
    if crs is not None:
        ref, note = horizontal_crs(crs)
        origin = "option"
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"cannot read {Path(path).name} as JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("type") != "CityJSON":
        raise FileFormatError(f"{Path(path).name} is not CityJSON (no \"type\": \"CityJSON\")")
    version = str(doc.get("version", "?"))
    if crs is None:
        named = _reference_system(doc.get("metadata") or {})
        if named is None:
            ref, note, origin = None, None, "none"
        else:
            try:
                ref, note = horizontal_crs(named)
            except UnknownCrsError as exc:
                raise UnknownCrsError(named, f"the file's metadata.referenceSystem: {exc.reason or 'unknown'}; "
                                             f"pass --crs") from None
            origin = "file"
    if note:
        notes.append(note)

    try:
        xyz = np.asarray(doc.get("vertices") or [], dtype=np.float64).reshape(-1, 3)
    except ValueError:
        raise FileFormatError("'vertices' is not a list of [x, y, z]") from None
    transform = doc.get("transform")
    if transform:
        xyz = xyz * np.asarray(transform.get("scale", [1, 1, 1]), dtype=np.float64) \
            + np.asarray(transform.get("translate", [0, 0, 0]), dtype=np.float64)

    if transform and transform.get("scale"):
        grid = float(min(transform["scale"][:2]))
    else:
        grid = 1e-8 if ref is not None and ref.is_geographic else 1e-3
    objects = doc.get("CityObjects") or {}
    ids, footprints, lods, attrs = [], [], [], []
    heights, ground, roof = [], [], []
    for oid, obj in objects.items():
        if obj.get("type") != "Building":
            continue
        members = _collect(objects, oid)
        geoms = [g for m in members for g in objects[m].get("geometry") or [] if g.get("type") in _SOLID_DEPTH]
        best = max((_lod_key(g.get("lod")) for g in geoms), default=None)
        chosen = [g for g in geoms if _lod_key(g.get("lod")) == best]
        rings: list[list[int]] = []
        ring_face: list[int] = []
        for face, surface in enumerate(s for g in chosen for s in _surfaces(g)):
            for ring in surface:
                rings.append(ring)
                ring_face.append(face)
        used = np.fromiter((v for r in rings for v in r), dtype=np.int64)
        if len(used) and (used.max() >= len(xyz) or used.min() < 0):
            footprint, z_lo, z_hi = None, np.nan, np.nan
        elif len(used):
            footprint = _footprint(rings, np.asarray(ring_face), xyz, grid)
            z_lo, z_hi = float(xyz[used, 2].min()), float(xyz[used, 2].max())
        else:
            footprint, z_lo, z_hi = None, np.nan, np.nan
        attributes = dict(obj.get("attributes") or {})
        measured = attributes.get("measuredHeight")
        if isinstance(measured, (int, float)) and not isinstance(measured, bool) and measured > 0:
            height = float(measured)
        else:
            height = z_hi - z_lo
        ids.append(str(oid))
        footprints.append(footprint)
        lods.append(None if not chosen else str(chosen[0].get("lod")))
        attrs.append(attributes)
        heights.append(height)
        ground.append(z_lo)
        roof.append(z_hi)
    return CityBuildings(ids=ids, footprints=np.asarray(footprints + [None], dtype=object)[:-1],
                         height=np.asarray(heights, dtype=np.float64), ground_z=np.asarray(ground, dtype=np.float64),
                         roof_z=np.asarray(roof, dtype=np.float64), lod=lods, attributes=attrs, crs=ref,
                         crs_origin=origin, version=version, notes=notes)
