"""Golden files: each raw payload in tests/fixtures/<format>/ next to its expected normalized output.

Set CIMTWIN_UPDATE_GOLDEN=1 to (re)write the expected files after a deliberate change; review the diff.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cimtwin.ingest.normalize import DeviceDirectory, Normalizer, RawMessage
from cimtwin.store.writer import DeviceRef, SensorRef

FIXTURES = Path(__file__).parent / "fixtures"
RECEIVED = datetime(2026, 11, 22, 8, 0, 5, tzinfo=timezone.utc)
# The registry the golden files are written against: vendor acme, device dev-1.
SENSORS = {"temp": SensorRef(1, -40, 125), "rh": SensorRef(2, 0, 100), "door": SensorRef(3, None, None)}
CHANNEL_OF = {ref.id: name for name, ref in SENSORS.items()}


def _registry(keys):
    return {k: DeviceRef(10, dict(SENSORS)) for k in keys if k == ("acme", "dev-1")}


def normalized(fmt: str, topic: str, payload: bytes) -> dict:
    normalizer = Normalizer(DeviceDirectory(_registry), max_payload_bytes=262144, max_future_s=300)
    batch = normalizer.normalize([RawMessage(topic, payload, RECEIVED)])
    return {
        "format": fmt,
        "topic": topic,
        "received_at": RECEIVED.isoformat(),
        "readings": [{"channel": CHANNEL_OF[sensor_id], "time": t.isoformat(), "value": value}
                     for t, sensor_id, value, _ in batch.rows],
        "dead_letters": [{"reason_code": d.reason_code, "reason": d.reason} for d in batch.dead_letters],
    }


CASES = sorted(p for p in (FIXTURES / "canonical").glob("*.json") if not p.name.endswith(".expected.json"))


@pytest.mark.parametrize("payload_file", CASES, ids=[p.stem for p in CASES])
def test_canonical_golden(payload_file: Path):
    expected_file = payload_file.with_name(payload_file.stem + ".expected.json")
    got = normalized("canonical", "cim/v1/acme/dev-1/up", payload_file.read_bytes())
    if os.environ.get("CIMTWIN_UPDATE_GOLDEN"):
        expected_file.write_text(json.dumps(got, indent=2, ensure_ascii=False) + "\n")
    assert got == json.loads(expected_file.read_text())


def test_every_golden_payload_has_its_expected_output():
    assert len(CASES) >= 5
    for p in CASES:
        assert p.with_name(p.stem + ".expected.json").exists(), p
