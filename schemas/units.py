"""Quantities, their one canonical unit each, and conversion of declared vendor units to them.

Every reading is stored in the canonical unit of its quantity. A profile declares the unit a
vendor sends; :func:`conversion` turns it into an affine pair ``(a, b)`` once, at profile
validation, so ingest only computes ``a * v + b``. Physical units are converted with pint;
units pint cannot or should not judge (percentages of different things, ppm, logarithmic
units, angles, counts) are listed explicitly per quantity, so ``%RH`` is accepted for
humidity but not for a gas concentration.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache

# quantity -> canonical unit symbol (what the readings of that quantity are stored in)
CANONICAL_UNITS: dict[str, str] = {
    "temperature": "°C",
    "humidity": "%",               # relative humidity
    "concentration": "ppm",        # gas concentration by volume (CO, NO2, CO2, CH4, …)
    "mass_concentration": "µg/m³",  # particulate matter and gases by mass (PM2.5, PM10, …)
    "lel": "%",                    # flammable gas, percent of the lower explosive limit
    "pressure": "Pa",
    "length": "m",
    "level": "m",                  # liquid or fill level
    "distance": "m",
    "speed": "m/s",
    "acceleration": "m/s²",
    "voltage": "V",
    "current": "A",
    "power": "W",
    "energy": "Wh",
    "frequency": "Hz",
    "illuminance": "lx",
    "irradiance": "W/m²",
    "volume": "m³",
    "flow_rate": "m³/h",
    "mass": "kg",
    "duration": "s",
    "conductivity": "S/m",
    "angle": "°",
    "latitude": "°",
    "longitude": "°",
    "battery_level": "%",
    "percentage": "%",
    "ratio": "1",
    "ph": "pH",
    "signal_strength": "dBm",
    "snr": "dB",
    "sound_level": "dB",
    "count": "count",
    "number": "1",                 # a plain number: an identifier, a port, a spreading factor…
    "state": "1",                  # on/off, open/closed, alarm codes (usually via a value map)
}

# Quantities whose units are listed here, with their (a, b), instead of being judged by pint:
# pint would happily turn a humidity in % into ppm, or a count into an angle.
_PERCENT = {"%": (1.0, 0.0), "percent": (1.0, 0.0), "/": (100.0, 0.0), "1": (100.0, 0.0)}
_DEGREES = {"°": (1.0, 0.0), "deg": (1.0, 0.0), "degree": (1.0, 0.0), "degrees": (1.0, 0.0),
            "rad": (57.29577951308232, 0.0)}
_LISTED: dict[str, dict[str, tuple[float, float]]] = {
    "humidity": {**_PERCENT, "%RH": (1.0, 0.0), "% RH": (1.0, 0.0), "RH": (1.0, 0.0)},
    "concentration": {"ppm": (1.0, 0.0), "ppmv": (1.0, 0.0), "ppb": (0.001, 0.0), "ppbv": (0.001, 0.0),
                      "ppt": (1e-6, 0.0), "%": (1e4, 0.0), "%vol": (1e4, 0.0), "vol%": (1e4, 0.0),
                      "/": (1e6, 0.0), "1": (1e6, 0.0)},
    "lel": {**_PERCENT, "%LEL": (1.0, 0.0), "LEL%": (1.0, 0.0), "% LEL": (1.0, 0.0)},
    "battery_level": {**_PERCENT, "%EL": (1.0, 0.0)},
    "percentage": dict(_PERCENT),
    "ratio": {"1": (1.0, 0.0), "/": (1.0, 0.0), "%": (0.01, 0.0), "percent": (0.01, 0.0)},
    "angle": dict(_DEGREES),
    "latitude": {**_DEGREES, "lat": (1.0, 0.0)},
    "longitude": {**_DEGREES, "lon": (1.0, 0.0)},
    "ph": {"pH": (1.0, 0.0), "ph": (1.0, 0.0)},
    "signal_strength": {"dBm": (1.0, 0.0), "dBW": (1.0, 30.0)},
    "snr": {"dB": (1.0, 0.0)},
    "sound_level": {"dB": (1.0, 0.0), "dBA": (1.0, 0.0), "dB(A)": (1.0, 0.0), "Bspl": (10.0, 0.0)},
    "count": {"count": (1.0, 0.0), "counts": (1.0, 0.0), "1": (1.0, 0.0), "{count}": (1.0, 0.0)},
    "number": {"1": (1.0, 0.0)},
    "state": {"1": (1.0, 0.0)},
}

# Spellings pint does not read (SenML/UCUM names, ASCII exponents, "u" for micro), per spelling.
_SPELLINGS: dict[str, str] = {
    "Cel": "degC", "°C": "degC", "℃": "degC", "degC": "degC", "celsius": "degC",
    "°F": "degF", "℉": "degF", "degF": "degF", "[degF]": "degF", "fahrenheit": "degF",
    "K": "kelvin",
    "m/s2": "m/s**2", "m/s²": "m/s**2", "m2": "m**2", "m3": "m**3", "m3/s": "m**3/s", "m3/h": "m**3/h",
    "m³": "m**3", "m³/h": "m**3/h", "m³/s": "m**3/s", "l": "liter", "L": "liter", "l/s": "liter/s",
    "l/min": "liter/min", "L/min": "liter/min", "l/h": "liter/h", "L/h": "liter/h",
    "W/m2": "W/m**2", "W/m²": "W/m**2",
    "ug/m3": "microgram/m**3", "µg/m3": "microgram/m**3", "µg/m³": "microgram/m**3",
    "μg/m3": "microgram/m**3", "μg/m³": "microgram/m**3", "mg/m3": "milligram/m**3", "mg/m³": "milligram/m**3",
    "uS/cm": "microsiemens/cm", "µS/cm": "microsiemens/cm", "μS/cm": "microsiemens/cm",
    "mS/cm": "millisiemens/cm", "S/m": "siemens/m",
    "Ohm": "ohm", "km/h": "km/hour", "kph": "km/hour", "kn": "knot",
    "1/s": "1/s", "1/min": "1/minute", "rpm": "revolutions_per_minute",
    "VAs": "volt_ampere*second", "Ah": "ampere_hour", "mAh": "milliampere_hour",
}
# Per-quantity readings of an ambiguous symbol: "C" is coulomb to pint but Celsius on a thermometer.
_QUANTITY_SPELLINGS: dict[str, dict[str, str]] = {
    "temperature": {"C": "degC", "F": "degF", "deg C": "degC", "deg F": "degF"},
    "acceleration": {"g": "standard_gravity", "G": "standard_gravity", "g0": "standard_gravity"},
    "duration": {"h": "hour", "min": "minute", "d": "day"},
}

_PINT_CANONICAL: dict[str, str] = {
    "temperature": "degC", "mass_concentration": "microgram/m**3", "pressure": "Pa", "length": "m",
    "level": "m", "distance": "m", "speed": "m/s", "acceleration": "m/s**2", "voltage": "V",
    "current": "A", "power": "W", "energy": "W*hour", "frequency": "Hz", "illuminance": "lux",
    "irradiance": "W/m**2", "volume": "m**3", "flow_rate": "m**3/hour", "mass": "kg", "duration": "s",
    "conductivity": "siemens/m",
}

assert set(_LISTED) | set(_PINT_CANONICAL) == set(CANONICAL_UNITS), "every quantity needs its units"
assert not set(_LISTED) & set(_PINT_CANONICAL)

_registry = None
_registry_lock = threading.Lock()


def _ureg():
    # Building pint's registry takes ~0.4 s; only profile validation needs it.
    global _registry
    with _registry_lock:
        if _registry is None:
            from fractions import Fraction

            import pint

            # Exact rational arithmetic: °F -> °C is exactly (5/9, -160/9) before the one rounding.
            _registry = pint.UnitRegistry(non_int_type=Fraction)
        return _registry


_EXPONENT = re.compile(r"(?<=[A-Za-zµμ])([23])(?![0-9A-Za-z])")


def _pint_spelling(quantity: str, unit: str) -> str:
    spelled = _QUANTITY_SPELLINGS.get(quantity, {}).get(unit) or _SPELLINGS.get(unit)
    if spelled is not None:
        return spelled
    return _EXPONENT.sub(r"**\1", unit.replace("²", "**2").replace("³", "**3"))


def _float(x) -> float:
    value = float(x)
    return 0.0 if value == 0 else value


def _dimensions(dimensionality) -> str:
    parts = []
    for name, power in sorted(dict(dimensionality).items(), key=lambda kv: -kv[1]):
        power = int(power) if power == int(power) else float(power)
        parts.append(name if power == 1 else f"{name}^{power}")
    return "·".join(parts) or "dimensionless"


def known_quantities() -> list[str]:
    return sorted(CANONICAL_UNITS)


def canonical_unit(quantity: str) -> str:
    """The canonical unit of a quantity; ValueError for an unknown quantity."""
    try:
        return CANONICAL_UNITS[quantity]
    except KeyError:
        raise ValueError(f"unknown quantity {quantity!r} (known: {', '.join(known_quantities())})") from None


@lru_cache(maxsize=4096)
def conversion(quantity: str, unit: str) -> tuple[float, float]:
    """``(a, b)`` such that ``a * v + b`` is a value ``v`` in ``unit`` in the quantity's canonical unit.

    Raises ValueError, naming the unit and the quantity, for an unknown quantity, an unknown
    unit, or a unit that does not measure that quantity.
    """
    canonical = canonical_unit(quantity)
    if not isinstance(unit, str) or not unit.strip():
        raise ValueError(f"empty unit for quantity {quantity!r} (canonical unit {canonical!r})")
    unit = unit.strip()
    if unit == canonical:
        return (1.0, 0.0)
    listed = _LISTED.get(quantity)
    if listed is not None:
        try:
            return listed[unit]
        except KeyError:
            raise ValueError(f"unit {unit!r} is not a unit of quantity {quantity!r} (accepted: "
                             f"{', '.join(sorted(listed))}; canonical {canonical!r})") from None
    ureg = _ureg()
    import pint

    try:
        source = ureg.Unit(_pint_spelling(quantity, unit))
    except Exception as exc:  # noqa: BLE001 - pint's parser raises many kinds on odd input
        detail = f"{exc}" if isinstance(exc, pint.errors.UndefinedUnitError) else "cannot read it"
        raise ValueError(f"unknown unit {unit!r} for quantity {quantity!r} (canonical unit {canonical!r}): "
                         f"{detail}") from None
    if not isinstance(source, pint.Unit):
        raise ValueError(f"unknown unit {unit!r} for quantity {quantity!r} (canonical unit {canonical!r})")
    target = ureg.Unit(_PINT_CANONICAL[quantity])
    if source.dimensionality != target.dimensionality:
        raise ValueError(f"unit {unit!r} is not a unit of quantity {quantity!r}: it measures "
                         f"{_dimensions(source.dimensionality)}, {quantity} is "
                         f"{_dimensions(target.dimensionality)} (canonical unit {canonical!r})")
    zero = ureg.Quantity(0, source).to(target).magnitude
    one = ureg.Quantity(1, source).to(target).magnitude
    return (_float(one - zero), _float(zero))


def check_unit(quantity: str, unit: str) -> str:
    """The unit if it measures the quantity; ValueError otherwise."""
    conversion(quantity, unit)
    return unit
