"""The block-data model (空间块数据): areas, buildings, floors, rooms, components and parties.

Geometries travel as GeoJSON geometry objects, in the CRS named by the request's
``geom-crs`` parameter (CRS84 lon/lat by default), always in x/y order.  A link
left out (``area_id`` of a building; ``area_id``/``building_id`` of a component;
``parent_id`` of an area) is derived spatially, and derived again when the
geometries around it change.  People and organisations appear only as counts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

AreaLevel = Literal["district", "street", "community", "grid"]
AREA_LEVELS: tuple[str, ...] = ("district", "street", "community", "grid")
PartyKind = Literal["property_manager", "enterprise", "street_office", "community_committee", "department", "other"]

Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\s/?#]+$",
                            description="Stable identifier without spaces, / ? or #")]
ExtId = Annotated[str, Field(min_length=1, max_length=200,
                             description="The id in the source data (re-imports upsert on it)")]
Name = Annotated[str, Field(min_length=1, max_length=300)]
Count = Annotated[int, Field(ge=0, le=10_000_000, description="A count only; cimtwin keeps no personal records")]
Metres = Annotated[float, Field(ge=0, le=10_000)]
KindCode = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$", description="A code from GET /component-kinds")]
Scalar = str | int | float | bool | None
Geometry = Annotated[dict[str, Any], Field(
    description="A GeoJSON geometry object, in the CRS given by `geom-crs` (default CRS84 lon/lat)",
    examples=[{"type": "Point", "coordinates": [121.4997, 31.2397]}])]


def _flat_attributes(value: dict | None) -> dict | None:
    if value is None:
        return value
    if len(value) > 200:
        raise ValueError("at most 200 attributes")
    for key, item in value.items():
        if not isinstance(key, str) or not 0 < len(key) <= 100:
            raise ValueError(f"attribute name {key!r} must be 1 to 100 characters")
        if isinstance(item, (dict, list)):
            # Flat scalars only: no nested records (and so no lists of people).
            raise ValueError(f"attribute {key!r} must be a string, number, boolean or null")
    return value


Attributes = Annotated[dict[str, Scalar], Field(
    description="Free, flat attributes (scalars only; no nested records)", max_length=200)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("attributes", mode="before", check_fields=False)
    @classmethod
    def _check_attributes(cls, value):
        return _flat_attributes(value)

    @field_validator("geometry", mode="before", check_fields=False)
    @classmethod
    def _check_geometry(cls, value):
        if value is not None and (not isinstance(value, dict) or not isinstance(value.get("type"), str)):
            raise ValueError("must be a GeoJSON geometry object with a 'type'")
        return value


# ---------------------------------------------------------------- areas

class AreaIn(_Input):
    code: Code
    name: Name
    level: AreaLevel
    parent_id: int | None = Field(default=None, description="Omit to derive it spatially (the area one "
                                                             "level up that contains this one)")
    geometry: Geometry
    attributes: Attributes = {}


class AreaPatch(_Input):
    code: Code | None = None
    name: Name | None = None
    level: AreaLevel | None = None
    parent_id: int | None = Field(default=None, description="null derives it spatially again")
    geometry: Geometry | None = None
    attributes: Attributes | None = None


# ---------------------------------------------------------------- buildings

class BuildingIn(_Input):
    ext_id: ExtId | None = None
    name: Name | None = None
    address: Annotated[str, Field(max_length=500)] | None = None
    use: Annotated[str, Field(max_length=100)] | None = None
    height: Metres | None = None
    min_height: Metres = 0.0
    floors_above: Annotated[int, Field(ge=0, le=300)] | None = None
    floors_below: Annotated[int, Field(ge=0, le=50)] | None = None
    occupants: Count | None = None
    organisations: Count | None = None
    area_id: int | None = Field(default=None, description="Omit to derive it spatially (the most specific "
                                                           "area containing the footprint)")
    geometry: Geometry
    attributes: Attributes = {}


class BuildingPatch(_Input):
    ext_id: ExtId | None = None
    name: Name | None = None
    address: Annotated[str, Field(max_length=500)] | None = None
    use: Annotated[str, Field(max_length=100)] | None = None
    height: Metres | None = None
    min_height: Metres | None = None
    floors_above: Annotated[int, Field(ge=0, le=300)] | None = None
    floors_below: Annotated[int, Field(ge=0, le=50)] | None = None
    occupants: Count | None = None
    organisations: Count | None = None
    area_id: int | None = Field(default=None, description="null derives it spatially again")
    geometry: Geometry | None = None
    attributes: Attributes | None = None


# ---------------------------------------------------------------- floors and rooms

class FloorIn(_Input):
    building_id: int
    level: Annotated[int, Field(ge=-50, le=300, description="0 ground, -1 first basement, …")]
    name: Name | None = None
    elevation: Annotated[float, Field(ge=-500, le=10_000)] | None = None
    height: Annotated[float, Field(gt=0, le=1000)] | None = None
    geometry: Geometry | None = None
    attributes: Attributes = {}


class FloorPatch(_Input):
    level: Annotated[int, Field(ge=-50, le=300)] | None = None
    name: Name | None = None
    elevation: Annotated[float, Field(ge=-500, le=10_000)] | None = None
    height: Annotated[float, Field(gt=0, le=1000)] | None = None
    geometry: Geometry | None = None
    attributes: Attributes | None = None


class RoomIn(_Input):
    floor_id: int
    ext_id: ExtId | None = None
    name: Name | None = None
    use: Annotated[str, Field(max_length=100)] | None = None
    occupants: Count | None = None
    organisations: Count | None = None
    geometry: Geometry | None = None
    attributes: Attributes = {}


class RoomPatch(_Input):
    floor_id: int | None = None
    ext_id: ExtId | None = None
    name: Name | None = None
    use: Annotated[str, Field(max_length=100)] | None = None
    occupants: Count | None = None
    organisations: Count | None = None
    geometry: Geometry | None = None
    attributes: Attributes | None = None


# ---------------------------------------------------------------- components

class ComponentKind(BaseModel):
    code: str
    name_en: str
    name_zh: str


class ComponentIn(_Input):
    ext_id: ExtId | None = None
    kind: KindCode
    name: Name | None = None
    area_id: int | None = Field(default=None, description="Omit to derive it spatially")
    building_id: int | None = Field(default=None, description="Omit to derive it spatially (the building "
                                                              "whose footprint holds the component)")
    floor_id: int | None = None
    room_id: int | None = None
    geometry: Geometry
    attributes: Attributes = {}


class ComponentPatch(_Input):
    ext_id: ExtId | None = None
    kind: KindCode | None = None
    name: Name | None = None
    area_id: int | None = Field(default=None, description="null derives it spatially again")
    building_id: int | None = Field(default=None, description="null derives it spatially again")
    floor_id: int | None = None
    room_id: int | None = None
    geometry: Geometry | None = None
    attributes: Attributes | None = None


# ---------------------------------------------------------------- parties

class Contact(_Input):
    """A duty line or mailbox of the organisation (not a person's record)."""

    label: Annotated[str, Field(min_length=1, max_length=100, examples=["24h duty desk"])]
    phone: Annotated[str, Field(max_length=40)] | None = None
    email: Annotated[str, Field(max_length=200)] | None = None


class WebhookChannel(_Input):
    """A webhook for the party's alert notifications, signed with ``secret`` (HMAC-SHA256 over
    ``"<X-Cimtwin-Timestamp>.<body>"``, sent as ``X-Cimtwin-Signature: sha256=<hex>``)."""

    url: Annotated[str, Field(max_length=500, pattern=r"^https?://")]
    secret: Annotated[str | None, Field(min_length=16, max_length=256,
                                        description="the signing key; write-only, never returned")] = None


class Channels(_Input):
    """Where alerts for this party are sent."""

    webhook: Annotated[str, Field(max_length=500, pattern=r"^https?://",
                                  description="a URL (notifications sent unsigned)")] | WebhookChannel | None = None
    mqtt_topic: Annotated[str, Field(max_length=300)] | None = None
    sms: Annotated[str, Field(max_length=40)] | None = None
    email: Annotated[str, Field(max_length=200)] | None = None


class PartyIn(_Input):
    code: Code
    name: Name
    kind: PartyKind
    contacts: Annotated[list[Contact], Field(max_length=20)] = []
    channels: Channels = Channels()


class PartyPatch(_Input):
    code: Code | None = None
    name: Name | None = None
    kind: PartyKind | None = None
    contacts: Annotated[list[Contact], Field(max_length=20)] | None = None
    channels: Channels | None = None


class Party(BaseModel):
    id: int
    code: str
    name: str
    kind: str
    contacts: list[dict]
    channels: dict
    created_at: datetime


class AssignmentIn(_Input):
    """A party answers for exactly one target: an area, a building, a room, a component, or a
    component kind within an area (``area_id`` + ``component_kind``)."""

    party_id: int
    area_id: int | None = None
    building_id: int | None = None
    room_id: int | None = None
    component_id: int | None = None
    component_kind: KindCode | None = None
    role: Annotated[str, Field(min_length=1, max_length=64)] = "responsible"

    @model_validator(mode="after")
    def _one_target(self) -> "AssignmentIn":
        targets = [self.area_id, self.building_id, self.room_id, self.component_id]
        if sum(t is not None for t in targets) != 1:
            raise ValueError("give exactly one of area_id, building_id, room_id, component_id")
        if self.component_kind is not None and self.area_id is None:
            raise ValueError("component_kind needs area_id (a kind within an area)")
        return self


class Assignment(BaseModel):
    id: int
    party_id: int
    party_code: str
    area_id: int | None
    building_id: int | None
    room_id: int | None
    component_id: int | None
    component_kind: str | None
    role: str
    created_at: datetime


# ---------------------------------------------------------------- sensors and devices

class SensorPlaceIn(_Input):
    """Where a sensor is: on a component, in a room, or in a building (at most one; all null = its device's point)."""

    component_id: int | None = None
    room_id: int | None = None
    building_id: int | None = None

    @model_validator(mode="after")
    def _at_most_one(self) -> "SensorPlaceIn":
        if sum(v is not None for v in (self.component_id, self.room_id, self.building_id)) > 1:
            raise ValueError("give at most one of component_id, room_id, building_id")
        return self


class DeviceLocationIn(_Input):
    geometry: Geometry | None = Field(description="A GeoJSON Point, or null to clear it")


class Page(BaseModel):
    """A page of non-spatial items, shaped like a FeatureCollection's paging."""

    items: list[Any]
    numberMatched: int
    numberReturned: int
    links: list[dict] = []
