"""Vendor onboarding over the API: stored profile versions, dry runs, pending-device
onboarding, bulk device import and dead-letter replay."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .registry import DeviceExtId, SensorIn

ProfileName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", examples=["acme-env"])]
_PROFILE_REF = re.compile(r"^(?P<name>[a-z0-9][a-z0-9_-]{0,62})(?:@(?P<version>[1-9][0-9]{0,8}))?$")


def parse_profile_ref(ref: str) -> tuple[str, int | None]:
    """``"name"`` (the newest version) or ``"name@3"`` → ``(name, version)``."""
    match = _PROFILE_REF.match(ref.strip())
    if match is None:
        raise ValueError(f"profile {ref!r} is not 'name' or 'name@version'")
    version = match["version"]
    return match["name"], int(version) if version else None


ProfileRef = Annotated[str, Field(pattern=_PROFILE_REF.pattern, examples=["acme-env", "acme-env@2"],
                                  description="A profile name (its newest version) or name@version")]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProfileVersion(BaseModel):
    id: int
    vendor: str
    name: str
    version: int
    format: str
    topic: str
    document: dict[str, Any]
    created_at: datetime
    created_by: str | None
    devices: int = Field(description="devices pinned to this version")


class ProfileMoveIn(_Input):
    """Pin devices to a version: the listed ones, or all on ``from_version`` (all on any version if absent)."""

    version: Annotated[int | None, Field(ge=1, description="target version; the newest if absent")] = None
    devices: Annotated[list[DeviceExtId] | None, Field(max_length=10_000)] = None
    from_version: Annotated[int | None, Field(ge=1)] = None

    @model_validator(mode="after")
    def _one_selector(self) -> "ProfileMoveIn":
        if self.devices is not None and self.from_version is not None:
            raise ValueError("give either devices or from_version, not both")
        return self


class ProfileMoveOut(BaseModel):
    profile: ProfileVersion
    moved: int


class DryRunIn(_Input):
    """Test a sample message. Give ``document`` (an unsaved profile) or ``profile`` (a saved
    one); the payload as ``payload`` (the message text), ``payload_json`` or ``payload_base64``."""

    document: dict[str, Any] | None = None
    profile: ProfileRef | None = None
    topic: Annotated[str, Field(min_length=1, max_length=1024)]
    payload: str | None = None
    payload_json: Any = None
    payload_base64: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "DryRunIn":
        if (self.document is None) == (self.profile is None):
            raise ValueError("give exactly one of document and profile")
        given = [n for n in ("payload", "payload_json", "payload_base64")
                 if getattr(self, n) is not None or n in self.model_fields_set]
        if len(given) != 1:
            raise ValueError("give exactly one of payload, payload_json and payload_base64")
        return self


class DryRunReading(BaseModel):
    channel: str
    quantity: str | None = None
    unit: str | None = None
    value: float
    time: datetime | None = None


class DryRunError(BaseModel):
    path: str
    message: str


class DryRunOut(BaseModel):
    ok: bool
    profile: str | None = Field(None, description="name@version of the saved profile used, if any")
    device: str | None = None
    time: datetime | None = None
    readings: list[DryRunReading] = []
    errors: list[DryRunError] = []


class OnboardIn(_Input):
    """Register a pending device in one call. Its sensors come from ``sensors``, else from the
    profile that decoded its messages, else from the channels of its last canonical message."""

    name: str | None = None
    model: str | None = None
    profile: ProfileRef | None = None
    sensors: Annotated[list[SensorIn] | None, Field(min_length=1, max_length=1000)] = None
    replay: bool = Field(True, description="replay the device's held-back messages (its unknown_device dead letters)")


class ReplayIn(_Input):
    """Which unreplayed dead letters to replay: by id, or by filter (newest first, up to ``limit``)."""

    ids: Annotated[list[int] | None, Field(max_length=1000)] = None
    reason_code: str | None = None
    device: DeviceExtId | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class ReplayItem(BaseModel):
    id: int
    stored: bool
    readings: int
    reason: str | None = Field(None, description="why it still fails (or what part was still rejected)")


class ReplayOut(BaseModel):
    replayed: int
    stored: int
    still_failing: int
    readings: int
    items: list[ReplayItem]


class OnboardOut(BaseModel):
    device_id: int
    ext_id: str
    profile: str | None
    sensors: list[str]
    replay: ReplayOut | None


class DeviceRow(_Input):
    """One row of a bulk device import (a CSV line or a GeoJSON feature's properties)."""

    ext_id: DeviceExtId
    name: str | None = None
    model: str | None = None
    profile: ProfileRef | None = None
    channels: list[SensorIn] | None = None
    building_id: int | None = None
    room_id: int | None = None
    component_id: int | None = None
    lon: float | None = None
    lat: float | None = None

    @field_validator("channels", mode="before")
    @classmethod
    def _channels_text(cls, value: Any) -> Any:
        # CSV: "temp:temperature:°C[:min:max];hum:humidity:%"
        if not isinstance(value, str):
            return value
        channels = []
        for part in filter(None, (p.strip() for p in value.split(";"))):
            fields = part.split(":")
            if len(fields) not in (3, 5):
                raise ValueError(f"channel {part!r} is not channel:quantity:unit[:min:max]")
            channel = {"channel": fields[0], "quantity": fields[1], "unit": fields[2]}
            if len(fields) == 5:
                channel.update(min_value=fields[3] or None, max_value=fields[4] or None)
            channels.append(channel)
        return channels or None

    @model_validator(mode="after")
    def _complete(self) -> "DeviceRow":
        if self.profile is None and not self.channels:
            raise ValueError("give a profile or channels")
        if (self.lon is None) != (self.lat is None):
            raise ValueError("give both lon and lat, or neither")
        return self


class ImportRowError(BaseModel):
    row: int = Field(description="1-based data row (CSV line after the header) or feature index")
    ext_id: str | None
    errors: list[str]


class DeviceImportOut(BaseModel):
    dry_run: bool
    rows: int
    created: int
    updated: int
    rejected: list[ImportRowError]
    format: Literal["csv", "geojson"]
