"""Response bodies of the HTTP API."""

from __future__ import annotations

import base64
from datetime import datetime

from pydantic import BaseModel, field_serializer


class Reading(BaseModel):
    time: datetime
    value: float
    received_at: datetime


class Bucket(BaseModel):
    bucket: datetime
    avg: float
    min: float
    max: float
    count: int


class SensorReadings(BaseModel):
    sensor_id: int
    channel: str
    quantity: str
    unit: str
    start: datetime
    end: datetime
    bucket: str | None = None
    readings: list[Reading] | None = None
    buckets: list[Bucket] | None = None
    next: str | None = None


class LatestReading(BaseModel):
    sensor_id: int
    vendor: str
    device: str
    channel: str
    quantity: str
    unit: str
    time: datetime
    value: float
    received_at: datetime


def _payload_view(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(payload).decode()


class DeadLetterOut(BaseModel):
    id: int
    topic: str
    vendor: str | None
    device: str | None
    reason_code: str
    reason: str
    payload: bytes
    payload_size: int
    first_received_at: datetime
    last_received_at: datetime
    occurrences: int
    replayed_at: datetime | None

    @field_serializer("payload")
    def _show_payload(self, payload: bytes) -> str:
        return _payload_view(payload)


class PendingDeviceOut(BaseModel):
    vendor: str
    ext_id: str
    first_seen: datetime
    last_seen: datetime
    messages: int
    last_topic: str
    last_payload: bytes

    @field_serializer("last_payload")
    def _show_payload(self, payload: bytes) -> str:
        return _payload_view(payload)


class ErrorBody(BaseModel):
    error: str
    detail: str
