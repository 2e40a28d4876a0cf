"""The rule engine on a real series: the CO(GT) and NO2(GT) columns of the UCI AirQuality file,
replayed as one sensor device over MQTT with time from the file. The alerts it raises must be
exactly those computed here, independently, from the CSV for the same rules."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta, timezone

import pytest

from cimtwin.settings import get_settings

from .helpers import wait_for

CSV = get_settings().data_dir / "AirQualityUCI.csv"
CO_RULE = {"op": ">", "value": 4.0, "clear_value": 3.0, "hold_s": 3600}      # 2 h above 4, clears below 3
NO2_RULE = {"op": ">=", "value": 200.0, "clear_value": 160.0, "hold_s": 0}


def _series() -> list[tuple[datetime, float | None, float | None]]:
    """(time, co, no2) per hourly row; the file's -200 means missing. Times are read as UTC."""
    out = []
    with open(CSV, newline="") as f:
        for row in csv.DictReader(f, delimiter=";"):
            if not row.get("Date"):
                continue
            t = datetime.strptime(f"{row['Date']} {row['Time']}", "%d/%m/%Y %H.%M.%S").replace(tzinfo=timezone.utc)
            values = []
            for col in ("CO(GT)", "NO2(GT)"):
                v = float(row[col].replace(",", "."))
                values.append(None if v == -200 else v)
            out.append((t, *values))
    return out


def expected_episodes(points: list[tuple[datetime, float]], rule: dict) -> list[tuple[datetime, datetime | None]]:
    """Written apart from the engine: scan for runs of breaching readings; a run fires at its first
    reading held >= hold_s after the run began; the episode ends at the first reading that is no
    longer past clear_value."""
    breach = (lambda v: v > rule["value"]) if rule["op"] == ">" else (lambda v: v >= rule["value"])
    beyond_clear = (lambda v: v > rule["clear_value"]) if rule["op"] == ">" else (lambda v: v >= rule["clear_value"])
    episodes, i, n = [], 0, len(points)
    while i < n:
        if not breach(points[i][1]):
            i += 1
            continue
        start, j = points[i][0], i
        while j < n and breach(points[j][1]) and (points[j][0] - start).total_seconds() < rule["hold_s"]:
            j += 1
        if j == n or not breach(points[j][1]):
            i = max(j, i + 1)
            continue
        fired = points[j][0]
        k = j + 1
        while k < n and beyond_clear(points[k][1]):
            k += 1
        episodes.append((fired, points[k][0] if k < n else None))
        i = k + 1
    return episodes


def _messages(series):
    for t, co, no2 in series:
        readings = [{"channel": ch, "value": v} for ch, v in (("co", co), ("no2", no2)) if v is not None]
        if readings:
            yield "cim/v1/uci/aq-1/up", {"time": t.isoformat(), "readings": readings}


def _rules(db, ids) -> dict[str, int]:
    rule_ids = {}
    for channel, condition in (("co", CO_RULE), ("no2", NO2_RULE)):
        rule_ids[channel] = db.execute(
            """INSERT INTO alert_rules (name, kind, condition, scope, severity, auto_clear)
               VALUES (%s, 'threshold', %s, %s, 'major', true) RETURNING id""",
            (f"{channel} high", json.dumps(condition), json.dumps({"sensor_id": ids[("aq-1", channel)]}))).fetchone()[0]
    return rule_ids


def _alerts(db, rule_id: int) -> list[tuple[datetime, datetime | None]]:
    return [tuple(r) for r in db.execute(
        "SELECT raised_at, cleared_at FROM alerts WHERE rule_id = %s ORDER BY raised_at", (rule_id,))]


@pytest.fixture
def replay(db, register, ingest, publisher):
    ids = register("uci", {"aq-1": ["co", "no2"]})
    rules = _rules(db, ids)
    series = _series()
    messages = list(_messages(series))
    expected = {
        ch: expected_episodes([(t, v) for t, *vals in series if (v := vals[k]) is not None], rule)
        for k, (ch, rule) in enumerate((("co", CO_RULE), ("no2", NO2_RULE)))}
    readings = sum(len(m[1]["readings"]) for m in messages)
    return ids, rules, messages, expected, readings


def _stored(db) -> int:
    return db.execute("SELECT count(*) FROM readings").fetchone()[0]


def test_air_quality_replay_raises_exactly_the_independently_computed_alerts(db, ingest, publisher, replay):
    ids, rules, messages, expected, readings = replay
    assert len(expected["co"]) > 20 and len(expected["no2"]) > 5  # the file has real peaks
    worker = ingest()
    assert publisher.publish_many(messages) == len(messages)
    wait_for(lambda: _stored(db) == readings, timeout=120, message="for every reading")
    wait_for(lambda: worker.acked() >= len(messages), timeout=30, message="for the acks")
    for channel in ("co", "no2"):
        assert _alerts(db, rules[channel]) == expected[channel], channel
    # Auto-clearing rules resolve their alerts; every alert has its raised event and trail.
    assert db.execute("SELECT count(*) FROM alerts WHERE cleared_at IS NOT NULL AND status <> 'resolved'"
                      ).fetchone()[0] == 0
    assert db.execute("""SELECT count(*) FROM alerts a WHERE NOT EXISTS
                         (SELECT FROM alert_events e WHERE e.alert_id = a.id AND e.action = 'raised')""").fetchone()[0] == 0
    # Repeats fold in: the readings of an episode are counted on its alert.
    assert db.execute("SELECT max(count) FROM alerts").fetchone()[0] > 1

    # A duplicate replay (every message again) raises nothing new.
    before = db.execute("SELECT count(*), sum(count) FROM alerts").fetchone()
    events = db.execute("SELECT count(*) FROM alert_events").fetchone()[0]
    assert publisher.publish_many(messages) == len(messages)
    wait_for(lambda: worker.acked() >= 2 * len(messages), timeout=60, message="for the duplicate acks")
    assert db.execute("SELECT count(*), sum(count) FROM alerts").fetchone() == before
    assert db.execute("SELECT count(*) FROM alert_events").fetchone()[0] == events


def test_a_worker_killed_mid_replay_ends_with_the_same_alerts(db, ingest, publisher, replay):
    ids, rules, messages, expected, readings = replay
    worker = ingest(ingest_batch_max_messages=200)
    publisher.publish_many(messages[: len(messages) // 2])
    wait_for(lambda: _stored(db) > readings // 5, timeout=60, message="for part of the replay")
    worker.kill()
    publisher.publish_many(messages[len(messages) // 2:])
    ingest(ingest_client_id=worker.settings.ingest_client_id)
    wait_for(lambda: _stored(db) == readings, timeout=120, message="for every reading after the restart")
    for channel in ("co", "no2"):
        assert _alerts(db, rules[channel]) == expected[channel], channel


def test_hold_and_hysteresis_survive_a_restart(db, register, ingest, publisher):
    """A hold timer started before a restart fires after it, at the right reading."""
    ids = register("uci", {"h-1": ["level"]})
    rule = db.execute("""INSERT INTO alert_rules (name, kind, condition, scope, severity)
                         VALUES ('level', 'threshold', %s, %s, 'critical') RETURNING id""",
                      (json.dumps({"op": ">", "value": 10, "clear_value": 5, "hold_s": 30}),
                       json.dumps({"sensor_id": ids[("h-1", "level")]}))).fetchone()[0]
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=10)

    def send(seconds, value):
        publisher.publish("cim/v1/uci/h-1/up", {"readings": [
            {"channel": "level", "value": value, "time": (t0 + timedelta(seconds=seconds)).isoformat()}]})

    worker = ingest()
    send(0, 11)
    send(20, 12)
    wait_for(lambda: _stored(db) == 2, timeout=20)
    worker.stop()
    assert db.execute("SELECT phase, since FROM alert_rule_state WHERE rule_id = %s", (rule,)).fetchone() \
        == ("pending", t0)
    ingest()
    send(31, 13)   # 31 s after the condition began: fires now, not 30 s after the restart
    wait_for(lambda: _alerts(db, rule), timeout=20, message="for the alert")
    send(40, 7)    # between clear (5) and value (10): still active (hysteresis)
    send(50, 4)    # past the clear value: cleared
    wait_for(lambda: _alerts(db, rule)[0][1] is not None, timeout=20, message="for the clear")
    assert _alerts(db, rule) == [(t0 + timedelta(seconds=31), t0 + timedelta(seconds=50))]
    assert db.execute("SELECT count, status FROM alerts WHERE rule_id = %s", (rule,)).fetchone() == (2, "resolved")


def test_offline_rule_raises_on_the_timer_and_clears_when_data_returns(db, register, ingest, publisher, database_url):
    from cimtwin.store.db import connect
    from cimtwin.twin.alert_timer import run_once

    ids = register("uci", {"smoke-1": ["smoke"], "smoke-2": ["smoke"]})
    rule = db.execute("""INSERT INTO alert_rules (name, kind, condition, scope, severity)
                         VALUES ('smoke detector silent', 'offline', '{"silent_s": 600}', '{"quantity": "smoke"}',
                                 'major') RETURNING id""").fetchone()[0]
    now = datetime.now(timezone.utc)
    ingest()
    publisher.publish("cim/v1/uci/smoke-1/up", {"readings": [{"channel": "smoke", "value": 0,
                                                              "time": (now - timedelta(minutes=30)).isoformat()}]})
    publisher.publish("cim/v1/uci/smoke-2/up", {"readings": [{"channel": "smoke", "value": 0,
                                                              "time": (now - timedelta(minutes=2)).isoformat()}]})
    wait_for(lambda: _stored(db) == 2, timeout=20)
    with connect(database_url, autocommit=True) as conn:
        assert run_once(conn, now=now)["evaluate_offline"] == 1
        assert run_once(conn, now=now)["evaluate_offline"] == 0  # not twice
    alert = db.execute("SELECT sensor_id, status, dispatch_level FROM alerts WHERE rule_id = %s", (rule,)).fetchall()
    assert alert == [(ids[("smoke-1", "smoke")], "open", "none")]
    publisher.publish("cim/v1/uci/smoke-1/up", {"readings": [{"channel": "smoke", "value": 0,
                                                              "time": now.isoformat()}]})
    wait_for(lambda: db.execute("SELECT status FROM alerts WHERE rule_id = %s", (rule,)).fetchone()[0] == "resolved",
             timeout=20, message="for the offline alert to clear")


def test_a_reading_in_a_building_alerts_its_communitys_party_then_escalates_to_the_street(
        api, db, register, ingest, publisher, database_url):
    from cimtwin.store.alerts import escalate_due
    from cimtwin.store.db import connect

    from .test_alerts_api import seed_district

    district = seed_district(api)
    ids = register("uci", {"gas-1": ["lel"]})
    sensor = ids[("gas-1", "lel")]
    assert api.client.put(f"/sensors/{sensor}/place", json={"building_id": district.building}).status_code == 200
    rule = api.post("/rules", json={"name": "gas LEL", "kind": "threshold", "severity": "critical",
                                    "condition": {"op": ">", "value": 20, "clear_value": 10, "hold_s": 0},
                                    "scope": {"quantity": "lel", "area_id": district.areas["c1"]},
                                    "ack_sla_s": 60})
    assert rule.status_code == 201, rule.text
    ingest()
    publisher.publish("cim/v1/uci/gas-1/up", {"readings": [{"channel": "lel", "value": 35}]})
    alert = wait_for(lambda: api.get("/alerts").json()["items"], timeout=20, message="for the alert")[0]
    assert (alert["party_id"], alert["dispatch_level"]) == (district.parties["community-c1"], "community")
    assert alert["building_id"] == district.building and alert["area_id"] == district.areas["g1"]

    # No acknowledgement within the SLA: the street's party gets it.
    with connect(database_url, autocommit=True) as conn:
        assert escalate_due(conn, now=datetime.now(timezone.utc) + timedelta(seconds=61)) == 1
    alert = api.get(f"/alerts/{alert['id']}").json()
    assert (alert["party_id"], alert["dispatch_level"]) == (district.parties["street-s1"], "street")
    assert [e["action"] for e in alert["events"]][-1] == "escalated"


def _send_all(publisher, device: str, t0: datetime, points: list[tuple[float, dict[str, float]]]) -> None:
    for seconds, values in points:
        publisher.publish(f"cim/v1/uci/{device}/up", {"readings": [
            {"channel": ch, "value": v, "time": (t0 + timedelta(seconds=seconds)).isoformat()}
            for ch, v in values.items()]})


def test_rate_of_change_rule_water_rising_faster_than_5_cm_per_min(db, register, ingest, publisher):
    ids = register("uci", {"well-1": ["level"]})
    rule = db.execute("""INSERT INTO alert_rules (name, kind, condition, scope, severity)
                         VALUES ('water rising', 'rate', %s, %s, 'major') RETURNING id""",
                      (json.dumps({"op": ">", "per_s": 0.05 / 60, "window_s": 120}),
                       json.dumps({"sensor_id": ids[("well-1", "level")]}))).fetchone()[0]
    ingest()
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=30)
    # 1 cm/min for 3 minutes (quiet), then 12 cm in a minute, then flat.
    levels = [(0, 1.00), (60, 1.01), (120, 1.02), (180, 1.03), (240, 1.15), (300, 1.15), (360, 1.15)]
    _send_all(publisher, "well-1", t0, [(s, {"level": v}) for s, v in levels])
    wait_for(lambda: _stored(db) == len(levels), timeout=20)
    wait_for(lambda: (_alerts(db, rule) or [(None, None)])[0][1] is not None, timeout=20, message="for the clear")
    [(raised, cleared)] = _alerts(db, rule)
    assert raised == t0 + timedelta(seconds=240)   # (1.15 - 1.02) m over the 120 s window: 6.5 cm/min
    assert cleared == t0 + timedelta(seconds=360)  # the window holds only the flat part


def test_composite_rule_needs_all_conditions_of_one_device(db, register, ingest, publisher):
    ids = register("uci", {"room-1": ["smoke", "temperature"], "room-2": ["smoke", "temperature"]})
    rule = db.execute(
        """INSERT INTO alert_rules (name, kind, condition, scope, severity)
           VALUES ('fire', 'composite', %s, '{}', 'critical') RETURNING id""",
        (json.dumps({"mode": "all", "hold_s": 0, "conditions": [
            {"quantity": "smoke", "op": ">=", "value": 1}, {"quantity": "temperature", "op": ">", "value": 57}]}),)
    ).fetchone()[0]
    ingest()
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=30)
    _send_all(publisher, "room-1", t0, [(0, {"smoke": 1, "temperature": 25}), (10, {"temperature": 60}),
                                        (20, {"smoke": 0})])
    _send_all(publisher, "room-2", t0, [(0, {"smoke": 1}), (5, {"temperature": 30})])
    wait_for(lambda: _stored(db) == 6, timeout=20)
    wait_for(lambda: (_alerts(db, rule) or [(None, None)])[0][1] is not None, timeout=20, message="for the clear")
    alerts = db.execute("SELECT sensor_id, raised_at, cleared_at FROM alerts WHERE rule_id = %s", (rule,)).fetchall()
    assert alerts == [(ids[("room-1", "smoke")], t0 + timedelta(seconds=10), t0 + timedelta(seconds=20))]
