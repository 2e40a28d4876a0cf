"""SenML JSON (RFC 8428): base-value resolution into the normalized ("resolved") form, RFC 8428 §4.6.

:func:`resolve` applies the base fields (bn, bt, bu, bv, bs) to each record, drops records that
hold base fields only, and makes every time absolute: a resolved time below 2**28 is relative to
"now" (the time the message was received; tests pass a fixed one). ``bver`` at or below 10 (this
RFC's version; the RFC's own examples use the draft version 5) is not carried into resolved records,
a higher one is, as §4.6 asks. A field ending in ``_`` (must-understand) is rejected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

from . import FormatError

RELATIVE_LIMIT = 2 ** 28
SENML_VERSION = 10
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-:./_]*$")
BASE_FIELDS = frozenset(("bn", "bt", "bu", "bv", "bs", "bver"))
_STRINGS = frozenset(("bn", "bu", "n", "u", "vs", "vd"))
_NUMBERS = frozenset(("bt", "bv", "bs", "v", "s", "t", "ut"))

# SenML unit (RFC 8428 §12.1 and the RFC 8798 secondary units we read) -> quantity; the unit
# itself is converted by cimtwin.schemas.units. A record without a profile channel is named by
# its quantity when its name is just the device's base name (e.g. bn-only packs with "%RH").
SENML_UNITS: dict[str, str] = {
    "Cel": "temperature", "K": "temperature",
    "%RH": "humidity",
    "Pa": "pressure", "hPa": "pressure", "kPa": "pressure",
    "m": "length", "mm": "length", "cm": "length", "km": "length",
    "V": "voltage", "mV": "voltage",
    "A": "current", "mA": "current",
    "W": "power", "kW": "power",
    "J": "energy", "Wh": "energy", "kWh": "energy",
    "Hz": "frequency", "MHz": "frequency",
    "lx": "illuminance",
    "W/m2": "irradiance",
    "m/s": "speed", "km/h": "speed",
    "m/s2": "acceleration",
    "m3": "volume", "l": "volume",
    "m3/s": "flow_rate", "l/s": "flow_rate",
    "kg": "mass", "g": "mass",
    "s": "duration", "ms": "duration", "min": "duration", "h": "duration",
    "S/m": "conductivity",
    "rad": "angle",
    "lat": "latitude", "lon": "longitude",
    "pH": "ph",
    "dBW": "signal_strength", "dBm": "signal_strength",
    "Bspl": "sound_level",
    "count": "count",
    "/": "ratio",
    "%": "percentage",
    "%EL": "battery_level",
    "ppm": "concentration", "ppb": "concentration",
    "ug/m3": "mass_concentration",
}


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _check_record(i: int, rec: Any) -> None:
    if type(rec) is not dict:
        raise FormatError("invalid_payload", f"/{i}", f"a SenML record is an object, not {_kind(rec)}")
    for key, value in rec.items():
        t = type(value)
        if key in _NUMBERS:
            if t is not float and t is not int:
                raise FormatError("invalid_payload", f"/{i}/{key}", f"{key} must be a number, not {_kind(value)}")
            try:
                finite = math.isfinite(value)
            except OverflowError:  # an integer beyond a double
                finite = False
            if not finite:
                raise FormatError("invalid_payload", f"/{i}/{key}", f"{key} must be a finite number of "
                                                                   "reasonable size")
        elif key in _STRINGS:
            if t is not str:
                raise FormatError("invalid_payload", f"/{i}/{key}", f"{key} must be a string, not {_kind(value)}")
        elif key == "vb":
            if t is not bool:
                raise FormatError("invalid_payload", f"/{i}/vb", f"vb must be true or false, not {_kind(value)}")
        elif key == "bver":
            if t is not int or value < 1:
                raise FormatError("invalid_payload", f"/{i}/bver", "bver must be a positive integer")
        elif key.endswith("_"):
            raise FormatError("invalid_payload", f"/{i}/{key}",
                              f"must-understand field {key!r} is not supported (RFC 8428 §4.4)")


def iter_resolved(pack: Any, *, now: float) -> Iterator[tuple[int, str, str, dict]]:
    """``(index, base name in effect, name after the base name, resolved record)`` per value record."""
    if type(pack) is not list:
        raise FormatError("invalid_payload", "", f"a SenML pack is a JSON array of records, not {_kind(pack)}")
    bn, bt, bu, bv, bs, bver = "", 0.0, None, 0.0, 0.0, None
    for i, rec in enumerate(pack):
        _check_record(i, rec)
        if "bn" in rec:
            bn = rec["bn"]
        if "bt" in rec:
            bt = rec["bt"]
        if "bu" in rec:
            bu = rec["bu"]
        if "bv" in rec:
            bv = rec["bv"]
        if "bs" in rec:
            bs = rec["bs"]
        if "bver" in rec:
            bver = rec["bver"]
        has_v, has_vs, has_vb, has_vd, has_s = "v" in rec, "vs" in rec, "vb" in rec, "vd" in rec, "s" in rec
        values = has_v + has_vs + has_vb + has_vd
        if not values and not has_s:
            if rec.keys() <= BASE_FIELDS:
                continue  # a record of base fields only
            raise FormatError("invalid_payload", f"/{i}", "the record has no value (v, vs, vb, vd) and no sum (s)")
        if values > 1:
            raise FormatError("invalid_payload", f"/{i}", "the record has more than one value field (v, vs, vb, vd)")
        n = rec.get("n", "")
        name = bn + n
        if not name:
            raise FormatError("invalid_payload", f"/{i}", "the record has no name (neither bn nor n)")
        if not NAME.match(name):
            raise FormatError("invalid_payload", f"/{i}/n", f"name {name!r} is not a valid SenML name (RFC 8428 "
                                                           "§4.5.1: A-Z a-z 0-9 - : . / _, starting alphanumeric)")
        t = bt + rec.get("t", 0)
        if t < RELATIVE_LIMIT:
            t = now + t
        out: dict[str, Any] = {"n": name}
        u = rec.get("u", bu)
        if u is not None:
            out["u"] = u
        out["t"] = t
        if has_v:
            out["v"] = bv + rec["v"]
        elif has_vs:
            out["vs"] = rec["vs"]
        elif has_vb:
            out["vb"] = rec["vb"]
        elif has_vd:
            out["vd"] = rec["vd"]
        if has_s:
            out["s"] = bs + rec["s"]
        for key, value in rec.items():
            if key not in out and key not in BASE_FIELDS and key not in ("n", "u", "t"):
                out[key] = value  # ut, and fields of extensions (e.g. l)
        if bver is not None and bver > SENML_VERSION:
            out["bver"] = bver
        yield i, bn, n, out


def resolve(pack: Any, *, now: float) -> list[dict]:
    """The resolved (normalized) records of a SenML pack, RFC 8428 §4.6. FormatError if invalid."""
    return [record for _, _, _, record in iter_resolved(pack, now=now)]


def device_from_base_name(base_name: str) -> str:
    """The device id in a base name: ``urn:dev:ow:10e2073a01080063:`` -> ``urn:dev:ow:10e2073a01080063``."""
    return base_name[:-1] if base_name[-1:] in (":", "/", ".", "_", "-") else base_name
