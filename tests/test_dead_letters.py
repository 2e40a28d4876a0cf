"""Every kind of bad message ends as exactly one dead letter with its reason; good ones keep flowing."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from .helpers import wait_for

TOPIC = "cim/v1/acme/dev-1/up"
NOW = datetime.now(timezone.utc)


def good(i: int) -> dict:
    return {"readings": [{"channel": "temp", "value": 20 + i, "time": (NOW - timedelta(seconds=i)).isoformat()}]}


CASES = [
    # (name, topic, payload, reason_code, words the reason must contain)
    ("malformed JSON", TOPIC, b'{"readings": [', "malformed_json", ["malformed JSON"]),
    ("not an object", TOPIC, b'[1, 2, 3]', "invalid_payload", ["(message): Input should be an object"]),
    ("unknown device", "cim/v1/acme/ghost-7/up", json.dumps(good(1)).encode(), "unknown_device",
     ["unknown device 'ghost-7'", "pending"]),
    ("unknown vendor", "cim/v1/nobody/dev-1/up", json.dumps(good(1)).encode(), "unknown_device",
     ["vendor 'nobody'"]),
    ("unknown channel", TOPIC, json.dumps({"readings": [{"channel": "pressure", "value": 1}]}).encode(),
     "unknown_channel", ["unknown channel 'pressure'", "temp"]),
    ("non-numeric value", TOPIC, json.dumps({"readings": [{"channel": "temp", "value": "hot"}]}).encode(),
     "invalid_value", ["readings[0].value", "valid number", "'hot'"]),
    ("numeric string", TOPIC, json.dumps({"readings": [{"channel": "temp", "value": "21.5"}]}).encode(),
     "invalid_value", ["readings[0].value"]),
    ("future time", TOPIC, json.dumps({"readings": [{"channel": "temp", "value": 1,
                                                     "time": (NOW + timedelta(hours=1)).isoformat()}]}).encode(),
     "future_time", ["in the future", "limit 300 s"]),
    ("out of range", TOPIC, json.dumps({"readings": [{"channel": "temp", "value": 900}]}).encode(),
     "out_of_range", ["900", "[-40, 125]"]),
    ("oversized payload", TOPIC, b'{"readings": [], "pad": "' + b"x" * 300_000 + b'"}', "payload_too_large",
     ["300", "limit is 262144"]),
    ("device mismatch", TOPIC, json.dumps({"device": "dev-2", "readings": [{"channel": "temp", "value": 1}]}).encode(),
     "invalid_payload", ["'dev-2'", "'dev-1'"]),
    ("unknown field", TOPIC, json.dumps({"readings": [{"channel": "temp", "value": 1, "uint": "C"}]}).encode(),
     "invalid_payload", ["readings[0].uint", "Extra inputs"]),
]


@pytest.mark.parametrize("name, topic, payload, reason_code, words", CASES, ids=[c[0] for c in CASES])
def test_bad_message_becomes_one_dead_letter_and_ingest_goes_on(
        db, register, ingest, publisher, name, topic, payload, reason_code, words):
    register("acme", {"dev-1": ["temp"]}, ranges={"temp": (-40, 125)})
    ingest()
    publisher.publish(TOPIC, good(1))
    publisher.publish(topic, payload)
    publisher.publish(TOPIC, good(2))
    publisher.flush()

    wait_for(lambda: db.execute("SELECT count(*) FROM readings").fetchone()[0] == 2
             and db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 1,
             timeout=15, message="for the two good readings and one dead letter")
    code, reason, stored, stored_topic, occurrences = db.execute(
        "SELECT reason_code, reason, payload, topic, occurrences FROM dead_letters").fetchone()
    assert code == reason_code
    for word in words:
        assert word in reason, f"{word!r} not in reason {reason!r}"
    assert bytes(stored) == payload and stored_topic == topic and occurrences == 1


def test_unknown_device_is_listed_as_pending(db, register, ingest, publisher):
    register("acme", {"dev-1": ["temp"]})
    ingest()
    for i in range(3):
        publisher.publish("cim/v1/acme/new-9/up", good(i))
    publisher.flush()
    row = wait_for(lambda: db.execute("SELECT vendor_code, ext_id, messages FROM pending_devices").fetchone(),
                   timeout=15, message="for the pending device")
    assert row == ("acme", "new-9", 3)
    # three different payloads: three dead letters, one pending device
    assert db.execute("SELECT count(*), sum(occurrences) FROM dead_letters").fetchone() == (3, 3)


def test_partly_bad_message_keeps_its_good_readings(db, register, ingest, publisher):
    register("acme", {"dev-1": ["temp", "rh"]}, ranges={"rh": (0, 100)})
    ingest()
    publisher.publish(TOPIC, {"time": NOW.isoformat(), "readings": [
        {"channel": "temp", "value": 21.5}, {"channel": "rh", "value": 140}, {"channel": "co2", "value": 400}]})
    publisher.flush()
    wait_for(lambda: db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 1, timeout=15)
    assert db.execute("SELECT value FROM readings").fetchall() == [(21.5,)]
    code, reason = db.execute("SELECT reason_code, reason FROM dead_letters").fetchone()
    assert code == "out_of_range"
    assert "readings[1]" in reason and "readings[2]: unknown channel 'co2'" in reason
    assert "1 other reading(s) of this message were stored" in reason


def test_mosquitto_pub_client_and_repeated_bad_payload_folds(db, register, ingest, settings):
    """The real command-line client; the same bad payload twice is one row seen twice."""
    register("acme", {"dev-1": ["temp"]})
    ingest()
    ep = settings.mqtt
    base = ["mosquitto_pub", "-h", ep.host, "-p", str(ep.port), "-u", ep.username, "-P", ep.password,
            "-q", "1", "-V", "mqttv5", "-t", TOPIC]
    subprocess.run(base + ["-m", json.dumps({"readings": [{"channel": "temp", "value": 19.25}]})], check=True)
    for _ in range(2):
        subprocess.run(base + ["-m", "temp=19.25"], check=True)
    wait_for(lambda: db.execute("SELECT occurrences FROM dead_letters").fetchone() == (2,), timeout=15,
             message="for one folded dead letter")
    assert db.execute("SELECT value FROM readings").fetchall() == [(19.25,)]
    assert db.execute("SELECT reason_code FROM dead_letters").fetchone() == ("malformed_json",)
