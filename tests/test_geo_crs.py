"""Tests for cimtwin.geo.crs (no database or services needed)."""

import dataclasses
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pyproj
import pytest
import shapely
from shapely.geometry import Point, Polygon

from cimtwin.geo import crs
from cimtwin.geo.crs import (
    CRS84,
    SUPPORTED_CRS,
    UnknownCrsError,
    parse_crs,
    transform_geometry,
    transform_xy,
)

GEOD = pyproj.Geod(ellps="WGS84")
_VECTORS_NAME = "china_crs_test_vectors.json"


def _vectors_path() -> Path:
    for base in (Path(__file__).resolve().parents[2] / "shared", Path("/work/shared")):
        path = base / "data" / _VECTORS_NAME
        if path.is_file():
            return path
    pytest.fail(f"{_VECTORS_NAME} not found")


VECTORS = json.loads(_vectors_path().read_text(encoding="utf-8"))
EVIL = VECTORS["gcj02_wgs84_eviltransform"]["vectors"]
COORDTRANSFORM = VECTORS["coordtransform_wandergis_hutool"]["vectors"]

# Stated in the file: wgs->gcj exact to 1e-6 deg; gcj->wgs one-shot approx <5 m,
# exact-iterative <0.5 m.
EXACT_DEG = 1e-6
APPROX_M = 5.0
ITERATIVE_M = 0.5


def metres(lon1, lat1, lon2, lat2):
    return GEOD.inv(lon1, lat1, lon2, lat2)[2]


def china_grid(n=60):
    lon, lat = np.meshgrid(np.linspace(73.0, 135.0, n), np.linspace(18.0, 53.5, n))
    return lon, lat


# --- published test vectors ------------------------------------------------


def test_vector_file_shape():
    assert len(EVIL) == 3 and len(COORDTRANSFORM) == 6


@pytest.mark.parametrize("wlat, wlon, glat, glon, label", EVIL, ids=[v[4] for v in EVIL])
def test_eviltransform_vectors(wlat, wlon, glat, glon, label):
    lon, lat = crs.wgs84_to_gcj02(wlon, wlat)
    assert abs(lon - glon) < EXACT_DEG and abs(lat - glat) < EXACT_DEG

    lon, lat = crs.gcj02_to_wgs84(glon, glat)
    assert metres(lon, lat, wlon, wlat) < ITERATIVE_M

    lon, lat = crs.gcj02_to_wgs84(glon, glat, max_iter=1)  # one-shot approximation
    assert metres(lon, lat, wlon, wlat) < APPROX_M


def test_forward_formula_matches_references_bit_for_bit():
    # Stricter than the stated 1e-6 deg: same float64 formula, so ~1e-9 deg (0.1 mm).
    refs = [(v[1], v[0], v[3], v[2]) for v in EVIL]
    refs += [(*v["in"], *v["out"]) for v in COORDTRANSFORM if v["fn"] == "wgs84_to_gcj02"]
    for wlon, wlat, glon, glat in refs:
        lon, lat = crs.wgs84_to_gcj02(wlon, wlat)
        assert abs(lon - glon) < 1e-9 and abs(lat - glat) < 1e-9


# coordtransform's gcj02_to_wgs84 / bd09_to_wgs84 are the one-shot approximation,
# which our functions reproduce with max_iter=1.
_CT_FUNCS = {
    "wgs84_to_gcj02": (crs.wgs84_to_gcj02, {}),
    "gcj02_to_wgs84": (crs.gcj02_to_wgs84, {"max_iter": 1}),
    "wgs84_to_bd09": (crs.wgs84_to_bd09, {}),
    "bd09_to_wgs84": (crs.bd09_to_wgs84, {"max_iter": 1}),
    "gcj02_to_bd09": (crs.gcj02_to_bd09, {}),
    "bd09_to_gcj02": (crs.bd09_to_gcj02, {}),
}


@pytest.mark.parametrize("vec", COORDTRANSFORM, ids=[v["fn"] for v in COORDTRANSFORM])
def test_coordtransform_vectors(vec):
    fn, kwargs = _CT_FUNCS[vec["fn"]]
    lon, lat = fn(*vec["in"], **kwargs)
    assert abs(lon - vec["out"][0]) < EXACT_DEG and abs(lat - vec["out"][1]) < EXACT_DEG


# BD-09 -> GCJ-02 is the standard closed form (sub-metre), so BD-09 is looser.
@pytest.mark.parametrize("name, back_m", [("gcj02_to_wgs84", 1e-3), ("bd09_to_wgs84", ITERATIVE_M)])
def test_iterative_inverse_close_to_oneshot_vector_and_exact(name, back_m):
    vec = next(v for v in COORDTRANSFORM if v["fn"] == name)
    fn, _ = _CT_FUNCS[name]
    lon, lat = fn(*vec["in"])
    assert metres(lon, lat, *vec["out"]) < APPROX_M
    # The iterative result maps back onto the input far better than the one-shot value.
    forward = crs.wgs84_to_gcj02 if name == "gcj02_to_wgs84" else crs.wgs84_to_bd09
    ours = metres(*forward(lon, lat), *vec["in"])
    assert ours < back_m and ours < metres(*forward(*vec["out"]), *vec["in"]) / 4


# --- GCJ-02 behaviour --------------------------------------------------------


def test_gcj02_round_trip_across_china():
    lon, lat = china_grid()
    glon, glat = crs.wgs84_to_gcj02(lon, lat)
    assert metres(lon, lat, glon, glat).min() > 20  # the offset is really applied
    wlon, wlat = crs.gcj02_to_wgs84(glon, glat)
    assert metres(lon, lat, wlon, wlat).max() < ITERATIVE_M
    alon, alat = crs.gcj02_to_wgs84(glon, glat, max_iter=1)
    assert metres(lon, lat, alon, alat).max() > 1.0  # iteration is what buys accuracy


@pytest.mark.parametrize(
    "lon, lat",
    [
        (2.3522, 48.8566), (151.2093, -33.8688), (-74.006, 40.7128),
        (139.6917, 35.6895), (106.8456, -6.2088), (129.7331, 62.0355),
    ],
    ids=["paris", "sydney", "new-york", "tokyo", "jakarta", "yakutsk"],
)
def test_gcj02_identity_outside_china(lon, lat):
    assert crs.wgs84_to_gcj02(lon, lat) == (lon, lat)
    assert crs.gcj02_to_wgs84(lon, lat) == (lon, lat)
    assert transform_xy(lon, lat, src="EPSG:4326", dst="GCJ02") == (lon, lat)


def test_gcj02_mixed_array_inside_and_outside():
    lon, lat = np.array([2.3522, 121.47]), np.array([48.8566, 31.23])
    glon, glat = crs.wgs84_to_gcj02(lon, lat)
    assert (glon[0], glat[0]) == (lon[0], lat[0])
    assert metres(lon[1], lat[1], glon[1], glat[1]) > 100


def test_bd09_round_trip_close():
    lon, lat = china_grid(30)
    assert metres(lon, lat, *crs.bd09_to_wgs84(*crs.wgs84_to_bd09(lon, lat))).max() < ITERATIVE_M


# --- parse_crs ---------------------------------------------------------------

_FORMS = {
    "EPSG:4490": [
        "EPSG:4490", "epsg:4490", "4490", 4490, "  EPSG:4490 ",
        "http://www.opengis.net/def/crs/EPSG/0/4490",
        "https://www.opengis.net/def/crs/EPSG/0/4490",
        "urn:ogc:def:crs:EPSG::4490", "URN:OGC:DEF:CRS:EPSG:9.8.15:4490",
    ],
    "EPSG:4326": [
        "EPSG:4326", "epsg:4326", "4326", "urn:ogc:def:crs:EPSG::4326",
        "http://www.opengis.net/def/crs/EPSG/0/4326",
    ],
    "OGC:CRS84": [
        "OGC:CRS84", "CRS84", "crs84",
        "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
        "https://www.opengis.net/def/crs/OGC/1.3/CRS84",
        "urn:ogc:def:crs:OGC:1.3:CRS84",
    ],
    "GCJ02": ["GCJ02", "GCJ-02", "gcj02", "gcj-02", "Gcj02", "urn:cimtwin:crs:gcj02"],
}


@pytest.mark.parametrize(
    "code, form", [(code, form) for code, forms in _FORMS.items() for form in forms]
)
def test_parse_crs_forms(code, form):
    assert parse_crs(form).code == code


@pytest.mark.parametrize("code", list(_FORMS))
def test_parse_crs_forms_give_one_ref(code):
    assert len({parse_crs(form) for form in _FORMS[code]}) == 1


@pytest.mark.parametrize(
    "value, code, uri, geographic, lat_first",
    [
        ("4490", "EPSG:4490", "http://www.opengis.net/def/crs/EPSG/0/4490", True, True),
        ("4326", "EPSG:4326", "http://www.opengis.net/def/crs/EPSG/0/4326", True, True),
        ("CRS84", "OGC:CRS84", "http://www.opengis.net/def/crs/OGC/1.3/CRS84", True, False),
        ("3857", "EPSG:3857", "http://www.opengis.net/def/crs/EPSG/0/3857", False, False),
        ("4549", "EPSG:4549", "http://www.opengis.net/def/crs/EPSG/0/4549", False, True),
        ("gcj-02", "GCJ02", "urn:cimtwin:crs:gcj02", True, False),
    ],
)
def test_crsref_attributes(value, code, uri, geographic, lat_first):
    ref = parse_crs(value)
    assert (ref.code, ref.uri, ref.is_geographic, ref.axis_lat_first) == (
        code, uri, geographic, lat_first,
    )


def test_crsref_is_frozen_and_hashable():
    ref = parse_crs("EPSG:4490")
    assert {ref: 1}[parse_crs("urn:ogc:def:crs:EPSG::4490")] == 1
    assert ref != parse_crs("EPSG:4326") and CRS84 != parse_crs("EPSG:4326")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.code = "EPSG:4326"
    assert parse_crs(ref) is ref


def test_supported_crs_listed_and_uri_round_trips():
    codes = {ref.code for ref in SUPPORTED_CRS}
    expected = {"OGC:CRS84", "EPSG:4326", "EPSG:4490", "EPSG:3857", "GCJ02"}
    expected |= {f"EPSG:{n}" for n in range(4513, 4555)}
    assert codes == expected
    for ref in SUPPORTED_CRS:
        assert parse_crs(ref.uri) == ref
        assert parse_crs(ref.code) == ref


@pytest.mark.parametrize(
    "value",
    [
        "EPSG:99999", "99999", 99999, "urn:ogc:def:crs:EPSG::99999",
        "http://www.opengis.net/def/crs/EPSG/0/99999", "", "EPSG:", "foo",
        "GCJ03", "CRS83", "EPSG:4326x", "http://example.com/def/crs/EPSG/0/4326",
        "EPSG:4978",  # known to PROJ but geocentric, not 2D
    ],
)
def test_parse_crs_unknown(value):
    with pytest.raises(UnknownCrsError) as info:
        parse_crs(value)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"unknown CRS {value!r}")
    assert info.value.value == value


def test_unknown_crs_message_exact_and_picklable():
    with pytest.raises(UnknownCrsError, match=r"^unknown CRS 'EPSG:99999'$"):
        parse_crs("EPSG:99999")
    with pytest.raises(UnknownCrsError, match=r"^unknown CRS 'EPSG:4978': not a 2D"):
        parse_crs("EPSG:4978")
    err = pickle.loads(pickle.dumps(UnknownCrsError("EPSG:99999")))
    assert str(err) == "unknown CRS 'EPSG:99999'"


def test_transform_rejects_unknown_crs():
    with pytest.raises(UnknownCrsError, match="EPSG:99999"):
        transform_xy(1.0, 2.0, src="EPSG:4326", dst="EPSG:99999")


# --- pyproj-backed reprojection ---------------------------------------------

SHANGHAI = (121.4737, 31.2304)


@pytest.mark.parametrize(
    "epsg, lon_0, false_easting",
    [(4549, 120.0, 500_000.0), (4528, 120.0, 40_500_000.0)],  # CM 120E / zone 40
)
def test_cgcs2000_gauss_kruger_round_trip(epsg, lon_0, false_easting):
    params = pyproj.CRS.from_epsg(epsg).to_json_dict()["conversion"]["parameters"]
    values = {p["name"]: p["value"] for p in params}
    assert values["Longitude of natural origin"] == lon_0
    assert values["False easting"] == false_easting
    # Shanghai is in the zone: within 1.5 degrees of the central meridian.
    assert abs(SHANGHAI[0] - lon_0) <= 1.5

    e, n = transform_xy(*SHANGHAI, src="EPSG:4490", dst=f"EPSG:{epsg}")
    assert 3.4e6 < n < 3.5e6 and abs(e - false_easting - 140_000) < 5_000
    lon, lat = transform_xy(e, n, src=f"EPSG:{epsg}", dst="EPSG:4490")
    assert metres(lon, lat, *SHANGHAI) < 1e-3
    # On the central meridian the easting is exactly the false easting.
    e0, _ = transform_xy(lon_0, 31.0, src="EPSG:4490", dst=f"EPSG:{epsg}")
    assert abs(e0 - false_easting) < 1e-6


def test_zone_prefixed_and_cm_codes_differ_only_by_prefix():
    e1, n1 = transform_xy(*SHANGHAI, src="EPSG:4490", dst="EPSG:4549")
    e2, n2 = transform_xy(*SHANGHAI, src="EPSG:4490", dst="EPSG:4528")
    assert abs(e2 - e1 - 40_000_000) < 1e-6 and abs(n2 - n1) < 1e-6


def test_web_mercator_round_trip():
    x, y = transform_xy(180.0, 0.0, src="EPSG:4326", dst="EPSG:3857")
    assert abs(x - 20037508.342789244) < 1e-6 and abs(y) < 1e-6
    x, y = transform_xy(*SHANGHAI, src="OGC:CRS84", dst="EPSG:3857")
    assert abs(x - 6378137.0 * math.radians(SHANGHAI[0])) < 1e-6
    lon, lat = transform_xy(x, y, src="EPSG:3857", dst="EPSG:4326")
    assert metres(lon, lat, *SHANGHAI) < 1e-3


def test_always_xy_for_lat_first_crs():
    # EPSG:4326 is officially lat/lon, but we always pass lon/lat.
    x, _ = transform_xy(*SHANGHAI, src="EPSG:4326", dst="EPSG:3857")
    assert 1.3e7 < x < 1.4e7
    lon, lat = transform_xy(*SHANGHAI, src="EPSG:4490", dst="EPSG:4326")
    assert metres(lon, lat, *SHANGHAI) < 1.0  # CGCS2000 ~ WGS84


def test_gcj02_dispatch_via_wgs84():
    glon, glat = crs.wgs84_to_gcj02(*SHANGHAI)
    assert transform_xy(*SHANGHAI, src="EPSG:4326", dst="GCJ02") == (glon, glat)
    x, y = transform_xy(glon, glat, src="GCJ02", dst="EPSG:3857")
    ex, ey = transform_xy(*SHANGHAI, src="EPSG:4326", dst="EPSG:3857")
    assert math.hypot(x - ex, y - ey) < 0.5
    e, n = transform_xy(glon, glat, src="GCJ02", dst="EPSG:4549")
    lon, lat = transform_xy(e, n, src="EPSG:4549", dst="GCJ02")
    assert metres(lon, lat, glon, glat) < 1e-3


def test_identity_returns_copies():
    x = np.array([1.0, 2.0])
    out_x, out_y = transform_xy(x, 3.0, src="EPSG:3857", dst="epsg:3857")
    assert np.array_equal(out_x, x) and np.array_equal(out_y, [3.0, 3.0])
    assert out_x is not x and not np.shares_memory(out_x, x)
    assert transform_xy(*SHANGHAI, src="CRS84", dst="EPSG:4326") == SHANGHAI


def test_transformers_are_cached():
    crs._transformer.cache_clear()
    transform_xy(*SHANGHAI, src="EPSG:4326", dst="EPSG:3857")
    transform_xy(*SHANGHAI, src="EPSG:4326", dst="EPSG:3857")
    info = crs._transformer.cache_info()
    assert info.misses == 1 and info.hits == 1


# --- vectorization -----------------------------------------------------------


@pytest.mark.parametrize(
    "src, dst",
    [
        ("EPSG:4326", "EPSG:3857"), ("GCJ02", "EPSG:4549"),
        ("EPSG:4326", "GCJ02"), ("CRS84", "EPSG:4326"),
    ],
)
def test_vectorized_shapes_match_scalar_calls(src, dst):
    lon, lat = np.meshgrid(np.linspace(120.5, 121.5, 4), np.linspace(30.5, 31.5, 3))
    if src == "GCJ02":
        lon, lat = crs.wgs84_to_gcj02(lon, lat)
    x, y = transform_xy(lon, lat, src=src, dst=dst)
    assert x.shape == y.shape == (3, 4)
    sx, sy = transform_xy(lon[2, 3], lat[2, 3], src=src, dst=dst)
    assert np.shape(sx) == () and x[2, 3] == pytest.approx(sx, abs=1e-9)
    assert y[2, 3] == pytest.approx(sy, abs=1e-9)


def test_broadcasting_and_lists():
    x, y = transform_xy([120.0, 121.0, 122.0], 31.0, src="EPSG:4326", dst="EPSG:3857")
    assert x.shape == y.shape == (3,) and np.all(np.diff(x) > 0) and np.ptp(y) == 0
    glon, glat = crs.gcj02_to_wgs84(np.full((2, 2), 121.0), np.full((2, 2), 31.0))
    assert glon.shape == glat.shape == (2, 2)
    empty = transform_xy(np.array([]), np.array([]), src="GCJ02", dst="EPSG:3857")
    assert empty[0].shape == (0,)


# --- geometries --------------------------------------------------------------


def test_transform_geometry_polygon_with_hole():
    shell = [(121.40, 31.10), (121.60, 31.10), (121.60, 31.30), (121.40, 31.30)]
    hole = [(121.45, 31.15), (121.50, 31.15), (121.50, 31.20)]
    poly = Polygon(shell, [hole])
    out = transform_geometry(poly, src="EPSG:4326", dst="EPSG:3857")
    assert out.geom_type == "Polygon" and len(out.interiors) == 1
    ex, ey = transform_xy(*np.array(poly.exterior.coords).T, src="EPSG:4326", dst="EPSG:3857")
    assert np.allclose(np.array(out.exterior.coords), np.column_stack([ex, ey]), atol=1e-6)
    assert 4e8 < out.area < 6e8  # ~19 km x 26 km in Mercator metres at 31N
    back = transform_geometry(out, src="EPSG:3857", dst="EPSG:4326")
    assert shapely.equals_exact(back, poly, tolerance=1e-9)


def test_transform_geometry_gcj02_array_and_z():
    pts = np.array([Point(121.47, 31.23, 12.5), Point(2.35, 48.86)])
    out = transform_geometry(pts, src="EPSG:4326", dst="GCJ02")
    assert out.shape == (2,)
    assert out[0].has_z and out[0].z == 12.5
    assert metres(out[0].x, out[0].y, 121.47, 31.23) > 100
    assert (out[1].x, out[1].y) == (2.35, 48.86)


def test_transform_geometry_identity_is_noop():
    poly = Polygon([(0, 0), (1, 0), (1, 1)])
    assert transform_geometry(poly, src="EPSG:4326", dst="urn:ogc:def:crs:EPSG::4326") is poly
