"""Geospatial helpers: CRS parsing and reprojection (storage CRS is EPSG:4326)."""

from cimtwin.geo.crs import (
    CrsRef,
    UnknownCrsError,
    gcj02_to_wgs84,
    parse_crs,
    transform_geometry,
    transform_xy,
    wgs84_to_gcj02,
)

__all__ = [
    "CrsRef",
    "UnknownCrsError",
    "gcj02_to_wgs84",
    "parse_crs",
    "transform_geometry",
    "transform_xy",
    "wgs84_to_gcj02",
]
