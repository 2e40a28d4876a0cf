"""The body of a spatial search (``POST /spatial/{layer}/search``): the parameters of
``GET /spatial/{layer}`` as JSON, so that a large query polygon need not fit in a URL.

Geometries are GeoJSON geometry objects in ``geom-crs`` (default CRS84 lon/lat), x/y
order; ``bbox`` is in ``bbox-crs``. The same limits apply as to the GET form.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

AreaLevel = Literal["district", "street", "community", "grid"]
Geometry = Annotated[dict[str, Any], Field(
    description="A GeoJSON geometry object in `geom-crs` (default CRS84 lon/lat)",
    examples=[{"type": "Polygon", "coordinates": [[[121.498, 31.235], [121.506, 31.2335], [121.5085, 31.239],
                                                    [121.498, 31.235]]]}])]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)


class SearchFilters(_Body):
    """Attribute filters; each layer accepts the ones its list endpoint documents
    (another one is a 400 ``invalid_filter``)."""

    kind: list[str] | None = Field(None, description="components: kind codes")
    area: str | None = Field(None, description="area code: in it or below it (sensors: inside its polygon)")
    area_id: int | None = Field(None, description="area id: in it or below it")
    level: AreaLevel | None = Field(None, description="areas: level")
    parent_id: int | None = Field(None, description="areas: parent area id")
    code: str | None = Field(None, description="areas: code")
    q: str | None = Field(None, description="text in names, codes or ext_ids")
    ext_id: str | None = None
    use: str | None = Field(None, description="buildings: use")
    min_height: float | None = Field(None, description="buildings: height at least (m)")
    max_height: float | None = Field(None, description="buildings: height at most (m)")
    building_id: int | None = None
    floor_id: int | None = None
    room_id: int | None = None
    component_id: int | None = None
    vendor: str | None = Field(None, description="sensors: vendor code")
    device: str | None = Field(None, description="sensors: device id as on the wire")
    quantity: str | None = Field(None, description="sensors: measured quantity")

    @field_validator("kind", mode="before")
    @classmethod
    def _one_kind(cls, value):
        return [value] if isinstance(value, str) else value


class SpatialSearch(_Body):
    geometry: Geometry | None = Field(None, description="Features intersecting (or within) this geometry")
    relation: Literal["intersects", "within"] = Field(
        "intersects", description="intersects, or within (covered by `geometry`)")
    bbox: list[float] | None = Field(None, min_length=4, max_length=6,
                                     description="[minx, miny, maxx, maxy] (or with z: 6 numbers) in bbox-crs")
    bbox_crs: str | None = Field(None, alias="bbox-crs", description="CRS of bbox (default CRS84)")
    point: Geometry | list[float] | None = Field(
        None, description="A GeoJSON Point or [x, y] in geom-crs; results are ordered by distance and carry "
                          "distance_m")
    distance: float | None = Field(None, gt=0, description="metres from `point` (geodesic)")
    nearest: int | None = Field(None, ge=1, description="the N features nearest to `point`")
    geom_crs: str | None = Field(None, alias="geom-crs", description="CRS of geometry and point (default CRS84)")
    filters: SearchFilters = Field(default_factory=SearchFilters)
    crs: str | None = Field(None, description="Output CRS (default CRS84)")
    limit: int = Field(100, ge=1, description="page size; above CIMTWIN_API_MAX_PAGE_SIZE is a 400")
    offset: int = Field(0, ge=0)

    @field_validator("point", mode="before")
    @classmethod
    def _point_shape(cls, value):
        if isinstance(value, list) and len(value) not in (2, 3):
            raise ValueError("a point as an array is [x, y]")
        return value
