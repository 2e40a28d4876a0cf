"""Profile documents: validation (every error with its path), YAML/JSON loading, the JSON Schema,
units and their conversion, topic and device-id rules, and dry runs."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from cimtwin.ingest.profiles import compile_profile, dry_run, parse_time
from cimtwin.schemas.profiles import (Profile, ProfileDocumentError, load_profile_document, parse_path,
                                      profile_errors, profile_json_schema)
from cimtwin.schemas.units import CANONICAL_UNITS, conversion

GOOD_YAML = """
name: acme-env
format: json
topic: vendors/acme/env/{device}/data
device_id: "{device}"
time: {path: /ts, format: epoch_ms}
channels:
  - name: temperature
    path: /data/t
    quantity: temperature
    unit: °F
    min_value: -40
    max_value: 85
  - name: door
    path: $.data.door
    quantity: state
    value_map: {ON: 1, OFF: 0, yes: 1, no: 0}
"""

GOOD_JSON = json.dumps({
    "name": "acme-env", "format": "json", "topic": "vendors/acme/env/{device}/data", "device_id": "{device}",
    "time": {"path": "/ts", "format": "epoch_ms"},
    "channels": [
        {"name": "temperature", "path": "/data/t", "quantity": "temperature", "unit": "°F",
         "min_value": -40, "max_value": 85},
        {"name": "door", "path": "$.data.door", "quantity": "state",
         "value_map": {"ON": 1, "OFF": 0, "yes": 1, "no": 0}},
    ],
})


def _errors(text: str) -> list[dict]:
    with pytest.raises(ProfileDocumentError) as info:
        load_profile_document(text)
    return info.value.errors


def _doc(**changes) -> dict:
    doc = json.loads(GOOD_JSON)
    doc.update(changes)
    return doc


# --- loading ------------------------------------------------------------------------------------

def test_yaml_and_json_documents_load_to_the_same_profile():
    from_yaml, from_json = load_profile_document(GOOD_YAML), load_profile_document(GOOD_JSON)
    assert from_yaml == from_json
    assert from_yaml.channels[1].value_map == {"ON": 1.0, "OFF": 0.0, "yes": 1.0, "no": 0.0}  # not booleans
    assert load_profile_document(GOOD_JSON.encode()) == from_json
    # the stored JSON document validates back to the same profile
    assert Profile.model_validate(json.loads(from_yaml.model_dump_json())) == from_yaml


@pytest.mark.parametrize("text,words", [
    ("name: [unclosed", "malformed YAML at line 1"),
    ('{"name": "x",', "malformed JSON at line 1"),
    ("- a\n- b\n", "a mapping of keys"),
    ("just text", "a mapping of keys"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_unreadable_documents_say_why(text, words):
    errors = _errors(text)
    assert len(errors) == 1 and words in errors[0]["message"], errors


# --- validation: every error, with its path ---------------------------------------------------------

def test_a_typo_d_key_is_rejected_with_the_key_named():
    errors = _errors(GOOD_YAML.replace("quantity: temperature", "quantitty: temperature"))
    assert errors[0]["path"] == "/channels/0/quantitty"
    assert errors[0]["message"].startswith("unknown key 'quantitty' (did you mean 'quantity'?)")
    errors = _errors(GOOD_YAML.replace("device_id:", "device_di:"))
    assert {"path": "/device_di", "message": errors[0]["message"]} in errors
    assert "unknown key 'device_di' (did you mean 'device_id'?)" in errors[0]["message"]
    errors = _errors(GOOD_YAML.replace("format: epoch_ms}", "format: epoch_ms, requird: false}"))
    assert errors == [{"path": "/time/requird",
                       "message": "unknown key 'requird' (did you mean 'required'?); allowed: path, format, required"}]
    # the raw pydantic error names it too
    with pytest.raises(ValidationError) as info:
        Profile.model_validate(_doc(chanels=[]))
    assert ("chanels",) in [e["loc"] for e in info.value.errors()]


def test_an_unknown_unit_is_a_validation_error_naming_unit_and_quantity():
    errors = _errors(GOOD_YAML.replace("unit: °F", "unit: furlongs_per_fortnight"))
    assert [e["path"] for e in errors] == ["/channels/0/unit"]
    assert "'furlongs_per_fortnight'" in errors[0]["message"] and "'temperature'" in errors[0]["message"]
    errors = _errors(GOOD_YAML.replace("unit: °F", "unit: kPa"))
    assert errors[0]["path"] == "/channels/0/unit"
    assert "unit 'kPa' is not a unit of quantity 'temperature'" in errors[0]["message"]


def test_an_unknown_quantity_suggests_the_close_one():
    errors = _errors(GOOD_YAML.replace("quantity: temperature", "quantity: temprature"))
    assert errors[0]["path"] == "/channels/0/quantity"
    assert "unknown quantity 'temprature' (did you mean 'temperature'?)" in errors[0]["message"]


def test_every_field_error_is_listed_with_its_path():
    doc = _doc(name="Acme Env", format="xml", topic="vendors/acme/env/+/data",
               time={"path": "/ts", "format": "epoch_min"})
    doc["channels"][0].update(scale=0, unit="kPa", bogus=1)
    doc["channels"][1]["name"] = "bad name"
    with pytest.raises(ValidationError) as info:
        Profile.model_validate(doc)
    paths = {e["path"] for e in profile_errors(info.value)}
    assert paths == {"/name", "/format", "/topic", "/time/format", "/channels/0/unit", "/channels/0/scale",
                     "/channels/0/bogus", "/channels/1/name"}


def test_cross_field_rules_are_listed_with_their_paths():
    doc = _doc(device_id="{dev}", time={"path": "ts", "format": "epoch_s"}, lora_metadata=True,
               decoder="x")
    doc["channels"].append({"name": "temperature", "path": "$..t", "quantity": "temperature"})
    doc["channels"].append({"name": "rh", "path": "$.a[*]", "quantity": "humidity"})
    doc["channels"].append({"name": "p", "path": "/p"})
    with pytest.raises(ValidationError) as info:
        Profile.model_validate(doc)
    errors = {e["path"]: e["message"] for e in profile_errors(info.value)}
    assert errors == {
        "/device_id": "device_id uses {dev} but the topic pattern has {device}",
        "/time/path": "path 'ts' must be a JSON pointer starting with '/' (e.g. /data/temp) or a JSONPath "
                      "starting with '$' (e.g. $.data.temp)",
        "/channels/2/name": "channel 'temperature' is declared twice (also channels[0])",
        "/channels/2/path": "JSONPath '$..t': recursive descent ('..') is not supported; the subset is $.name, "
                            "$[0], $['any key'] (one value per path)",
        "/channels/3/path": "JSONPath '$.a[*]': a wildcard ('*') is not supported; the subset is $.name, $[0], "
                            "$['any key'] (one value per path)",
        "/channels/4/quantity": "channel 'p' needs a quantity",
        "/decoder": "decoder is only for format binary, not json",
        "/lora_metadata": "lora_metadata is only for format chirpstack, not json",
    }


@pytest.mark.parametrize("changes,path,words", [
    ({"topic": "cim/v1/acme/{device}/up"}, "/topic", "must start with vendors/<your vendor code>/"),
    ({"topic": "vendors/{vendor}/x/{device}"}, "/topic", "must start with vendors/<your vendor code>/"),
    ({"topic": "vendors/acme/#"}, "/topic", "wildcards are not allowed"),
    ({"topic": "vendors/acme/dev-{device}/up"}, "/topic", "a placeholder must be a whole level"),
    ({"topic": "vendors/acme/{device}/{device}"}, "/topic", "appears twice"),
    ({"topic": "vendors/acme//{device}"}, "/topic", "is empty"),
    ({"device_id": None}, "/device_id", "device_id is required for format json e.g. {device}"),
    ({"device_id": "fixed"}, "/device_id", "names no topic placeholder"),
    ({"device_id": "a b"}, "/device_id", "must be a payload path"),
    ({"time": "now"}, "/time", "time must be 'received' or an object {path, format}"),
    ({"channels": []}, "/channels", "needs at least one channel"),
    ({"format": "binary"}, "/decoder", "format binary needs the name of its decoder"),
    ({"format": "senml", "time": {"path": "/t", "format": "epoch_s"}}, "/time", "SenML records carry their own"),
    ({"format": "ultralight", "device_id": "/id"}, "/device_id", "comes from the topic"),
])
def test_profile_rules(changes, path, words):
    with pytest.raises(ValidationError) as info:
        Profile.model_validate(_doc(**changes))
    errors = profile_errors(info.value)
    assert any(e["path"] == path and words in e["message"] for e in errors), errors


def test_range_and_channel_rules():
    doc = _doc()
    doc["channels"][0].update(min_value=10, max_value=0)
    doc["channels"][1]["value_map"] = {}
    with pytest.raises(ValidationError) as info:
        Profile.model_validate(doc)
    assert {e["path"] for e in profile_errors(info.value)} == {"/channels/0/min_value", "/channels/1/value_map"}


def test_format_specific_defaults_validate():
    load_profile_document("{name: s, format: senml, topic: 'vendors/a/s/{gw}'}")
    load_profile_document("{name: c, format: chirpstack, topic: 'vendors/a/app/{app}/dev/{eui}/event/up'}")
    load_profile_document("{name: u, format: ultralight, topic: 'vendors/a/{key}/{d}/attrs', device_id: '{d}', "
                          "channels: [{name: t, quantity: temperature}]}")
    load_profile_document("{name: b, format: binary, decoder: m1, topic: 'vendors/a/{d}', device_id: '{d}', "
                          "channels: [{name: t, path: /t, quantity: temperature}]}")
    chirp = load_profile_document("{name: c, format: chirpstack, topic: 'vendors/a/{eui}/up', "
                                  "channels: [{name: lora_rssi, path: /object/r, quantity: signal_strength}]"
                                  ", lora_metadata: false}")
    assert chirp.channels[0].name == "lora_rssi"


# --- paths ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,tokens", [
    ("/a/0/b", (("a", None), ("0", 0), ("b", None))),
    ("/a~1b/c~0d", (("a/b", None), ("c~d", None))),
    ("/01", (("01", None),)),
    ("", ()),
    ("$", ()),
    ("$.a[0].b", (("a", None), (None, 0), ("b", None))),
    ("$['odd key'][-1]", (("odd key", None), (None, -1))),
    ('$["x.y"].z', (("x.y", None), ("z", None))),
])
def test_path_syntax(path, tokens):
    assert parse_path(path) == tokens


@pytest.mark.parametrize("path,words", [
    ("a/b", "must be a JSON pointer"), ("/a~2", "'~' must be followed by 0 or 1"), ("$..a", "recursive descent"),
    ("$.a[*]", "wildcard"), ("$.a[?(@.b)]", "filter"), ("$.a[0:2]", "slice or union"), ("$.a.", "cannot read"),
])
def test_bad_paths(path, words):
    with pytest.raises(ValueError) as info:
        parse_path(path)
    assert words in str(info.value)


# --- units ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("quantity,unit,value,expected", [
    ("temperature", "°F", 212, 100.0), ("temperature", "degF", 32, 0.0), ("temperature", "°F", -40, -40.0),
    ("temperature", "F", 98.6, 37.0), ("temperature", "Cel", 21.5, 21.5), ("temperature", "degC", 21.5, 21.5),
    ("temperature", "°C", 21.5, 21.5), ("temperature", "K", 273.15, 0.0),
    ("pressure", "kPa", 101.325, 101325.0), ("pressure", "hPa", 1013.25, 101325.0),
    ("pressure", "mbar", 1013.25, 101325.0), ("pressure", "bar", 1, 100000.0), ("pressure", "Pa", 5, 5.0),
    ("length", "mm", 1234, 1.234), ("level", "cm", 250, 2.5), ("distance", "km", 1.5, 1500.0),
    ("voltage", "mV", 3300, 3.3), ("current", "mA", 250, 0.25), ("power", "kW", 1.5, 1500.0),
    ("energy", "kWh", 2, 2000.0), ("energy", "J", 3600, 1.0), ("speed", "km/h", 36, 10.0),
    ("concentration", "ppb", 812, 0.812), ("concentration", "%", 1, 10000.0), ("lel", "%LEL", 12, 12.0),
    ("humidity", "%RH", 40, 40.0), ("humidity", "/", 0.4, 40.0), ("battery_level", "%EL", 98, 98.0),
    ("mass_concentration", "ug/m3", 35, 35.0), ("mass_concentration", "mg/m3", 0.035, 35.0),
    ("signal_strength", "dBW", -100, -70.0), ("frequency", "MHz", 868.1, 868100000.0),
    ("flow_rate", "l/s", 1, 3.6), ("conductivity", "µS/cm", 500, 0.05), ("duration", "min", 2, 120.0),
])
def test_unit_conversions(quantity, unit, value, expected):
    a, b = conversion(quantity, unit)
    assert a * value + b == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_fahrenheit_factors_are_exact():
    assert conversion("temperature", "°F") == (5 / 9, -160 / 9)
    assert conversion("pressure", "kPa") == (1000.0, 0.0)


def test_every_canonical_unit_converts_to_itself():
    for quantity, unit in CANONICAL_UNITS.items():
        assert conversion(quantity, unit) == (1.0, 0.0), quantity


@pytest.mark.parametrize("quantity,unit,words", [
    ("temperature", "kPa", "unit 'kPa' is not a unit of quantity 'temperature'"),
    ("humidity", "ppm", "unit 'ppm' is not a unit of quantity 'humidity'"),
    ("length", "parsec_per_banana", "unknown unit 'parsec_per_banana' for quantity 'length'"),
    ("length", "", "empty unit for quantity 'length'"),
    ("pressure", "C", "unit 'C' is not a unit of quantity 'pressure'"),
    ("angle", "count", "unit 'count' is not a unit of quantity 'angle'"),
    ("wetness", "m", "unknown quantity 'wetness'"),
])
def test_bad_units_name_unit_and_quantity(quantity, unit, words):
    with pytest.raises(ValueError) as info:
        conversion(quantity, unit)
    assert words in str(info.value)


# --- schema ---------------------------------------------------------------------------------------

def test_json_schema_is_served_with_descriptions_and_forbids_unknown_keys():
    schema = profile_json_schema()
    json.dumps(schema)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["additionalProperties"] is False
    assert {"name", "format", "topic", "device_id", "time", "channels", "decoder"} <= set(schema["properties"])
    assert schema["required"] == ["name", "topic"]
    channel = schema["$defs"]["ChannelSpec"]
    assert channel["additionalProperties"] is False
    for name, prop in channel["properties"].items():
        assert prop.get("description") or name in ("description",), name
    for example in schema["examples"]:
        Profile.model_validate(example)


# --- compile, sensors, times ------------------------------------------------------------------------

def test_compile_checks_the_vendor_prefix():
    profile = load_profile_document(GOOD_YAML)
    compile_profile(profile, vendor_code="acme")
    with pytest.raises(ValueError) as info:
        compile_profile(profile, vendor_code="other")
    assert "must start with 'vendors/other/'" in str(info.value)


def test_sensors_are_in_canonical_units_with_ranges():
    compiled = compile_profile(load_profile_document(GOOD_YAML), vendor_code="acme", profile_id=4, version=2)
    assert (compiled.vendor_code, compiled.name, compiled.version, compiled.profile_id) == ("acme", "acme-env", 2, 4)
    assert compiled.sensors() == [
        {"channel": "temperature", "quantity": "temperature", "unit": "°C", "min_value": -40.0, "max_value": 85.0},
        {"channel": "door", "quantity": "state", "unit": "1", "min_value": None, "max_value": None},
    ]
    assert compiled.match("vendors/acme/env/d-1/data") == {"device": "d-1"}
    assert compiled.match("vendors/acme/env/d-1/data/x") is None
    assert compiled.match("vendors/acme/env//data") is None
    assert compiled.match("vendors/other/env/d-1/data") is None


@pytest.mark.parametrize("raw,fmt,iso", [
    ("2026-11-22T16:00:00+08:00", "iso8601", "2026-11-22T08:00:00+00:00"),
    ("2026-11-22T08:00:00", "iso8601", "2026-11-22T08:00:00+00:00"),
    ("2026-11-22T08:00:00Z", "iso8601", "2026-11-22T08:00:00+00:00"),
    (1795334400, "epoch_s", "2026-11-22T08:00:00+00:00"),
    (1795334400.5, "epoch_s", "2026-11-22T08:00:00.500000+00:00"),
    (1795334400123, "epoch_ms", "2026-11-22T08:00:00.123000+00:00"),
    ("1795334400123", "epoch_ms", "2026-11-22T08:00:00.123000+00:00"),
    (1795334400123456, "epoch_us", "2026-11-22T08:00:00.123456+00:00"),
])
def test_time_formats(raw, fmt, iso):
    assert parse_time(raw, fmt).isoformat() == iso


@pytest.mark.parametrize("raw,fmt", [(True, "epoch_s"), ("soon", "epoch_ms"), (1e20, "epoch_s"),
                                     (10 ** 30, "epoch_ms"), (5, "iso8601"), ("22/11/2026", "iso8601")])
def test_bad_times(raw, fmt):
    with pytest.raises(ValueError):
        parse_time(raw, fmt)


# --- dry run ---------------------------------------------------------------------------------------

def test_dry_run_lists_every_error_with_its_path():
    profile = load_profile_document(GOOD_YAML.replace("    max_value: 85", "    max_value: 85\n    required: true")
                                    + "  - {name: rh, path: /data/rh, quantity: humidity, required: true}\n")
    result = dry_run(profile, vendor_code="acme", topic="vendors/acme/env/d-1/data",
                     payload=b'{"ts": "noon", "data": {"t": 300, "door": "AJAR"}}')
    assert result["device"] == "d-1" and result["time"] is None
    assert result["readings"] == [{"channel": "temperature", "quantity": "temperature", "unit": "°C",
                                   "value": pytest.approx(148.888888889), "time": None}]
    assert [(e["path"], e["message"]) for e in result["errors"]] == [
        ("/ts", "time: 'noon' is not an epoch time in milliseconds"),
        ("$.data.door", "channel 'door': 'AJAR' is not a number and not one of its value_map keys (ON, OFF, yes, no)"),
        ("/data/rh", "required channel 'rh' is missing"),
        ("/data/t", "channel 'temperature': value 148.889 °C is outside its valid range [-40, 85]"),
    ]


def test_dry_run_of_a_good_message():
    result = dry_run(load_profile_document(GOOD_YAML), vendor_code="acme", topic="vendors/acme/env/d-1/data",
                     payload=b'{"ts": 1795334400000, "data": {"t": 50, "door": "ON"}}')
    assert result == {"device": "d-1", "time": "2026-11-22T08:00:00+00:00", "errors": [], "readings": [
        {"channel": "temperature", "quantity": "temperature", "unit": "°C", "value": 10.0,
         "time": "2026-11-22T08:00:00+00:00"},
        {"channel": "door", "quantity": "state", "unit": "1", "value": 1.0, "time": "2026-11-22T08:00:00+00:00"}]}


def test_dry_run_reports_topic_and_prefix_problems():
    profile = load_profile_document(GOOD_YAML)
    result = dry_run(profile, vendor_code="acme", topic="vendors/acme/env/d-1/status", payload=b'{"data": {}}')
    assert result["errors"][0] == {"path": "topic", "message": "topic 'vendors/acme/env/d-1/status' does not match "
                                                               "profile 'acme-env' (pattern 'vendors/acme/env/{device}/data')"}
    assert {"path": "/ts", "message": "the time is missing"} in result["errors"]
    result = dry_run(profile, vendor_code="other", topic="vendors/other/env/d-1/data", payload=b"{}")
    assert result["errors"] == [{"path": "/topic", "message": "topic pattern 'vendors/acme/env/{device}/data' must "
                                                             "start with 'vendors/other/' (the vendor's own topic "
                                                             "namespace)"}]


def test_dry_run_of_senml_names_quantities_from_units():
    profile = load_profile_document("{name: s, format: senml, topic: 'vendors/a/s/{gw}'}")
    pack = [{"bn": "urn:dev:mac:1:", "bt": 1795334400, "n": "temp", "u": "K", "v": 300},
            {"n": "rh", "u": "%RH", "v": 40, "t": -60}, {"n": "x", "u": "Wb", "v": 1}]
    now = datetime(2026, 11, 22, 8, 0, 5, tzinfo=timezone.utc)
    result = dry_run(profile, vendor_code="a", topic="vendors/a/s/g", payload=json.dumps(pack).encode(), now=now)
    assert result["device"] == "urn:dev:mac:1"
    assert [(r["channel"], r["quantity"], r["unit"], round(r["value"], 6), r["time"]) for r in result["readings"]] == [
        ("temp", "temperature", "°C", 26.85, "2026-11-22T08:00:00+00:00"),
        ("rh", "humidity", "%", 40.0, "2026-11-22T07:59:00+00:00")]
    assert result["errors"] == [{"path": "/2/u", "message": "record 'urn:dev:mac:1:x': unit 'Wb' is not one cimtwin "
                                                            "reads from SenML; declare the channel (path = its name) "
                                                            "with its quantity in the profile"}]
