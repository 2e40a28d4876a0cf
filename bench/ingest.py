"""End-to-end ingest benchmark: MQTT (QoS 1) → `cimtwin ingest` → PostgreSQL, against its limits.

Run:  .venv/bin/python bench/ingest.py [--messages 200000] [--multi-messages 10000]
                                       [--naive-messages 10000] [--workers 2] [--wait-idle 300]

It prints a table and, as its last line, one JSON object. It is not a test: it exits 0
and reports what it measured, whatever that is. A full run takes about 2-2.5 minutes
(most of it publishing), plus the wait for an idle machine.

What is measured (all on the same broker, database and machine, in one run)
---------------------------------------------------------------------------
* ``raw_subscriber_msgs_per_s`` (a): a bare ``paho.mqtt.client.Client`` (MQTT 5, QoS 1,
  persistent session) in its own process; its callback only counts and paho acknowledges
  each message itself. The receive limit of one Python process *with plain paho*.
  ``cimtwin ingest`` uses its own paho subclass (``IngestClient``, see
  ``ingest/worker.py``) that receives several times faster than plain paho, so
  ``canonical_1_vs_raw_subscriber`` can exceed 1.
* ``raw_copy_rows_per_s`` (b): psycopg binary COPY (``write_row``, types set) of exactly
  the rows the 1-reading messages carry, built beforehand, straight into ``readings``
  (primary key ``(sensor_id, time)``), 10,000 rows per COPY and transaction.
* ``naive_bridge_readings_per_s`` (c): a paho subscriber that does one INSERT + COMMIT
  per message in its callback (paho acks when the callback returns, i.e. after COMMIT).
  It gets the first ``--naive-messages`` of the same 1-reading messages, because it is slow.
* ``canonical_1_readings_per_s``: ``cimtwin ingest`` (one process, the default settings)
  as a subprocess, 1 reading per message: the same messages as (a).
* ``canonical_50_readings_per_s``: the same with canonical messages of 50 readings.
* ``profile_json_readings_per_s`` / ``senml_readings_per_s``: ``cimtwin ingest`` decoding a
  declared JSON profile (5 channels, one in °F converted to °C, epoch-ms time) and SenML
  packs of 20 records, each beside ``canonical_5_readings_per_s`` / ``canonical_20_readings_per_s``:
  canonical messages with as many readings, to the same kind of devices, in the same run.
  The devices are pinned to their profile version, as registered devices are.
* With ``--workers N`` (N > 1) the two ingest figures are also measured with N worker
  processes on one ``$share`` subscription (``*_multi`` in the JSON).

Messages: ``cim/v1/bench/s000..s099/up`` carry ``{"readings": [{"channel": "temp",
"value": …, "time": "<ISO 8601>"}]}`` (about 90 bytes), message i at t0 + i ms;
``cim/v1/bench/m000..m099/up`` carry a message time and 50 readings ``c00``..``c49``
(about 1.6 KB). Every reading is a distinct (sensor, time), about an hour in the past.

How rates are measured (why the comparison with (a) is fair)
------------------------------------------------------------
Every consumer drains a backlog that was loaded beforehand, so no publisher competes
with it for the 2 cores, and all of them face the same broker doing the same work:

1. Each consumer gets its own persistent MQTT session (its own client id, session
   expiry 600 s), subscribed at QoS 1 to ``cim/v1/bench/+/up`` and then disconnected.
2. Two paho publisher processes (QoS 1, paced: at most 10,000 unacknowledged publishes
   per client, far below the 65,535 packet ids) publish the messages, each those of half
   the devices, so that each device's messages stay in time order, as a device's own
   connection sends them (were they split by range, half of every device's readings
   would reach the alert engine as late readings); the broker queues
   them for every offline session. Publishing is over (all PUBACKs received) before any
   consumer starts. (a) and the ingest runs get the very same messages from one publish.
3. Then the consumers run one after the other; each rate is counted from the first
   message the consumer receives to the last message received (a) or the last row
   committed (ingest, naive bridge). Process start-up and connecting are excluded for
   all of them alike.
   * (a): first and last ``on_message`` in the subscriber.
   * ingest: start = ``min(received_at)`` of the stored rows (paho's receive time of the
     first message); end = the first poll (every 50 ms) that sees all rows committed.
     The poll reads the small ``readings_1h`` rollup, which the writer updates in the
     same transaction as ``readings`` (on TimescaleDB it counts ``readings``);
     afterwards ``count(*) FROM readings`` must equal the readings sent. So the ingest
     figure includes filling its batch pipeline at the start and the last batch's
     COMMIT at the end, which (a) does not have.
   * naive bridge: first message received to last COMMIT, inside the bridge process.
4. ``readings``, ``latest``, rollups and dead letters are truncated before each write phase.

The machine is shared: the bench first waits (``--wait-idle``, up to 300 s) until other
processes use less than 30 % of a core and no test, benchmark or build runs, then records
the CPU that other processes used during each measurement (``other_cpu_pct_of_core``) and
notes any measurement made under load.

Isolation and clean-up: the bench creates its own database (``cimtwin_bench``, from
TEMPLATE cimtwin_template, migrated; dropped at the end unless ``--keep-db``), its own
vendor ``bench`` with devices ``s000``.. (channel ``temp``) and ``m000``.. (channels
``c00``..``c49``), and uses client ids ``cimtwin-bench-<run>-*``. Its consumers subscribe
only to ``cim/v1/bench/+/up``. At the end every bench session is ended with
clean_start=True and SessionExpiryInterval 0, so the broker stops queueing for it.
Caveat: any *other* subscriber to the wildcard ``cim/v1/+/+/up`` (a test's ingest worker,
a forgotten persistent session) also receives, and may queue, the bench's messages; the
bench reports the broker's subscriptions and offline clients before it starts.

Other options: ``--phases`` (a subset of single,multi,copy,naive), ``--profile-dir``
(py-spy samples of the consumers), ``--ingest-pythonpath`` (run ``cimtwin ingest`` from
another ``cimtwin`` package tree, e.g. the code before a change, for a before/after).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from proc_load import HEAVY_NAMES, proc_table  # bench/ is the script's folder

ROOT = Path(__file__).resolve().parent.parent
VENDOR = "bench"
DEVICES = 100  # of each kind: every kind's message i comes from device i % DEVICES
MULTI_CHANNELS = 50
COPY_CHUNK = 10_000
JSON_CHANNELS = 5     # the declared JSON profile's channels (c0 in °F, converted to °C)
SENML_RECORDS = 20    # records per SenML pack
BENCH_TOPICS = [f"cim/v1/{VENDOR}/+/up", f"vendors/{VENDOR}/#"]
MAX_UNACKED = 10_000  # per paho publisher client; paho's packet ids are 16-bit


# --- load on the machine -------------------------------------------------------------------------





class LoadWatch:
    """CPU used by processes that are not the bench's: not this process or its descendants, not
    PostgreSQL backends of the bench database, not the project's broker (which the bench drives,
    though others may use it too)."""

    def __init__(self, database: str, broker_port: int):
        self.database = database
        self.broker_port = broker_port
        self._hz = os.sysconf("SC_CLK_TCK")
        self._last: tuple[float, dict] | None = None

    def _ours(self, pid: int, table: dict) -> bool:
        cmd = table[pid][2]
        if f" {self.database} " in f" {cmd} " or ("mosquitto" in cmd and str(ROOT) in cmd):
            return True
        seen = 0
        while pid > 1 and seen < 64:
            if pid == os.getpid():
                return True
            pid = table.get(pid, (0, 0, ""))[1]
            seen += 1
        return False

    def mark(self) -> None:
        self._last = (time.monotonic(), proc_table())

    def since_mark(self) -> tuple[float, list[tuple[float, int, str]]]:
        """(other processes' CPU since mark() in % of one core, [(cpu %, pid, cmd) of the busy ones])."""
        t0, a = self._last
        b = proc_table()
        dt = max(time.monotonic() - t0, 1e-3)
        total, busy = 0.0, []
        for pid, (ticks, _, cmd) in b.items():
            if pid not in a or self._ours(pid, b):
                continue
            pct = 100.0 * (ticks - a[pid][0]) / self._hz / dt
            total += pct
            if pct >= 10:
                busy.append((pct, pid, cmd[:80]))
        return total, sorted(busy, reverse=True)

    def measure(self, seconds: float) -> tuple[float, list[tuple[float, int, str]]]:
        self.mark()
        time.sleep(seconds)
        return self.since_mark()

    @staticmethod
    def is_busy(total: float, busy: list) -> bool:
        return total > 30 or any(any(h in cmd for h in HEAVY_NAMES) for pct, _, cmd in busy if pct >= 5)


# --- messages (deterministic, so children can generate them from a few numbers) -------------------

def _iso(t0_ms: int, offset_ms: int) -> str:
    return datetime.fromtimestamp((t0_ms + offset_ms) / 1000, tz=timezone.utc).isoformat()


def single_message(i: int, t0_ms: int, topic_root: str = "cim/v1") -> tuple[str, bytes]:
    """Message i: device s{i % 100}, one reading with its own time t0 + i ms."""
    topic = f"{topic_root}/{VENDOR}/s{i % DEVICES:03d}/up"
    payload = {"readings": [{"channel": "temp", "value": round((i % 1000) * 0.1, 1), "time": _iso(t0_ms, i)}]}
    return topic, json.dumps(payload, separators=(",", ":")).encode()


def multi_message(j: int, t0_ms: int, topic_root: str = "cim/v1") -> tuple[str, bytes]:
    """Message j: device m{j % 100}, 50 readings sharing the message time t0 + j ms."""
    topic = f"{topic_root}/{VENDOR}/m{j % DEVICES:03d}/up"
    payload = {"time": _iso(t0_ms, j),
               "readings": [{"channel": f"c{c:02d}", "value": round(((j + c) % 1000) * 0.1, 1)}
                            for c in range(MULTI_CHANNELS)]}
    return topic, json.dumps(payload, separators=(",", ":")).encode()


def canonical_n_message(j: int, t0_ms: int, *, prefix: str, n: int) -> tuple[str, bytes]:
    """The canonical baseline for a profile: device {prefix}{j % 100}, n readings at t0 + j ms."""
    topic = f"cim/v1/{VENDOR}/{prefix}{j % DEVICES:03d}/up"
    payload = {"time": _iso(t0_ms, j),
               "readings": [{"channel": f"c{c:02d}", "value": round(((j + c) % 1000) * 0.1, 1)} for c in range(n)]}
    return topic, json.dumps(payload, separators=(",", ":")).encode()


def profile_json_message(j: int, t0_ms: int) -> tuple[str, bytes]:
    """A vendor's own JSON (the `bench-env` profile): 5 values under /d, epoch-ms time under /ts."""
    topic = f"vendors/{VENDOR}/env/p{j % DEVICES:03d}/data"
    payload = {"ts": t0_ms + j, "d": {f"c{c:02d}": round(((j + c) % 1000) * 0.1, 1) for c in range(JSON_CHANNELS)}}
    return topic, json.dumps(payload, separators=(",", ":")).encode()


def senml_message(j: int, t0_ms: int) -> tuple[str, bytes]:
    """A SenML pack (the `bench-senml` profile) of 20 records in Cel, base name and base time."""
    device = f"q{j % DEVICES:03d}"
    records = [{"n": f"c{c:02d}", "u": "Cel", "v": round(((j + c) % 1000) * 0.1, 1)} for c in range(SENML_RECORDS)]
    records[0].update(bn=f"{device}:", bt=(t0_ms + j) / 1000)
    return f"vendors/{VENDOR}/senml/{device}", json.dumps(records, separators=(",", ":")).encode()


PROFILES = {
    "bench-env": {"name": "bench-env", "format": "json", "topic": f"vendors/{VENDOR}/env/{{device}}/data",
                  "device_id": "{device}", "time": {"path": "/ts", "format": "epoch_ms"},
                  "channels": [{"name": f"c{c:02d}", "path": f"/d/c{c:02d}", "quantity": "temperature",
                                "unit": "°F" if c == 0 else "°C"} for c in range(JSON_CHANNELS)]},
    "bench-senml": {"name": "bench-senml", "format": "senml", "topic": f"vendors/{VENDOR}/senml/{{device}}"},
}

MESSAGE_KINDS = {
    "single": single_message,
    "multi": multi_message,
    "canon5": lambda j, t0: canonical_n_message(j, t0, prefix="p", n=JSON_CHANNELS),
    "json5": profile_json_message,
    "canon20": lambda j, t0: canonical_n_message(j, t0, prefix="q", n=SENML_RECORDS),
    "senml20": senml_message,
}


def single_rows(n: int, t0_ms: int, sensor_ids: dict[tuple[str, str], int]) -> list[tuple]:
    """The rows the first n single-reading messages carry, as the writer stores them."""
    now = datetime.now(timezone.utc)
    rows = []
    for i in range(n):
        t = datetime.fromtimestamp((t0_ms + i) / 1000, tz=timezone.utc)
        rows.append((t, sensor_ids[(f"s{i % DEVICES:03d}", "temp")], round((i % 1000) * 0.1, 1), now))
    return rows


# --- child roles ----------------------------------------------------------------------------------

def _mqtt():
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    return mqtt, CallbackAPIVersion


def _login(client) -> None:
    """The broker refuses anonymous clients: log in as cimtwin's service account (see Settings.mqtt)."""
    from cimtwin.settings import Settings
    ep = Settings().mqtt
    if ep.username:
        client.username_pw_set(ep.username, ep.password)


def _session_props(expiry_s: int):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry_s
    return props


def role_publish(a) -> dict:
    """Publishes the messages i < count of one kind whose device (i % 100) is in this publisher's
    share (device % parts == part), at QoS 1, paced; exits when all are acked."""
    mqtt, CallbackAPIVersion = _mqtt()
    make = MESSAGE_KINDS[a.kind]
    messages = [make(i, a.t0_ms) for i in range(a.count) if i % DEVICES % a.parts == a.part]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=a.client_id, protocol=mqtt.MQTTv5)
    _login(client)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(a.host, a.port, keepalive=60, clean_start=True)
    client.loop_start()
    pending: deque = deque()
    t0 = time.monotonic()
    for topic, payload in messages:
        pending.append(client.publish(topic, payload, qos=1))
        while len(pending) > MAX_UNACKED:
            pending.popleft().wait_for_publish(timeout=60)
    for info in pending:
        info.wait_for_publish(timeout=120)
    ok = all(info.is_published() for info in pending)
    elapsed = time.monotonic() - t0
    client.disconnect()
    client.loop_stop()
    return {"published": a.count, "all_acked": ok, "seconds": elapsed}


def role_raw_sub(a) -> dict:
    """Bare paho subscriber: resumes its session and only counts messages."""
    mqtt, CallbackAPIVersion = _mqtt()
    state = {"n": 0, "first": None, "last": None}
    done = threading.Event()
    expect = a.expect

    def on_message(client, userdata, message):
        n = state["n"] = state["n"] + 1
        if n == 1:
            state["first"] = time.monotonic()
        if n >= expect:
            state["last"] = time.monotonic()
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=a.client_id, protocol=mqtt.MQTTv5)
    _login(client)
    client.on_message = on_message
    client.connect(a.host, a.port, keepalive=60, clean_start=False, properties=_session_props(600))
    client.loop_start()
    done.wait(a.timeout)
    if state["last"] is None and state["first"] is not None:
        state["last"] = time.monotonic()
    time.sleep(0.2)  # let paho send the last PUBACKs
    client.disconnect()
    client.loop_stop()
    n = state["n"]
    secs = (state["last"] - state["first"]) if state["first"] is not None else 0.0
    return {"received": n, "seconds": secs, "msgs_per_s": (n - 1) / secs if secs > 0 else 0.0}


def role_naive(a) -> dict:
    """Naive bridge: one INSERT + COMMIT per message, inside the paho callback."""
    import psycopg
    mqtt, CallbackAPIVersion = _mqtt()
    conn = psycopg.connect(a.dsn, options="-c TimeZone=UTC")
    sensor_ids = {(d, c): sid for d, c, sid in conn.execute(
        "SELECT d.ext_id, s.channel, s.id FROM sensors s JOIN devices d ON d.id = s.device_id "
        "JOIN vendors v ON v.id = d.vendor_id WHERE v.code = %s", (VENDOR,))}
    conn.commit()
    state = {"n": 0, "rows": 0, "first": None, "last": None}
    done = threading.Event()

    def on_message(client, userdata, message):
        if state["first"] is None:
            state["first"] = time.monotonic()
        received = datetime.now(timezone.utc)
        device = message.topic.split("/")[3]
        body = json.loads(message.payload)
        for r in body["readings"]:
            t = datetime.fromisoformat(r["time"]) if "time" in r else received
            conn.execute("INSERT INTO readings (time, sensor_id, value, received_at) VALUES (%s, %s, %s, %s) "
                         "ON CONFLICT DO NOTHING", (t, sensor_ids[(device, r["channel"])], r["value"], received))
            state["rows"] += 1
        conn.commit()
        state["n"] += 1
        if state["n"] >= a.expect:
            state["last"] = time.monotonic()
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=a.client_id, protocol=mqtt.MQTTv5)
    _login(client)
    client.on_message = on_message
    client.connect(a.host, a.port, keepalive=60, clean_start=False, properties=_session_props(600))
    client.loop_start()
    done.wait(a.timeout)
    if state["last"] is None and state["first"] is not None:
        state["last"] = time.monotonic()
    time.sleep(0.2)
    client.disconnect()
    client.loop_stop()
    conn.close()
    secs = (state["last"] - state["first"]) if state["first"] is not None else 0.0
    return {"received": state["n"], "rows": state["rows"], "seconds": secs,
            "readings_per_s": state["rows"] / secs if secs > 0 else 0.0}


ROLES = {"publish": role_publish, "raw-sub": role_raw_sub, "naive": role_naive}


def child_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--role", required=True, choices=sorted(ROLES))
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--kind", default="single")
    p.add_argument("--part", type=int, default=0)
    p.add_argument("--parts", type=int, default=1)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--t0-ms", type=int, default=0)
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--dsn", default="")
    a = p.parse_args(argv)
    print(json.dumps(ROLES[a.role](a)), flush=True)


# --- the conductor --------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        from cimtwin.settings import Settings

        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        base = Settings()
        parts = urlsplit(base.database_url)
        self.admin_url = urlunsplit(parts._replace(path="/postgres"))
        self.db_url = urlunsplit(parts._replace(path=f"/{args.database}"))
        self.settings = base.model_copy(update={"database_url": self.db_url})
        ep = self.settings.mqtt
        self.host, self.port = ep.host, ep.port
        self.sessions: set[str] = set()
        self.children: list[subprocess.Popen] = []
        self.t0_ms = int((datetime.now(timezone.utc) - timedelta(hours=1)).timestamp()) * 1000
        self.results: dict = {}
        self.notes: list[str] = []
        self.conn = None
        self.sensor_ids: dict[tuple[str, str], int] = {}
        self.timescaledb = False
        self.watch = LoadWatch(args.database, self.port)
        self.load: dict[str, float] = {}  # other processes' CPU (% of a core) during each measurement

    def foreign_sessions(self) -> None:
        """Notes other subscriptions on the broker: one matching cim/v1/+/+/up (a test's worker, a
        forgotten persistent session) also gets, and may queue, every message the bench publishes."""
        mqtt, CallbackAPIVersion = _mqtt()
        seen: dict[str, str] = {}
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cid("sys"), protocol=mqtt.MQTTv5)
        _login(client)
        client.on_message = lambda c, u, m: seen.__setitem__(m.topic, m.payload.decode(errors="replace"))
        client.on_connect = lambda c, *a: c.subscribe([("$SYS/broker/subscriptions/count", 0),
                                                       ("$SYS/broker/clients/disconnected", 0),
                                                       ("$SYS/broker/store/messages/count", 0)])
        try:
            client.connect(self.host, self.port)
            client.loop_start()
            deadline = time.monotonic() + 2
            while len(seen) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            client.disconnect()
            client.loop_stop()
        except OSError:
            return
        subs = int(seen.get("$SYS/broker/subscriptions/count", "0") or 0)
        offline = int(seen.get("$SYS/broker/clients/disconnected", "0") or 0)
        stored = int(seen.get("$SYS/broker/store/messages/count", "0") or 0)
        self.results["broker_before"] = {"subscriptions": subs, "offline_clients": offline, "stored_messages": stored}
        if subs or offline:
            self.notes.append(f"the broker already had {subs} subscription(s) and {offline} offline client(s) "
                              f"holding {stored} stored messages before the bench; a subscriber to "
                              f"cim/v1/+/+/up among them also receives the bench's messages")

    def wait_idle(self) -> None:
        """Waits (up to --wait-idle s) until other processes use < 30 % of a core and no test,
        benchmark or build runs, so that the figures are this machine's, not a shared one's."""
        deadline = time.monotonic() + self.args.wait_idle
        while True:
            total, busy = self.watch.measure(3.0)
            if not LoadWatch.is_busy(total, busy):
                self.log(f"machine idle enough: other processes use {total:.0f} % of a core")
                self.load["before"] = round(total, 1)
                return
            desc = "; ".join(f"{pct:.0f}% pid {pid} {cmd[:60]}" for pct, pid, cmd in busy[:3])
            if time.monotonic() >= deadline:
                self.notes.append(f"started under load: other processes used {total:.0f} % of a core ({desc})")
                self.load["before"] = round(total, 1)
                return
            self.log(f"waiting for an idle machine: {total:.0f} % of a core in use ({desc})")

    def watched(self, name: str, fn, *args):
        """Runs one measurement and records the CPU that other processes used meanwhile."""
        self.watch.mark()
        result = fn(*args)
        total, busy = self.watch.since_mark()
        self.load[name] = round(total, 1)
        if total > 30:
            desc = "; ".join(f"{pct:.0f}% pid {pid} {cmd[:50]}" for pct, pid, cmd in busy[:3])
            self.notes.append(f"{name} ran under load: other processes used {total:.0f} % of a core ({desc})")
        return result

    # infrastructure ------------------------------------------------------

    def cid(self, name: str) -> str:
        return f"cimtwin-bench-{self.run_id}-{name}"

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def setup_database(self) -> None:
        import psycopg

        from cimtwin.store.migrate import migrate
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.args.database}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{self.args.database}" TEMPLATE cimtwin_template')
        report = migrate(self.db_url)
        self.timescaledb = report.backend == "timescaledb"
        self.conn = psycopg.connect(self.db_url, autocommit=True, options="-c TimeZone=UTC")
        vendor_id = self.conn.execute("INSERT INTO vendors (code, name) VALUES (%s, 'Benchmark') RETURNING id",
                                      (VENDOR,)).fetchone()[0]
        from psycopg.types.json import Jsonb
        profile_ids = {name: self.conn.execute(
            "INSERT INTO profiles (vendor_id, name, version, format, topic, document) VALUES (%s, %s, 1, %s, %s, %s) "
            "RETURNING id", (vendor_id, name, doc["format"], doc["topic"], Jsonb(doc))).fetchone()[0]
            for name, doc in PROFILES.items()}
        devices = [(f"s{d:03d}", ["temp"], None) for d in range(DEVICES)]
        devices += [(f"m{d:03d}", [f"c{c:02d}" for c in range(MULTI_CHANNELS)], None) for d in range(DEVICES)]
        devices += [(f"p{d:03d}", [f"c{c:02d}" for c in range(JSON_CHANNELS)], profile_ids["bench-env"])
                    for d in range(DEVICES)]
        devices += [(f"q{d:03d}", [f"c{c:02d}" for c in range(SENML_RECORDS)], profile_ids["bench-senml"])
                    for d in range(DEVICES)]
        for ext_id, channels, profile_id in devices:
            device_id = self.conn.execute(
                "INSERT INTO devices (vendor_id, ext_id, profile_id) VALUES (%s, %s, %s) RETURNING id",
                (vendor_id, ext_id, profile_id)).fetchone()[0]
            with self.conn.cursor() as cur:
                cur.executemany("INSERT INTO sensors (device_id, channel, quantity, unit) VALUES (%s, %s, 'x', '1')",
                                [(device_id, ch) for ch in channels])
        self.sensor_ids = {(d, c): sid for d, c, sid in self.conn.execute(
            "SELECT d.ext_id, s.channel, s.id FROM sensors s JOIN devices d ON d.id = s.device_id")}
        if self.args.rules:
            self.add_rules(self.args.rules)
        if not self.timescaledb:
            from cimtwin.store.writer import week_starts
            span = max(self.args.messages, self.args.multi_messages)
            weeks = week_starts([datetime.fromtimestamp(self.t0_ms / 1000, tz=timezone.utc),
                                 datetime.fromtimestamp((self.t0_ms + span) / 1000, tz=timezone.utc)])
            self.conn.execute("SELECT cimtwin_ensure_readings_partitions(%s::timestamptz[])",
                              ([datetime.fromtimestamp(w, tz=timezone.utc) for w in sorted(weeks)],))
        self.log(f"database {self.args.database} ready ({report.backend}); {len(self.sensor_ids)} sensors")

    def add_rules(self, n: int) -> None:
        """n threshold rules spread over the 1-reading devices' sensors (10 per sensor for 1,000).
        The first 10 fire early on (s090..s099 pass 90) and stay active, so those sensors' readings
        keep folding into open alerts; the rest never fire. A district's rules are mostly quiet."""
        rows = []
        for k in range(n):
            firing = k < int(os.environ.get("BENCH_FIRING_RULES", "10"))
            sensor = self.sensor_ids[(f"s{(90 + k) if firing else k % DEVICES:03d}", "temp")]
            value, clear = (90.0, -1.0) if firing else (1000.0 + k, 900.0)
            rows.append((f"bench rule {k}", json.dumps({"op": ">", "value": value, "clear_value": clear,
                                                       "hold_s": 0}), json.dumps({"sensor_id": sensor})))
        with self.conn.cursor() as cur:
            cur.executemany("INSERT INTO alert_rules (name, kind, condition, scope, severity) "
                            "VALUES (%s, 'threshold', %s, %s, 'warning')", rows)
        self.log(f"{n} alert rules on the 1-reading devices")

    def truncate(self) -> None:
        self.conn.execute("TRUNCATE readings, latest, dead_letters, pending_devices, notification_outbox, "
                          "alert_events, alerts, alert_rule_state")
        if not self.timescaledb:
            self.conn.execute("TRUNCATE readings_1m, readings_1h")

    def stored(self) -> int:
        return self.conn.execute("SELECT count(*) FROM readings").fetchone()[0]

    def committed_cheap(self) -> int:
        if self.timescaledb:
            return self.stored()
        return self.conn.execute("SELECT coalesce(sum(count), 0) FROM readings_1h").fetchone()[0]

    def child(self, role: str, client_id: str, **kw) -> subprocess.Popen:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--role", role, "--host", self.host,
               "--port", str(self.port), "--client-id", client_id]
        for k, v in kw.items():
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.children.append(proc)
        return proc

    def child_result(self, proc: subprocess.Popen, timeout: float = 300) -> dict:
        out, _ = proc.communicate(timeout=timeout)
        self.children.remove(proc)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"child failed ({proc.returncode}): {out[-2000:]}")
        return json.loads(lines[-1])

    def open_session(self, client_id: str, topic: str | list[str]) -> None:
        """Creates a persistent session subscribed at QoS 1, then leaves it offline."""
        mqtt, CallbackAPIVersion = _mqtt()
        from paho.mqtt.subscribeoptions import SubscribeOptions
        subscribed = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        _login(client)
        client.on_subscribe = lambda *a: subscribed.set()
        client.connect(self.host, self.port, clean_start=True, properties=_session_props(600))
        self.sessions.add(client_id)
        client.loop_start()
        topics = [topic] if isinstance(topic, str) else topic
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in topics])
        if not subscribed.wait(10):
            raise RuntimeError(f"no SUBACK for {client_id}")
        client.disconnect()
        client.loop_stop()

    def clear_session(self, client_id: str) -> None:
        """Ends a persistent session (clean start, expiry 0) so the broker stops queueing for it."""
        mqtt, CallbackAPIVersion = _mqtt()
        connected = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        _login(client)
        client.on_connect = lambda *a: connected.set()
        client.connect(self.host, self.port, clean_start=True, properties=_session_props(0))
        client.loop_start()
        connected.wait(5)
        client.disconnect()
        client.loop_stop()
        self.sessions.discard(client_id)

    def publish(self, kind: str, count: int) -> float:
        """Publishes `count` messages with paho publisher processes; returns the wall time taken."""
        n = min(self.args.publishers, DEVICES)
        t = time.monotonic()
        procs = [self.child("publish", self.cid(f"pub-{kind}-{k}"), kind=kind, part=k, parts=n, count=count,
                            t0_ms=self.t0_ms) for k in range(n)]
        results = [self.child_result(p) for p in procs]
        elapsed = time.monotonic() - t
        if not all(r["all_acked"] for r in results):
            raise RuntimeError(f"a publisher did not get every PUBACK: {results}")
        self.log(f"published {count} {kind} messages in {elapsed:.1f} s ({count / elapsed:,.0f} msgs/s)")
        return elapsed

    # consumers ------------------------------------------------------------

    def raw_subscriber(self, client_id: str, expect: int) -> dict:
        proc = self.child("raw-sub", client_id, expect=expect, timeout=self.args.drain_timeout)
        spy = self.profile(proc.pid, f"raw-{client_id.rsplit('-', 1)[-1]}")
        r = self.child_result(proc)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        self.clear_session(client_id)
        if r["received"] < expect:
            self.notes.append(f"raw subscriber {client_id} received only {r['received']} of {expect}")
        return r

    def ingest_settings(self, client_id: str, workers: int):
        return self.settings.model_copy(update={
            "ingest_client_id": client_id,
            "ingest_workers": workers,
            "ingest_share_group": f"bench{self.run_id}",
            "ingest_topics": BENCH_TOPICS,
            "ingest_session_expiry_s": 600,
            "ingest_status_interval_s": 0.5,
        })

    @staticmethod
    def ingest_client_ids(client_id: str, workers: int) -> list[str]:
        return [client_id] if workers == 1 else [f"{client_id}-{i}" for i in range(workers)]

    def prepare_ingest_sessions(self, client_id: str, workers: int) -> None:
        topics = BENCH_TOPICS if workers == 1 else [f"$share/bench{self.run_id}/{t}" for t in BENCH_TOPICS]
        for cid in self.ingest_client_ids(client_id, workers):
            self.open_session(cid, topics)

    def ingest(self, client_id: str, workers: int, expect_rows: int) -> dict:
        from cimtwin.settings import settings_env
        settings = self.ingest_settings(client_id, workers)
        self.truncate()
        env = settings_env(settings)
        if self.args.ingest_pythonpath:  # measure another tree, e.g. the code before a change
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.args.ingest_pythonpath, env.get("PYTHONPATH")]))
        # (-m puts the working directory first on sys.path: run elsewhere to measure another tree)
        proc = subprocess.Popen([sys.executable, "-m", "cimtwin.cli", "ingest"], env=env,
                                cwd=self.args.ingest_pythonpath or ROOT, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.children.append(proc)
        spy = self.profile(proc.pid, f"ingest-{client_id.rsplit('-', 1)[-1]}")
        deadline = time.monotonic() + self.args.drain_timeout
        end = None
        seen = 0
        try:
            while time.monotonic() < deadline:
                seen = self.committed_cheap()
                if seen >= expect_rows:
                    end = time.time()
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.05)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            self.stop(proc)
            err = proc.stderr.read()
            self.children.remove(proc)
        for cid in self.ingest_client_ids(client_id, workers):
            self.clear_session(cid)
        if end is None:
            self.notes.append(f"ingest {client_id}: only {seen} of {expect_rows} rows within "
                              f"{self.args.drain_timeout:.0f} s; stderr tail: {err[-500:]!r}")
        stored = self.stored()
        first = self.conn.execute("SELECT extract(epoch FROM min(received_at)) FROM readings").fetchone()[0]
        dead = self.conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        if end is None or first is None:
            return {"rows": stored, "seconds": None, "readings_per_s": 0.0, "dead_letters": dead}
        secs = end - float(first)
        if stored != expect_rows:
            self.notes.append(f"ingest {client_id}: {stored} rows stored, {expect_rows} expected")
        if dead:
            self.notes.append(f"ingest {client_id}: {dead} dead letters")
        return {"rows": stored, "seconds": secs, "readings_per_s": stored / secs, "dead_letters": dead}

    def profile(self, pid: int, name: str) -> subprocess.Popen | None:
        """With --profile-dir: py-spy samples the process (and its children) until SIGINT."""
        if not self.args.profile_dir:
            return None
        out = Path(self.args.profile_dir) / f"{name}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
                                 "--subprocesses", "--nonblocking", "--format", "raw", "--rate", "250",
                                 "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @staticmethod
    def stop(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def raw_copy(self, n: int) -> dict:
        import psycopg
        rows = single_rows(n, self.t0_ms, self.sensor_ids)
        self.truncate()
        with psycopg.connect(self.db_url, options="-c TimeZone=UTC") as conn:
            t = time.monotonic()
            for k in range(0, n, COPY_CHUNK):
                with conn.cursor() as cur:
                    with cur.copy("COPY readings (time, sensor_id, value, received_at) FROM STDIN (FORMAT BINARY)"
                                  ) as copy:
                        copy.set_types(["timestamptz", "int8", "float8", "timestamptz"])
                        for row in rows[k:k + COPY_CHUNK]:
                            copy.write_row(row)
                conn.commit()
            secs = time.monotonic() - t
        stored = self.stored()
        return {"rows": stored, "seconds": secs, "rows_per_s": stored / secs}

    def naive(self, client_id: str, n: int) -> dict:
        self.open_session(client_id, f"cim/v1/{VENDOR}/+/up")
        self.publish("single", n)
        self.truncate()
        r = self.child_result(self.child("naive", client_id, expect=n, dsn=self.db_url,
                                         timeout=self.args.drain_timeout))
        self.clear_session(client_id)
        r["stored"] = self.stored()
        return r

    # the run --------------------------------------------------------------

    def run(self) -> dict:
        a = self.args
        phases = set(a.phases.split(","))
        if a.wait_idle > 0:
            self.wait_idle()
        self.foreign_sessions()
        started = time.monotonic()
        self.setup_database()
        res = self.results
        topic = f"cim/v1/{VENDOR}/+/up"

        for kind, count, rows, tag in (("single", a.messages, a.messages, "1"),
                                       ("multi", a.multi_messages, a.multi_messages * MULTI_CHANNELS, "50")):
            if kind not in phases:
                continue
            # One publish feeds (a) and every ingest variant: the same messages for all.
            raw, ing = self.cid(f"raw{tag}"), self.cid(f"ingest{tag}")
            self.open_session(raw, topic)
            self.prepare_ingest_sessions(ing, 1)
            multi = self.cid(f"ingest{tag}w") if a.workers > 1 else None
            if multi:
                self.prepare_ingest_sessions(multi, a.workers)
            res[f"publish_{kind}_s"] = self.publish(kind, count)
            res[f"raw{tag}"] = self.watched(f"raw{tag}", self.raw_subscriber, raw, count)
            self.log(f"bare paho subscriber, {tag}-reading messages: {res[f'raw{tag}']}")
            res[f"ing{tag}"] = self.watched(f"ing{tag}", self.ingest, ing, 1, rows)
            self.log(f"cimtwin ingest, {tag} reading(s)/msg, 1 process: {res[f'ing{tag}']}")
            if multi:
                res[f"ing{tag}w"] = self.watched(f"ing{tag}w", self.ingest, multi, a.workers, rows)
                self.log(f"cimtwin ingest, {tag} reading(s)/msg, {a.workers} processes: {res[f'ing{tag}w']}")

        if "profiles" in phases:  # declared profiles against canonical messages of as many readings
            for kind, count, per in (("canon5", a.profile_messages, JSON_CHANNELS),
                                     ("json5", a.profile_messages, JSON_CHANNELS),
                                     ("canon20", a.profile_messages // 4, SENML_RECORDS),
                                     ("senml20", a.profile_messages // 4, SENML_RECORDS)):
                ing = self.cid(f"ingest-{kind}")
                self.prepare_ingest_sessions(ing, 1)
                res[f"publish_{kind}_s"] = self.publish(kind, count)
                res[kind] = self.watched(kind, self.ingest, ing, 1, count * per)
                self.log(f"cimtwin ingest, {kind}: {res[kind]}")

        if "copy" in phases:  # (b) the write limit
            res["copy"] = self.watched("copy", self.raw_copy, a.messages)
            self.log(f"(b) raw binary COPY: {res['copy']}")

        if "naive" in phases:  # (c) the naive bridge
            res["naive"] = self.watched("naive", self.naive, self.cid("naive"), a.naive_messages)
            self.log(f"(c) naive bridge: {res['naive']}")
        res["total_s"] = time.monotonic() - started
        return res

    def cleanup(self) -> None:
        for proc in list(self.children):
            try:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
            except Exception:
                pass
        for cid in list(self.sessions):
            try:
                self.clear_session(cid)
            except Exception as exc:
                self.log(f"could not clear session {cid}: {exc}")
        if self.conn is not None:
            self.conn.close()
        if not self.args.keep_db:
            import psycopg
            try:
                with psycopg.connect(self.admin_url, autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{self.args.database}" WITH (FORCE)')
            except Exception as exc:
                self.log(f"could not drop {self.args.database}: {exc}")


def report(bench: Bench) -> None:
    r, a = bench.results, bench.args

    def rate(key, field):
        return (r.get(key) or {}).get(field) or 0.0

    raw_sub = rate("raw1", "msgs_per_s")
    raw50_sub = rate("raw50", "msgs_per_s")
    copy = rate("copy", "rows_per_s")
    naive = rate("naive", "readings_per_s")
    c1 = rate("ing1", "readings_per_s")
    c50 = rate("ing50", "readings_per_s")
    c1w = rate("ing1w", "readings_per_s")
    c50w = rate("ing50w", "readings_per_s")
    lines = [
        ("(a) bare paho subscriber, QoS 1, 1-reading msgs", r.get("raw1", {}).get("received"), "msgs/s", raw_sub),
        ("    bare paho subscriber, QoS 1, 50-reading msgs", r.get("raw50", {}).get("received"), "msgs/s", raw50_sub),
        ("(b) psycopg binary COPY into readings", r.get("copy", {}).get("rows"), "rows/s", copy),
        ("(c) naive bridge, INSERT+COMMIT per message", r.get("naive", {}).get("rows"), "readings/s", naive),
        ("cimtwin ingest, 1 reading/msg, 1 process", r.get("ing1", {}).get("rows"), "readings/s", c1),
        ("cimtwin ingest, 50 readings/msg, 1 process", r.get("ing50", {}).get("rows"), "readings/s", c50),
    ]
    c5, j5 = rate("canon5", "readings_per_s"), rate("json5", "readings_per_s")
    c20, s20 = rate("canon20", "readings_per_s"), rate("senml20", "readings_per_s")
    lines += [
        ("cimtwin ingest, canonical 5 readings/msg", r.get("canon5", {}).get("rows"), "readings/s", c5),
        ("cimtwin ingest, JSON profile 5 channels/msg", r.get("json5", {}).get("rows"), "readings/s", j5),
        ("cimtwin ingest, canonical 20 readings/msg", r.get("canon20", {}).get("rows"), "readings/s", c20),
        ("cimtwin ingest, SenML pack of 20 records", r.get("senml20", {}).get("rows"), "readings/s", s20),
    ]
    if a.workers > 1:
        lines += [
            (f"cimtwin ingest, 1 reading/msg, {a.workers} processes", r.get("ing1w", {}).get("rows"),
             "readings/s", c1w),
            (f"cimtwin ingest, 50 readings/msg, {a.workers} processes", r.get("ing50w", {}).get("rows"),
             "readings/s", c50w),
        ]
    print(f"\ningest benchmark ({os.cpu_count()} cores; broker {bench.host}:{bench.port}; "
          f"database {a.database}, {'TimescaleDB' if bench.timescaledb else 'plain PostgreSQL'})")
    if a.ingest_pythonpath:
        print(f"cimtwin ingest from PYTHONPATH={a.ingest_pythonpath}")
    if "broker_before" in r:
        b = r["broker_before"]
        print(f"broker before the bench: {b['subscriptions']} subscription(s), {b['offline_clients']} offline "
              f"client(s), {b['stored_messages']} stored messages")
    print(f"{'measurement':<52} {'count':>9} {'rate':>12}  unit")
    print("-" * 88)
    for name, count, unit, value in lines:
        print(f"{name:<52} {count if count is not None else '-':>9} {value:>12,.0f}  {unit}")
    print("-" * 88)
    best1 = max(c1, c1w)
    ratios = {
        "canonical_1_vs_raw_subscriber": round(c1 / raw_sub, 3) if raw_sub else None,
        "canonical_1_vs_naive": round(c1 / naive, 1) if naive else None,
        "canonical_50_vs_naive": round(c50 / naive, 1) if naive else None,
        "canonical_1_vs_raw_copy": round(c1 / copy, 3) if copy else None,
    }
    print(f"canonical 1/msg vs (a): {ratios['canonical_1_vs_raw_subscriber']}  (target >= 0.70)")
    print(f"canonical 1/msg vs (c): {ratios['canonical_1_vs_naive']}x  (target >= 10x)")
    print(f"canonical 50/msg: {c50:,.0f} readings/s  (target >= 100,000)")
    ratios["profile_json_vs_canonical"] = round(j5 / c5, 3) if c5 else None
    ratios["senml_vs_canonical"] = round(s20 / c20, 3) if c20 else None
    print(f"JSON profile vs canonical (5 readings/msg): {ratios['profile_json_vs_canonical']}  (target >= 0.70)")
    print(f"SenML vs canonical (20 readings/msg): {ratios['senml_vs_canonical']}  (target >= 0.70)")
    print(f"publishing (not a rate under test): {r.get('publish_single_s', 0):.1f} s for {a.messages} "
          f"1-reading msgs, {r.get('publish_multi_s', 0):.1f} s for {a.multi_messages} 50-reading msgs; "
          f"whole bench {r.get('total_s', 0):.0f} s")
    if bench.load:
        print("other processes' CPU meanwhile (% of one core): "
              + ", ".join(f"{k} {v:.0f}" for k, v in bench.load.items()))
    for note in bench.notes:
        print(f"NOTE: {note}")
    out = {
        "canonical_1_readings_per_s": round(c1),
        "canonical_50_readings_per_s": round(c50),
        "canonical_5_readings_per_s": round(c5),
        "profile_json_readings_per_s": round(j5),
        "canonical_20_readings_per_s": round(c20),
        "senml_readings_per_s": round(s20),
        "raw_subscriber_msgs_per_s": round(raw_sub),
        "raw_subscriber_50_msgs_per_s": round(raw50_sub),
        "raw_copy_rows_per_s": round(copy),
        "naive_bridge_readings_per_s": round(naive),
        **ratios,
        "workers": a.workers,
        "alert_rules": a.rules,
        "messages_single": a.messages,
        "messages_50": a.multi_messages,
        "readings_per_message_multi": MULTI_CHANNELS,
        "messages_naive": a.naive_messages,
        "copy_rows": r.get("copy", {}).get("rows"),
        "bench_seconds": round(r.get("total_s", 0), 1),
        "other_cpu_pct_of_core": bench.load,
        "ingest_pythonpath": a.ingest_pythonpath,
    }
    if a.workers > 1:
        out["canonical_1_readings_per_s_multi"] = round(c1w)
        out["canonical_50_readings_per_s_multi"] = round(c50w)
        out["canonical_1_best_vs_raw_subscriber"] = round(best1 / raw_sub, 3) if raw_sub else None
    print(json.dumps(out))


def main() -> None:
    if "--child" in sys.argv:
        argv = [x for x in sys.argv[1:] if x != "--child"]
        child_main(argv)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=200_000, help="1-reading messages for (a), (b) and ingest")
    p.add_argument("--multi-messages", type=int, default=10_000, help="50-reading messages")
    p.add_argument("--naive-messages", type=int, default=10_000, help="messages for the naive bridge (c)")
    p.add_argument("--rules", type=int, default=0,
                   help="alert rules to create on the 1-reading devices (bench/alerts.py compares 0 and 1000)")
    p.add_argument("--profile-messages", type=int, default=40_000,
                   help="5-reading messages (canonical and the JSON profile); a quarter as many 20-reading "
                        "messages (canonical and SenML)")
    p.add_argument("--workers", type=int, default=2,
                   help="also run ingest with this many $share processes (1: only the single process)")
    p.add_argument("--publishers", type=int, default=2, help="paho publisher processes")
    p.add_argument("--drain-timeout", type=float, default=120.0)
    p.add_argument("--database", default="cimtwin_bench")
    p.add_argument("--keep-db", action="store_true")
    p.add_argument("--wait-idle", type=float, default=300.0,
                   help="first wait up to this many seconds for other busy processes to finish (0: don't)")
    p.add_argument("--ingest-pythonpath", help="run `cimtwin ingest` with this PYTHONPATH first (a folder "
                   "holding another `cimtwin` package tree), to compare with the code before a change")
    p.add_argument("--phases", default="single,multi,profiles,copy,naive",
                   help="comma-separated subset of single,multi,profiles,copy,naive (all by default)")
    p.add_argument("--profile-dir", help="sample the consumers with py-spy (raw stacks) into this folder")
    args = p.parse_args()
    bench = Bench(args)
    try:
        bench.run()
    except Exception as exc:  # a bench reports what it could measure
        bench.notes.append(f"bench aborted: {type(exc).__name__}: {exc}")
    finally:
        bench.cleanup()
    report(bench)


if __name__ == "__main__":
    main()
