"""A cheap planar test that settles most rows of a geodesic "within r metres of a point" query.

The exact test (PostGIS ``geography`` distance on the WGS84 ellipsoid) costs a few
microseconds a row. Most rows are clearly inside or clearly outside the circle, and a
planar distance decides them: in lon/lat with longitudes scaled by

    kx = N(φ0)·cos φ0 / M(φ0)

(N, M: the ellipsoid's radii of curvature at the query point's latitude φ0), a degree
is (almost) the same number of metres in every direction, so the geodesic circle is
(almost) a planar circle. :func:`scaled_band` gives two radii in those scaled degrees:

* ``inner``: a geometry this close is within r metres, for sure;
* ``outer``: a geometry farther than this is beyond r metres, for sure;

and only rows in the band between them need the exact geodesic test.

Why the radii are safe
----------------------
* **Metric.** Along a straight line in scaled degrees, a scaled degree is at most
  ``kmax`` and at least ``kmin`` metres (M grows towards the poles, N·cos φ shrinks),
  taken over every latitude a path of length ≤ 2r from the point can reach. So a point
  at scaled distance s is at most ``kmax·s`` metres away (the straight line is one path),
  and a point reached by a geodesic of length L ≤ 2r is at most ``L/kmin`` scaled
  degrees away.
* **Edges.** PostGIS ``geography`` joins vertices by great circles; ``geometry`` (and so
  the planar test) by straight lines in lon/lat. The two differ by at most the sagitta
  ``L²·tan φ / (8 R)`` for an edge of length L (largest for an east–west edge). The
  band is used only for geometries whose bounding box lies inside ``guard`` (a box of
  half-size 2r around the point), so every edge is shorter than the guard's diagonal.
  Larger geometries always get the exact test.
* **PostGIS.** For lines and polygons PostGIS finds the closest point on the sphere and
  measures on the ellipsoid. That is never below the ellipsoidal minimum, and usually
  within about 2·10⁻⁵·r of it; but where two edges are about equally near, the one nearer
  on the sphere can be farther on the ellipsoid, by up to the ratio N/M (0.5 % at 31°): so
  ``inner`` is divided by that ratio too (``outer`` needs nothing). The margin is
  10⁻³·r + the sagitta bound (×1.5) + 5 mm.

Near the poles (above 80°) and across the antimeridian there is no band (None): every
row gets the exact test.

Nearest N: bounds on each row's distance
----------------------------------------
:func:`nearest_band` gives, for "the N nearest to (lon, lat)", two bounds on the
distance PostGIS reports for a row (``ST_Distance(geography)``), from the row's scaled
planar distance ``s`` (same scaling), so that only rows whose bounds overlap another's
need the exact distance to be ranked:

    lo = ((k0 - a·u/2)·u - sag)·(1 - 10⁻³) - 5 mm,   u = min(s, 2·reach)
    hi = ((k0 + a·s/2)·s + sag)·ratio·(1 + 10⁻⁶) + 5 mm

(multiplied out into three coefficients each, ``lo_coefficients`` and ``hi_coefficients``,
which the SQL takes as parameters).

* ``k0`` is the metres per scaled degree at the point (M(φ0)·π/180, the same along x
  and y); ``a`` bounds how fast that changes per degree of latitude (x: M·|sin φ|/kx,
  from d(N·cos φ)/dφ = -M·sin φ; y: |M'| ≤ 3/2·a·e²), over the guard's latitudes. A
  path of scaled length u from the point stays within u degrees of latitude, so its
  length in metres is within k0·u ± a·u²/2: the straight scaled line bounds the
  ellipsoidal distance from above; the geodesic to the nearest point, whose scaled
  length is ≥ s, bounds it from below (if it leaves the guard it is longer still: the
  guard's edges are 2·reach scaled degrees away).
* ``sag`` bounds the distance between the row's great-circle edges (PostGIS
  ``geography``) and its straight ones (the planar geometry), L²·tan φ/(8 R) ×1.5, with
  L the row's bounding-box diagonal at 111,700 m a degree (more than any degree), φ the
  guard's highest latitude.
* ``ratio``: PostGIS picks a line's or ring's closest point on the sphere and reports
  the ellipsoidal distance to that point. That is never below the ellipsoidal minimum
  (so ``lo`` needs no allowance), but it can be above it by the spread of
  ellipsoid-to-sphere scale over directions, N/M (up to 0.67 % at the equator), when two
  edges are about equally near: not only the 2·10⁻⁵ of a single edge. ``ratio`` is the
  largest N over the smallest M across the guard's latitudes.
* The relative 10⁻³ and 10⁻⁶ and the 5 mm cover the ellipsoidal distance's own error
  and rounding.

The bounds hold for rows whose bounding box lies inside ``guard`` (a box of
2·``reach`` scaled degrees around the point) with ``s`` ≤ ``reach``; other rows need
the exact distance. Near the poles and across the antimeridian there is no band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["NearestBand", "ScaledBand", "nearest_band", "scaled_band"]

_A = 6_378_137.0                      # WGS84 semi-major axis (m)
_E2 = 0.00669437999014                # WGS84 first eccentricity squared
_R_MIN = _A * (1 - _E2)               # smallest radius of curvature (M at the equator)
_DEG = math.pi / 180.0
_LAT_M_PER_DEG_MIN = 110_574.0        # M(0)·π/180 = 110,574.27 m, rounded down
_LON_M_PER_DEG_EQ = 111_319.49        # a·π/180; N(φ) ≥ a, so N·cos φ·π/180 ≥ this·cos φ
_MAX_LAT = 80.0
_M_PER_DEG_MAX = 111_700.0            # more than any degree of latitude or longitude (M(90°)·π/180 = 111,694)
_NEAREST_REACH = 0.1                  # scaled degrees (~11 km) within which the nearest bounds apply


def _m(phi_deg: float) -> float:
    s = math.sin(math.radians(phi_deg))
    return _A * (1 - _E2) / (1 - _E2 * s * s) ** 1.5


def _n(phi_deg: float) -> float:
    s = math.sin(math.radians(phi_deg))
    return _A / math.sqrt(1 - _E2 * s * s)


@dataclass(frozen=True)
class ScaledBand:
    """The planar test for one query point and radius (see the module docstring).

    Attributes
    ----------
    kx : float
        Scale applied to longitudes (``ST_Scale(geom, kx, 1)``).
    x, y : float
        The query point in scaled degrees (``lon·kx``, ``lat``).
    inner, outer : float
        Scaled-degree radii: within ``inner`` is inside r, beyond ``outer`` is outside r.
    guard : tuple of float
        (xmin, ymin, xmax, ymax) in lon/lat; the band applies only to geometries whose
        bounding box lies inside it.
    """

    kx: float
    x: float
    y: float
    inner: float
    outer: float
    guard: tuple[float, float, float, float]


def scaled_band(lon: float, lat: float, radius_m: float) -> ScaledBand | None:
    """The planar band test for "within ``radius_m`` metres of (lon, lat)".

    Parameters
    ----------
    lon, lat : float
        The query point, WGS84 degrees.
    radius_m : float
        The radius in metres (> 0).

    Returns
    -------
    ScaledBand or None
        None where no band is safe (the guard box reaches above 80° or across ±180°);
        then every row needs the exact test.
    """
    r = float(radius_m)
    if not (r > 0 and math.isfinite(r) and math.isfinite(lon) and math.isfinite(lat)):
        return None
    # The guard: a box of half-size 2r. Every path of length ≤ 2r from the point stays
    # within its latitudes (a degree of latitude is at least _LAT_M_PER_DEG_MIN metres).
    g_dlat = 2 * r / _LAT_M_PER_DEG_MIN * 1.0001
    phi_hi = abs(lat) + g_dlat
    if phi_hi > _MAX_LAT:
        return None
    phi_lo = max(abs(lat) - g_dlat, 0.0)
    g_dlon = 2 * r / (_LON_M_PER_DEG_EQ * math.cos(math.radians(phi_hi))) * 1.0001
    if abs(lon) + g_dlon > 180.0:
        return None

    kx = _n(lat) * math.cos(math.radians(lat)) / _m(lat)
    # metres per scaled degree: along y, M(φ); along x, N(φ)·cos φ / kx
    kmax = max(_m(phi_hi), _n(phi_lo) * math.cos(math.radians(phi_lo)) / kx) * _DEG
    kmin = min(_m(phi_lo), _n(phi_hi) * math.cos(math.radians(phi_hi)) / kx) * _DEG

    width = 2 * g_dlon * _n(phi_lo) * math.cos(math.radians(phi_lo)) * _DEG
    height = 2 * g_dlat * _m(phi_hi) * _DEG
    edge = math.hypot(width, height)
    sagitta = edge * edge * math.tan(math.radians(phi_hi)) / (8 * _R_MIN) * 1.5
    margin = 1e-3 * r + sagitta + 0.005
    # PostGIS's distance can exceed the ellipsoidal minimum by up to N/M ("Nearest N" below)
    ratio = _n(phi_hi) / _m(phi_lo)
    return ScaledBand(kx=kx, x=lon * kx, y=lat,
                      inner=max((r - margin) / (kmax * ratio), 0.0), outer=(r + margin) / kmin,
                      guard=(lon - g_dlon, lat - g_dlat, lon + g_dlon, lat + g_dlat))


@dataclass(frozen=True)
class NearestBand:
    """Bounds on geodesic distance from scaled planar distance, for one query point
    (see "Nearest N" in the module docstring).

    Attributes
    ----------
    kx : float
        Scale applied to longitudes (``ST_Scale(geom, kx, 1)``).
    x, y : float
        The query point in scaled degrees (``lon·kx``, ``lat``).
    k0, a : float
        Metres per scaled degree at the point, and a bound on its change per degree of
        latitude: a path of scaled length u is k0·u ± a·u²/2 metres long.
    sag_k : float
        Metres of edge sagitta per squared degree of a row's bounding-box diagonal.
    ratio : float
        How far above the ellipsoidal minimum PostGIS's distance can be (a factor).
    reach : float
        Scaled distance up to which the bounds hold.
    guard : tuple of float
        (xmin, ymin, xmax, ymax) in lon/lat; the bounds hold only for rows whose
        bounding box lies inside it.
    """

    kx: float
    x: float
    y: float
    k0: float
    a: float
    sag_k: float
    ratio: float
    reach: float
    guard: tuple[float, float, float, float]

    @property
    def lo_coefficients(self) -> tuple[float, float, float]:
        """(c0, c1, c2) with lo = u·(c0 - c1·u) - c2·diag² - 5 mm, u = min(s, 2·reach): the
        lower bound multiplied out, so that the SQL holds no more arithmetic than needed."""
        f = 1 - 1e-3
        return self.k0 * f, self.a / 2 * f, self.sag_k * f

    @property
    def hi_coefficients(self) -> tuple[float, float, float]:
        """(c0, c1, c2) with hi = s·(c0 + c1·s) + c2·diag² + 5 mm: the upper bound multiplied out."""
        f = self.ratio * (1 + 1e-6)
        return self.k0 * f, self.a / 2 * f, self.sag_k * f

    def bounds(self, s: float, diag_deg: float = 0.0) -> tuple[float, float]:
        """(lo, hi) in metres for a row at scaled distance ``s`` whose bounding-box
        diagonal is ``diag_deg`` degrees (the same formula as the SQL)."""
        lo0, lo1, lo2 = self.lo_coefficients
        hi0, hi1, hi2 = self.hi_coefficients
        u = min(s, 2 * self.reach)
        d2 = diag_deg * diag_deg
        return u * (lo0 - lo1 * u) - lo2 * d2 - 0.005, s * (hi0 + hi1 * s) + hi2 * d2 + 0.005


def nearest_band(lon: float, lat: float, reach: float = _NEAREST_REACH) -> NearestBand | None:
    """Distance bounds for "the N nearest to (lon, lat)" (module docstring, "Nearest N").

    Returns None where no bounds are safe (the guard reaches above 80° or across ±180°):
    then every row needs the exact distance.
    """
    if not (math.isfinite(lon) and math.isfinite(lat) and reach > 0):
        return None
    phi_hi = abs(lat) + 2 * reach
    if phi_hi > _MAX_LAT:
        return None
    kx = _n(lat) * math.cos(math.radians(lat)) / _m(lat)
    g_dlon = 2 * reach / kx
    if abs(lon) + g_dlon >= 180.0:
        return None
    a = (_m(phi_hi) * math.sin(math.radians(phi_hi)) / kx + 1.5 * _A * _E2) * _DEG * _DEG * 1.01
    sag_k = _M_PER_DEG_MAX ** 2 * math.tan(math.radians(phi_hi)) / (8 * _R_MIN) * 1.5
    ratio = _n(phi_hi) / _m(max(abs(lat) - 2 * reach, 0.0))
    return NearestBand(kx=kx, x=lon * kx, y=lat, k0=_m(lat) * _DEG, a=a, sag_k=sag_k, ratio=ratio, reach=reach,
                       guard=(lon - g_dlon, lat - 2 * reach, lon + g_dlon, lat + 2 * reach))
