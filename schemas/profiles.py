"""Vendor payload profiles: how a vendor's devices talk, declared as data (YAML or JSON), not code.

A profile names its format, the MQTT topic pattern its devices publish to, where the device id
and the time are, and each channel's path, quantity, unit, scale/offset, value map and valid
range. Everything that can be checked without a message is checked here, when the profile is
validated: key typos, path syntax, unknown quantities and units, placeholders. The JSON Schema
of :class:`Profile` (:func:`profile_json_schema`) is what vendors write against.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, \
    model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from .readings import Channel
from .units import CANONICAL_UNITS, conversion

FORMATS = ("json", "senml", "ultralight", "chirpstack", "binary")
TIME_FORMATS = ("iso8601", "epoch_s", "epoch_ms", "epoch_us")
# The radio metadata channels a ChirpStack profile adds (channel -> quantity).
LORA_METADATA: dict[str, str] = {
    "lora_rssi": "signal_strength",
    "lora_snr": "snr",
    "lora_frame_counter": "count",
    "lora_frame_port": "number",
    "lora_frequency": "frequency",
    "lora_spreading_factor": "number",
}

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,31})\}")
_LITERAL_LEVEL = re.compile(r"^[^/+#{}\x00]+$")
_JSONPATH_STEP = re.compile(r"""\.([^.\[\]*'"]+)|\[(-?\d+)\]|\['([^'\\]*)'\]|\["([^"\\]*)"\]""")
_UL_KEY = re.compile(r"^[^|#\s]{1,128}$")
_DEVICE_ID_TEMPLATE = re.compile(r"^([A-Za-z0-9._:-]|\{[A-Za-z_][A-Za-z0-9_]{0,31}\})+$")

PathToken = tuple[str | None, int | None]  # (object key, array index); either may be None


# --- paths and topic patterns (pure syntax, shared with ingest/profiles.py) --------------------

def parse_path(path: str) -> tuple[PathToken, ...]:
    """Parse a JSON pointer (``/a/0/b``) or a JSONPath subset (``$.a[0].b``, ``$['a b']``).

    Each token is ``(key, index)``: a pointer token such as ``0`` may address an object key or an
    array element, so it carries both; a JSONPath ``[0]`` is an index only. ValueError on bad syntax.
    """
    if not isinstance(path, str):
        raise ValueError("a path is a string")
    if path == "" or path == "$":
        return ()
    if path.startswith("/"):
        tokens = []
        for raw in path[1:].split("/"):
            if re.search(r"~(?![01])", raw):
                raise ValueError(f"JSON pointer {path!r}: '~' must be followed by 0 or 1 (~0 is '~', ~1 is '/')")
            key = raw.replace("~1", "/").replace("~0", "~")
            index = int(key) if re.fullmatch(r"0|[1-9][0-9]*", key) else None
            tokens.append((key, index))
        return tuple(tokens)
    if path.startswith("$"):
        tokens, pos = [], 1
        while pos < len(path):
            m = _JSONPATH_STEP.match(path, pos)
            if m is None:
                rest = path[pos:]
                what = ("recursive descent ('..') is" if rest.startswith("..") else
                        "a wildcard ('*') is" if "*" in rest[:3] else
                        "a filter ('[?...]') is" if rest.startswith("[?") else
                        "a slice or union is" if rest.startswith("[") and (":" in rest or "," in rest) else None)
                hint = f"{what} not supported" if what else f"cannot read {rest!r}"
                raise ValueError(f"JSONPath {path!r}: {hint}; the subset is $.name, $[0], $['any key'] "
                                 "(one value per path)")
            name, index, quoted1, quoted2 = m.groups()
            if index is not None:
                tokens.append((None, int(index)))
            else:
                tokens.append((name if name is not None else (quoted1 if quoted1 is not None else quoted2), None))
            pos = m.end()
        return tuple(tokens)
    raise ValueError(f"path {path!r} must be a JSON pointer starting with '/' (e.g. /data/temp) "
                     "or a JSONPath starting with '$' (e.g. $.data.temp)")


def topic_levels(pattern: str) -> list[str | tuple[str]]:
    """The levels of a topic pattern: a literal string, or ``(name,)`` for a ``{name}`` placeholder."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("the topic pattern is empty")
    levels: list[str | tuple[str]] = []
    seen: set[str] = set()
    for i, level in enumerate(pattern.split("/")):
        m = _PLACEHOLDER.fullmatch(level)
        if m:
            name = m.group(1)
            if name in seen:
                raise ValueError(f"topic placeholder {{{name}}} appears twice")
            seen.add(name)
            levels.append((name,))
        elif "{" in level or "}" in level:
            raise ValueError(f"topic level {i} {level!r}: a placeholder must be a whole level such as "
                             "{device}, named with letters, digits and _")
        elif level in ("+", "#") or "+" in level or "#" in level:
            raise ValueError(f"topic level {i} {level!r}: MQTT wildcards are not allowed; "
                             "use a named placeholder such as {device}")
        elif not _LITERAL_LEVEL.match(level):
            raise ValueError(f"topic level {i} is empty (no '//' and no leading or trailing '/')")
        else:
            levels.append(level)
    return levels


def topic_placeholders(pattern: str) -> list[str]:
    return [level[0] for level in topic_levels(pattern) if isinstance(level, tuple)]


def device_id_source(spec: str) -> tuple[Literal["path", "template"], Any]:
    """``("path", tokens)`` for a payload path, ``("template", [placeholder names])`` for a topic template."""
    if spec.startswith("/") or spec.startswith("$"):
        return "path", parse_path(spec)
    if not _DEVICE_ID_TEMPLATE.match(spec):
        raise ValueError(f"device_id {spec!r} must be a payload path (/meta/id, $.meta.id) or a template of "
                         "topic placeholders such as {device} or {site}-{node}")
    names = _PLACEHOLDER.findall(spec)
    if not names:
        raise ValueError(f"device_id {spec!r} names no topic placeholder: write e.g. {{device}}, "
                         "or a payload path such as /meta/id")
    return "template", names


# --- the model ----------------------------------------------------------------------------------

class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Lower-case letters, digits, _ and -")]


class TimeSpec(_Doc):
    """Where a message's time is, and how it is written."""

    path: Annotated[str, Field(min_length=1, max_length=500, examples=["/ts", "$.meta.time"],
                               description="A JSON pointer or JSONPath into the message; for UltraLight, "
                                           "the measure key that carries the time")]
    format: Annotated[Literal["iso8601", "epoch_s", "epoch_ms", "epoch_us"],
                      Field(description="ISO 8601 text (no offset means UTC), or a Unix epoch number in "
                                        "seconds, milliseconds or microseconds")]
    required: Annotated[bool, Field(description="If false, a message without a time gets the time it was "
                                                "received instead of being rejected")] = True


def _time_kind(value: Any) -> str:
    return "received" if isinstance(value, str) else "payload"


TimeField = Annotated[
    Union[Annotated[Literal["received"], Tag("received")], Annotated[TimeSpec, Tag("payload")]],
    Discriminator(_time_kind),
]


class ChannelSpec(_Doc):
    """One measured channel: where its value is and what it measures."""

    name: Annotated[Channel, Field(description="The channel name readings are stored under (the device's "
                                               "sensor channel)", examples=["temperature", "co"])]
    path: Annotated[str | None, Field(
        max_length=500,
        description="Where the value is. json, binary: a JSON pointer (/data/0/t) or JSONPath subset "
                    "($.data[0].t, $['odd key']); chirpstack: the same, into the uplink envelope, whose "
                    "decoded fields are under /object (v3 objectJSON is read as object too); ultralight: the "
                    "measure key; senml: the record name after the device's base name. Defaults to the "
                    "channel name for ultralight and senml.",
        examples=["/data/temp", "$.sensors[0].value", "t"])] = None
    quantity: Annotated[str | None, Field(
        description="What is measured; one of: " + ", ".join(sorted(CANONICAL_UNITS)) + ". Required except "
                    "in senml profiles, where it follows from the record's unit.",
        examples=["temperature"])] = None
    unit: Annotated[str | None, Field(
        max_length=32,
        description="The unit the device sends; values are converted to the quantity's canonical unit. "
                    "Defaults to the canonical unit (senml: the record's own unit).",
        examples=["°F", "kPa", "mm", "mV", "ppb"])] = None
    scale: Annotated[float, Field(description="Multiplied first: value * scale + offset, then unit conversion")] = 1.0
    offset: Annotated[float, Field(description="Added after scale, before unit conversion")] = 0.0
    value_map: Annotated[dict[str, float] | None, Field(
        description="Text values to numbers, applied before scale and offset; a text value not in the map "
                    "is an error",
        examples=[{"ON": 1, "OFF": 0}, {"closed": 0, "open": 1}])] = None
    min_value: Annotated[float | None, Field(description="Lowest valid value, in the canonical unit")] = None
    max_value: Annotated[float | None, Field(description="Highest valid value, in the canonical unit")] = None
    required: Annotated[bool, Field(description="If true, a message without this channel is rejected; "
                                                "otherwise a missing (or null) value is skipped")] = False
    description: Annotated[str | None, Field(max_length=2000)] = None

    @field_validator("quantity")
    @classmethod
    def _known_quantity(cls, value: str | None) -> str | None:
        if value is not None and value not in CANONICAL_UNITS:
            close = difflib.get_close_matches(value, CANONICAL_UNITS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown quantity {value!r}{hint}; known: {', '.join(sorted(CANONICAL_UNITS))}")
        return value

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, value: str | None, info) -> str | None:
        quantity = info.data.get("quantity")
        if value is not None and quantity is not None:
            conversion(quantity, value)  # ValueError names the unit and the quantity
        return value

    @field_validator("scale")
    @classmethod
    def _nonzero_scale(cls, value: float) -> float:
        if value == 0:
            raise ValueError("scale 0 would make every value equal the offset")
        return value

    @field_validator("value_map", mode="before")
    @classmethod
    def _map_keys_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {(("true" if k else "false") if isinstance(k, bool) else str(k)): v for k, v in value.items()}
        return value

    @field_validator("value_map")
    @classmethod
    def _map_not_empty(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None and not value:
            raise ValueError("value_map is empty; leave it out instead")
        if value is not None and any(not math.isfinite(v) for v in value.values()):
            raise ValueError("value_map values must be finite numbers")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ChannelSpec":
        errors = []
        if self.unit is not None and self.quantity is None:
            errors.append((("quantity",), "a channel that declares a unit must declare its quantity"))
        if self.min_value is not None and self.max_value is not None and self.min_value > self.max_value:
            errors.append((("min_value",), f"min_value {self.min_value:g} is greater than max_value "
                                           f"{self.max_value:g}"))
        _raise(errors, self)
        return self


class Profile(_Doc):
    """A vendor payload profile. Write it in YAML or JSON; unknown keys are rejected."""

    model_config = ConfigDict(
        title="cimtwin vendor payload profile",
        json_schema_extra={
            "description": "How one kind of device publishes: the topic pattern (it must start with "
                           "vendors/<your vendor code>/), where the device id and time are, and each "
                           "channel's path, quantity, unit, scale/offset, value map and valid range. Values "
                           "are converted to each quantity's canonical unit.",
            "examples": [
                {"name": "acme-env", "format": "json", "topic": "vendors/acme/env/{device}/data",
                 "device_id": "{device}", "time": {"path": "/ts", "format": "epoch_ms"},
                 "channels": [
                     {"name": "temperature", "path": "/data/t", "quantity": "temperature", "unit": "°F",
                      "min_value": -40, "max_value": 125},
                     {"name": "humidity", "path": "$.data.rh", "quantity": "humidity", "unit": "%RH"},
                     {"name": "door", "path": "/data/door", "quantity": "state", "value_map": {"OPEN": 1, "CLOSED": 0}},
                 ]},
                {"name": "lora-fleet", "format": "chirpstack",
                 "topic": "vendors/lora1/application/{app}/device/{dev_eui}/event/up",
                 "channels": [{"name": "temperature", "path": "/object/temperature", "quantity": "temperature"}]},
                {"name": "ul-meters", "format": "ultralight", "topic": "vendors/acme/ul/{device}/attrs",
                 "device_id": "{device}",
                 "channels": [{"name": "t", "quantity": "temperature"}, {"name": "h", "quantity": "humidity"}]},
            ],
        },
    )

    name: Annotated[Slug, Field(max_length=63, description="The profile's name, unique per vendor; saving it "
                                                           "again makes a new version", examples=["acme-env"])]
    description: Annotated[str | None, Field(max_length=2000)] = None
    format: Annotated[Literal["json", "senml", "ultralight", "chirpstack", "binary"], Field(
        description="json: your own JSON, read with channel paths; senml: SenML JSON (RFC 8428); "
                    "ultralight: FIWARE UltraLight 2.0 (t|25|h|40); chirpstack: a ChirpStack v3/v4 uplink "
                    "event; binary: bytes read by a plugged-in decoder named by 'decoder'")] = "json"
    topic: Annotated[str, Field(
        max_length=500,
        description="MQTT topic pattern, starting with vendors/<your vendor code>/. {name} placeholders stand "
                    "for one whole level each; no + or # wildcards.",
        examples=["vendors/acme/env/{device}/data", "vendors/lora1/application/{app}/device/{dev_eui}/event/up"])]
    device_id: Annotated[str | None, Field(
        max_length=500,
        description="Where the device id comes from: a template of topic placeholders ({device}, "
                    "{site}-{node}) or a payload path (/meta/id, $.meta.id). Required for json, ultralight "
                    "(topic only) and binary. Default for senml: the base name (bn) without its trailing "
                    "separator; for chirpstack: the envelope's DevEUI in lower-case hex.",
        examples=["{device}", "/meta/id"])] = None
    time: Annotated[TimeField | None, Field(
        description="'received' (the time the message arrives), or {path, format}. Omitted: the format's own time "
                    "(SenML bt/t, UltraLight group timestamps, the ChirpStack envelope time), else the time received.",
        examples=["received", {"path": "/ts", "format": "epoch_ms"}])] = None
    channels: Annotated[list[ChannelSpec], Field(max_length=1000, description="The channels, each once")] = []
    include_undeclared: Annotated[bool | None, Field(
        description="Also take values no channel declares: senml records (named and converted by their "
                    "SenML unit; default true); chirpstack/json/binary numeric fields (of /object for "
                    "chirpstack; nested names joined with '.') and ultralight numeric keys, stored as sent "
                    "(default false)")] = None
    lora_metadata: Annotated[bool | None, Field(
        description="chirpstack only (default true): add the radio metadata channels " + ", ".join(LORA_METADATA)
                    + " from the envelope; with several gateways, the one with the strongest RSSI")] = None
    decoder: Annotated[str | None, Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="binary only: the name of the plugged-in decoder (the device model) that turns the bytes "
                    "into fields, which the channel paths then read", examples=["acme-tx200"])] = None

    @field_validator("topic")
    @classmethod
    def _topic_syntax(cls, value: str) -> str:
        levels = topic_levels(value)
        if len(levels) < 3 or levels[0] != "vendors" or not isinstance(levels[1], str):
            raise ValueError(f"topic pattern {value!r} must start with vendors/<your vendor code>/ and have at "
                             "least one level after it")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> "Profile":
        errors: list[tuple[tuple, str]] = []
        fmt = self.format
        placeholders = topic_placeholders(self.topic)

        if self.device_id is not None:
            try:
                kind, detail = device_id_source(self.device_id)
            except ValueError as exc:
                errors.append((("device_id",), str(exc)))
            else:
                if kind == "template":
                    missing = [n for n in detail if n not in placeholders]
                    if missing:
                        errors.append((("device_id",), f"device_id uses {', '.join('{' + n + '}' for n in missing)}"
                                       f" but the topic pattern has {', '.join('{' + n + '}' for n in placeholders) or 'no placeholders'}"))
                elif fmt == "ultralight":
                    errors.append((("device_id",), "an UltraLight device id comes from the topic: use a "
                                                   "placeholder template such as {device}"))
        elif fmt in ("json", "ultralight", "binary"):
            hint = f" e.g. {{{placeholders[0]}}}" if placeholders else ""
            errors.append((("device_id",), f"device_id is required for format {fmt}{hint}"))

        if isinstance(self.time, TimeSpec):
            if fmt == "senml":
                errors.append((("time",), "SenML records carry their own time (bt/t); time may only be "
                                          "'received' for senml"))
            elif fmt == "ultralight":
                if not _UL_KEY.match(self.time.path):
                    errors.append((("time", "path"), f"{self.time.path!r} is not an UltraLight measure key"))
            else:
                try:
                    parse_path(self.time.path)
                except ValueError as exc:
                    errors.append((("time", "path"), str(exc)))

        seen: dict[str, int] = {}
        for i, ch in enumerate(self.channels):
            if ch.name in seen:
                errors.append((("channels", i, "name"), f"channel {ch.name!r} is declared twice "
                                                        f"(also channels[{seen[ch.name]}])"))
            seen.setdefault(ch.name, i)
            if fmt != "senml" and ch.quantity is None:
                errors.append((("channels", i, "quantity"), f"channel {ch.name!r} needs a quantity"))
            if fmt in ("json", "binary", "chirpstack"):
                if ch.path is None:
                    errors.append((("channels", i, "path"), f"channel {ch.name!r} needs a path (a JSON pointer "
                                                            "such as /data/temp, or $.data.temp)"))
                else:
                    try:
                        parse_path(ch.path)
                    except ValueError as exc:
                        errors.append((("channels", i, "path"), str(exc)))
            elif fmt == "ultralight" and ch.path is not None and not _UL_KEY.match(ch.path):
                errors.append((("channels", i, "path"), f"{ch.path!r} is not an UltraLight measure key "
                                                        "(no '|', '#' or spaces)"))
            elif fmt == "senml" and ch.path is not None and not re.fullmatch(r"[A-Za-z0-9\-:./_]{1,500}", ch.path):
                errors.append((("channels", i, "path"), f"{ch.path!r} is not a SenML name"))
            if fmt == "chirpstack" and self.lora_metadata is not False and ch.name in LORA_METADATA:
                errors.append((("channels", i, "name"), f"channel name {ch.name!r} is taken by the LoRa radio "
                                                        "metadata; rename it or set lora_metadata: false"))
        if fmt == "ultralight":
            keys: dict[str, int] = {}
            for i, ch in enumerate(self.channels):
                key = ch.path or ch.name
                if key in keys:
                    errors.append((("channels", i, "path"), f"UltraLight key {key!r} is read by two channels"))
                keys.setdefault(key, i)

        if not self.channels and fmt in ("json", "ultralight", "binary") and not self.include_undeclared:
            errors.append((("channels",), f"a {fmt} profile needs at least one channel "
                                          "(or include_undeclared: true)"))
        if fmt == "binary" and self.decoder is None:
            errors.append((("decoder",), "format binary needs the name of its decoder"))
        if fmt != "binary" and self.decoder is not None:
            errors.append((("decoder",), f"decoder is only for format binary, not {fmt}"))
        if fmt != "chirpstack" and self.lora_metadata is not None:
            errors.append((("lora_metadata",), f"lora_metadata is only for format chirpstack, not {fmt}"))
        _raise(errors, self)
        return self

    def channel(self, name: str) -> ChannelSpec | None:
        return next((c for c in self.channels if c.name == name), None)


def _raise(errors: list[tuple[tuple, str]], instance: BaseModel) -> None:
    if errors:
        raise ValidationError.from_exception_data(type(instance).__name__, [
            InitErrorDetails(type=PydanticCustomError("profile_rule", "{message}", {"message": message}),
                             loc=loc, input=_at(instance, loc))
            for loc, message in errors])


def _at(instance: Any, loc: tuple) -> Any:
    value = instance
    for part in loc:
        try:
            value = value[part] if isinstance(part, int) else getattr(value, part)
        except (AttributeError, IndexError, KeyError, TypeError):
            return None
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


# --- documents, schema, error listing -----------------------------------------------------------

class ProfileDocumentError(ValueError):
    """A profile document that cannot be read or does not validate; ``errors`` lists every problem."""

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['path'] or '(document)'}: {e['message']}" for e in errors))


class _ProfileYamlLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. (YAML 1.1 reads ON/OFF/yes/no as booleans, which would
    turn ``value_map: {ON: 1, OFF: 0}`` into ``{True: 1, False: 0}``.)"""


_ProfileYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ProfileYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def parse_profile_document(text: str | bytes) -> Any:
    """The data of a YAML or JSON document (JSON is read as JSON; anything else as YAML)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ProfileDocumentError([{"path": "", "message": f"the document is not UTF-8: {exc}"}]) from None
    stripped = text.lstrip("\ufeff \t\r\n")
    json_error = None
    if stripped.startswith("{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as exc:  # maybe a YAML flow mapping: {name: x, …}
            json_error = f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
    try:
        return yaml.load(text, Loader=_ProfileYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileDocumentError([{"path": "", "message": json_error or f"malformed YAML{where}: {problem}"}]) \
            from None


def load_profile_document(text: str | bytes) -> Profile:
    """Read and validate a profile written in YAML or JSON; ProfileDocumentError lists every problem."""
    data = parse_profile_document(text)
    if not isinstance(data, dict):
        raise ProfileDocumentError([{"path": "", "message": "a profile document is a mapping of keys "
                                                            f"(name, format, topic, …), not {type(data).__name__}"}])
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileDocumentError(profile_errors(exc)) from exc


_FIELDS_AT: dict[tuple[str, ...], type[BaseModel]] = {(): Profile, ("channels",): ChannelSpec, ("time",): TimeSpec}
_UNION_TAGS = {"received", "payload"}


def _pointer(loc: tuple) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in loc)


def profile_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Every error of a profile validation as ``{"path": JSON pointer, "message": ...}``.

    An unknown key is named, with the closest allowed key when there is one.
    """
    out = []
    for e in exc.errors(include_url=False):
        loc = list(e["loc"])
        if len(loc) >= 2 and loc[0] == "time" and loc[1] in _UNION_TAGS:
            del loc[1]
        message = e["msg"]
        if e["type"] == "extra_forbidden":
            key = str(loc[-1])
            model = _FIELDS_AT.get(tuple(p for p in loc[:-1] if not isinstance(p, int)))
            allowed = list(model.model_fields) if model else []
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            message = f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "") + \
                (f"; allowed: {', '.join(allowed)}" if allowed else "")
        elif loc == ["time"] and e["type"] == "literal_error":
            message = "time must be 'received' or an object {path, format}"
        elif e["type"] == "missing":
            message = f"{loc[-1]!s} is required"
        elif e["type"] in ("value_error", "profile_rule") and message.startswith("Value error, "):
            message = message[len("Value error, "):]
        out.append({"path": _pointer(tuple(loc)), "message": message})
    return out


def profile_json_schema() -> dict:
    """The JSON Schema of a profile document, as served to vendors."""
    schema = Profile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
