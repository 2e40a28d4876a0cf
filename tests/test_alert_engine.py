"""The rule engine on a real series: the CO(GT) and NO2(GT) columns of the UCI AirQuality file,
replayed as one sensor device over MQTT with time from the file. The alerts it raises must be
exactly those computed here, independently, from the CSV for the same rules, whether the
series arrives in order or shuffled across batches (late readings are evaluated in time order)."""

from __future__ import annotations

import csv
import json
import random
import time
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


def expected_episodes(points: list[tuple[datetime, float]], rule: dict, *,
                      detail: bool = False) -> list[tuple]:
    """Written apart from the engine: scan for runs of breaching readings; a run fires at its first
    reading held >= hold_s after the run began; the episode ends at the first reading that is no
    longer past clear_value. With ``detail``, each episode also has its readings' count (the one
    that fired and those that kept it active) and the last of their values."""
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
        episodes.append((fired, points[k][0] if k < n else None) + ((k - j, points[k - 1][1]) if detail else ()))
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
        "SELECT raised_at, cleared_at FROM alerts WHERE rule_id = %s AND withdrawn_at IS NULL ORDER BY raised_at",
        (rule_id,))]


def _alert_details(db, rule_id: int) -> list[tuple]:
    """(raised_at, cleared_at, count, last_value) of the rule's alerts, withdrawn ones aside."""
    return [tuple(r) for r in db.execute(
        """SELECT raised_at, cleared_at, count, last_value FROM alerts WHERE rule_id = %s AND withdrawn_at IS NULL
           ORDER BY raised_at""", (rule_id,))]


def _expected_details(series) -> dict[str, list[tuple]]:
    """Each channel's episodes (with count and last value) for its rule, computed from the CSV."""
    return {ch: expected_episodes([(t, v) for t, *vals in series if (v := vals[k]) is not None], rule, detail=True)
            for k, (ch, rule) in enumerate((("co", CO_RULE), ("no2", NO2_RULE)))}


@pytest.fixture
def replay(db, register, ingest, publisher):
    ids = register("uci", {"aq-1": ["co", "no2"]})
    rules = _rules(db, ids)
    series = _series()
    messages = list(_messages(series))
    expected = _expected_details(series)
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
        assert _alert_details(db, rules[channel]) == expected[channel], channel
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
        assert _alert_details(db, rules[channel]) == expected[channel], channel


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
    # An old reading that arrives late does not bring the sensor back online.
    publisher.publish("cim/v1/uci/smoke-1/up", {"readings": [{"channel": "smoke", "value": 0,
                                                              "time": (now - timedelta(minutes=20)).isoformat()}]})
    wait_for(lambda: _stored(db) == 3, timeout=20)
    assert db.execute("SELECT status, cleared_at FROM alerts WHERE rule_id = %s", (rule,)).fetchone() == ("open", None)
    publisher.publish("cim/v1/uci/smoke-1/up", {"readings": [{"channel": "smoke", "value": 0,
                                                              "time": now.isoformat()}]})
    wait_for(lambda: db.execute("SELECT status FROM alerts WHERE rule_id = %s", (rule,)).fetchone()[0] == "resolved",
             timeout=20, message="for the offline alert to clear")
    assert db.execute("SELECT cleared_at FROM alerts WHERE rule_id = %s", (rule,)).fetchone()[0] == now


def test_the_timer_keeps_offline_rules_until_rules_or_sensors_change(db, register, database_url):
    from cimtwin.store.db import connect
    from cimtwin.twin.alert_timer import close_tasks, run_once, timer_tasks

    register("uci", {"smoke-1": ["smoke"]})
    rule = db.execute("""INSERT INTO alert_rules (name, kind, condition, scope, severity)
                         VALUES ('smoke detector silent', 'offline', '{"silent_s": 600}', '{"quantity": "smoke"}',
                                 'major') RETURNING id""").fetchone()[0]
    db.execute("UPDATE sensors SET created_at = now() - interval '1 hour'")
    tasks = timer_tasks(database_url)
    offline = tasks[0]
    now = datetime.now(timezone.utc)
    try:
        with connect(database_url, autocommit=True) as conn:
            assert run_once(conn, now=now, tasks=tasks)["evaluate_offline"] == 1
            assert run_once(conn, now=now, tasks=tasks)["evaluate_offline"] == 0
            assert offline.loads == 1  # nothing changed: not reloaded
            ids = register("uci", {"smoke-2": ["smoke"]})  # a new sensor in the rule's scope
            db.execute("UPDATE sensors SET created_at = now() - interval '1 hour' WHERE id = %s",
                       (ids[("smoke-2", "smoke")],))
            time.sleep(0.1)  # the watch looks at most every 50 ms
            assert run_once(conn, now=now, tasks=tasks)["evaluate_offline"] == 1
            assert offline.loads == 2
    finally:
        close_tasks(tasks)
    assert db.execute("SELECT count(*) FROM alerts WHERE rule_id = %s", (rule,)).fetchone()[0] == 2


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


# ----------------------------------------------------------------------------- late readings

def _shuffled(messages: list[tuple[str, dict]], *, hours: float, seed: int) -> list[tuple[str, dict]]:
    """Each message moved later by up to ``hours``: a reading arrives after others up to that much newer."""
    rng = random.Random(seed)
    keyed = [(datetime.fromisoformat(m[1]["time"]) + timedelta(hours=rng.uniform(0, hours)), i, m)
             for i, m in enumerate(messages)]
    return [m for _, _, m in sorted(keyed)]


def test_a_shuffled_air_quality_series_raises_the_alerts_of_the_series_in_order(db, register, ingest, publisher):
    """2,200 hours of the file (November 2004 to February 2005: 98 episodes, gaps of up to 97 h in a
    channel), each message up to 8 h late, published in chunks of 25, each chunk stored before
    the next is sent: readings older than others already evaluated in earlier batches. The
    alerts (raise and clear times, count, last value) must be those of the series in order,
    computed independently from the CSV."""
    ids = register("uci", {"aq-1": ["co", "no2"]})
    rules = _rules(db, ids)
    series = _series()[5800:8000]
    expected = _expected_details(series)
    assert len(expected["co"]) > 40 and len(expected["no2"]) > 40
    messages = _shuffled(list(_messages(series)), hours=8, seed=5)
    worker = ingest()
    stored = 0
    for start in range(0, len(messages), 25):
        chunk = messages[start:start + 25]
        publisher.publish_many(chunk)
        stored += sum(len(m[1]["readings"]) for m in chunk)
        wait_for(lambda: _stored(db) == stored, timeout=30, message="for the chunk")
    late = [s["alerts"]["late_readings"] for s in worker.statuses().values()]
    assert sum(late) > 100  # readings really arrived after newer ones had been evaluated
    for channel in ("co", "no2"):
        assert _alert_details(db, rules[channel]) == expected[channel], channel
    # Alerts that had to be put right say so; withdrawn ones are closed with their reason.
    assert db.execute("SELECT count(*) FROM alert_events WHERE detail ? 'late'").fetchone()[0] > 0
    assert db.execute("""SELECT count(*) FROM alerts a WHERE withdrawn_at IS NOT NULL AND (status <> 'closed'
                         OR NOT EXISTS (SELECT FROM alert_events e WHERE e.alert_id = a.id
                                        AND e.action = 'withdrawn' AND e.actor = 'engine'))""").fetchone()[0] == 0


def _level_rule(db, sensor: int, *, hold_s: int = 30) -> int:
    return db.execute("""INSERT INTO alert_rules (name, kind, condition, scope, severity)
                         VALUES ('level', 'threshold', %s, %s, 'critical') RETURNING id""",
                      (json.dumps({"op": ">", "value": 10, "clear_value": 5, "hold_s": hold_s}),
                       json.dumps({"sensor_id": sensor}))).fetchone()[0]


def _sender(db, publisher, device: str, channel: str, t0: datetime):
    """send(seconds, value): one message with one reading at t0 + seconds, waited for until stored."""

    def send(seconds: float, value: float) -> None:
        expected = _stored(db) + 1
        publisher.publish(f"cim/v1/uci/{device}/up", {"readings": [
            {"channel": channel, "value": value, "time": (t0 + timedelta(seconds=seconds)).isoformat()}]})
        wait_for(lambda: _stored(db) == expected, timeout=20, message="for the reading")

    return send


def _level_device(db, register, ingest, publisher) -> tuple:
    """A level sensor with a _level_rule and a running worker: (rule, t0, send)."""
    ids = register("uci", {"h-1": ["level"]})
    rule = _level_rule(db, ids[("h-1", "level")])
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=10)
    ingest()
    return rule, t0, _sender(db, publisher, "h-1", "level", t0)


def _events(db, rule: int) -> list[tuple[str, str]]:
    return [tuple(r) for r in db.execute(
        "SELECT e.action, e.actor FROM alert_events e JOIN alerts a ON a.id = e.alert_id WHERE a.rule_id = %s "
        "ORDER BY e.id", (rule,))]


def test_a_late_reading_that_completes_a_hold_raises_the_alert_at_its_time(db, register, ingest, publisher):
    rule, t0, send = _level_device(db, register, ingest, publisher)
    send(0, 11)    # above 10: the hold starts
    send(50, 9)    # not above 10: the hold is broken, nothing fired
    assert _alerts(db, rule) == []
    send(35, 12)   # late: in time order the condition held 35 s at this reading, and 9 is above the clear value
    wait_for(lambda: _alerts(db, rule), timeout=20, message="for the alert")
    assert db.execute("SELECT raised_at, first_value, count, last_value, last_at, status FROM alerts "
                      "WHERE rule_id = %s", (rule,)).fetchone() \
        == (t0 + timedelta(seconds=35), 12, 2, 9, t0 + timedelta(seconds=50), "open")
    assert db.execute("SELECT phase, since FROM alert_rule_state WHERE rule_id = %s", (rule,)).fetchone() \
        == ("active", t0 + timedelta(seconds=35))
    assert db.execute("SELECT detail->>'late' FROM alert_events WHERE action = 'raised'").fetchone()[0] == "true"
    send(60, 4)    # the state carries on from the re-evaluation: this clears it
    wait_for(lambda: _alerts(db, rule)[0][1] is not None, timeout=20, message="for the clear")
    assert _alerts(db, rule) == [(t0 + timedelta(seconds=35), t0 + timedelta(seconds=60))]


def test_a_late_reading_that_breaks_a_fired_hold_withdraws_the_alert(db, register, ingest, publisher):
    rule, t0, send = _level_device(db, register, ingest, publisher)
    send(0, 11)
    send(20, 12)
    send(40, 13)   # held 40 s: fired
    [(alert, raised)] = db.execute("SELECT id, raised_at FROM alerts WHERE rule_id = %s", (rule,)).fetchall()
    assert raised == t0 + timedelta(seconds=40)
    send(30, 8)    # late: the hold was broken at 30 s, and restarts at 40 s
    wait_for(lambda: db.execute("SELECT withdrawn_at FROM alerts WHERE id = %s", (alert,)).fetchone()[0],
             timeout=20, message="for the withdrawal")
    assert db.execute("SELECT status, closed_at IS NOT NULL FROM alerts WHERE id = %s", (alert,)).fetchone() \
        == ("closed", True)
    assert _events(db, rule) == [("raised", "engine"), ("withdrawn", "engine")]
    note = db.execute("SELECT note FROM alert_events WHERE action = 'withdrawn'").fetchone()[0]
    assert "late" in note and (t0 + timedelta(seconds=30)).isoformat() in note
    assert db.execute("SELECT phase, since FROM alert_rule_state WHERE rule_id = %s", (rule,)).fetchone() \
        == ("pending", t0 + timedelta(seconds=40))
    send(75, 14)   # 35 s since the hold restarted: fires now
    wait_for(lambda: _alerts(db, rule), timeout=20, message="for the new alert")
    assert _alerts(db, rule) == [(t0 + timedelta(seconds=75), None)]


def test_late_readings_are_seen_as_late_after_a_restart(db, register, ingest, publisher):
    """A rule that fired and cleared within one batch leaves no state row; after a restart the
    worker still knows the late reading is late (from the stored readings) and moves the clear."""
    ids = register("uci", {"h-1": ["level"]})
    rule = _level_rule(db, ids[("h-1", "level")], hold_s=0)
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=10)
    worker = ingest()
    publisher.publish("cim/v1/uci/h-1/up", {"readings": [  # one message: one batch
        {"channel": "level", "value": v, "time": (t0 + timedelta(seconds=s)).isoformat()}
        for s, v in ((0, 11), (10, 4))]})
    wait_for(lambda: _alerts(db, rule) and _alerts(db, rule)[0][1], timeout=20, message="for the alert and clear")
    assert db.execute("SELECT count(*) FROM alert_rule_state").fetchone()[0] == 0
    worker.stop()
    ingest()
    _sender(db, publisher, "h-1", "level", t0)(5, 3)  # late, and below the clear value: it cleared at 5 s
    wait_for(lambda: _alerts(db, rule)[0][1] == t0 + timedelta(seconds=5), timeout=20, message="for the clear to move")
    assert _events(db, rule) == [("raised", "engine"), ("resolved", "engine"), ("note", "engine")]


class _InProcess:
    """The engine in this process behind the real writer: each write is one batch."""

    def __init__(self, database_url: str):
        from cimtwin.store.writer import ReadingWriter
        from cimtwin.twin.alerting import AlertEngine

        self.alerts = AlertEngine(database_url, application_name="test-alerts")
        self.writer = ReadingWriter(database_url, application_name="test-alerts", on_inserted=self.alerts)
        self.alerts.maybe_refresh()

    def write(self, sensor: int, t0: datetime, *points: tuple[float, float]) -> None:
        self.write_rows([(t0 + timedelta(seconds=s), sensor, float(v)) for s, v in points])

    def write_rows(self, rows: list[tuple[datetime, int, float]]) -> None:
        self.writer.write([(t, sensor, v, datetime.now(timezone.utc)) for t, sensor, v in rows])
        assert self.writer.hook_failures == 0, self.writer.last_hook_error

    def close(self) -> None:
        self.writer.close()
        self.alerts.close()


@pytest.fixture
def engine(database_url, db):
    """``engine()``: an in-process engine for the rules inserted so far."""
    made: list[_InProcess] = []

    def make() -> _InProcess:
        made.append(_InProcess(database_url))
        return made[-1]

    yield make
    for e in made:
        e.close()


def test_a_failing_engine_loses_no_reading_and_leaves_no_half_written_alert(db, register, engine, monkeypatch):
    from cimtwin.store import alert_engine as store

    ids = register("uci", {"h-1": ["level"], "h-2": ["level"]})
    watched, other = ids[("h-1", "level")], ids[("h-2", "level")]
    rule = _level_rule(db, watched, hold_s=0)
    e = engine()
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=10)
    rows = [(t0, watched, 11.0, t0), (t0, other, 3.0, t0)]
    assert e.alerts.touches(rows) and not e.alerts.touches(rows[1:])

    def rule_bug(*args, **kwargs):
        raise RuntimeError("a rule bug")

    monkeypatch.setattr(store, "save_states", rule_bug)  # after the alert is raised in the transaction
    assert e.writer.write(rows) == 2
    assert e.writer.hook_failures == 1 and "a rule bug" in e.writer.last_hook_error
    assert db.execute("SELECT sensor_id, value FROM readings ORDER BY sensor_id").fetchall() == [
        (watched, 11.0), (other, 3.0)]
    assert db.execute("SELECT count(*) FROM latest").fetchone()[0] == 2
    assert _alerts(db, rule) == [] and db.execute("SELECT count(*) FROM alert_events").fetchone()[0] == 0
    monkeypatch.undo()
    e.writer.write([(t0 + timedelta(seconds=60), watched, 12.0, t0)])
    assert e.writer.hook_failures == 1
    assert _alerts(db, rule) == [(t0 + timedelta(seconds=60), None)]


def test_an_alert_someone_acknowledged_is_kept_with_a_note(db, register, engine):
    ids = register("uci", {"h-1": ["level"]})
    sensor = ids[("h-1", "level")]
    rule = _level_rule(db, sensor)
    e = engine()
    alerts, write = e.alerts, e.write
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=10)
    write(sensor, t0, (0, 11), (20, 12), (40, 13))
    [alert] = db.execute("SELECT id FROM alerts WHERE rule_id = %s", (rule,)).fetchone()
    db.execute("UPDATE alerts SET status = 'acknowledged', acknowledged_at = now() WHERE id = %s", (alert,))
    db.execute("INSERT INTO alert_events (alert_id, actor, action, from_status, to_status) "
               "VALUES (%s, 'key:1:operator', 'acknowledged', 'open', 'acknowledged')", (alert,))
    write(sensor, t0, (30, 8))
    assert alerts.late == 1 and alerts.replays == 1 and alerts.withdrawn == 0
    assert db.execute("SELECT status, withdrawn_at FROM alerts WHERE id = %s", (alert,)).fetchone() \
        == ("acknowledged", None)
    assert _events(db, rule)[-1] == ("note", "engine")
    assert "kept" in db.execute("SELECT note FROM alert_events ORDER BY id DESC LIMIT 1").fetchone()[0]


def test_a_reading_later_than_the_look_back_is_counted_not_evaluated(db, register, engine):
    from cimtwin.twin.alerting import LATE_LOOKBACK_S

    ids = register("uci", {"h-1": ["level"]})
    sensor = ids[("h-1", "level")]
    rule = _level_rule(db, sensor)
    e = engine()
    alerts, write = e.alerts, e.write
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=LATE_LOOKBACK_S + 3600)
    write(sensor, t0, (0, 11), (20, 12), (40, 13))   # fires at 40 s
    write(sensor, t0, (LATE_LOOKBACK_S + 100, 2))   # clears, more than the look-back later
    write(sensor, t0, (30, 8))                       # would break the hold, but it is too late
    assert (alerts.late, alerts.too_late, alerts.replays) == (1, 1, 0)
    assert _alerts(db, rule) == [(t0 + timedelta(seconds=40), t0 + timedelta(seconds=LATE_LOOKBACK_S + 100))]
    assert [a for a, _ in _events(db, rule)] == ["raised", "resolved"]
    write(sensor, t0, (LATE_LOOKBACK_S + 50, 12))    # late but within the look-back: evaluated
    assert (alerts.late, alerts.too_late, alerts.replays) == (2, 1, 1)


def test_a_late_reading_changes_a_rate_of_change_alert(db, register, engine):
    ids = register("uci", {"well-1": ["level"]})
    sensor = ids[("well-1", "level")]
    rule = db.execute("""INSERT INTO alert_rules (name, kind, condition, scope, severity)
                         VALUES ('water rising', 'rate', %s, %s, 'major') RETURNING id""",
                      (json.dumps({"op": ">", "per_s": 0.05 / 60, "window_s": 120}),
                       json.dumps({"sensor_id": sensor}))).fetchone()[0]
    e = engine()
    alerts, write = e.alerts, e.write
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=30)
    write(sensor, t0, (0, 1.00), (240, 1.15), (300, 1.15))  # no two readings within 120 s rising: quiet
    assert _alerts(db, rule) == []
    write(sensor, t0, (150, 1.00))  # late: 15 cm in the 90 s to 240 s, then flat
    assert _alerts(db, rule) == [(t0 + timedelta(seconds=240), t0 + timedelta(seconds=300))]
    assert alerts.replays == 1


def test_a_late_reading_changes_a_composite_alert(db, register, engine):
    ids = register("uci", {"room-1": ["smoke", "temperature"]})
    smoke, temperature = ids[("room-1", "smoke")], ids[("room-1", "temperature")]
    rule = db.execute(
        """INSERT INTO alert_rules (name, kind, condition, scope, severity)
           VALUES ('fire', 'composite', %s, '{}', 'critical') RETURNING id""",
        (json.dumps({"mode": "all", "hold_s": 0, "conditions": [
            {"quantity": "smoke", "op": ">=", "value": 1}, {"quantity": "temperature", "op": ">", "value": 57}]}),)
    ).fetchone()[0]
    e = engine()
    alerts, write = e.alerts, e.write
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=30)
    e.write_rows([(t0, smoke, 1), (t0, temperature, 25)])
    write(temperature, t0, (20, 60))  # smoke and heat at 20 s: fire
    write(smoke, t0, (30, 0))
    assert _alerts(db, rule) == [(t0 + timedelta(seconds=20), t0 + timedelta(seconds=30))]
    write(smoke, t0, (10, 0))  # late: the smoke had gone at 10 s, before the heat
    assert _alerts(db, rule) == []
    assert [a for a, _ in _events(db, rule)] == ["raised", "resolved", "withdrawn"]
    write(smoke, t0, (25, 1))  # late again: smoke at 25 s with the heat of 20 s
    assert _alerts(db, rule) == [(t0 + timedelta(seconds=25), t0 + timedelta(seconds=30))]
    assert alerts.replays == 2


RANDOM_RULES = {
    "threshold": lambda rng: {"op": ">", "value": 10, "clear_value": rng.choice([None, 7, 5]),
                              "hold_s": rng.choice([0, 30, 90])},
    "rate": lambda rng: {"op": ">", "per_s": 0.05, "window_s": rng.choice([60, 120])},
    "composite": lambda rng: {"mode": rng.choice(["all", "any"]), "hold_s": rng.choice([0, 40]), "conditions": [
        {"quantity": "a", "op": ">", "value": 10}, {"quantity": "b", "op": "<", "value": 3}]},
}


@pytest.mark.parametrize("seed", range(6))
def test_random_series_shuffled_across_batches_give_the_alerts_of_the_series_in_order(db, register, engine, seed):
    """A random series (300 steps, a tenth of the readings missing) goes in order, 20 steps a
    batch, to one device, and shuffled (each reading up to 20 min late, batches of 1 to 15) to a
    second device with the same rule: both end with the same alerts and the same state."""
    rng = random.Random(seed)
    kind = ("threshold", "rate", "composite")[seed % 3]
    condition = RANDOM_RULES[kind](rng)
    channels = ["a", "b"] if kind == "composite" else ["a"]
    ids = register("r", {"in-order": channels, "shuffled": channels})
    rules = {device: db.execute(
        "INSERT INTO alert_rules (name, kind, condition, scope, severity) VALUES (%s, %s, %s, %s, 'major') "
        "RETURNING id", (device, kind, json.dumps(condition), json.dumps({"sensor_id": ids[(device, "a")]}))
    ).fetchone()[0] for device in ("in-order", "shuffled")}
    e = engine()
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=5)
    points, t, level = [], 0, 5.0
    for _ in range(300):
        t += rng.choice([5, 10, 20, 30, 60])
        for channel in channels:
            level += rng.choice([0, 0, 1, 5, 8, -6])
            v = level if kind == "rate" else float(rng.choice([1, 2, 4, 6, 8, 9, 11, 12, 15]))
            if rng.random() < 0.9:
                points.append((t0 + timedelta(seconds=t), channel, v))
    for k in range(0, len(points), 20):
        e.write_rows([(t, ids[("in-order", ch)], v) for t, ch, v in points[k:k + 20]])
    shuffled = sorted(points, key=lambda p: p[0] + timedelta(seconds=rng.uniform(0, 1200)))
    k = 0
    while k < len(shuffled):
        size = rng.randint(1, 15)
        e.write_rows([(t, ids[("shuffled", ch)], v) for t, ch, v in shuffled[k:k + size]])
        k += size
    assert e.alerts.replays > 10 and e.alerts.too_late == 0

    def outcome(rule):
        alerts = db.execute("""SELECT raised_at, cleared_at, count, first_value, last_value, last_at, status
                               FROM alerts WHERE rule_id = %s AND withdrawn_at IS NULL ORDER BY raised_at""",
                            (rule,)).fetchall()
        state = db.execute("SELECT phase, since FROM alert_rule_state WHERE rule_id = %s", (rule,)).fetchone()
        return alerts, tuple(state) if state else ("clear", None)

    assert outcome(rules["shuffled"]) == outcome(rules["in-order"]), (kind, condition)
    assert outcome(rules["in-order"])[0], "the series raises alerts"
