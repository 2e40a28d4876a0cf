"""Notifications against a real database, broker and HTTP: the outbox trigger, `cimtwin notify`
(webhooks with HMAC signatures, retries and order; MQTT cim/v1/alerts/…), and the SSE stream.

Alerts and their events are written straight in SQL, the way the engine and the API write them:
the alert first, then its event, in one transaction."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from psycopg.types.json import Jsonb

from cimtwin.settings import Settings, settings_env

from .helpers import ApiServer, free_port, login, wait_for

SECRET = "whsec-test-0123456789abcdef"


# ----------------------------------------------------------------------------- data

def _box(lon: float, lat: float, size: float = 0.01) -> str:
    return (f"SRID=4326;MULTIPOLYGON((({lon} {lat},{lon + size} {lat},{lon + size} {lat + size},"
            f"{lon} {lat + size},{lon} {lat})))")


def make_area(db, code: str, level: str, parent: int | None = None, lon: float = 121.6, lat: float = 31.2) -> int:
    return db.execute("INSERT INTO areas (code, name, level, parent_id, geom) VALUES (%s, %s, %s, %s, %s) "
                      "RETURNING id", (code, code.upper(), level, parent, _box(lon, lat))).fetchone()[0]


def make_party(db, code: str, channels: dict | None = None) -> int:
    return db.execute("INSERT INTO parties (code, name, kind, channels) VALUES (%s, %s, 'other', %s) RETURNING id",
                      (code, code.title(), Jsonb(channels or {}))).fetchone()[0]


def raise_alert(conn, *, title: str, severity: str = "major", area_id: int | None = None,
                party_id: int | None = None, lon: float | None = 121.601, lat: float | None = 31.201,
                commit: bool = True) -> tuple[int, int]:
    """One alert and its 'raised' event; returns (alert id, event id)."""
    geom = f"SRID=4326;POINT({lon} {lat})" if lon is not None else None
    alert_id = conn.execute(
        """INSERT INTO alerts (source, kind, severity, title, geom, area_id, party_id, dispatch_level,
                               first_value, last_value, raised_at, last_at, ack_due_at, close_due_at)
           VALUES ('manual', 'hotline', %s, %s, %s, %s, %s, %s, 42.5, 42.5, now(), now(),
                   now() + interval '15 min', now() + interval '1 hour') RETURNING id""",
        (severity, title, geom, area_id, party_id, "community" if party_id else "none")).fetchone()[0]
    event_id = conn.execute(
        "INSERT INTO alert_events (alert_id, actor, action, to_status, note) "
        "VALUES (%s, 'engine', 'raised', 'open', %s) RETURNING id", (alert_id, f"raised {title}")).fetchone()[0]
    if commit and not conn.autocommit:
        conn.commit()
    return alert_id, event_id


def change(conn, alert_id: int, *, action: str, to_status: str | None = None, party_id: int | None = None,
           escalate: bool = False, actor: str = "key:1:ops", note: str | None = None) -> int:
    """Changes the alert, then records the event; returns the event id."""
    old = conn.execute("SELECT status FROM alerts WHERE id = %s FOR UPDATE", (alert_id,)).fetchone()[0]
    conn.execute("""UPDATE alerts SET status = coalesce(%s, status),
                           party_id = CASE WHEN %s THEN %s ELSE party_id END,
                           escalation_level = escalation_level + CASE WHEN %s THEN 1 ELSE 0 END
                     WHERE id = %s""", (to_status, escalate, party_id, escalate, alert_id))
    return conn.execute(
        "INSERT INTO alert_events (alert_id, actor, action, from_status, to_status, note) "
        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (alert_id, actor, action, old, to_status or old, note)).fetchone()[0]


def outbox(db, **where) -> list[dict]:
    cond = " AND ".join(f"{k} = %({k})s" for k in where) or "true"
    cur = db.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(f"SELECT * FROM notification_outbox WHERE {cond} ORDER BY id", where).fetchall()


# ----------------------------------------------------------------------------- processes and receivers

class NotifyProcess:
    """`cimtwin notify` as a subprocess."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.proc: subprocess.Popen | None = None

    def start(self) -> NotifyProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "cimtwin.cli", "notify"], env=settings_env(self.settings),
                                     start_new_session=True)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def notifier(settings):
    started: list[NotifyProcess] = []

    def start(**overrides) -> NotifyProcess:
        proc = NotifyProcess(settings.model_copy(update=overrides)).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


class WebhookReceiver:
    """A real HTTP server on ``port`` that records every request; ``status`` decides the answer."""

    def __init__(self, port: int):
        self.port = port
        self.requests: list[dict] = []
        self.status = 200
        self.server: ThreadingHTTPServer | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver.status
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.requests.append({"path": self.path, "headers": headers, "body": body, "status": status,
                                          "at": time.monotonic()})
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.handler = Handler

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def delivered(self) -> list[dict]:
        return [r for r in self.requests if 200 <= r["status"] < 300]


def check_signature(request: dict, secret: str) -> None:
    """The receiver's side, written from the documented scheme (not with cimtwin's code)."""
    headers = request["headers"]
    timestamp, signature = headers["x-cimtwin-timestamp"], headers["x-cimtwin-signature"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + request["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signature, f"sha256={expected}"), "bad signature"
    assert abs(time.time() - int(timestamp)) < 300
    assert not hmac.compare_digest(signature, "sha256=" + hmac.new(b"wrong-secret-0000", f"{timestamp}.".encode()
                                                                   + request["body"], hashlib.sha256).hexdigest())


class MqttListener:
    def __init__(self, settings: Settings, topic: str = "cim/v1/alerts/#"):
        self.messages: list[tuple[str, dict, int]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, json.loads(m.payload), m.qos))
        ep = login(self.client, settings)
        self.client.connect(ep.host, ep.port)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class SseClient:
    """Reads `GET /alerts/stream` in a thread; ``events`` fills with (id, event, data) frames."""

    def __init__(self, api: ApiServer, *, params: dict | None = None, headers: dict | None = None):
        self.events: list[tuple[int | None, str, dict]] = []
        self.comments: list[str] = []
        self.status: int | None = None
        self.content_type = ""
        self.error: BaseException | None = None
        self.started = threading.Event()
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(api, params or {}, {**api.headers, **(headers or {})}),
                                        daemon=True)
        self._thread.start()
        assert self.started.wait(15), "the stream did not start"

    def _read(self, api, params, headers) -> None:
        try:
            with httpx.Client(base_url=api.url, timeout=httpx.Timeout(10, read=60)) as client, \
                    client.stream("GET", "/alerts/stream", params=params, headers=headers) as response:
                self.status, self.content_type = response.status_code, response.headers.get("content-type", "")
                if response.status_code != 200:
                    response.read()
                    self.body = response.text
                    return
                frame: dict[str, str] = {}
                for line in response.iter_lines():
                    if line.startswith(":"):
                        self.comments.append(line)
                        self.started.set()
                    elif line == "":
                        if "data" in frame:
                            self.events.append((int(frame["id"]) if "id" in frame else None,
                                                frame.get("event", "message"), json.loads(frame["data"])))
                        frame = {}
                    else:
                        name, _, value = line.partition(":")
                        frame[name] = value.removeprefix(" ")
                    if self._stop.is_set():
                        return
        except BaseException as exc:  # noqa: BLE001 (reported to the test)
            self.error = exc
        finally:
            self.started.set()
            self.finished.set()

    def alert_ids(self) -> list[int]:
        return [e[0] for e in self.events if e[1] == "alert"]

    def wait_for_ids(self, ids: list[int], timeout: float = 10) -> None:
        wait_for(lambda: set(ids) <= set(self.alert_ids()), timeout=timeout, message=f"for events {ids}")

    def close(self) -> None:
        self._stop.set()  # the reader returns at the next line (a keepalive at the latest)
        assert self.finished.wait(10), "the stream reader did not stop"


@pytest.fixture
def stream_api(settings, db):
    server = ApiServer(settings.model_copy(update={"stream_keepalive_s": 0.3}))
    server.start()
    yield server
    server.stop()


# ----------------------------------------------------------------------------- the outbox trigger

def test_outbox_rows_come_from_the_trigger_in_the_same_transaction(db, database_url):
    street = make_area(db, "st-1", "street")
    hook_party = make_party(db, "pm-hook", {"webhook": {"url": "http://127.0.0.1:9/a", "secret": SECRET}})
    plain_party = make_party(db, "pm-plain", {"webhook": "http://127.0.0.1:9/plain"})
    silent_party = make_party(db, "pm-silent", {"sms": "12345"})

    # Rolled back: no alert, no event, no notification.
    with psycopg.connect(database_url) as conn:
        alert_id, event_id = raise_alert(conn, title="gas", area_id=street, party_id=hook_party, commit=False)
        assert conn.execute("SELECT count(*) FROM notification_outbox WHERE alert_event_id = %s",
                            (event_id,)).fetchone()[0] == 2  # written already, inside the transaction
        assert outbox(db) == []  # and invisible outside it
        conn.rollback()
    assert outbox(db) == [] and db.execute("SELECT count(*) FROM alert_events").fetchone()[0] == 0

    with psycopg.connect(database_url) as conn:
        alert_id, event_id = raise_alert(conn, title="gas LEL 25%", severity="critical", area_id=street,
                                         party_id=hook_party)
    rows = outbox(db, alert_event_id=event_id)
    assert [(r["channel"], r["target"], r["party_id"]) for r in rows] == [
        ("mqtt", "cim/v1/alerts/st-1/critical", None), ("webhook", "http://127.0.0.1:9/a", hook_party)]
    assert all(r["delivered_at"] is None and r["attempts"] == 0 for r in rows)
    doc = rows[0]["payload"]
    assert rows[1]["payload"] == doc and SECRET not in json.dumps(doc)
    assert doc["version"] == 1
    assert doc["event"] == {"id": event_id, "alert_id": alert_id, "action": "raised", "from_status": None,
                            "to_status": "open", "actor": "engine", "at": doc["event"]["at"],
                            "note": "raised gas LEL 25%", "detail": {}}
    assert doc["event"]["at"].endswith("Z")
    alert = doc["alert"]
    assert {k: alert[k] for k in ("id", "title", "kind", "severity", "status", "source", "area_id", "area_code",
                                  "party_id", "party_code", "dispatch_level", "escalation_level", "last_value",
                                  "count", "lon", "lat", "rule_id", "sensor_id", "building_id", "room_id",
                                  "component_id")} == {
        "id": alert_id, "title": "gas LEL 25%", "kind": "hotline", "severity": "critical", "status": "open",
        "source": "manual", "area_id": street, "area_code": "st-1", "party_id": hook_party, "party_code": "pm-hook",
        "dispatch_level": "community", "escalation_level": 0, "last_value": 42.5, "count": 1, "lon": 121.601,
        "lat": 31.201, "rule_id": None, "sensor_id": None, "building_id": None, "room_id": None,
        "component_id": None}
    assert alert["raised_at"].endswith("Z")

    # Acknowledged: the document shows the alert after the change.
    ack = change(db, alert_id, action="acknowledged", to_status="acknowledged", note="on it")
    rows = outbox(db, alert_event_id=ack)
    assert [r["channel"] for r in rows] == ["mqtt", "webhook"]
    assert rows[0]["payload"]["alert"]["status"] == "acknowledged"
    assert rows[0]["payload"]["event"]["from_status"] == "open" and rows[0]["payload"]["event"]["actor"] == "key:1:ops"

    # Escalated to a party with a plain URL: the webhook goes to the new party only.
    esc = change(db, alert_id, action="escalated", party_id=plain_party, escalate=True, actor="escalation")
    rows = outbox(db, alert_event_id=esc)
    assert [(r["channel"], r["target"], r["party_id"]) for r in rows] == [
        ("mqtt", "cim/v1/alerts/st-1/critical", None), ("webhook", "http://127.0.0.1:9/plain", plain_party)]
    assert rows[0]["payload"]["alert"]["escalation_level"] == 1
    # …and on to a party without a webhook: MQTT only.
    esc2 = change(db, alert_id, action="escalated", party_id=silent_party, escalate=True, actor="escalation")
    assert [r["channel"] for r in outbox(db, alert_event_id=esc2)] == ["mqtt"]

    # Nowhere and nobody: still notified (topic 'none'), never dropped.
    _, lost_event = raise_alert(db, title="hotline report", severity="info", lon=None, lat=None)
    rows = outbox(db, alert_event_id=lost_event)
    assert [(r["channel"], r["target"]) for r in rows] == [("mqtt", "cim/v1/alerts/none/info")]
    assert rows[0]["payload"]["alert"]["dispatch_level"] == "none"
    assert rows[0]["payload"]["alert"]["party_id"] is None and rows[0]["payload"]["alert"]["lon"] is None

    # The webhook secret is write-only in the API's party output.
    party = db.execute("SELECT channels #- '{webhook,secret}' FROM parties WHERE id = %s", (hook_party,)).fetchone()[0]
    assert party == {"webhook": {"url": "http://127.0.0.1:9/a"}}


def test_party_webhook_secret_is_write_only_over_the_api(api, db):
    r = api.post("/parties", json={"code": "pm-api", "name": "PM", "kind": "property_manager",
                                   "channels": {"webhook": {"url": "https://example.org/h", "secret": SECRET}}})
    assert r.status_code == 201, r.text
    assert r.json()["channels"] == {"webhook": {"url": "https://example.org/h"}}
    assert api.get(f"/parties/{r.json()['id']}").json()["channels"] == {"webhook": {"url": "https://example.org/h"}}
    stored = db.execute("SELECT channels FROM parties WHERE id = %s", (r.json()["id"],)).fetchone()[0]
    assert stored["webhook"]["secret"] == SECRET
    r = api.post("/parties", json={"code": "pm-short", "name": "PM", "kind": "other",
                                   "channels": {"webhook": {"url": "https://example.org/h", "secret": "short"}}})
    assert r.status_code == 422


# ----------------------------------------------------------------------------- webhooks

@pytest.mark.slow
def test_webhook_down_for_30_s_then_failing_gets_everything_once_in_order(db, database_url, notifier):
    street = make_area(db, "st-w", "street")
    port, other_port = free_port(), free_port()
    receiver, other = WebhookReceiver(port), WebhookReceiver(other_port)
    down_party = make_party(db, "pm-down", {"webhook": {"url": receiver.url, "secret": SECRET}})
    up_party = make_party(db, "pm-up", {"webhook": {"url": other.url, "secret": "another-secret-0123456789"}})
    other.start()
    try:
        notifier(notify_backoff_base_s=0.5, notify_backoff_max_s=3.0, notify_poll_s=1.0)
        t0 = time.monotonic()
        expected: list[int] = []
        a1, e = raise_alert(db, title="water rising", area_id=street, party_id=down_party)
        expected.append(e)
        expected.append(change(db, a1, action="acknowledged", to_status="acknowledged"))
        a2, e = raise_alert(db, title="smoke", severity="critical", area_id=street, party_id=down_party)
        expected.append(e)
        _, other_event = raise_alert(db, title="elsewhere", area_id=street, party_id=up_party)

        # The other party's webhook is up: delivered at once, whatever the first one does.
        wait_for(lambda: other.delivered(), timeout=10, message="for the working webhook")
        assert [int(r["headers"]["x-cimtwin-event-id"]) for r in other.delivered()] == [other_event]
        check_signature(other.delivered()[0], "another-secret-0123456789")

        # More events while the receiver is down.
        time.sleep(8)
        expected.append(change(db, a2, action="note", note="crew on the way"))
        expected.append(change(db, a1, action="resolved", to_status="resolved"))
        pending = [r for r in outbox(db, channel="webhook", party_id=down_party)]
        assert len(pending) == 5 and all(r["delivered_at"] is None for r in pending)
        head = pending[0]
        assert head["attempts"] >= 2 and "Connect" in head["last_error"], head
        # Only the head of the queue is tried: the later events wait behind it.
        assert all(r["attempts"] == 0 for r in pending[1:]), [r["attempts"] for r in pending]

        # Up after 30 s, answering 500 for a while, then 200.
        time.sleep(max(0.0, 30 - (time.monotonic() - t0)))
        receiver.status = 500
        receiver.start()
        wait_for(lambda: len(receiver.requests) >= 2, timeout=15, message="for retries against the 500s")
        head = outbox(db, id=pending[0]["id"])[0]
        assert head["delivered_at"] is None and head["last_error"].startswith("HTTP 500")
        receiver.status = 200
        wait_for(lambda: all(r["delivered_at"] for r in outbox(db, channel="webhook", party_id=down_party)),
                 timeout=30, message="for every webhook row to be delivered")

        failed = [r for r in receiver.requests if r["status"] == 500]
        assert {int(r["headers"]["x-cimtwin-event-id"]) for r in failed} == {expected[0]}  # the head, retried
        delivered = receiver.delivered()
        ids = [int(r["headers"]["x-cimtwin-event-id"]) for r in delivered]
        assert ids == expected  # each once, in order
        for request in delivered:
            check_signature(request, SECRET)
            body = json.loads(request["body"])
            assert body["event"]["id"] == int(request["headers"]["x-cimtwin-event-id"])
            assert body["alert"]["party_id"] == down_party
            assert request["headers"]["content-type"] == "application/json"
        assert [json.loads(r["body"])["event"]["action"] for r in delivered] == [
            "raised", "acknowledged", "raised", "note", "resolved"]
        # Nothing more arrives later (no duplicates from stale retries).
        time.sleep(2)
        assert len(receiver.delivered()) == len(expected)
        rows = outbox(db, channel="webhook", party_id=down_party)
        assert rows[0]["attempts"] > 2 and rows[0]["last_error"] is None
    finally:
        receiver.stop()
        other.stop()


def test_backoff_is_exponential_capped_and_jittered():
    from cimtwin.twin.notify import backoff_s, sign, verify_signature

    for attempts, (lo, hi) in {1: (0.5, 1), 2: (1, 2), 3: (2, 4), 6: (16, 32), 7: (30, 60), 50: (30, 60)}.items():
        values = [backoff_s(attempts, base=1, cap=60) for _ in range(200)]
        assert lo <= min(values) and max(values) <= hi and max(values) - min(values) > 0, (attempts, values[:5])
    body, ts = b'{"a":1}', str(int(time.time()))
    signature = sign(SECRET, ts, body)
    assert verify_signature(SECRET, timestamp=ts, body=body, signature=signature)
    assert not verify_signature(SECRET, timestamp=ts, body=b'{"a":2}', signature=signature)
    assert not verify_signature("another-secret-000", timestamp=ts, body=body, signature=signature)
    assert not verify_signature(SECRET, timestamp=str(int(ts) - 3600), body=body,
                                signature=sign(SECRET, str(int(ts) - 3600), body))


# ----------------------------------------------------------------------------- MQTT

def test_mqtt_publishes_each_event_on_its_area_and_severity_topic(db, settings, notifier):
    street = make_area(db, "440303001", "street")
    listener = MqttListener(settings)
    try:
        notifier()
        a1, e1 = raise_alert(db, title="gas", severity="critical", area_id=street)
        e2 = change(db, a1, action="acknowledged", to_status="acknowledged")
        _, e3 = raise_alert(db, title="report", severity="warning", lon=None, lat=None)
        wait_for(lambda: len(listener.messages) >= 3, timeout=15, message="for the MQTT notifications")
        by_topic: dict[str, list[int]] = {}
        for topic, doc, qos in listener.messages:
            assert qos == 1
            by_topic.setdefault(topic, []).append(doc["event"]["id"])
        # In order per topic (one target); topics are independent of each other.
        assert by_topic == {"cim/v1/alerts/440303001/critical": [e1, e2], "cim/v1/alerts/none/warning": [e3]}
        docs = {doc["event"]["id"]: doc for _, doc, _ in listener.messages}
        assert docs[e2]["alert"]["status"] == "acknowledged"
        assert docs[e1] == outbox(db, alert_event_id=e1)[0]["payload"]
        wait_for(lambda: all(r["delivered_at"] for r in outbox(db, channel="mqtt")), timeout=10,
                 message="for the MQTT rows to be marked delivered")
        time.sleep(1)
        assert len(listener.messages) == 3
    finally:
        listener.close()


# ----------------------------------------------------------------------------- SSE

def test_stream_live_filtered_and_resumed_without_gaps_or_repeats(db, stream_api, database_url):
    district = make_area(db, "d-1", "district")
    street = make_area(db, "s-1", "street", parent=district)
    community = make_area(db, "c-1", "community", parent=street)
    elsewhere = make_area(db, "d-2", "district", lon=121.7)
    _, before_event = raise_alert(db, title="before anyone listened", area_id=community)

    all_events = SseClient(stream_api)
    assert all_events.status == 200 and all_events.content_type.startswith("text/event-stream")
    filtered = SseClient(stream_api, params={"area_id": street, "severity": "major,critical"})
    single = SseClient(stream_api, params={"area_id": community, "severity": ["info"]})

    a1, e1 = raise_alert(db, title="in the community, major", severity="major", area_id=community)
    _, e2 = raise_alert(db, title="in the community, info", severity="info", area_id=community)
    _, e3 = raise_alert(db, title="in another district", severity="major", area_id=elsewhere)
    _, e4 = raise_alert(db, title="in the street, critical", severity="critical", area_id=street)
    _, e5 = raise_alert(db, title="nowhere", severity="critical", lon=None, lat=None)
    e6 = change(db, a1, action="acknowledged", to_status="acknowledged")
    all_events.wait_for_ids([e1, e2, e3, e4, e5, e6])
    filtered.wait_for_ids([e1, e4, e6])
    single.wait_for_ids([e2])
    time.sleep(0.5)
    assert all_events.alert_ids() == [e1, e2, e3, e4, e5, e6]  # live only: nothing from before
    assert filtered.alert_ids() == [e1, e4, e6]
    assert single.alert_ids() == [e2]
    last = all_events.events[-1][2]
    assert last == outbox(db, alert_event_id=e6)[0]["payload"]  # the same document as the outbox
    assert last["alert"]["status"] == "acknowledged" and last["event"]["from_status"] == "open"
    for client in (all_events, filtered, single):
        client.close()

    # Disconnected after e3; events go on; resuming with Last-Event-ID replays exactly the rest.
    missed = [raise_alert(db, title=f"while away {i}", severity="major", area_id=community)[1] for i in range(3)]
    resumed = SseClient(stream_api, headers={"Last-Event-ID": str(e3)})
    resumed.wait_for_ids([e4, e5, e6, *missed])
    live = raise_alert(db, title="after the resume", severity="major", area_id=street)[1]
    resumed.wait_for_ids([live])
    time.sleep(0.5)
    assert resumed.alert_ids() == [e4, e5, e6, *missed, live]
    resumed.close()
    # The query parameter works the same, with the filters applied to the replay too.
    again = SseClient(stream_api, params={"last_event_id": before_event, "area_id": community,
                                          "severity": "major"})
    again.wait_for_ids([e1, e6, *missed])
    time.sleep(0.5)
    assert again.alert_ids() == [e1, e6, *missed]
    again.close()

    # Transactions commit out of id order: the stream still sends ids in order, and a
    # rolled-back id does not hold it up.
    watcher = SseClient(stream_api)
    with psycopg.connect(database_url) as slow, psycopg.connect(database_url) as fast, \
            psycopg.connect(database_url) as doomed:
        _, first = raise_alert(slow, title="slow transaction", commit=False)
        _, second = raise_alert(fast, title="fast transaction")
        time.sleep(1.0)
        assert first not in watcher.alert_ids() and second not in watcher.alert_ids()  # held for the gap
        slow.commit()
        watcher.wait_for_ids([first, second])
        _, lost = raise_alert(doomed, title="rolled back", commit=False)
        _, third = raise_alert(fast, title="after a rollback")
        time.sleep(0.3)
        doomed.rollback()
        t = time.monotonic()
        watcher.wait_for_ids([third], timeout=3)
        assert time.monotonic() - t < 2.5
    time.sleep(0.3)
    assert watcher.alert_ids() == [first, second, third] and lost not in watcher.alert_ids()
    watcher.close()


def test_stream_sends_the_stored_document_whether_the_notification_carries_it_or_not(db, stream_api, database_url):
    """The usual event comes with its document in the notification (migration 0015); one too long
    for a notification (8,000 bytes) is announced by id and read. Both reach the stream in order,
    each exactly as the outbox stored it, and a replay sends the same."""
    street = make_area(db, "st-doc", "street")
    watcher = SseClient(stream_api)
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN cimtwin_alert_events")
        alert_id, raised = raise_alert(db, title="gas", area_id=street)
        long_note = change(db, alert_id, action="note", note="n" * 9000)
        db.commit()
        _, after = raise_alert(db, title="smoke", area_id=street)
        notes = [n.payload for n in listener.notifies(timeout=5, stop_after=3)]
    watcher.wait_for_ids([raised, long_note, after])
    time.sleep(0.3)
    assert watcher.alert_ids() == [raised, long_note, after]
    stored = {r["alert_event_id"]: r["payload"] for r in outbox(db, channel="mqtt")}
    assert [n.partition(" ")[0] for n in notes] == [str(raised), str(long_note), str(after)]
    assert notes[1] == str(long_note)  # id only: the stream reads it
    assert [json.loads(notes[i].partition(" ")[2]) for i in (0, 2)] == [stored[raised], stored[after]]
    sent = {event_id: data for event_id, kind, data in watcher.events if kind == "alert"}
    assert sent == {i: stored[i] for i in (raised, long_note, after)}
    assert sent[long_note]["event"]["note"] == "n" * 9000
    watcher.close()
    replay = SseClient(stream_api, params={"last_event_id": raised - 1})
    replay.wait_for_ids([raised, long_note, after])
    assert {i: d for i, k, d in replay.events if k == "alert"} == sent
    replay.close()


def test_stream_requires_a_reader_key_and_valid_filters(stream_api, db):
    r = httpx.get(f"{stream_api.url}/alerts/stream", timeout=5)
    assert r.status_code == 401
    r = stream_api.get("/alerts/stream", params={"severity": "apocalyptic"})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_severity")
    r = stream_api.get("/alerts/stream", params={"area_id": 999999})
    assert (r.status_code, r.json()["error"]) == (404, "area_not_found")
    r = stream_api.get("/alerts/stream", headers={"Last-Event-ID": "abc"})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_last_event_id")


def test_a_slow_client_is_cut_off_not_waited_for():
    from cimtwin.api.services.alert_stream import AlertHub
    from cimtwin.store.notifications import FeedEvent

    async def scenario():
        hub = AlertHub(Settings(stream_queue_size=10), pool=None)
        slow, _ = hub.subscribe(area_ids=None, severities=None)
        quick, _ = hub.subscribe(area_ids=frozenset({7}), severities=frozenset({"major"}))
        for i in range(1, 16):
            hub._emit(FeedEvent(i, "{}", 7, "major" if i % 2 else "info"))
            while not quick.queue.empty():  # a client that keeps up
                quick.queue.get_nowait()
        assert slow.closed and slow not in hub.subscribers and slow.queue.qsize() == 10
        assert not quick.closed and quick in hub.subscribers
        assert hub.horizon == 15

    asyncio.run(scenario())


def test_the_api_stops_with_streams_open(settings, db):
    server = ApiServer(settings)
    server.start()
    try:
        client = SseClient(server)
        assert client.status == 200
        t = time.monotonic()
        os.killpg(server.proc.pid, signal.SIGTERM)
        server.proc.wait(timeout=15)  # an open stream does not hold the shutdown up for ever
        # uvicorn re-raises the SIGTERM it handled once it has shut down: -15, not a SIGKILL's -9
        assert time.monotonic() - t < 10 and server.proc.returncode in (0, -signal.SIGTERM)
        assert client.finished.wait(5)
    finally:
        server.stop()


def test_alerts_api_changes_reach_the_stream_and_the_outbox(stream_api, db):
    """End to end with the alerts API: an external event and an acknowledgement, as a client sees them."""
    street = make_area(db, "s-api", "street")
    client = SseClient(stream_api, params={"area_id": street})
    r = stream_api.post("/events", json={"source": "hotline", "kind": "waterlogging", "severity": "major",
                                         "title": "water on the road", "area_id": street, "external_ref": "12345-1"})
    assert r.status_code == 201, r.text
    alert_id = r.json()["id"]
    r = stream_api.post(f"/alerts/{alert_id}/acknowledge", json={"note": "crew sent"})
    assert r.status_code == 200, r.text
    events = db.execute("SELECT id, action FROM alert_events WHERE alert_id = %s ORDER BY id", (alert_id,)).fetchall()
    assert [e[1] for e in events] == ["raised", "acknowledged"]
    client.wait_for_ids([e[0] for e in events])
    docs = [e[2] for e in client.events if e[1] == "alert"]
    assert [(d["event"]["action"], d["alert"]["status"], d["alert"]["area_code"]) for d in docs] == [
        ("raised", "open", "s-api"), ("acknowledged", "acknowledged", "s-api")]
    assert docs[1]["event"]["note"] == "crew sent" and docs[1]["event"]["actor"].startswith("admin")
    assert [r["target"] for r in outbox(db, channel="mqtt")] == ["cim/v1/alerts/s-api/major"] * 2
    client.close()
