"""Reading and writing vector files (GeoJSON, GeoPackage, Shapefile, CSV with WKT, …).

Built on pyogrio and geopandas.  Reading keeps every feature, in file order, so that
a caller can report each rejected feature by its index; nothing is filtered here.
Reprojection goes through :mod:`cimtwin.geo.crs` (``always_xy=True``; GCJ-02 included).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pyproj
import shapely

from cimtwin.geo.crs import CRS84, WGS84, CrsLike, CrsRef, UnknownCrsError, parse_crs, transform_geometry

__all__ = [
    "SourceFeatures",
    "FileFormatError",
    "list_layers",
    "read_features",
    "to_lonlat",
    "from_lonlat",
    "write_features",
    "DRIVERS",
]

#: File suffix → GDAL driver for :func:`write_features`.
DRIVERS = {
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".gpkg": "GPKG",
    ".shp": "ESRI Shapefile",
    ".fgb": "FlatGeobuf",
    ".csv": "CSV",
}
_WKT_NAMES = ("wkt", "geometry", "geom", "the_geom", "shape", "wkt_geom")
_XY_NAMES = (("lon", "lat"), ("lng", "lat"), ("longitude", "latitude"), ("x", "y"))


class FileFormatError(ValueError):
    """The file cannot be read as asked (missing, no such layer, several layers, no geometry column)."""


@dataclass
class SourceFeatures:
    """The features of one layer of a file, in file order.

    Attributes
    ----------
    frame : geopandas.GeoDataFrame
        Attributes and geometry, indexed 0…n-1 by feature position; a geometry is
        None where the file has none or where it could not be parsed.
    crs : CrsRef or pyproj.CRS or None
        The CRS the coordinates are in: ``crs=`` when given, else the file's; a
        :class:`CrsRef` whenever the CRS has an EPSG code (or is GCJ-02).
    crs_origin : str
        ``"option"``, ``"file"`` or ``"none"``.
    parse_errors : ndarray of str or None
        Per feature, why its geometry could not be read (CSV WKT), else None.
    layer : str or None
        The layer read.
    driver : str
        The GDAL driver (``"CSV"`` for CSV files read here).
    """

    frame: gpd.GeoDataFrame
    crs: CrsRef | pyproj.CRS | None
    crs_origin: str
    parse_errors: np.ndarray
    layer: str | None
    driver: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def crs_name(self) -> str:
        if self.crs is None:
            return "none"
        if isinstance(self.crs, CrsRef):
            return self.crs.code
        return self.crs.name


def list_layers(path: str | Path) -> list[str]:
    """The layer names of a vector file."""
    return [str(name) for name, _ in pyogrio.list_layers(str(path))]


def _crs_ref(crs: pyproj.CRS | None) -> CrsRef | pyproj.CRS | None:
    """A CrsRef when the CRS has an EPSG (or OGC) code cimtwin supports; otherwise the pyproj CRS itself."""
    if crs is None:
        return None
    authority = crs.to_authority(min_confidence=70)
    if authority is not None:
        try:
            return parse_crs(":".join(authority))
        except UnknownCrsError:
            pass
    return crs


def _infer_types(df: pd.DataFrame) -> pd.DataFrame:
    """CSV columns read as text become numbers where every non-blank value is one (but not
    codes with leading zeros such as "007", which stay text)."""
    for col in df.columns:
        text = df[col].astype(str).str.strip()
        filled = text[text != ""]
        if filled.empty or filled.str.match(r"^[+-]?0\d").any():
            continue
        numbers = pd.to_numeric(filled, errors="coerce")
        if numbers.isna().any():
            continue
        if (numbers == numbers.round()).all() and not filled.str.contains(r"[.eE]").any():
            values = [int(v) if t != "" else None for v, t in zip(pd.to_numeric(text.where(text != ""), errors="coerce")
                                                                  .fillna(0), text)]
        else:
            values = [float(v) if t != "" else None for v, t in zip(pd.to_numeric(text.where(text != ""),
                                                                                   errors="coerce").fillna(0), text)]
        df[col] = pd.Series(values, index=df.index, dtype=object)
    return df


def _read_csv(path: Path, *, geometry_field: str | None) -> tuple[gpd.GeoDataFrame, np.ndarray, list[str]]:
    df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    lower = {c.lower(): c for c in df.columns}
    n = len(df)
    errors = np.full(n, None, dtype=object)
    notes = []
    wkt_col = None
    if geometry_field:
        if geometry_field not in df.columns:
            raise FileFormatError(f"{path.name}: no column {geometry_field!r}; columns: {', '.join(df.columns)}")
        wkt_col = geometry_field
    else:
        wkt_col = next((lower[c] for c in _WKT_NAMES if c in lower), None)
    if wkt_col is not None:
        text = df[wkt_col].astype(str).str.strip().to_numpy(dtype=object)
        blank = np.array([t == "" for t in text], dtype=bool)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            geoms = shapely.from_wkt(np.where(blank, None, text), on_invalid="ignore")
        for i in np.flatnonzero(~blank & shapely.is_missing(geoms)):
            snippet = text[i] if len(text[i]) <= 60 else text[i][:57] + "..."
            errors[i] = f"unparsable WKT in column {wkt_col!r}: {snippet!r}"
        df = df.drop(columns=[wkt_col])
        notes.append(f"geometry from WKT column {wkt_col!r}")
        df = _infer_types(df)
    else:
        pair = next(((lower[x], lower[y]) for x, y in _XY_NAMES if x in lower and y in lower), None)
        if pair is None:
            raise FileFormatError(f"{path.name}: no geometry column; name one with --geometry-field, or give "
                                  f"a WKT column ({'/'.join(_WKT_NAMES)}) or lon/lat (x/y) columns")
        xs = pd.to_numeric(df[pair[0]], errors="coerce").to_numpy(dtype=float)
        ys = pd.to_numeric(df[pair[1]], errors="coerce").to_numpy(dtype=float)
        bad = ~(np.isfinite(xs) & np.isfinite(ys))
        blank = (df[pair[0]].str.strip() == "").to_numpy() & (df[pair[1]].str.strip() == "").to_numpy()
        geoms = np.full(n, None, dtype=object)
        geoms[~bad] = shapely.points(xs[~bad], ys[~bad])
        for i in np.flatnonzero(bad & ~blank):
            errors[i] = f"{pair[0]}/{pair[1]} {df[pair[0]].iat[i]!r}/{df[pair[1]].iat[i]!r} are not numbers"
        df = df.drop(columns=list(pair))
        notes.append(f"point geometry from columns {pair[0]!r}/{pair[1]!r}")
        df = _infer_types(df)
    frame = gpd.GeoDataFrame(df, geometry=gpd.GeoSeries(geoms, index=df.index), crs=None)
    return frame, errors, notes


def read_features(path: str | Path, *, layer: str | None = None, crs: CrsLike | None = None,
                  geometry_field: str | None = None) -> SourceFeatures:
    """Read every feature of one layer of a vector file.

    Parameters
    ----------
    path : str or Path
        GeoJSON, GeoPackage, Shapefile, FlatGeobuf, … (anything GDAL reads), or a
        ``.csv`` with a WKT column or lon/lat columns.
    layer : str, optional
        The layer to read; required when the file has more than one.
    crs : str, int or CrsRef, optional
        The CRS of the coordinates, overriding what the file declares (for files
        that declare none, or declare the wrong one).
    geometry_field : str, optional
        For CSV: the column holding WKT (found by name otherwise).

    Returns
    -------
    SourceFeatures

    Raises
    ------
    FileFormatError
        The file is missing or unreadable, the layer does not exist, or a layer
        must be chosen.
    UnknownCrsError
        ``crs`` is not a CRS cimtwin knows.
    """
    path = Path(path)
    override = parse_crs(crs) if crs is not None else None
    if not path.exists():
        raise FileFormatError(f"{path}: no such file")
    if path.suffix.lower() == ".csv":
        frame, errors, notes = _read_csv(path, geometry_field=geometry_field)
        driver, layer_name, file_crs = "CSV", path.stem, None
    else:
        try:
            layers = list_layers(path)
        except pyogrio.errors.DataSourceError as exc:
            raise FileFormatError(f"{path}: not a vector file GDAL can read ({exc})") from None
        if layer is None and len(layers) > 1:
            raise FileFormatError(f"{path.name} has {len(layers)} layers ({', '.join(layers)}); "
                                  f"choose one with --layer")
        if layer is not None and layer not in layers:
            raise FileFormatError(f"{path.name} has no layer {layer!r}; layers: {', '.join(layers)}")
        layer_name = layer or (layers[0] if layers else None)
        info = pyogrio.read_info(str(path), layer=layer_name)
        driver = info["driver"]
        with warnings.catch_warnings():
            # e.g. "Could not parse column 'height' as JSON": mixed types are reported per feature later
            warnings.simplefilter("ignore", UserWarning)
            frame = pyogrio.read_dataframe(str(path), layer=layer_name)
        if not isinstance(frame, gpd.GeoDataFrame):
            raise FileFormatError(f"{path.name}: layer {layer_name!r} has no geometry")
        frame = frame.reset_index(drop=True)
        file_crs = frame.crs
        errors = np.full(len(frame), None, dtype=object)
        notes = []
    if override is not None:
        src, origin = override, "option"
    elif file_crs is not None:
        src, origin = _crs_ref(pyproj.CRS.from_user_input(file_crs)), "file"
    else:
        src, origin = None, "none"
    frame = frame.set_crs(None, allow_override=True) if frame.crs is not None else frame
    return SourceFeatures(frame=frame, crs=src, crs_origin=origin, parse_errors=errors, layer=layer_name,
                          driver=driver, notes=notes)


def to_lonlat(geoms, *, src: CrsRef | pyproj.CRS):
    """Reproject geometries to EPSG:4326 lon/lat (the storage CRS).

    Parameters
    ----------
    geoms : array_like of Geometry
        Geometries in ``src`` (x/y order); None passes through.
    src : CrsRef or pyproj.CRS
        Their CRS. GCJ-02 is handled by :mod:`cimtwin.geo.crs`; a CRS without an
        EPSG code goes through pyproj directly.

    Returns
    -------
    ndarray of Geometry
    """
    geoms = np.asarray(geoms, dtype=object)
    if isinstance(src, CrsRef):
        return np.asarray(transform_geometry(geoms, src=src, dst=WGS84), dtype=object)
    transformer = pyproj.Transformer.from_crs(src, "EPSG:4326", always_xy=True)
    return np.asarray(shapely.transform(geoms, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))),
                      dtype=object)


def from_lonlat(geoms, *, dst: CrsLike):
    """Reproject EPSG:4326 lon/lat geometries to ``dst`` (any CRS :func:`parse_crs` accepts)."""
    return np.asarray(transform_geometry(np.asarray(geoms, dtype=object), src=WGS84, dst=parse_crs(dst)),
                      dtype=object)


def write_features(frame: gpd.GeoDataFrame, path: str | Path, *, crs: CrsLike = CRS84,
                   layer: str | None = None) -> str:
    """Write a GeoDataFrame whose geometries are already in ``crs``.

    Parameters
    ----------
    frame : geopandas.GeoDataFrame
        The features; its own ``crs`` is ignored.
    path : str or Path
        The output file; the driver follows the suffix (see :data:`DRIVERS`). An
        existing file is replaced.
    crs : str, int or CrsRef, optional
        The CRS the geometries are in, recorded in the file (GCJ-02 has no
        EPSG code and is written without one).
    layer : str, optional
        The layer name (GeoPackage); the file's stem by default.

    Returns
    -------
    str
        The GDAL driver used.
    """
    path = Path(path)
    driver = DRIVERS.get(path.suffix.lower())
    if driver is None:
        raise FileFormatError(f"{path.name}: unknown output format; use one of {', '.join(sorted(DRIVERS))}")
    ref = parse_crs(crs)
    out = frame.set_crs(None if ref.is_gcj02 else ref.to_pyproj(), allow_override=True)
    if path.exists():
        path.unlink()
    kwargs = {}
    if driver == "GPKG":
        kwargs["dataset_options"] = {"VERSION": "1.2"}  # readable by older GDAL (QGIS LTR) without warnings
    if driver == "CSV":
        kwargs["GEOMETRY"] = "AS_WKT"
    elif driver == "GeoJSON" and ref.code not in ("OGC:CRS84", "EPSG:4326"):
        kwargs["RFC7946"] = "NO"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "'crs' was not provided" (GCJ-02)
        pyogrio.write_dataframe(out, str(path), driver=driver, layer=layer or path.stem, **kwargs)
    return driver
