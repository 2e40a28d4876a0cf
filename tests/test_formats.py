"""Built-in formats and declared profiles: golden files, and the published conformance data.

Golden files: each payload in tests/fixtures/<format>/ (profile, senml, ultralight, chirpstack) is
decoded with the folder's _profile.yaml and _topic.txt, or with <case>.profile.yaml and
<case>.topic next to it, and compared with <case>.expected.json (the decoded readings, or the
DecodeError's code and reason). Set CIMTWIN_UPDATE_GOLDEN=1 to (re)write the expected files
after a deliberate change; review the diff.
"""

from __future__ import annotations

import collections
import copy
import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cimtwin.ingest.decoders import Decoded, DecodeError
from cimtwin.ingest.formats import BINARY_DECODERS, BinaryDecoder, ultralight
from cimtwin.ingest.formats import FormatError
from cimtwin.ingest.formats.senml import SENML_UNITS, resolve
from cimtwin.ingest.profiles import ProfileDecoder, _loads, _SlowPath, compile_profile, dry_run
from cimtwin.schemas.profiles import Profile, load_profile_document
from cimtwin.schemas.units import conversion

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NOW = datetime(2026, 11, 22, 8, 0, 5, tzinfo=timezone.utc)
FORMAT_DIRS = {"profile": ".json", "senml": ".json", "ultralight": ".txt", "chirpstack": ".json"}


def _golden_cases() -> list[Path]:
    cases = []
    for fmt, ext in FORMAT_DIRS.items():
        for p in sorted((FIXTURES / fmt).glob("*" + ext)):
            if not p.name.startswith("_") and not p.name.endswith(".expected.json"):
                cases.append(p)
    return cases


CASES = _golden_cases()


def _case_setup(payload_file: Path) -> tuple[Profile, str]:
    folder = payload_file.parent
    profile_file = payload_file.with_name(payload_file.stem + ".profile.yaml")
    topic_file = payload_file.with_name(payload_file.stem + ".topic")
    profile = load_profile_document((profile_file if profile_file.exists() else folder / "_profile.yaml").read_text())
    topic = (topic_file if topic_file.exists() else folder / "_topic.txt").read_text().strip()
    return profile, topic


def decoded_case(payload_file: Path) -> dict:
    profile, topic = _case_setup(payload_file)
    compiled = compile_profile(profile, vendor_code=topic.split("/")[1], profile_id=11, version=3)
    out = {"format": profile.format, "profile": profile.name, "topic": topic, "now": NOW.isoformat()}
    try:
        d = compiled.decode(topic, payload_file.read_bytes(), now=NOW)
    except DecodeError as exc:
        out["error"] = {"reason_code": exc.reason_code, "reason": exc.reason}
    else:
        out["decoded"] = {
            "vendor": d.vendor_code, "device": d.device_ext_id, "profile_id": d.profile_id,
            "time": d.time.isoformat() if d.time else None,
            "readings": [{"channel": c, "value": v, "time": t.isoformat() if t else None} for c, v, t in d.readings],
        }
    return out


@pytest.mark.parametrize("payload_file", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_golden(payload_file: Path):
    expected_file = payload_file.with_name(payload_file.stem + ".expected.json")
    got = decoded_case(payload_file)
    if os.environ.get("CIMTWIN_UPDATE_GOLDEN"):
        expected_file.write_text(json.dumps(got, indent=2, ensure_ascii=False) + "\n")
    assert got == json.loads(expected_file.read_text())


@pytest.mark.parametrize("payload_file", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_dry_run_agrees_with_decode(payload_file: Path):
    """A dry run shows the readings decode gives, and for a rejected message every path its reason names."""
    profile, topic = _case_setup(payload_file)
    payload = payload_file.read_bytes()
    result = dry_run(profile, vendor_code=topic.split("/")[1], topic=topic, payload=payload, now=NOW)
    compiled = compile_profile(profile, vendor_code=topic.split("/")[1])
    try:
        d = compiled.decode(topic, payload, now=NOW)
    except DecodeError as exc:
        assert result["errors"], exc.reason
        for error in result["errors"]:
            if "valid range" in error["message"]:
                continue  # range checks are the normalizer's at ingest; a dry run shows them as well
            assert error["message"] in exc.reason
            if error["path"] and error["path"] != "topic":
                assert f"{error['path']}: " in exc.reason
    else:
        assert [(r["channel"], r["value"]) for r in result["readings"]] == [(c, v) for c, v, _ in d.readings]
        assert result["device"] == d.device_ext_id
        assert all(r["quantity"] is None or r["unit"] for r in result["readings"])
        assert all("valid range" in e["message"] for e in result["errors"])


def test_every_golden_payload_has_its_expected_output_and_bad_cases():
    for fmt in FORMAT_DIRS:
        cases = [p for p in CASES if p.parent.name == fmt]
        assert len(cases) >= 8, fmt
        expected = [json.loads(p.with_name(p.stem + ".expected.json").read_text()) for p in cases]
        assert sum("error" in e for e in expected) >= 3, f"{fmt} needs bad cases too"
        assert sum("decoded" in e for e in expected) >= 4, fmt


# --- SenML: RFC 8428 ----------------------------------------------------------------------------

def _senml_examples() -> list[dict]:
    data = json.loads((SHARED / "senml_rfc8428_examples.json").read_text())
    return data["examples"]


def _generator_now(pack: list, published: list[dict]) -> float:
    """The "now" the published form was resolved at: relative times were resolved when the
    generator ran (the file says so), so recover it from the records with relative times."""
    at_zero = resolve(pack, now=0.0)
    nows = {p["t"] - m["t"] for m, p in zip(at_zero, published) if abs(m["t"]) < 2 ** 28}
    assert len(nows) <= 1, nows
    return nows.pop() if nows else 0.0


@pytest.mark.parametrize("form", ["rfc_text_example", "generated"])
def test_senml_rfc8428_examples_resolve_to_their_published_form(form):
    examples = _senml_examples()
    assert len(examples) == 13
    for example in examples:
        pack = example[form]
        published = example.get("resolved")
        if example["id"] == "ex13":
            # Published without a resolved form: bt applies to every record, t=0.1 is 0.1 s later.
            assert published is None
            assert resolve(pack, now=0.0) == [
                {"n": "2001:db8::3", "u": "/", "t": 1320078429.0, "v": 0.5},
                {"n": "2001:db8::4", "u": "/", "t": 1320078429.0, "v": 0.5},
                {"n": "2001:db8::3", "u": "/", "t": 1320078429.1, "v": 0},
                {"n": "2001:db8::4", "u": "/", "t": 1320078429.1, "v": 0},
            ]
            continue
        mine = resolve(pack, now=_generator_now(pack, published))
        if example["id"] == "ex7":
            # The published form was generated by a tool that drops data values (vd); RFC 8428
            # keeps them in resolved records, and so does resolve().
            data_records = [r for r in mine if "vd" in r]
            assert data_records == [{"n": "urn:dev:ow:10e2073a01080063:nfv-reader", "t": published[0]["t"],
                                     "vd": "aGkgCg"}]
            mine = [r for r in mine if "vd" not in r]
        assert mine == published, example["id"]


def test_senml_relative_times_follow_now_and_absolute_ones_do_not():
    pack = [{"bn": "d:", "n": "a", "u": "Cel", "v": 1, "t": -5}, {"n": "b", "u": "Cel", "v": 2, "t": 2 ** 28}]
    assert [r["t"] for r in resolve(pack, now=1000.0)] == [995.0, 2 ** 28]
    assert [r["t"] for r in resolve(pack, now=2000.0)] == [1995.0, 2 ** 28]


@pytest.mark.parametrize("pack,path,words", [
    ([{"n": "a", "v": 1, "vs": "x"}], "/0", "more than one value"),
    ([{"n": "a"}], "/0", "no value"),
    ([{"v": 1}], "/0", "no name"),
    ([{"n": "-bad", "v": 1}], "/0/n", "not a valid SenML name"),
    ([{"n": "a", "v": True}], "/0/v", "must be a number"),
    ([{"n": "a", "v": 1, "x_": 1}], "/0/x_", "must-understand"),
    ([{"bn": 5, "n": "a", "v": 1}], "/0/bn", "must be a string"),
    ([{"bver": 0, "n": "a", "v": 1}], "/0/bver", "positive integer"),
    ([1], "/0", "is an object"),
    ({"n": "a"}, "", "JSON array"),
])
def test_senml_invalid_packs_name_their_path(pack, path, words):
    with pytest.raises(FormatError) as info:
        resolve(pack, now=0.0)
    assert info.value.path == path and words in info.value.message


def test_senml_bver_above_this_rfc_is_kept():
    assert resolve([{"bver": 11, "n": "a", "v": 1, "t": 2 ** 30}], now=0.0) == [{"n": "a", "t": 2 ** 30, "v": 1, "bver": 11}]


def test_senml_units_all_convert():
    for unit, quantity in SENML_UNITS.items():
        conversion(quantity, unit)


def test_senml_fast_path_gives_the_general_paths_readings():
    """The one-pass fast path and the general path agree wherever the fast path applies."""
    profiles = [load_profile_document((FIXTURES / "senml" / "_profile.yaml").read_text()),
                load_profile_document("{name: t, format: senml, topic: 'vendors/a/s/{d}', device_id: '{d}'}")]
    packs = [e["rfc_text_example"] for e in _senml_examples()] + [e["generated"] for e in _senml_examples()]
    packs += [json.loads(p.read_text()) for p in sorted((FIXTURES / "senml").glob("*.json"))
              if not p.name.endswith(".expected.json") and p.name != "malformed.json"]
    fast_used = 0
    for profile in profiles:
        compiled = compile_profile(profile, vendor_code="a" if profile.name == "t" else "acme")
        for pack in packs:
            params = {"d": "dev-1"} if profile.name == "t" else {"gateway": "gw-1"}
            try:
                fast = compiled._decode_senml_fast(params, copy.deepcopy(pack), NOW.timestamp(), [])
            except _SlowPath:
                continue
            problems: list = []
            slow = compiled._decode_senml_slow(params, copy.deepcopy(pack), NOW.timestamp(), problems, None)
            assert not problems and fast == slow, pack
            fast_used += 1
    assert fast_used >= 8


def test_senml_device_from_topic_or_base_name():
    by_bn = compile_profile(load_profile_document("{name: s, format: senml, topic: 'vendors/a/s/{gw}'}"),
                            vendor_code="a")
    by_topic = compile_profile(load_profile_document(
        "{name: s, format: senml, topic: 'vendors/a/s/{gw}', device_id: '{gw}'}"), vendor_code="a")
    pack = json.dumps([{"bn": "urn:dev:mac:0024befffe804ff1:", "n": "temp", "u": "Cel", "v": 21.5}]).encode()
    assert by_bn.decode("vendors/a/s/g1", pack).device_ext_id == "urn:dev:mac:0024befffe804ff1"
    d = by_topic.decode("vendors/a/s/g1", pack)
    assert (d.device_ext_id, d.readings[0][0]) == ("g1", "temp")
    assert by_bn.identify("vendors/a/s/g1", pack) == "urn:dev:mac:0024befffe804ff1"


# --- ChirpStack: the 389 captured uplinks ---------------------------------------------------------

LORA_KEYS = ("lora_dev_eui", "lora_frame_counter", "lora_frame_port", "lora_frequency", "lora_spreading_factor",
             "lora_rssi", "lora_snr")
# Converters without lora_* keys report the same envelope fields under ChirpStack's names.
TB_ATTRIBUTES = {"fPort": "lora_frame_port", "fCnt": "lora_frame_counter", "frequency": "lora_frequency",
                 "spreadingFactor": "lora_spreading_factor"}
TB_TELEMETRY = {"fPort": "lora_frame_port", "fCnt": "lora_frame_counter", "rssi": "lora_rssi", "snr": "lora_snr"}


def _find(obj, keys: tuple[str, ...], found: dict) -> dict:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in keys:
                found.setdefault(k, []).append(v)
            _find(v, keys, found)
    elif isinstance(obj, list):
        for v in obj:
            _find(v, keys, found)
    return found


def _thingsboard_metadata(tb: dict) -> tuple[dict, str | None, str]:
    lora = _find(tb, LORA_KEYS, {})
    if lora:
        assert all(len(v) == 1 for v in lora.values())
        values = {k: v[0] for k, v in lora.items()}
        return {k: v for k, v in values.items() if k != "lora_dev_eui"}, values.get("lora_dev_eui"), "lora"
    expected: dict = {}
    attributes = tb.get("attributes") or {}
    for key, channel in TB_ATTRIBUTES.items():
        if key in attributes:
            expected[channel] = attributes[key]
    telemetry = tb.get("telemetry") or []
    for entry in telemetry if isinstance(telemetry, list) else [telemetry]:
        for key, channel in TB_TELEMETRY.items():
            if key in (entry.get("values") or {}):
                expected.setdefault(channel, entry["values"][key])
                assert expected[channel] == entry["values"][key]
    eui = attributes.get("eui") or attributes.get("devEui")
    return expected, eui, "generic"


def test_chirpstack_metadata_equals_thingsboard_for_all_389_uplinks():
    lines = [json.loads(line) for line in (SHARED / "lorawan_uplinks_chirpstack.jsonl").read_text().splitlines()]
    assert len(lines) == 389
    compiled = compile_profile(load_profile_document(
        "{name: lora, format: chirpstack, topic: 'vendors/lora1/application/{app}/device/{dev_eui}/event/up'}"),
        vendor_code="lora1")
    topic = "vendors/lora1/application/1/device/0/event/up"
    seen = collections.Counter()
    for i, line in enumerate(lines):
        expected, eui, kind = _thingsboard_metadata(line["thingsboard_decoded"])
        payload = json.dumps(line["uplink"]).encode()
        try:
            d = compiled.decode(topic, payload, now=NOW)
        except DecodeError as exc:
            # Only the status event (battery and margin, no radio data) has no reading.
            assert not expected and "rxInfo" not in line["uplink"] and exc.reason_code == "invalid_payload", i
            seen["no readings"] += 1
            continue
        got = {channel: value for channel, value, _ in d.readings}
        assert len(got) == len(d.readings), i  # one reading per metadata channel
        if kind == "lora":
            assert got == expected, (i, line["source_path"])  # all six, exactly
        else:
            assert {k: got[k] for k in expected} == expected, (i, line["source_path"])
        if eui is not None:
            assert d.device_ext_id == eui.lower(), i
        seen[kind] += 1
    assert seen == {"lora": 224, "generic": 164, "no readings": 1}


def test_chirpstack_strongest_gateway_gives_rssi_and_snr():
    uplink = json.loads((FIXTURES / "chirpstack" / "v4_three_gateways_strongest_wins.json").read_text())
    compiled = compile_profile(load_profile_document((FIXTURES / "chirpstack" / "_profile.yaml").read_text()),
                               vendor_code="lora1")
    got = {c: v for c, v, _ in compiled.decode((FIXTURES / "chirpstack" / "_topic.txt").read_text(),
                                                json.dumps(uplink).encode()).readings}
    # -20 twice: the first of the strongest wins, with its own snr.
    assert (got["lora_rssi"], got["lora_snr"]) == (-20.0, 9.25)


def test_chirpstack_sensors_include_radio_metadata():
    compiled = compile_profile(load_profile_document((FIXTURES / "chirpstack" / "_profile.yaml").read_text()),
                               vendor_code="lora1")
    channels = {s["channel"]: (s["quantity"], s["unit"]) for s in compiled.sensors()}
    assert channels == {"temperature": ("temperature", "°C"), "humidity": ("humidity", "%"),
                        "lora_rssi": ("signal_strength", "dBm"), "lora_snr": ("snr", "dB"),
                        "lora_frame_counter": ("count", "count"), "lora_frame_port": ("number", "1"),
                        "lora_frequency": ("frequency", "Hz"), "lora_spreading_factor": ("number", "1")}


# --- UltraLight 2.0 -----------------------------------------------------------------------------

@pytest.mark.parametrize("text,groups", [
    ("t|15|k|abc", [(None, [("t", "15"), ("k", "abc")])]),
    ("gps|1.2/3.4#t|10", [(None, [("gps", "1.2/3.4")]), (None, [("t", "10")])]),
    ("2016-06-13T00:35:30Z|lle|100", [("2016-06-13T00:35:30Z", [("lle", "100")])]),
    ("|t|1", [(None, [("t", "1")])]),
    ("t|1\n", [(None, [("t", "1")])]),
])
def test_ultralight_syntax(text, groups):
    assert ultralight.parse(text.encode()) == groups


@pytest.mark.parametrize("text,words", [
    ("", "empty"), ("t|1|h|", "empty key or value"), ("t||h|1", "empty key or value"), ("ts", "no key|value"),
    ("dev@ping|p=1", "command"), ("t|1#", "no key|value"),
])
def test_ultralight_syntax_errors(text, words):
    with pytest.raises(FormatError) as info:
        ultralight.parse(text.encode())
    assert words in info.value.message and info.value.reason_code == "invalid_payload"


# --- binary: the decoder plug-in point ------------------------------------------------------------

BINARY_PROFILE = """
name: acme-tx200
format: binary
decoder: acme-tx200
topic: vendors/acme/tx200/{device}/up
device_id: "{device}"
channels:
  - {name: temperature, path: /temp_dC, quantity: temperature, scale: 0.1}
  - {name: battery, path: /battery_mV, quantity: voltage, unit: mV}
"""


class _Tx200:
    """A made-up model: temperature in 0.1 °C (int16, big-endian), then battery in mV (uint16)."""

    def decode(self, payload: bytes) -> dict:
        if len(payload) != 4:
            raise ValueError(f"expected 4 bytes, got {len(payload)}")
        return {"temp_dC": int.from_bytes(payload[:2], "big", signed=True),
                "battery_mV": int.from_bytes(payload[2:], "big")}


def test_binary_without_a_decoder_is_a_clear_dead_letter():
    compiled = compile_profile(load_profile_document(BINARY_PROFILE), vendor_code="acme")
    assert "acme-tx200" not in BINARY_DECODERS
    with pytest.raises(DecodeError) as info:
        compiled.decode("vendors/acme/tx200/t-1/up", b"\x00\xd7\x0c\xe4")
    assert (info.value.reason_code, info.value.reason) == ("no_decoder", "no decoder for model acme-tx200")


def test_binary_with_a_plugged_in_decoder(monkeypatch):
    assert isinstance(_Tx200(), BinaryDecoder)
    monkeypatch.setitem(BINARY_DECODERS, "acme-tx200", _Tx200())
    compiled = compile_profile(load_profile_document(BINARY_PROFILE), vendor_code="acme")
    d = compiled.decode("vendors/acme/tx200/t-1/up", b"\xff\x38\x0c\xe4")
    assert d.device_ext_id == "t-1"
    assert [(c, round(v, 9)) for c, v, _ in d.readings] == [("temperature", -20.0), ("battery", 3.3)]
    with pytest.raises(DecodeError) as info:
        compiled.decode("vendors/acme/tx200/t-1/up", b"\x00")
    assert info.value.reason_code == "invalid_payload"
    assert "decoder 'acme-tx200' failed: ValueError: expected 4 bytes, got 1" in info.value.reason


# --- the ingest decoder: versions, pinning, routing -------------------------------------------------

def _env_profile(version_note: str, unit: str = "°C") -> Profile:
    return load_profile_document(f"""
name: env
description: {version_note}
topic: vendors/acme/env/{{device}}/data
device_id: "{{device}}"
channels: [{{name: temperature, path: /t, quantity: temperature, unit: "{unit}"}}]
""")


def test_profile_decoder_takes_the_newest_matching_version_and_a_pinned_one_on_request():
    v1 = compile_profile(_env_profile("v1", "°F"), vendor_code="acme", profile_id=101, version=1)
    v2 = compile_profile(_env_profile("v2", "°C"), vendor_code="acme", profile_id=102, version=2)
    other = compile_profile(load_profile_document(
        "{name: x, topic: 'vendors/other/env/{device}/data', device_id: '{device}', "
        "channels: [{name: t, path: /t, quantity: temperature}]}"), vendor_code="other", profile_id=201, version=1)
    decoder = ProfileDecoder([v1, v2, other])
    assert decoder.handles("vendors/acme/env/d1/data") and not decoder.handles("cim/v1/acme/d1/up")
    d = decoder.decode("vendors/acme/env/d1/data", b'{"t": 212}')
    assert (d.profile_id, d.readings[0][1]) == (102, 212.0)
    d = decoder.decode_with(101, "vendors/acme/env/d1/data", b'{"t": 212}')
    assert (d.profile_id, d.readings[0][1]) == (101, 100.0)
    # acme's profile never reads another vendor's topics, even with a pinned id
    with pytest.raises(DecodeError) as info:
        decoder.decode_with(101, "vendors/other/env/d1/data", b'{"t": 212}')
    assert info.value.reason_code == "bad_topic"
    assert decoder.decode("vendors/other/env/d1/data", b'{"t": 1}').profile_id == 201
    with pytest.raises(DecodeError) as info:
        decoder.decode("vendors/acme/unknown/d1", b"{}")
    assert (info.value.reason_code, info.value.reason) == (
        "bad_topic", "no profile of vendor 'acme' matches topic 'vendors/acme/unknown/d1'")
    with pytest.raises(DecodeError) as info:
        decoder.decode_with(999, "vendors/acme/env/d1/data", b"{}")
    assert info.value.reason_code == "no_profile"
    assert decoder.identify("vendors/acme/env/d1/data", b"not json") == ("acme", "d1")
    assert decoder.identify("vendors/acme/nope/d1", b"{}") is None


def test_profile_decoder_replace_swaps_atomically_under_load():
    v1 = compile_profile(_env_profile("v1", "°F"), vendor_code="acme", profile_id=1, version=1)
    v2 = compile_profile(_env_profile("v2", "°C"), vendor_code="acme", profile_id=2, version=2)
    decoder = ProfileDecoder([v1])
    seen, errors, stop = set(), [], threading.Event()

    def decode_loop():
        while not stop.is_set():
            try:
                d: Decoded = decoder.decode("vendors/acme/env/d1/data", b'{"t": 212}')
                seen.add((d.profile_id, d.readings[0][1]))
            except Exception as exc:  # noqa: BLE001 - any failure is the test's failure
                errors.append(exc)

    threads = [threading.Thread(target=decode_loop) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(200):
        decoder.replace([v1, v2] if i % 2 == 0 else [v1])
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert seen <= {(1, 100.0), (2, 212.0)}


def test_more_specific_profile_wins_between_two_profiles():
    generic = compile_profile(load_profile_document(
        "{name: generic, topic: 'vendors/acme/{kind}/{device}', device_id: '{device}', "
        "channels: [{name: a, path: /v, quantity: number}]}"), vendor_code="acme", profile_id=1, version=5)
    specific = compile_profile(load_profile_document(
        "{name: specific, topic: 'vendors/acme/gas/{device}', device_id: '{device}', "
        "channels: [{name: co, path: /v, quantity: concentration}]}"), vendor_code="acme", profile_id=2, version=1)
    decoder = ProfileDecoder([generic, specific])
    assert decoder.decode("vendors/acme/gas/d1", b'{"v": 3}').readings[0][0] == "co"
    assert decoder.decode("vendors/acme/water/d1", b'{"v": 3}').readings[0][0] == "a"


def test_loads_rejects_nan_and_reports_malformed_json():
    with pytest.raises(FormatError) as info:
        _loads(b'{"t": NaN}')
    assert info.value.reason_code == "malformed_json"


def _mutations(payload: bytes, rng) -> list[bytes]:
    out = [b"", b"null", b"[]", b"{}", b"[null]", b"[[]]", b'{"a":' * 300, b"\xff\xfe", b"1e999", b'"x"',
           payload[: len(payload) // 2], payload + b"x", payload.replace(b"1", b"-1e400")]
    for _ in range(40):
        data = bytearray(payload)
        for _ in range(rng.randint(1, 4)):
            if data:
                data[rng.randrange(len(data))] = rng.choice(b'{}[]",:0123456789.-eEtfn|#@ \x00\xff')
        out.append(bytes(data))
    try:
        doc = json.loads(payload)
    except ValueError:
        return out
    values = [None, True, "x", "", 1e308, -1, 2 ** 70, 10 ** 400, [], {}, [1], {"v": 1}, "1e3",
              "0001-01-01T00:00:00+01:00", "9" * 400, -1e300]
    def swap(obj, depth=0):
        if isinstance(obj, dict):
            return {k: (rng.choice(values) if rng.random() < 0.3 else swap(v, depth + 1)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [rng.choice(values) if rng.random() < 0.3 else swap(v, depth + 1) for v in obj]
        return obj
    out += [json.dumps(swap(doc)).encode() for _ in range(40)]
    return out


@pytest.mark.parametrize("fmt", list(FORMAT_DIRS))
def test_decoders_raise_only_decode_errors_on_garbage(fmt):
    """A decoder that raised anything but DecodeError would stop ingest instead of dead-lettering."""
    import random

    rng = random.Random(4)
    for payload_file in [p for p in CASES if p.parent.name == fmt]:
        profile, topic = _case_setup(payload_file)
        compiled = compile_profile(profile, vendor_code=topic.split("/")[1])
        for payload in _mutations(payload_file.read_bytes(), rng):
            try:
                compiled.decode(topic, payload, now=NOW)
            except DecodeError:
                pass
            result = dry_run(profile, vendor_code=topic.split("/")[1], topic=topic, payload=payload, now=NOW)
            assert set(result) == {"device", "time", "readings", "errors"}
            compiled.identify(topic, payload)
