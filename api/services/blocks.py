"""Create, read, update and delete the block-data model: areas, buildings, floors, rooms,
components, parties and party assignments; sensor places and device locations.

A link left out (or set to null) is derived spatially by the store and kept derived
when geometries change; a link given explicitly is kept as given.
"""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from cimtwin.errors import BadRequest, Conflict
from cimtwin.geo.checks import POLYGONAL
from cimtwin.settings import Settings
from cimtwin.store import blocks as store
from cimtwin.store import registry

from . import spatial

_LEVEL_ABOVE = {"street": "district", "community": "street", "grid": "community"}
_LEVEL_BELOW = {v: k for k, v in _LEVEL_ABOVE.items()}
_POLYGONAL_LAYERS = ("areas", "buildings", "floors", "rooms")
_REQUIRED_GEOMETRY = ("areas", "buildings", "components")
_DERIVED = {  # link column → its "derived" flag
    "areas": {"parent_id": "parent_derived"},
    "buildings": {"area_id": "area_derived"},
    "components": {"area_id": "area_derived", "building_id": "building_derived"},
}


async def _check_area_levels(pool: AsyncConnectionPool, *, area_id: int | None, level: str,
                             parent_id: int | None) -> None:
    if parent_id is not None:
        if level == "district":
            raise BadRequest("a district has no parent area", code="invalid_parent")
        parent_level = await store.area_level(pool, parent_id)
        if parent_level != _LEVEL_ABOVE[level]:
            raise BadRequest(f"the parent of a {level} must be a {_LEVEL_ABOVE[level]}, and area {parent_id} "
                             f"is a {parent_level}", code="invalid_parent")
    if area_id is not None:
        wrong = await store.child_levels(pool, area_id) - {_LEVEL_BELOW.get(level)}
        if wrong:
            raise Conflict(f"area {area_id} has {', '.join(sorted(wrong))} children, which cannot sit under a "
                           f"{level}", code="invalid_level")


async def _values(*, pool: AsyncConnectionPool, settings: Settings, layer: str, data: dict[str, Any],
                  geom_crs: str | None, creating: bool, row_id: int | None = None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "attributes":
            values["properties"] = value
        elif key == "geometry":
            if value is None and layer in _REQUIRED_GEOMETRY:
                raise BadRequest(f"a {layer[:-1]} must have a geometry", code="invalid_geometry")
            values["geom"] = spatial.body_geometry(
                value, ref=spatial.crs_param(geom_crs, name="geom-crs"),
                allowed=POLYGONAL if layer in _POLYGONAL_LAYERS else None,
                max_vertices=settings.api_max_geometry_vertices)
        else:
            values[key] = value
    for link, flag in _DERIVED.get(layer, {}).items():
        if link in data or creating:
            values[flag] = data.get(link) is None
            values[link] = data.get(link)
    if layer == "areas" and (creating or {"parent_id", "level"} & data.keys()):
        current = None if creating else await store.get_feature(pool, "areas", row_id)
        level = data.get("level") or current["level"]
        parent = data["parent_id"] if "parent_id" in data else (
            None if current is None or current["parent_derived"] else current["parent_id"])
        await _check_area_levels(pool, area_id=row_id, level=level, parent_id=parent)
    return values


async def create_feature(*, pool: AsyncConnectionPool, settings: Settings, layer: str, body: BaseModel,
                         geom_crs: str | None, crs: str | None) -> tuple[str, dict]:
    values = await _values(pool=pool, settings=settings, layer=layer, data=body.model_dump(), geom_crs=geom_crs,
                           creating=True)
    new_id = await store.create(pool, layer, values)
    return await spatial.feature(pool=pool, layer=layer, feature_id=new_id, crs=crs)


async def update_feature(*, pool: AsyncConnectionPool, settings: Settings, layer: str, feature_id: int,
                         body: BaseModel, geom_crs: str | None, crs: str | None) -> tuple[str, dict]:
    data = body.model_dump(exclude_unset=True)
    await store.get_feature(pool, layer, feature_id)  # 404 before anything else
    values = await _values(pool=pool, settings=settings, layer=layer, data=data, geom_crs=geom_crs,
                           creating=False, row_id=feature_id)
    await store.update(pool, layer, feature_id, values)
    return await spatial.feature(pool=pool, layer=layer, feature_id=feature_id, crs=crs)


async def delete_feature(*, pool: AsyncConnectionPool, layer: str, feature_id: int) -> None:
    await store.delete(pool, layer, feature_id)


# ----------------------------------------------------------------------------- parties

def _page(items: list, total: int, *, url: str, limit: int, offset: int) -> dict:
    links = spatial.page_links(url, offset=offset, limit=limit, returned=len(items), matched=total)
    for link in links:
        link["type"] = "application/json"
    return {"items": items, "numberMatched": total, "numberReturned": len(items), "links": links}


async def list_parties(*, pool: AsyncConnectionPool, settings: Settings, kind: str | None, q: str | None,
                       limit: int, offset: int, url: str) -> dict:
    spatial.check_limit(limit, settings)
    total, rows = await store.list_parties(pool, kind=kind, q=q, limit=limit, offset=offset)
    return _page(rows, total, url=url, limit=limit, offset=offset)


async def get_party(*, pool: AsyncConnectionPool, party_id: int) -> dict:
    return await store.get_party(pool, party_id)


async def create_party(*, pool: AsyncConnectionPool, body: BaseModel) -> dict:
    new_id = await store.create_party(pool, body.model_dump(mode="json", exclude_none=True))
    return await store.get_party(pool, new_id)


async def update_party(*, pool: AsyncConnectionPool, party_id: int, body: BaseModel) -> dict:
    await store.update_party(pool, party_id, body.model_dump(mode="json", exclude_unset=True, exclude_none=True))
    return await store.get_party(pool, party_id)


async def delete_party(*, pool: AsyncConnectionPool, party_id: int) -> None:
    await store.delete_party(pool, party_id)


async def list_assignments(*, pool: AsyncConnectionPool, settings: Settings, filters: dict[str, Any],
                           limit: int, offset: int, url: str) -> dict:
    spatial.check_limit(limit, settings)
    total, rows = await store.list_assignments(pool, filters=filters, limit=limit, offset=offset)
    return _page(rows, total, url=url, limit=limit, offset=offset)


async def create_assignment(*, pool: AsyncConnectionPool, body: BaseModel) -> dict:
    new_id = await store.create_assignment(pool, body.model_dump())
    return await store.get_assignment(pool, new_id)


async def get_assignment(*, pool: AsyncConnectionPool, assignment_id: int) -> dict:
    return await store.get_assignment(pool, assignment_id)


async def delete_assignment(*, pool: AsyncConnectionPool, assignment_id: int) -> None:
    await store.delete_assignment(pool, assignment_id)


async def component_kinds(*, pool: AsyncConnectionPool) -> list[dict]:
    return await store.component_kinds(pool)


# ----------------------------------------------------------------------------- sensors and devices

# A vendor key (vendor_id set) reaches only its own sensors and devices: others are 404.

async def set_sensor_place(*, pool: AsyncConnectionPool, sensor_id: int, body: BaseModel,
                           crs: str | None, vendor_id: int | None = None) -> tuple[str, dict]:
    if vendor_id is not None:
        await registry.get_sensor(pool, sensor_id, vendor_id=vendor_id)
    await store.set_sensor_place(pool, sensor_id, **body.model_dump())
    return await sensor_place(pool=pool, sensor_id=sensor_id, crs=crs)


async def sensor_place(*, pool: AsyncConnectionPool, sensor_id: int, crs: str | None,
                       vendor_id: int | None = None) -> tuple[str, dict]:
    if vendor_id is not None:
        await registry.get_sensor(pool, sensor_id, vendor_id=vendor_id)
    return await spatial.feature(pool=pool, layer="sensors", feature_id=sensor_id, crs=crs)


async def set_device_location(*, pool: AsyncConnectionPool, device_id: int, geometry: dict | None,
                              geom_crs: str | None, vendor_id: int | None = None) -> None:
    wkb = spatial.body_geometry(geometry, ref=spatial.crs_param(geom_crs, name="geom-crs"), allowed=("Point",),
                                max_vertices=1)
    if vendor_id is not None:
        await registry.get_device(pool, device_id, vendor_id=vendor_id)
    await store.set_device_location(pool, device_id, point=wkb)
