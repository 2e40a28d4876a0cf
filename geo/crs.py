"""Coordinate reference systems for cimtwin.

Geometries are stored in EPSG:4326 with lon/lat (x/y) coordinates; every
reprojection happens at the edges (import, and output with ``crs=``).  This
module parses the CRS identifiers users send, reprojects coordinates and
shapely geometries, and implements GCJ-02 (the Chinese "Mars" offset datum,
which PROJ lacks) plus the BD-09 helpers.

Coordinates are always passed in x/y order (lon/lat for geographic CRSs,
easting/northing for projected ones), i.e. ``always_xy=True``.  The official
axis order of a CRS is reported by :attr:`CrsRef.axis_lat_first` for callers
(such as OGC API Features output) that must honour it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Union

import numpy as np
import pyproj
import shapely
from pyproj.exceptions import CRSError

__all__ = [
    "CrsLike",
    "CrsRef",
    "UnknownCrsError",
    "CRS84",
    "WGS84",
    "CGCS2000",
    "WEB_MERCATOR",
    "GCJ02",
    "SUPPORTED_CRS",
    "parse_crs",
    "transform_xy",
    "transform_geometry",
    "wgs84_to_gcj02",
    "gcj02_to_wgs84",
    "gcj02_to_bd09",
    "bd09_to_gcj02",
    "wgs84_to_bd09",
    "bd09_to_wgs84",
]

_OGC_EPSG_URI = "http://www.opengis.net/def/crs/EPSG/0/{}"
_CRS84_URI = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
GCJ02_URI = "urn:cimtwin:crs:gcj02"  # not an OGC/EPSG identifier: GCJ-02 has none


class UnknownCrsError(ValueError):
    """A CRS identifier that is malformed, unknown to PROJ, or not supported."""

    def __init__(self, value: object, reason: str | None = None) -> None:
        self.value = value
        self.reason = reason
        msg = f"unknown CRS {value!r}"
        super().__init__(f"{msg}: {reason}" if reason else msg)

    def __reduce__(self):  # keep pickling (e.g. across processes) faithful
        return (type(self), (self.value, self.reason))


@dataclass(frozen=True)
class CrsRef:
    """A parsed, normalised CRS reference (hashable, immutable).

    Attributes
    ----------
    code : str
        Short form: ``"EPSG:4490"``, ``"OGC:CRS84"`` or ``"GCJ02"``.
    uri : str
        OGC URI, e.g. ``http://www.opengis.net/def/crs/EPSG/0/4490``; for
        GCJ-02 the non-OGC ``urn:cimtwin:crs:gcj02``.
    is_geographic : bool
        True for lon/lat CRSs (including GCJ-02).
    axis_lat_first : bool
        True when the CRS's official first axis points north (latitude, or
        northing for e.g. the CGCS2000 Gauss-Krüger CRSs).  EPSG:4326/4490 are
        lat-first, OGC:CRS84 and EPSG:3857 are not; GCJ-02 is treated as
        lon/lat, as Chinese web-map APIs use it.  Functions in this module
        ignore it and always work in x/y order.
    """

    code: str
    uri: str
    is_geographic: bool
    axis_lat_first: bool

    @property
    def epsg(self) -> int | None:
        """The EPSG code, or None for OGC:CRS84 and GCJ02."""
        auth, _, num = self.code.partition(":")
        return int(num) if auth == "EPSG" else None

    @property
    def is_gcj02(self) -> bool:
        return self.code == "GCJ02"

    def to_pyproj(self) -> pyproj.CRS:
        """The pyproj CRS (GCJ-02 has none and raises UnknownCrsError)."""
        if self.is_gcj02:
            raise UnknownCrsError(self.code, "GCJ-02 is not a PROJ CRS")
        return _pyproj_crs(self.code)

    def __str__(self) -> str:
        return self.code


CrsLike = Union[str, int, CrsRef]

# Accepted spellings (matched case-insensitively, after stripping whitespace).
_EPSG_RES = [
    re.compile(r"(?:epsg:)?(\d+)"),
    re.compile(r"https?://www\.opengis\.net/def/crs/epsg/[^/]+/(\d+)"),
    re.compile(r"urn:ogc:def:crs:epsg:[^:]*:(\d+)"),
]
_CRS84_RE = re.compile(
    r"(?:ogc:)?crs84|https?://www\.opengis\.net/def/crs/ogc/1\.3/crs84"
    r"|urn:ogc:def:crs:ogc:(?:1\.3)?:crs84"
)
_GCJ02_RE = re.compile(r"gcj-?02|urn:cimtwin:crs:gcj02")


@lru_cache(maxsize=256)
def _pyproj_crs(code: str) -> pyproj.CRS:
    return pyproj.CRS.from_user_input(code)


def _ref_from_pyproj(code: str, uri: str) -> CrsRef:
    crs = _pyproj_crs(code)
    return CrsRef(
        code=code,
        uri=uri,
        is_geographic=crs.is_geographic,
        axis_lat_first=crs.axis_info[0].direction == "north",
    )


@lru_cache(maxsize=256)
def _epsg_ref(epsg: int) -> CrsRef:
    code = f"EPSG:{epsg}"
    try:
        crs = _pyproj_crs(code)
    except CRSError:
        raise LookupError from None
    # Only 2D horizontal CRSs make sense for x/y reprojection.
    if not (crs.is_geographic or crs.is_projected) or len(crs.axis_info) != 2:
        raise TypeError
    return _ref_from_pyproj(code, _OGC_EPSG_URI.format(epsg))


def parse_crs(value: CrsLike) -> CrsRef:
    """Parse a CRS identifier into a :class:`CrsRef`.

    Accepted forms (case-insensitive, surrounding whitespace ignored):

    * EPSG: ``EPSG:4490``, bare ``4490`` (str or int),
      ``http(s)://www.opengis.net/def/crs/EPSG/0/4490``,
      ``urn:ogc:def:crs:EPSG::4490`` (a version between the colons is allowed);
    * lon/lat WGS84: ``CRS84``, ``OGC:CRS84``,
      ``http(s)://www.opengis.net/def/crs/OGC/1.3/CRS84``,
      ``urn:ogc:def:crs:OGC:1.3:CRS84``;
    * GCJ-02: ``GCJ02``, ``GCJ-02``, ``urn:cimtwin:crs:gcj02``;
    * an existing :class:`CrsRef` is returned unchanged.

    Any EPSG code that PROJ knows is accepted provided it is a 2D geographic or
    projected CRS (so EPSG:4326, 4490, 3857, 4513-4554 and, e.g., UTM zones);
    :data:`SUPPORTED_CRS` lists the ones we advertise.

    Raises
    ------
    UnknownCrsError
        For anything else; the message names ``value`` exactly, e.g.
        ``unknown CRS 'EPSG:99999'``.
    """
    if isinstance(value, CrsRef):
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UnknownCrsError(value)
    text = str(value).strip().lower()
    if _GCJ02_RE.fullmatch(text):
        return GCJ02
    if _CRS84_RE.fullmatch(text):
        return CRS84
    for rx in _EPSG_RES:
        if m := rx.fullmatch(text):
            try:
                return _epsg_ref(int(m.group(1)))
            except LookupError:
                raise UnknownCrsError(value) from None
            except TypeError:
                raise UnknownCrsError(value, "not a 2D geographic or projected CRS") from None
    raise UnknownCrsError(value)


CRS84 = _ref_from_pyproj("OGC:CRS84", _CRS84_URI)
WGS84 = parse_crs(4326)
CGCS2000 = parse_crs(4490)
WEB_MERCATOR = parse_crs(3857)
GCJ02 = CrsRef(code="GCJ02", uri=GCJ02_URI, is_geographic=True, axis_lat_first=False)

#: CRSs advertised to clients: CRS84, WGS84, CGCS2000, Web Mercator, the
#: CGCS2000 3-degree Gauss-Krüger CRSs (EPSG:4513-4533 with zone-prefixed
#: eastings, 4534-4554 by central meridian) and GCJ-02 (non-OGC URI).
SUPPORTED_CRS: tuple[CrsRef, ...] = (
    CRS84, WGS84, CGCS2000, WEB_MERCATOR,
    *(parse_crs(code) for code in range(4513, 4555)),
    GCJ02,
)

# --------------------------------------------------------------------------
# GCJ-02 / BD-09
# --------------------------------------------------------------------------

_KRASOVSKY_A = 6378245.0
_KRASOVSKY_EE = 0.00669342162296594323
_BD_X_PI = np.pi * 3000.0 / 180.0


def _xy_arrays(x, y) -> tuple[np.ndarray, np.ndarray]:
    return tuple(np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float)))


def _out(a: np.ndarray):
    # ndarray for array input, np.float64 scalar (shape ()) for scalar input.
    return a[()]


def _in_china(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """The rough bounding box used by eviltransform/coordtransform."""
    return (lon >= 72.004) & (lon <= 137.8347) & (lat >= 0.8293) & (lat <= 55.8271)


def _gcj_delta(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GCJ-02 minus WGS84, in degrees, at a WGS84 point (no bounding box)."""
    x, y = lon - 105.0, lat - 35.0
    xpi, ypi = x * np.pi, y * np.pi
    common = 20.0 * np.sin(6.0 * xpi) + 20.0 * np.sin(2.0 * xpi)
    dlat = (common + 20.0 * np.sin(ypi) + 40.0 * np.sin(ypi / 3.0)
            + 160.0 * np.sin(ypi / 12.0) + 320.0 * np.sin(ypi / 30.0)) * 2.0 / 3.0
    dlon = (common + 20.0 * np.sin(xpi) + 40.0 * np.sin(xpi / 3.0)
            + 150.0 * np.sin(xpi / 12.0) + 300.0 * np.sin(xpi / 30.0)) * 2.0 / 3.0
    sqrt_abs_x = np.sqrt(np.abs(x))
    dlat += -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * sqrt_abs_x
    dlon += 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * sqrt_abs_x
    # Scale the "metres" above to degrees on the Krasovsky ellipsoid.
    rad_lat = np.radians(lat)
    magic = 1.0 - _KRASOVSKY_EE * np.sin(rad_lat) ** 2
    sqrt_magic = np.sqrt(magic)
    dlat = dlat * 180.0 / (_KRASOVSKY_A * (1.0 - _KRASOVSKY_EE) / (magic * sqrt_magic) * np.pi)
    dlon = dlon * 180.0 / (_KRASOVSKY_A / sqrt_magic * np.cos(rad_lat) * np.pi)
    return dlon, dlat


def wgs84_to_gcj02(lon, lat):
    """WGS84 → GCJ-02 (the published forward formula; identity outside China).

    Parameters
    ----------
    lon, lat : float or array_like
        WGS84 longitude and latitude in degrees; broadcast together.

    Returns
    -------
    lon, lat : ndarray or numpy.float64
        GCJ-02 coordinates with the broadcast shape of the inputs.
    """
    lon, lat = _xy_arrays(lon, lat)
    dlon, dlat = _gcj_delta(lon, lat)
    inside = _in_china(lon, lat)
    return _out(np.where(inside, lon + dlon, lon)), _out(np.where(inside, lat + dlat, lat))


def gcj02_to_wgs84(lon, lat, *, tolerance: float = 1e-9, max_iter: int = 20):
    """GCJ-02 → WGS84 by fixed-point iteration of the forward formula.

    Iterates ``wgs = gcj - delta(wgs)`` starting from ``wgs = gcj``; the first
    step is the common one-shot approximation (metres off), and a few more
    reach sub-millimetre accuracy.  Points whose GCJ-02 coordinates lie
    outside China's bounding box are returned unchanged.

    Parameters
    ----------
    lon, lat : float or array_like
        GCJ-02 longitude and latitude in degrees; broadcast together.
    tolerance : float, optional
        Stop once no coordinate changes by more than this many degrees.
    max_iter : int, optional
        Upper bound on iterations (``max_iter=1`` reproduces the one-shot
        approximation of coordtransform).

    Returns
    -------
    lon, lat : ndarray or numpy.float64
        WGS84 coordinates with the broadcast shape of the inputs.
    """
    lon, lat = _xy_arrays(lon, lat)
    inside = _in_china(lon, lat)
    wlon, wlat = lon, lat
    for _ in range(max(1, max_iter)):
        dlon, dlat = _gcj_delta(wlon, wlat)
        nlon, nlat = lon - dlon, lat - dlat
        change = np.where(inside, np.maximum(np.abs(nlon - wlon), np.abs(nlat - wlat)), 0.0)
        wlon, wlat = nlon, nlat
        if not change.size or change.max() < tolerance:
            break
    return _out(np.where(inside, wlon, lon)), _out(np.where(inside, wlat, lat))


def gcj02_to_bd09(lon, lat):
    """GCJ-02 → BD-09 (Baidu), the standard published formula."""
    x, y = _xy_arrays(lon, lat)
    z = np.hypot(x, y) + 0.00002 * np.sin(y * _BD_X_PI)
    theta = np.arctan2(y, x) + 0.000003 * np.cos(x * _BD_X_PI)
    return _out(z * np.cos(theta) + 0.0065), _out(z * np.sin(theta) + 0.006)


def bd09_to_gcj02(lon, lat):
    """BD-09 → GCJ-02, the standard (closed-form, sub-metre) inverse."""
    lon, lat = _xy_arrays(lon, lat)
    x, y = lon - 0.0065, lat - 0.006
    z = np.hypot(x, y) - 0.00002 * np.sin(y * _BD_X_PI)
    theta = np.arctan2(y, x) - 0.000003 * np.cos(x * _BD_X_PI)
    return _out(z * np.cos(theta)), _out(z * np.sin(theta))


def wgs84_to_bd09(lon, lat):
    """WGS84 → BD-09 (via GCJ-02)."""
    return gcj02_to_bd09(*wgs84_to_gcj02(lon, lat))


def bd09_to_wgs84(lon, lat, *, tolerance: float = 1e-9, max_iter: int = 20):
    """BD-09 → WGS84 (via GCJ-02, with the iterative GCJ-02 inverse)."""
    return gcj02_to_wgs84(*bd09_to_gcj02(lon, lat), tolerance=tolerance, max_iter=max_iter)


# --------------------------------------------------------------------------
# Reprojection
# --------------------------------------------------------------------------

_LONLAT_WGS84 = frozenset({"EPSG:4326", "OGC:CRS84"})  # identical in x/y order


@lru_cache(maxsize=128)
def _transformer(src: str, dst: str) -> pyproj.Transformer:
    # pyproj >= 3.1 Transformers are thread-safe, so sharing cached ones is fine.
    return pyproj.Transformer.from_crs(_pyproj_crs(src), _pyproj_crs(dst), always_xy=True)


def _same_xy(src: CrsRef, dst: CrsRef) -> bool:
    return src == dst or {src.code, dst.code} <= _LONLAT_WGS84


def transform_xy(x, y, *, src: CrsLike, dst: CrsLike):
    """Reproject coordinates between any two supported CRSs (x/y order).

    GCJ-02 legs go through EPSG:4326; all other pairs use a cached pyproj
    Transformer built with ``always_xy=True``.

    Parameters
    ----------
    x, y : float or array_like
        Coordinates in ``src``: lon/lat for geographic CRSs, easting/northing
        for projected ones.  Broadcast together.
    src, dst : str, int or CrsRef
        Source and target CRS, anything :func:`parse_crs` accepts.

    Returns
    -------
    x, y : ndarray or numpy.float64
        Coordinates in ``dst`` with the broadcast shape of the inputs
        (copies, even when ``src == dst``).

    Raises
    ------
    UnknownCrsError
        If ``src`` or ``dst`` cannot be parsed.
    """
    src, dst = parse_crs(src), parse_crs(dst)
    x, y = _xy_arrays(x, y)
    if _same_xy(src, dst):
        return _out(x.copy()), _out(y.copy())
    if src.is_gcj02:
        x, y = gcj02_to_wgs84(x, y)
        src = WGS84
    to_gcj = dst.is_gcj02
    target = WGS84 if to_gcj else dst
    if not _same_xy(src, target):
        tx, ty = _transformer(src.code, target.code).transform(np.ravel(x), np.ravel(y))
        x, y = np.reshape(tx, np.shape(x)), np.reshape(ty, np.shape(y))
    if to_gcj:
        x, y = wgs84_to_gcj02(x, y)
    return _out(np.array(x, dtype=float)), _out(np.array(y, dtype=float))


def transform_geometry(geom, *, src: CrsLike, dst: CrsLike):
    """Reproject shapely 2 geometries (a geometry or an array of them).

    Z values, when present, are carried through unchanged.

    Parameters
    ----------
    geom : shapely.Geometry or array_like of Geometry
        Geometries with coordinates in ``src`` (x/y order).
    src, dst : str, int or CrsRef
        Source and target CRS, anything :func:`parse_crs` accepts.

    Returns
    -------
    shapely.Geometry or ndarray of Geometry
        The same structure with coordinates in ``dst``; ``geom`` itself when
        no reprojection is needed.
    """
    src, dst = parse_crs(src), parse_crs(dst)
    if _same_xy(src, dst):
        return geom

    def fn(x, y, z=None):
        tx, ty = transform_xy(x, y, src=src, dst=dst)
        return (tx, ty) if z is None else (tx, ty, z)

    return shapely.transform(geom, fn, include_z=None, interleaved=False)
