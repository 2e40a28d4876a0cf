"""The canonical reading message, published to ``cim/v1/{vendor}/{device}/up``."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict

Channel = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
                               description="The channel's name as the device's sensors are registered")]


def _bool_as_number(value: Any) -> Any:
    return float(value) if isinstance(value, bool) else value


def _epoch_ms(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000.0, tz=timezone.utc)
    return value


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


# JSON numbers only: a numeric string such as "21.5" is an error, not a guess.
# true/false are stored as 1/0 (door contacts, alarms).
Value = Annotated[float, BeforeValidator(_bool_as_number), Strict(),
                  Field(description="A JSON number, or true/false for 1/0")]
Timestamp = Annotated[
    datetime, BeforeValidator(_epoch_ms), AfterValidator(_as_utc),
    Field(description="ISO 8601 (an offset is recommended; none means UTC) or Unix epoch "
                      "milliseconds; omitted means the time the message was received"),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class CanonicalReading(_Strict):
    channel: Channel
    value: Value
    time: Timestamp | None = None


class CanonicalMessage(_Strict):
    """One message carrying one or many readings of one device."""

    model_config = ConfigDict(
        title="cimtwin canonical reading message",
        json_schema_extra={
            "description": "Publish at QoS 1 to cim/v1/{vendor}/{device}/up. Readings without a time "
                           "take the message's time, and without that the time it was received.",
            "examples": [
                {"readings": [{"channel": "temperature", "value": 21.5}]},
                {"device": "gw-0042", "time": "2026-11-22T08:00:00Z",
                 "readings": [{"channel": "co", "value": 2.6},
                              {"channel": "no2", "value": 113, "time": "2026-11-22T07:59:30Z"}]},
            ],
        },
    )

    device: Annotated[str | None, Field(description="Optional; must equal the topic's device id")] = None
    time: Timestamp | None = None
    readings: Annotated[list[CanonicalReading], Field(min_length=1, max_length=10_000)]
