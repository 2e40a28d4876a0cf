"""Declared vendor profiles, compiled for ingest: topic matching, device id, time, channels.

:func:`compile_profile` turns a validated :class:`~cimtwin.schemas.profiles.Profile` into a
:class:`CompiledProfile`: paths become accessors, units become ``(a, b)`` pairs (folded with the
channel's scale and offset), so decoding a message parses nothing but the message.
:class:`ProfileDecoder` is the ingest ``Decoder`` for ``vendors/…`` topics: it picks the profile
whose pattern matches (the newest version), or a device's pinned version (:meth:`decode_with`).
:func:`dry_run` decodes a sample and reports every error with its path instead of stopping at one.

Readings come out as floats in the canonical unit of their quantity: value map first, then
``value * scale + offset``, then the unit conversion. A channel missing from a message is skipped
unless the profile marks it required; a message that yields no reading at all is rejected.
Range checks are left to the normalizer (against the registered sensor); dry runs report them.
"""

from __future__ import annotations

import math
import re
import threading
import time as _time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic_core import from_json

from cimtwin.schemas.profiles import LORA_METADATA, Profile, TimeSpec, device_id_source, parse_path, topic_levels
from cimtwin.schemas.units import CANONICAL_UNITS, conversion

from .decoders import Decoded, DecodeError
from .formats import BINARY_DECODERS, FormatError
from .formats import chirpstack as _chirpstack
from .formats import senml as _senml
from .formats import ultralight as _ultralight

_MISSING = object()
_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")  # device ids and channel names
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MAX_REASONS = 10
_EPOCH_UNITS = {"epoch_s": "seconds", "epoch_ms": "milliseconds", "epoch_us": "microseconds"}
_EPOCH_DIVISORS = {"epoch_s": 1.0, "epoch_ms": 1e3, "epoch_us": 1e6}

Getter = Callable[[Any], Any]
Problem = tuple[str, str, str]  # (reason code, path, message)


# --- accessors ----------------------------------------------------------------------------------

def compile_getter(path: str) -> Getter:
    """A function reading ``path`` (JSON pointer or JSONPath subset) from parsed JSON; ``_MISSING`` if absent."""
    tokens = parse_path(path)
    if not tokens:
        return lambda doc: doc
    if all(index is None and key is not None for key, index in tokens) and len(tokens) <= 3:
        keys = [key for key, _ in tokens]
        if len(keys) == 1:
            k0 = keys[0]

            def get1(doc: Any) -> Any:
                return doc.get(k0, _MISSING) if type(doc) is dict else _MISSING
            return get1
        if len(keys) == 2:
            k0, k1 = keys

            def get2(doc: Any) -> Any:
                if type(doc) is dict:
                    doc = doc.get(k0)
                    if type(doc) is dict:
                        return doc.get(k1, _MISSING)
                return _MISSING
            return get2
        k0, k1, k2 = keys

        def get3(doc: Any) -> Any:
            if type(doc) is dict:
                doc = doc.get(k0)
                if type(doc) is dict:
                    doc = doc.get(k1)
                    if type(doc) is dict:
                        return doc.get(k2, _MISSING)
            return _MISSING
        return get3

    def get(doc: Any) -> Any:
        for key, index in tokens:
            t = type(doc)
            if t is dict:
                doc = doc.get(key, _MISSING)
                if doc is _MISSING:
                    return doc
            elif t is list and index is not None and -len(doc) <= index < len(doc):
                doc = doc[index]
            else:
                return _MISSING
        return doc
    return get


# --- values and times ---------------------------------------------------------------------------

class _BadValue(Exception):
    pass


class _SlowPath(Exception):
    """The fast path met something it does not handle; take the general one."""


_SENML_FAST_KEYS = frozenset(("bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "t"))


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "text", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _show(value: Any) -> str:
    """A value for a reason text, kept short (a JSON integer may have thousands of digits)."""
    if type(value) is int and value.bit_length() > 200:
        return f"a {len(str(value)) if value.bit_length() < 14000 else 'very'}-digit integer"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(raw: Any, value_map: dict[str, float] | None) -> float:
    """A raw JSON (or UltraLight text) value as a number, through the value map; _BadValue if not."""
    t = type(raw)
    if value_map is not None:
        if t is str:
            mapped = value_map.get(raw)
            if mapped is None:
                mapped = value_map.get(raw.strip())
            if mapped is not None:
                return mapped
        elif t is bool:
            mapped = value_map.get("true" if raw else "false")
            if mapped is not None:
                return mapped
        elif t is int or t is float:
            mapped = value_map.get(str(raw))
            if mapped is not None:
                return mapped
    if t is float or t is int:
        return raw
    if t is bool:
        return 1.0 if raw else 0.0
    if t is str:
        try:
            return float(raw)
        except ValueError:
            pass
        known = f" and not one of its value_map keys ({', '.join(value_map)})" if value_map else ""
        raise _BadValue(f"{raw[:40]!r} is not a number{known}")
    raise _BadValue(f"expected a number, got {_kind(raw)}")


def _scaled(raw: Any, value_map: dict[str, float] | None, a: float, b: float) -> float:
    try:
        v = _number(raw, value_map) * a + b
    except OverflowError:
        raise _BadValue(f"{_show(raw)} is too large") from None
    if not math.isfinite(v):
        raise _BadValue(f"{_show(raw)} is not a finite number" if isinstance(raw, (int, float)) else
                        f"{_show(raw)} gives a value out of range")
    return v


def parse_time(raw: Any, fmt: str) -> datetime:
    """A time in one of the profile time formats, as an aware UTC datetime; ValueError if not."""
    if fmt == "iso8601":
        if type(raw) is not str:
            raise ValueError(f"expected ISO 8601 text, got {_kind(raw)}")
        try:
            t = datetime.fromisoformat(raw)
        except ValueError:
            raise ValueError(f"{raw[:60]!r} is not an ISO 8601 time") from None
        try:
            return t.replace(tzinfo=_UTC) if t.tzinfo is None else t.astimezone(_UTC)
        except OverflowError:  # year 1 moved before year 1 by its offset
            raise ValueError(f"{raw[:60]!r} is out of range") from None
    unit = _EPOCH_UNITS[fmt]
    t = type(raw)
    if t is str:
        try:
            raw = int(raw) if raw.strip().lstrip("-").isdigit() else float(raw)
        except ValueError:
            raise ValueError(f"{raw[:40]!r} is not an epoch time in {unit}") from None
        t = type(raw)
    if t is not int and t is not float:
        raise ValueError(f"expected epoch {unit} as a number, got {_kind(raw)}")
    try:
        if t is int:
            return _EPOCH + timedelta(**{unit: raw})
        if not math.isfinite(raw):
            raise OverflowError
        return datetime.fromtimestamp(raw / _EPOCH_DIVISORS[fmt], tz=_UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"{_show(raw)} is out of range for epoch {unit}") from None


def _loads(payload: bytes) -> Any:
    # pydantic-core's JSON parser (jiter): 2-3x faster than json.loads; NaN and Infinity are errors.
    try:
        return from_json(payload, allow_inf_nan=False)
    except ValueError as exc:
        raise FormatError("malformed_json", "", f"malformed JSON: {exc}") from None


def _flatten(obj: dict, keys: tuple[str, ...], out: list[tuple[tuple[str, ...], Any]]) -> None:
    """Numeric and boolean leaves of nested objects as ``(keys, value)``."""
    for key, value in obj.items():
        t = type(value)
        if t is dict:
            if len(keys) < 8:
                _flatten(value, (*keys, key), out)
        elif t is int or t is float or t is bool:
            out.append(((*keys, key), value))


# --- compiled profiles --------------------------------------------------------------------------

class _Channel:
    __slots__ = ("name", "path", "get", "key", "a", "b", "value_map", "required", "quantity", "unit",
                 "min_value", "max_value", "scale", "offset", "_factors", "_declared_unit")

    def __init__(self, spec, fmt: str):
        self.name = spec.name
        self.key = spec.path if spec.path is not None else spec.name
        self.path = self.key if fmt in ("json", "binary", "chirpstack") else (
            f"key {self.key!r}" if fmt == "ultralight" else f"name {self.key!r}")
        self.get = compile_getter(spec.path) if fmt in ("json", "binary", "chirpstack") else None
        self.value_map = spec.value_map
        self.required = spec.required
        self.quantity = spec.quantity
        self.unit = CANONICAL_UNITS[spec.quantity] if spec.quantity else None
        self.min_value, self.max_value = spec.min_value, spec.max_value
        self.scale, self.offset = spec.scale, spec.offset
        self._factors: dict[str | None, tuple[float, float]] = {}
        if spec.quantity is not None:
            a, b = conversion(spec.quantity, spec.unit or self.unit)
            self.a, self.b = a * spec.scale, a * spec.offset + b
            self._factors[None] = (self.a, self.b)
        else:
            self.a, self.b = spec.scale, spec.offset
        self._declared_unit = spec.unit

    def factors(self, quantity: str, unit: str | None) -> tuple[float, float]:
        """(a, b) for a value sent in ``unit`` (SenML records carry their own); ValueError if it does not fit."""
        key = unit if quantity == self.quantity else f"{quantity}\0{unit}"
        got = self._factors.get(key)
        if got is None:
            a, b = conversion(quantity, unit or self._declared_unit or CANONICAL_UNITS[quantity])
            got = self._factors[key] = (a * self.scale, a * self.offset + b)
        return got


class _Report:
    """What a dry run collects besides the readings."""

    def __init__(self):
        self.errors: list[dict[str, str]] = []
        self.meta: dict[str, tuple[str | None, str | None]] = {}
        self.device: str | None = None
        self.time: datetime | None = None


class CompiledProfile:
    """One profile version, ready to match topics and decode messages."""

    def __init__(self, profile: Profile, *, vendor_code: str, profile_id: int | None = None,
                 version: int | None = None):
        self.profile = profile
        self.vendor_code = vendor_code
        self.name = profile.name
        self.version = version
        self.profile_id = profile_id
        self.format = profile.format
        self.pattern = profile.topic
        levels = topic_levels(profile.topic)
        if len(levels) < 3 or levels[0] != "vendors" or levels[1] != vendor_code:
            raise ValueError(f"topic pattern {profile.topic!r} must start with 'vendors/{vendor_code}/' "
                             f"(the vendor's own topic namespace)")
        self._n_levels = len(levels)
        self._literals = tuple((i, lvl) for i, lvl in enumerate(levels) if isinstance(lvl, str) and i > 1)
        self._placeholders = tuple((i, lvl[0]) for i, lvl in enumerate(levels) if isinstance(lvl, tuple))
        self.specificity = len(self._literals)

        # device id: a topic template, a payload path, or the format's default
        self._device_name: str | None = None        # the template is exactly one placeholder
        self._device_template: list[tuple[bool, str]] | None = None
        self._device_get: Getter | None = None
        self._device_path: str | None = None
        if profile.device_id is not None:
            kind, _ = device_id_source(profile.device_id)
            if kind == "path":
                self._device_get = compile_getter(profile.device_id)
                self._device_path = profile.device_id
            else:
                m = _PLACEHOLDER.fullmatch(profile.device_id)
                if m:
                    self._device_name = m.group(1)
                parts, pos = [], 0
                for m in _PLACEHOLDER.finditer(profile.device_id):
                    if m.start() > pos:
                        parts.append((False, profile.device_id[pos:m.start()]))
                    parts.append((True, m.group(1)))
                    pos = m.end()
                if pos < len(profile.device_id):
                    parts.append((False, profile.device_id[pos:]))
                self._device_template = parts

        # time
        self._time_received = profile.time == "received"
        self._time_spec: TimeSpec | None = profile.time if isinstance(profile.time, TimeSpec) else None
        self._time_get = compile_getter(self._time_spec.path) \
            if self._time_spec is not None and self.format != "ultralight" else None

        # channels
        self._channels = [_Channel(spec, self.format) for spec in profile.channels]
        self._by_name = {c.name: c for c in self._channels}
        self._by_key = {c.key: c for c in self._channels}
        self._required = [c for c in self._channels if c.required]
        self._include_undeclared = profile.include_undeclared if profile.include_undeclared is not None \
            else self.format == "senml"
        self._lora = self.format == "chirpstack" and profile.lora_metadata is not False
        self._declared_names = frozenset(self._by_name)
        # Fields a profile already reads (channels, time, device id) are not taken again as undeclared.
        read = [spec.path for spec in profile.channels if spec.path is not None]
        read += [p for p in (self._time_spec.path if self._time_spec else None, self._device_path) if p]
        self._read_paths: frozenset[tuple] = frozenset()
        if self.format in ("json", "binary", "chirpstack"):
            self._read_paths = frozenset(tuple(key for key, _ in parse_path(p)) for p in read)
        self._binary = profile.decoder
        self._senml_cache: dict[tuple, Any] = {}

    # -- topics and devices --

    def match(self, topic: str) -> dict[str, str] | None:
        """The placeholder values if the topic matches this profile's pattern, else None."""
        levels = topic.split("/")
        return self._match_levels(levels)

    def _match_levels(self, levels: list[str]) -> dict[str, str] | None:
        if len(levels) != self._n_levels or levels[0] != "vendors" or levels[1] != self.vendor_code:
            return None
        for i, literal in self._literals:
            if levels[i] != literal:
                return None
        params = {}
        for i, name in self._placeholders:
            value = levels[i]
            if not value:
                return None
            params[name] = value
        return params

    def _device_from_topic(self, params: dict[str, str], problems: list[Problem]) -> str | None:
        if self._device_name is not None:
            device = params[self._device_name]
        else:
            device = "".join(params.get(text, "") if is_param else text for is_param, text in self._device_template)
        if not _NAME.match(device):
            problems.append(("bad_topic", "topic", f"device id {device[:140]!r} from the topic is not a valid device "
                                                   "id (letters, digits, . _ : -; up to 128, starting alphanumeric)"))
            return None
        return device

    def _device_from_doc(self, doc: Any, problems: list[Problem]) -> str | None:
        raw = self._device_get(doc)
        if raw is _MISSING or raw is None:
            problems.append(("invalid_payload", self._device_path, "the device id is missing"))
            return None
        if type(raw) is int:
            raw = str(raw)
        if type(raw) is not str or not _NAME.match(raw):
            problems.append(("invalid_payload", self._device_path,
                             f"device id {raw!r:.60} is not a valid device id (text of letters, digits, . _ : -; "
                             "up to 128, starting alphanumeric)"))
            return None
        return raw

    def _device(self, params: dict[str, str], doc: Any, problems: list[Problem]) -> str | None:
        if self._device_template is not None:
            return self._device_from_topic(params, problems)
        if self._device_get is not None:
            return self._device_from_doc(doc, problems)
        return None

    def identify(self, topic: str, payload: bytes) -> str | None:
        """The device id of a message, as far as it can be found without decoding it; never raises."""
        params = self.match(topic)
        if params is None:
            return None
        problems: list[Problem] = []
        try:
            if self._device_template is not None:
                return self._device_from_topic(params, problems)
            if self.format == "binary" or self.format == "ultralight":
                return None
            doc = from_json(payload)
            if self._device_get is not None:
                return self._device_from_doc(doc, problems)
            if self.format == "chirpstack":
                return _chirpstack.dev_eui(doc) if type(doc) is dict else None
            if self.format == "senml" and type(doc) is list:
                bn = next((r["bn"] for r in doc if type(r) is dict and type(r.get("bn")) is str), None)
                device = _senml.device_from_base_name(bn) if bn else None
                return device if device and _NAME.match(device) else None
        except Exception:  # noqa: BLE001 - identification is best effort
            return None
        return None

    # -- decoding --

    def decode(self, topic: str, payload: bytes, *, now: datetime | None = None) -> Decoded:
        """Decode one message; DecodeError naming every failing path. ``now`` resolves SenML relative times."""
        params = self.match(topic)
        if params is None:
            raise DecodeError("bad_topic", self._mismatch(topic))
        return self._decode(params, payload, now, None)

    def _mismatch(self, topic: str) -> str:
        return f"topic {topic!r} does not match profile {self.name!r} (pattern {self.pattern!r})"

    def _decode(self, params: dict[str, str], payload: bytes, now: datetime | None,
                report: _Report | None) -> Decoded | None:
        problems: list[Problem] = []
        fmt = self.format
        try:
            if fmt == "json":
                device, when, readings = self._decode_doc(params, _loads(payload), problems, report)
            elif fmt == "senml":
                device, when, readings = self._decode_senml(params, _loads(payload), now, problems, report)
            elif fmt == "ultralight":
                device, when, readings = self._decode_ultralight(params, payload, problems, report)
            elif fmt == "chirpstack":
                device, when, readings = self._decode_chirpstack(params, _loads(payload), problems, report)
            else:
                device, when, readings = self._decode_doc(params, self._binary_fields(payload), problems, report)
        except FormatError as exc:
            if report is None:
                raise DecodeError(exc.reason_code, str(exc)) from None
            report.errors.append({"path": exc.path, "message": exc.message})
            return None
        if not readings and not problems:
            problems.append(("invalid_payload", "", self._nothing_found()))
        if report is not None:
            report.errors.extend({"path": path, "message": message} for _, path, message in problems)
            report.device, report.time = device, when
            return Decoded(self.vendor_code, device or "", when, readings, self.profile_id)
        if problems:
            raise DecodeError(*_reason(problems))
        return Decoded(self.vendor_code, device, when, readings, self.profile_id)

    def _nothing_found(self) -> str:
        if self.format in ("json", "binary") or (self.format == "chirpstack" and not self._lora):
            where = ", ".join(c.path for c in self._channels[:8]) or "no declared channels"
            return f"no readings: none of the profile's channels is in the message (looked at {where})"
        return "no readings in the message"

    def _message_time(self, doc: Any, problems: list[Problem]) -> datetime | None:
        spec = self._time_spec
        raw = self._time_get(doc)
        if raw is _MISSING or raw is None:
            if spec.required:
                problems.append(("invalid_payload", spec.path, "the time is missing"))
            return None
        try:
            return parse_time(raw, spec.format)
        except ValueError as exc:
            problems.append(("invalid_payload", spec.path, f"time: {exc}"))
            return None

    def _read_channels(self, doc: Any, readings: list, problems: list[Problem], when: datetime | None) -> None:
        for ch in self._channels:
            raw = ch.get(doc)
            if raw is _MISSING or raw is None:
                if ch.required:
                    problems.append(("invalid_payload", ch.path, f"required channel {ch.name!r} is missing"))
                continue
            t = type(raw)
            if (t is float or t is int) and ch.value_map is None:
                try:
                    v = raw * ch.a + ch.b
                except OverflowError:
                    v = math.inf
                if v - v == 0:  # finite
                    readings.append((ch.name, v, when))
                    continue
            try:
                readings.append((ch.name, _scaled(raw, ch.value_map, ch.a, ch.b), when))
            except _BadValue as exc:
                problems.append(("invalid_value", ch.path, f"channel {ch.name!r}: {exc}"))

    def _read_undeclared(self, obj: Any, base: tuple[str, ...], readings: list, when: datetime | None,
                         report: _Report | None) -> None:
        """Numeric fields no channel declares, named by their keys joined with '.' (under ``base``)."""
        if type(obj) is not dict:
            return
        found: list[tuple[tuple[str, ...], Any]] = []
        _flatten(obj, (), found)
        declared, read = self._declared_names, self._read_paths
        for keys, raw in found:
            name = ".".join(keys)
            if name in declared or (*base, *keys) in read or not _NAME.match(name):
                continue
            try:
                v = float(raw)
            except OverflowError:
                continue
            if math.isfinite(v):
                readings.append((name, v, when))
                if report is not None:
                    report.meta.setdefault(name, (None, None))

    def _decode_doc(self, params, doc, problems, report):
        device = self._device(params, doc, problems)
        when = None
        if self._time_get is not None:
            when = self._message_time(doc, problems)
        readings: list = []
        self._read_channels(doc, readings, problems, None)
        if self._include_undeclared:
            self._read_undeclared(doc, (), readings, None, report)
        return device, when, readings

    def _binary_fields(self, payload: bytes) -> dict:
        decoder = BINARY_DECODERS.get(self._binary)
        if decoder is None:
            raise FormatError("no_decoder", "", f"no decoder for model {self._binary}")
        try:
            fields = decoder.decode(payload)
        except Exception as exc:  # noqa: BLE001 - a plug-in's failure is this message's dead letter
            raise FormatError("invalid_payload", "", f"decoder {self._binary!r} failed: "
                                                     f"{type(exc).__name__}: {exc}") from None
        if type(fields) is not dict:
            raise FormatError("invalid_payload", "", f"decoder {self._binary!r} returned {_kind(fields)}, "
                                                     "not an object of fields")
        return fields

    def _decode_chirpstack(self, params, envelope, problems, report):
        envelope = _chirpstack.with_object(envelope)
        if self._device_template is not None or self._device_get is not None:
            device = self._device(params, envelope, problems)
        else:
            device = _chirpstack.dev_eui(envelope)
            if device is None:
                problems.append(("invalid_payload", "/deviceInfo/devEui",
                                 "the uplink has no DevEUI (deviceInfo.devEui in v4, devEUI in v3)"))
        when = None
        if self._time_get is not None:
            when = self._message_time(envelope, problems)
        elif not self._time_received:
            found = _chirpstack.envelope_time(envelope)
            if found is not None:
                try:
                    when = parse_time(found[1], "iso8601")
                except ValueError as exc:
                    problems.append(("invalid_payload", found[0], f"time: {exc}"))
        readings: list = []
        self._read_channels(envelope, readings, problems, None)
        if self._include_undeclared:
            self._read_undeclared(envelope.get("object"), ("object",), readings, None, report)
        if self._lora:
            for channel, path, raw in _chirpstack.radio_metadata(envelope):
                t = type(raw)
                if t is int or t is float:
                    try:
                        v = float(raw)
                    except OverflowError:
                        v = math.inf
                    if math.isfinite(v):
                        readings.append((channel, v, None))
                    else:
                        problems.append(("invalid_value", path, f"channel {channel!r}: {_show(raw)} is not a "
                                                                "finite number"))
                elif raw is not None:
                    problems.append(("invalid_value", path, f"channel {channel!r}: expected a number, "
                                                            f"got {_kind(raw)}"))
        return device, when, readings

    def _decode_ultralight(self, params, payload, problems, report):
        groups = _ultralight.parse(payload)
        device = self._device(params, None, problems)
        spec = self._time_spec
        by_key = self._by_key
        include = self._include_undeclared
        readings: list = []
        seen: set[str] = set()
        for g, (stamp, pairs) in enumerate(groups):
            when = None
            if stamp is not None:
                try:
                    when = parse_time(stamp, "iso8601")
                except ValueError as exc:
                    problems.append(("invalid_payload", f"/{g}/timestamp", f"group {g} timestamp: {exc}"))
            elif spec is not None:
                raw = next((value for key, value in pairs if key == spec.path), None)
                if raw is None:
                    if spec.required:
                        problems.append(("invalid_payload", f"/{g}/{spec.path}", f"group {g} has no time "
                                                                                 f"key {spec.path!r}"))
                else:
                    try:
                        when = parse_time(raw, spec.format)
                    except ValueError as exc:
                        problems.append(("invalid_payload", f"/{g}/{spec.path}", f"time: {exc}"))
            for key, raw in pairs:
                ch = by_key.get(key)
                if ch is None:
                    if include and (spec is None or key != spec.path) and _NAME.match(key):
                        try:
                            v = float(raw)
                        except ValueError:
                            continue
                        if math.isfinite(v):
                            readings.append((key, v, when))
                            if report is not None:
                                report.meta.setdefault(key, (None, None))
                    continue
                seen.add(key)
                try:
                    readings.append((ch.name, _scaled(raw, ch.value_map, ch.a, ch.b), when))
                except _BadValue as exc:
                    problems.append(("invalid_value", f"/{g}/{key}", f"channel {ch.name!r}: {exc}"))
        for ch in self._required:
            if ch.key not in seen:
                problems.append(("invalid_payload", f"key {ch.key!r}", f"required channel {ch.name!r} is missing"))
        return device, None, readings

    def _decode_senml(self, params, pack, now, problems, report):
        now_s = now.timestamp() if now is not None else _time.time()
        if report is None:
            try:
                return self._decode_senml_fast(params, pack, now_s, problems)
            except _SlowPath:
                del problems[:]
        return self._decode_senml_slow(params, pack, now_s, problems, report)

    def _senml_target(self, bn: str, n: str, u: str | None):
        """How a record named ``n`` (after base name ``bn``) in unit ``u`` becomes a reading:
        ``(channel, a, b, value_map, key)``, or None to skip it; _SlowPath if it is a problem."""
        if not _senml.NAME.match(bn + n):
            raise _SlowPath
        key = n or _senml.SENML_UNITS.get(u)
        if key is None:
            if self._include_undeclared or self._by_key:
                raise _SlowPath
            return None
        ch = self._by_key.get(key)
        if ch is None:
            if not self._include_undeclared:
                return None
            quantity = _senml.SENML_UNITS.get(u)
            if quantity is None or not _NAME.match(key):
                raise _SlowPath
            a, b = conversion(quantity, u)
            return (key, a, b, None, key)
        quantity = ch.quantity or _senml.SENML_UNITS.get(u)
        if quantity is None:
            raise _SlowPath
        try:
            a, b = ch.factors(quantity, u)
        except ValueError:
            raise _SlowPath from None
        return (ch.name, a, b, ch.value_map, key)

    def _decode_senml_fast(self, params, pack, now_s, problems):
        """The common case in one pass: records of n/u/v/t and base fields, all valid. Anything else
        (text or boolean values, sums, extension fields, any problem) raises _SlowPath, and the pack is
        decoded again by the general path, which gives the same readings or names the problem."""
        if type(pack) is not list:
            raise _SlowPath
        device = self._device(params, pack, problems) if (self._device_template is not None or
                                                         self._device_get is not None) else None
        fast_keys, base_fields = _SENML_FAST_KEYS, _senml.BASE_FIELDS
        cache = self._senml_cache
        required = self._required
        seen: set[str] | None = set() if required else None
        readings: list = []
        append = readings.append
        bn, bt, bu, bv = "", 0.0, None, 0.0
        base_name = None
        last_t, last_dt = None, None
        relative_limit, fromtimestamp, utc = _senml.RELATIVE_LIMIT, datetime.fromtimestamp, _UTC
        missing = _MISSING
        for rec in pack:
            if type(rec) is not dict:
                raise _SlowPath
            v = rec.get("v", missing)
            n = rec.get("n", missing)
            u = rec.get("u", missing)
            t = rec.get("t", missing)
            if len(rec) != (v is not missing) + (n is not missing) + (u is not missing) + (t is not missing):
                # base fields (or something the fast path leaves to the general one)
                if not rec.keys() <= fast_keys:
                    raise _SlowPath
                for field in ("bt", "bv"):
                    if field in rec:
                        x = rec[field]
                        tx = type(x)
                        if (tx is not float and tx is not int) or x - x != 0:
                            raise _SlowPath
                if "bn" in rec:
                    bn = rec["bn"]
                    if type(bn) is not str or (base_name is not None and bn != base_name):
                        raise _SlowPath
                bt = rec.get("bt", bt)
                bv = rec.get("bv", bv)
                if "bu" in rec:
                    bu = rec["bu"]
                    if type(bu) is not str:
                        raise _SlowPath
                if "bs" in rec or "bver" in rec:
                    raise _SlowPath
                if v is missing:
                    if rec.keys() <= base_fields:
                        continue
                    raise _SlowPath
            elif v is missing:
                raise _SlowPath
            if base_name is None:
                base_name = bn
            if n is missing:
                n = ""
            if u is missing:
                u = bu
            if t is missing:
                t = 0
            else:
                tt = type(t)
                if tt is not float and tt is not int:
                    raise _SlowPath
            tv = type(v)
            if tv is not float and tv is not int:
                raise _SlowPath
            # Cached keys were checked to be text when cached, and no other value equals them.
            try:
                target = cache.get((bn, n, u), missing)
            except TypeError:  # an unhashable n or u
                raise _SlowPath from None
            if target is missing:
                if type(n) is not str or (u is not None and type(u) is not str):
                    raise _SlowPath
                target = self._senml_target(bn, n, u)
                if len(cache) < 4096:
                    cache[(bn, n, u)] = target
            if target is None:
                continue
            name, a, b, value_map, key = target
            try:
                if value_map is None:
                    value = (bv + v) * a + b
                    if value - value != 0:
                        raise _SlowPath
                else:
                    value = _scaled(bv + v, value_map, a, b)
                when = bt + t
                if when < relative_limit:
                    when += now_s
            except (OverflowError, _BadValue):  # integers beyond a double
                raise _SlowPath from None
            if when != last_t:
                try:
                    last_dt = fromtimestamp(when, tz=utc)
                except (OverflowError, OSError, ValueError):
                    raise _SlowPath from None
                last_t = when
            append((name, value, last_dt))
            if seen is not None:
                seen.add(key)
        if seen is not None and any(ch.key not in seen for ch in required):
            raise _SlowPath
        if device is None:
            if problems or (self._device_template is not None or self._device_get is not None):
                raise _SlowPath
            device = _senml.device_from_base_name(base_name) if base_name else None
            if not device or not _NAME.match(device):
                raise _SlowPath
        if not readings:
            raise _SlowPath
        return device, None, readings

    def _decode_senml_slow(self, params, pack, now_s, problems, report):
        device = self._device(params, pack, problems)
        by_key = self._by_key
        include = self._include_undeclared
        units = _senml.SENML_UNITS
        readings: list = []
        seen: set[str] = set()
        base_name = None
        for i, bn, n, rec in _senml.iter_resolved(pack, now=now_s):
            if base_name is None:
                base_name = bn
            elif bn != base_name:
                raise FormatError("invalid_payload", f"/{i}/bn", f"the pack has records of more than one base name "
                                                                 f"({base_name!r}, {bn!r}); send one device per message")
            # Text and boolean values have no unit (a bu meant for the numbers does not apply to them);
            # an undeclared boolean is a state (door open, alarm on).
            u = rec.get("u") if "vs" not in rec and "vb" not in rec else None
            numeric = "v" in rec or "vb" in rec or "s" in rec
            unit_quantity = units.get(u) if u is not None else ("state" if "vb" in rec else None)
            key = n or unit_quantity
            if not key:
                if numeric and (include or by_key):
                    problems.append(("invalid_payload", f"/{i}", f"record {rec['n']!r} is named only by its base "
                                                                 f"name and its unit {u!r} does not name a channel"))
                continue
            ch = by_key.get(key)
            if ch is None and not include:
                continue
            if "v" in rec:
                raw = rec["v"]
            elif "vb" in rec:
                raw = rec["vb"]
            elif "vs" in rec and ch is not None and ch.value_map is not None:
                raw = rec["vs"]
            elif "s" in rec:
                raw = rec["s"]
            else:
                continue  # text or data values have no numeric reading
            if ch is not None:
                seen.add(key)
                name = ch.name
                quantity = ch.quantity or unit_quantity
                if quantity is None:
                    problems.append(("invalid_payload", f"/{i}/u", f"channel {name!r}: unit {u!r} does not say what "
                                                                   "is measured; declare the channel's quantity"))
                    continue
                try:
                    a, b = ch.factors(quantity, u)
                except ValueError as exc:
                    problems.append(("invalid_payload", f"/{i}/u", f"channel {name!r}: {exc}"))
                    continue
                value_map = ch.value_map
            else:
                name = key
                quantity = unit_quantity
                if quantity is None:
                    what = f"unit {u!r} is not one cimtwin reads from SenML" if u is not None else "has no unit"
                    problems.append(("invalid_payload", f"/{i}/u",
                                     f"record {rec['n']!r}: {what}; declare the channel (path = its name) with its "
                                     "quantity in the profile"))
                    continue
                if not _NAME.match(name):
                    problems.append(("invalid_payload", f"/{i}/n", f"record {rec['n']!r}: {name!r} is not a valid "
                                                                   "channel name; declare a channel with this path "
                                                                   "to name it"))
                    continue
                a, b = conversion(quantity, u or CANONICAL_UNITS[quantity])
                value_map = None
            try:
                v = _scaled(raw, value_map, a, b)
            except _BadValue as exc:
                problems.append(("invalid_value", f"/{i}", f"channel {name!r}: {exc}"))
                continue
            try:
                when = datetime.fromtimestamp(rec["t"], tz=_UTC)
            except (OverflowError, OSError, ValueError):
                problems.append(("invalid_payload", f"/{i}/t", f"time {rec['t']!r} is out of range"))
                continue
            readings.append((name, v, when))
            if report is not None:
                report.meta.setdefault(name, (quantity, CANONICAL_UNITS[quantity]))
        for ch in self._required:
            if ch.key not in seen:
                problems.append(("invalid_payload", f"name {ch.key!r}", f"required channel {ch.name!r} is missing"))
        if self._device_template is None and self._device_get is None:
            device = _senml.device_from_base_name(base_name) if base_name else None
            if not device:
                problems.append(("invalid_payload", "/0/bn", "no base name (bn) to take the device id from; set "
                                                             "device_id in the profile"))
                device = None
            elif not _NAME.match(device):
                problems.append(("invalid_payload", "/0/bn", f"device id {device!r} from the base name is not a "
                                                             "valid device id (letters, digits, . _ : -)"))
                device = None
        return device, None, readings

    # -- registration --

    def sensors(self) -> list[dict]:
        """The sensors a device of this profile has: ``{channel, quantity, unit, min_value, max_value}``.

        Declared channels with a quantity, plus the LoRa metadata channels of a ChirpStack profile.
        (Channels a senml profile takes undeclared follow from the messages; see :func:`dry_run`.)
        """
        out = [{"channel": c.name, "quantity": c.quantity, "unit": c.unit, "min_value": c.min_value,
                "max_value": c.max_value} for c in self._channels if c.quantity is not None]
        if self._lora:
            out += [{"channel": name, "quantity": quantity, "unit": CANONICAL_UNITS[quantity], "min_value": None,
                     "max_value": None} for name, quantity in LORA_METADATA.items()]
        return out

    def __repr__(self) -> str:
        return (f"CompiledProfile({self.vendor_code}/{self.name} v{self.version} id={self.profile_id} "
                f"{self.format} {self.pattern!r})")


def _reason(problems: list[Problem]) -> tuple[str, str]:
    code = next((c for c, _, _ in problems if c != "invalid_value"), "invalid_value")
    parts = [f"{path}: {message}" if path else message for _, path, message in problems[:_MAX_REASONS]]
    more = f"; and {len(problems) - _MAX_REASONS} more" if len(problems) > _MAX_REASONS else ""
    return code, "; ".join(parts) + more


def compile_profile(profile: Profile, *, vendor_code: str, profile_id: int | None = None,
                    version: int | None = None) -> CompiledProfile:
    """Compile a validated profile for a vendor; ValueError if its topic is outside ``vendors/<vendor_code>/``."""
    return CompiledProfile(profile, vendor_code=vendor_code, profile_id=profile_id, version=version)


def dry_run(profile: Profile, *, vendor_code: str, topic: str, payload: bytes,
            now: datetime | None = None) -> dict:
    """Decode a sample message with a profile and report the outcome instead of raising.

    ``{"device", "time", "readings": [{channel, quantity, unit, value, time}], "errors": [{path, message}]}``
    lists every error found, each with its path (a payload path, ``topic``, or a profile path for a
    profile that does not compile), including values outside a channel's valid range. A time of
    None means the time the message is received. ``now`` (default: the current time) resolves
    SenML relative times.
    """
    result: dict[str, Any] = {"device": None, "time": None, "readings": [], "errors": []}
    try:
        compiled = compile_profile(profile, vendor_code=vendor_code)
    except ValueError as exc:
        result["errors"].append({"path": "/topic", "message": str(exc)})
        return result
    params = compiled.match(topic)
    if params is None:
        result["errors"].append({"path": "topic", "message": compiled._mismatch(topic)})
        params = {name: "" for _, name in compiled._placeholders}
    report = _Report()
    decoded = compiled._decode(params, payload, now, report)
    if params and not all(params.values()):  # the topic did not match: its device id cannot be judged
        report.errors = [e for e in report.errors if e["path"] != "topic"]
    result["errors"].extend(report.errors)
    result["device"] = report.device
    result["time"] = report.time.isoformat() if report.time is not None else None
    if decoded is None:
        return result
    for channel, value, when in decoded.readings:
        ch = compiled._by_name.get(channel)
        if ch is not None and ch.quantity is not None:
            quantity, unit = ch.quantity, ch.unit
        elif channel in LORA_METADATA and compiled._lora:
            quantity = LORA_METADATA[channel]
            unit = CANONICAL_UNITS[quantity]
        else:
            quantity, unit = report.meta.get(channel, (None, None))
        t = when or decoded.time
        result["readings"].append({"channel": channel, "quantity": quantity, "unit": unit, "value": value,
                                   "time": t.isoformat() if t is not None else None})
        if ch is not None and ((ch.min_value is not None and value < ch.min_value) or
                               (ch.max_value is not None and value > ch.max_value)):
            lo = "-inf" if ch.min_value is None else f"{ch.min_value:g}"
            hi = "inf" if ch.max_value is None else f"{ch.max_value:g}"
            result["errors"].append({"path": ch.path, "message": f"channel {channel!r}: value {value:g} {unit or ''} "
                                                                 f"is outside its valid range [{lo}, {hi}]"})
    return result


# --- the ingest decoder -------------------------------------------------------------------------

class _Snapshot:
    """An immutable set of compiled profiles with its lookup tables and topic cache."""

    _CACHE_LIMIT = 65536

    def __init__(self, profiles: Iterable[CompiledProfile]):
        self.by_id: dict[int, CompiledProfile] = {}
        by_vendor: dict[str, list[CompiledProfile]] = {}
        for p in profiles:
            by_vendor.setdefault(p.vendor_code, []).append(p)
            if p.profile_id is not None:
                self.by_id[p.profile_id] = p
        for candidates in by_vendor.values():
            candidates.sort(key=lambda p: (p.version or 0, p.profile_id or 0), reverse=True)
        self.by_vendor = by_vendor
        self.cache: dict[str, CompiledProfile | None] = {}

    def find(self, topic: str, levels: list[str]) -> CompiledProfile | None:
        """The newest version of the matching profile; the most specific pattern if several profiles match."""
        try:
            return self.cache[topic]
        except KeyError:
            pass
        best = None
        seen_names: set[str] = set()
        for p in self.by_vendor.get(levels[1], ()):
            if p.name in seen_names or p._match_levels(levels) is None:
                continue
            seen_names.add(p.name)  # the newest matching version of each profile
            if best is None or p.specificity > best.specificity:
                best = p
        if len(self.cache) >= self._CACHE_LIMIT:
            self.cache.clear()
        self.cache[topic] = best
        return best


class ProfileDecoder:
    """The ingest Decoder for ``vendors/…`` topics, over the loaded profile versions."""

    def __init__(self, profiles: Iterable[CompiledProfile] = ()):
        self._snapshot = _Snapshot(profiles)
        self._lock = threading.Lock()

    def replace(self, profiles: Iterable[CompiledProfile]) -> None:
        """Swap in a new set of profiles; decoders running meanwhile finish with the old set."""
        snapshot = _Snapshot(profiles)
        with self._lock:
            self._snapshot = snapshot

    @property
    def profiles(self) -> list[CompiledProfile]:
        return [p for candidates in self._snapshot.by_vendor.values() for p in candidates]

    def handles(self, topic: str) -> bool:
        return topic.startswith("vendors/")

    def _find(self, topic: str) -> tuple[CompiledProfile, list[str]]:
        levels = topic.split("/")
        if len(levels) < 3 or levels[0] != "vendors" or not levels[1]:
            raise DecodeError("bad_topic", f"topic {topic!r} is not vendors/<vendor>/…")
        profile = self._snapshot.find(topic, levels)
        if profile is None:
            raise DecodeError("bad_topic", f"no profile of vendor {levels[1]!r} matches topic {topic!r}")
        return profile, levels

    def decode(self, topic: str, payload: bytes, *, now: datetime | None = None) -> Decoded:
        profile, levels = self._find(topic)
        return profile._decode(profile._match_levels(levels), payload, now, None)

    def decode_with(self, profile_id: int, topic: str, payload: bytes, *, now: datetime | None = None) -> Decoded:
        """Decode with a given profile version (the one a device is pinned to)."""
        profile = self._snapshot.by_id.get(profile_id)
        if profile is None:
            raise DecodeError("no_profile", f"profile version {profile_id} is not loaded (it was removed or "
                                            "no longer compiles)")
        return profile.decode(topic, payload, now=now)

    def identify(self, topic: str, payload: bytes) -> tuple[str, str] | None:
        """``(vendor, device)`` of a message that may not decode, for finding its pinned profile version."""
        try:
            profile, _ = self._find(topic)
        except DecodeError:
            return None
        device = profile.identify(topic, payload)
        return (profile.vendor_code, device) if device else None
