"""Vector tiles and TileJSON, with caching that never serves live state stale.

* Static layers (areas, buildings, components): the ETag is a fingerprint of the rows under the
  tile (ids and row versions), checked before the tile is made, and ``Cache-Control: public,
  max-age=<tiles_static_max_age_s>``. Any change to a row under the tile changes the ETag.
* Live layers (sensors): the status also changes with time alone (a sensor goes offline when
  nothing arrives), so every request makes the tile. The ETag is a hash of the bytes, and
  ``Cache-Control: no-cache`` makes every cache revalidate: a changed state is never served.
* An empty tile, or a zoom below the layer's minzoom, is ``204 No Content`` with the same headers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from urllib.parse import urlencode

from psycopg_pool import AsyncConnectionPool

import cimtwin
from cimtwin.errors import BadRequest, NotFound
from cimtwin.settings import Settings
from cimtwin.store import tiles as store

MVT = "application/vnd.mapbox-vector-tile"
# Bump when the tiles' content changes for the same data (attributes, extent, buffer).
TILE_FORMAT = "1"
_WEB_MERCATOR_LAT = 85.0511287798066
ATTRIBUTION = "cimtwin; footprints imported from OpenStreetMap: © OpenStreetMap contributors"


@dataclass(frozen=True)
class TileResponse:
    status: int                  # 200, 204 or 304
    body: bytes = b""
    headers: dict = field(default_factory=dict)


def _layer_or_404(layer: str) -> store.LayerDef:
    ld = store.LAYERS.get(layer)
    if ld is None:
        raise NotFound(f"no tile layer {layer!r}; layers: {', '.join(store.LAYERS)}", code="layer_not_found")
    return ld


def _check_tile(z: int, x: int, y: int, *, max_zoom: int) -> None:
    if not 0 <= z <= max_zoom:
        raise BadRequest(f"zoom {z} is out of range 0–{max_zoom}", code="tile_out_of_range")
    n = 1 << z
    if not (0 <= x < n and 0 <= y < n):
        raise BadRequest(f"tile {z}/{x}/{y} does not exist: at zoom {z}, x and y run from 0 to {n - 1}",
                         code="tile_out_of_range")


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def _etag(*parts: object) -> str:
    return '"%s"' % hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]


async def tile(*, pool: AsyncConnectionPool, settings: Settings, layer: str, z: int, x: int, y: int,
               if_none_match: str | None = None) -> TileResponse:
    ld = _layer_or_404(layer)
    _check_tile(z, x, y, max_zoom=settings.tiles_max_zoom)
    cache = "no-cache" if ld.live else f"public, max-age={settings.tiles_static_max_age_s}"
    headers = {"Cache-Control": cache, "Content-Type": MVT}

    if z < ld.minzoom:
        headers["ETag"] = _etag(TILE_FORMAT, layer, "below-minzoom", ld.minzoom)
        return TileResponse(304 if _etag_matches(if_none_match, headers["ETag"]) else 204, headers=headers)

    if not ld.live:
        fp = await store.fingerprint(pool, layer=layer, z=z, x=x, y=y)
        headers["ETag"] = _etag(TILE_FORMAT, cimtwin.__version__, layer, z, x, y, fp, settings.tiles_max_features)
        if _etag_matches(if_none_match, headers["ETag"]):
            return TileResponse(304, headers=headers)

    body = await store.tile(pool, layer=layer, z=z, x=x, y=y, max_features=settings.tiles_max_features,
                            offline_after_s=settings.sensor_offline_after_s)
    if ld.live:
        headers["ETag"] = _etag(TILE_FORMAT, layer, hashlib.sha256(body).hexdigest())
        if _etag_matches(if_none_match, headers["ETag"]):
            return TileResponse(304, headers=headers)
    return TileResponse(200 if body else 204, body, headers)


def _query(params: list[tuple[str, str]]) -> str:
    return f"?{urlencode(params)}" if params else ""


def layers(*, base_url: str, link_params: list[tuple[str, str]] = ()) -> dict:
    """The layers; ``link_params`` are added to their URLs (the API key when it came in the URL)."""
    q = _query(link_params)
    return {"layers": [{"id": ld.id, "description": ld.description, "live": ld.live,
                        "tilejson": f"{base_url}/tiles/{ld.id}.json{q}",
                        "tiles": f"{base_url}/tiles/{ld.id}/{{z}}/{{x}}/{{y}}.mvt{q}"}
                       for ld in store.LAYERS.values()]}


async def tilejson(*, pool: AsyncConnectionPool, settings: Settings, base_url: str, layer: str,
                   link_params: list[tuple[str, str]] = ()) -> dict:
    ld = _layer_or_404(layer)
    bounds = await store.bounds(pool, layer=layer)
    if bounds is None:
        bounds = [-180.0, -_WEB_MERCATOR_LAT, 180.0, _WEB_MERCATOR_LAT]
        center = [0.0, 0.0, ld.minzoom]
    else:
        bounds = [max(bounds[0], -180.0), max(bounds[1], -_WEB_MERCATOR_LAT),
                  min(bounds[2], 180.0), min(bounds[3], _WEB_MERCATOR_LAT)]
        center = [(bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2,
                  min(max(ld.minzoom, 14), settings.tiles_max_zoom)]
    fields = {a.name: a.type for a in ld.attrs}
    return {
        "tilejson": "3.0.0",
        "name": ld.id,
        "description": ld.description,
        "version": "1.0.0",
        "attribution": ATTRIBUTION,
        "scheme": "xyz",
        "tiles": [f"{base_url}/tiles/{ld.id}/{{z}}/{{x}}/{{y}}.mvt{_query(link_params)}"],
        "minzoom": ld.minzoom,
        "maxzoom": settings.tiles_max_zoom,
        "bounds": bounds,
        "center": center,
        "vector_layers": [{"id": ld.id, "description": ld.description, "minzoom": ld.minzoom,
                           "maxzoom": settings.tiles_max_zoom, "fields": fields}],
    }
