"""Payload decoders. Each turns one MQTT message into a device id and its readings.

Built-in formats and (later) declared vendor profiles sit behind the one
:class:`Decoder` protocol; a decoder raises :class:`DecodeError` with a reason code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from typing_extensions import NotRequired, TypedDict

from cimtwin.schemas import CanonicalMessage, CanonicalReading

log = logging.getLogger("cimtwin.ingest")


class DecodeError(Exception):
    def __init__(self, reason_code: str, reason: str):
        super().__init__(reason)
        self.reason_code = reason_code
        self.reason = reason


class DecodedReading(NamedTuple):
    """One reading: a tuple ``(channel, value, time)``, also readable by attribute."""

    channel: str
    value: float
    time: datetime | None


class Decoded(NamedTuple):
    vendor_code: str
    device_ext_id: str
    time: datetime | None
    # DecodedReading, or any (channel, value, time) tuple.
    readings: tuple[DecodedReading, ...] | list[DecodedReading]
    # The profile version that decoded the message (declared vendor profiles only).
    profile_id: int | None = None


class Decoder(Protocol):
    def handles(self, topic: str) -> bool: ...

    def decode(self, topic: str, payload: bytes, *, now: datetime | None = None) -> Decoded:
        """``now`` is when the message was received (SenML relative times count from it)."""
        ...


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


# --- the canonical fast path ---------------------------------------------------------------------
#
# Validating into CanonicalMessage builds a model object per reading, which costs more than
# the validation itself (~160 us for a 50-reading message). The same fields, with the very
# same annotations (types, patterns, strictness, validators) and the model's validation
# config, as TypedDicts validate to plain dicts about 2.5x faster. The TypedDicts are built
# from the models' fields at import, so they follow the schema; if the schema ever uses
# something they cannot mirror (model validators, non-None defaults), the fast path is off.
# A payload the mirror rejects is validated again by CanonicalMessage itself, so the reason
# in a dead letter is always the model's.

_CONFIG_NOT_FOR_VALIDATION = {"title", "json_schema_extra", "frozen"}


def _mirror(model: type[BaseModel], name: str, overrides: dict[str, Any]) -> type:
    decorators = model.__pydantic_decorators__
    if decorators.validators or decorators.field_validators or decorators.root_validators \
            or decorators.model_validators:
        raise TypeError(f"{model.__name__} has validators that a TypedDict cannot mirror")
    fields: dict[str, Any] = {}
    for field_name, info in model.model_fields.items():
        if info.alias or info.validation_alias:
            raise TypeError(f"{model.__name__}.{field_name} has an alias")
        annotation = overrides.get(field_name, info.annotation)
        if info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        if info.is_required():
            fields[field_name] = annotation
        elif info.default is None and info.default_factory is None:
            fields[field_name] = NotRequired[annotation]
        else:
            raise TypeError(f"{model.__name__}.{field_name} has a default other than None")
    mirror = TypedDict(name, fields)  # type: ignore[operator]
    mirror.__pydantic_config__ = ConfigDict(  # type: ignore[attr-defined]
        **{k: v for k, v in model.model_config.items() if k not in _CONFIG_NOT_FOR_VALIDATION})
    return mirror


def _canonical_fast_validate() -> Callable[[bytes], dict] | None:
    try:
        reading = _mirror(CanonicalReading, "CanonicalReadingDict", {})
        message = _mirror(CanonicalMessage, "CanonicalMessageDict", {"readings": list[reading]})
        return TypeAdapter(message).validator.validate_json
    except Exception as exc:  # noqa: BLE001 - a schema change must never stop ingest
        log.warning("canonical fast path off (%s); validating with CanonicalMessage only", exc)
        return None


_CANONICAL_FAST = _canonical_fast_validate()


class CanonicalDecoder:
    """``cim/v1/{vendor}/{device}/up`` carrying a :class:`CanonicalMessage`."""

    def handles(self, topic: str) -> bool:
        return topic.startswith("cim/v1/")

    def decode(self, topic: str, payload: bytes, *, now: datetime | None = None) -> Decoded:
        levels = topic.split("/")
        if len(levels) != 5 or levels[0] != "cim" or levels[1] != "v1" or levels[4] != "up":
            raise DecodeError("bad_topic", f"topic {topic!r} is not cim/v1/{{vendor}}/{{device}}/up")
        vendor, device = levels[2], levels[3]
        if _CANONICAL_FAST is not None:
            try:
                message = _CANONICAL_FAST(payload)
            except (ValidationError, OverflowError, OSError, ValueError):
                pass  # the model says what is wrong, below
            else:
                named = message.get("device")
                if named is None or named == device:
                    return Decoded(vendor, device, message.get("time"),
                                   [(r["channel"], r["value"], r.get("time")) for r in message["readings"]])
        return self._decode_model(vendor, device, payload)

    @staticmethod
    def _decode_model(vendor: str, device: str, payload: bytes) -> Decoded:
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
        return Decoded(vendor, device, message.time,
                       [DecodedReading(r.channel, r.value, r.time) for r in message.readings])
