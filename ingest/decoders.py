"""Payload decoders. Each turns one MQTT message into a device id and its readings.

Built-in formats and (later) declared vendor profiles sit behind the one
:class:`Decoder` protocol; a decoder raises :class:`DecodeError` with a reason code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from pydantic import ValidationError

from cimtwin.schemas import CanonicalMessage


class DecodeError(Exception):
    def __init__(self, reason_code: str, reason: str):
        super().__init__(reason)
        self.reason_code = reason_code
        self.reason = reason


class Reading(Protocol):
    """What the normalizer reads of one decoded reading."""

    @property
    def channel(self) -> str: ...

    @property
    def value(self) -> float: ...

    @property
    def time(self) -> datetime | None: ...


@dataclass(frozen=True, slots=True)
class DecodedReading:
    channel: str
    value: float
    time: datetime | None


@dataclass(frozen=True, slots=True)
class Decoded:
    vendor_code: str
    device_ext_id: str
    time: datetime | None
    # DecodedReading, or anything with the same three attributes: the canonical decoder
    # hands on pydantic's CanonicalReading objects as they are rather than copying them.
    readings: Sequence[Reading]


class Decoder(Protocol):
    def handles(self, topic: str) -> bool: ...

    def decode(self, topic: str, payload: bytes) -> Decoded: ...


def describe_validation_error(exc: ValidationError) -> tuple[str, str]:
    """A reason code and a one-line reason naming every failing path."""
    errors = exc.errors(include_url=False)
    if any(e["type"] == "json_invalid" for e in errors):
        detail = next(e for e in errors if e["type"] == "json_invalid")
        return "malformed_json", f"malformed JSON: {detail['ctx']['error'] if 'ctx' in detail else detail['msg']}"
    parts = []
    for e in errors[:10]:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".") or "(message)"
        shown = "" if e["type"] in ("missing", "extra_forbidden") else f" (got {e.get('input')!r:.60})"
        parts.append(f"{path}: {e['msg']}{shown}")
    more = f"; and {len(errors) - 10} more" if len(errors) > 10 else ""
    code = "invalid_value" if all(e["loc"] and e["loc"][-1] == "value" for e in errors) else "invalid_payload"
    return code, "; ".join(parts) + more


class CanonicalDecoder:
    """``cim/v1/{vendor}/{device}/up`` carrying a :class:`CanonicalMessage`."""

    def handles(self, topic: str) -> bool:
        return topic.startswith("cim/v1/")

    def decode(self, topic: str, payload: bytes) -> Decoded:
        levels = topic.split("/")
        if len(levels) != 5 or levels[0] != "cim" or levels[1] != "v1" or levels[4] != "up":
            raise DecodeError("bad_topic", f"topic {topic!r} is not cim/v1/{{vendor}}/{{device}}/up")
        vendor, device = levels[2], levels[3]
        try:
            message = CanonicalMessage.model_validate_json(payload)
        except ValidationError as exc:
            raise DecodeError(*describe_validation_error(exc)) from None
        except (OverflowError, OSError, ValueError) as exc:
            # A time the schema's validators cannot represent (epoch ms 1e20, or year 1 moved before
            # year 1 by its offset) escapes pydantic as a plain exception; it is still a bad payload.
            raise DecodeError("invalid_payload", f"a time is out of range: {exc}") from None
        if message.device is not None and message.device != device:
            raise DecodeError("invalid_payload",
                              f"payload device {message.device!r} differs from the topic's device {device!r}")
        return Decoded(vendor, device, message.time, message.readings)
