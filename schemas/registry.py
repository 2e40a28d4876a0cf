"""Vendors, devices and sensors: enough to register a device and resolve its channels."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .readings import Channel

VendorCode = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
                                  description="Lower-case, topic-safe; the {vendor} in cim/v1/{vendor}/...")]
DeviceExtId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
                                   description="The device's own id; the {device} in cim/v1/{vendor}/{device}/up")]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VendorIn(_Input):
    code: VendorCode
    name: Annotated[str, Field(min_length=1, max_length=200)]


class Vendor(VendorIn):
    id: int
    created_at: datetime


class SensorIn(_Input):
    channel: Channel
    quantity: Annotated[str, Field(min_length=1, max_length=64, examples=["temperature"])]
    unit: Annotated[str, Field(min_length=1, max_length=32, examples=["°C"])]
    min_value: float | None = None
    max_value: float | None = None

    @model_validator(mode="after")
    def _range_in_order(self) -> "SensorIn":
        if self.min_value is not None and self.max_value is not None and self.min_value > self.max_value:
            raise ValueError("min_value is greater than max_value")
        return self


class Sensor(SensorIn):
    id: int
    device_id: int


class DeviceIn(_Input):
    vendor: VendorCode
    ext_id: DeviceExtId
    name: str | None = None
    model: str | None = None
    sensors: Annotated[list[SensorIn], Field(min_length=1, max_length=1000)]

    @model_validator(mode="after")
    def _channels_unique(self) -> "DeviceIn":
        channels = [s.channel for s in self.sensors]
        duplicates = sorted({c for c in channels if channels.count(c) > 1})
        if duplicates:
            raise ValueError(f"channel(s) listed twice: {', '.join(duplicates)}")
        return self


class Device(BaseModel):
    id: int
    vendor: str
    ext_id: str
    name: str | None
    model: str | None
    created_at: datetime
    sensors: list[Sensor]
