"""Ingest under failure: a worker killed mid-stream, a database outage, two workers sharing the load.

Every test publishes one distinct reading per message (its own sensor and timestamp), so
"stored exactly once" means: as many rows as messages, no (sensor_id, time) twice, and the
rollups counting each reading once.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

from cimtwin.store.writer import SMALL_BATCH_ROWS

from .helpers import TcpProxy, wait_for

DEVICES = 10


def _start_time() -> datetime:
    # Well inside the past (no future-time rejection) and unique per message by the millisecond.
    return datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)


def _messages(vendor: str, start: datetime, n: int) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        t = start + timedelta(milliseconds=i)
        payload = {"readings": [{"channel": "temp", "value": i * 0.5, "time": t.isoformat()}]}
        out.append((f"cim/v1/{vendor}/d{i % DEVICES}/up", json.dumps(payload)))
    return out


def _expected_keys(ids: dict, start: datetime, n: int) -> set[tuple[int, datetime]]:
    return {(ids[(f"d{i % DEVICES}", "temp")], start + timedelta(milliseconds=i)) for i in range(n)}


class PacedPublish(threading.Thread):
    """Publishes messages (QoS 1) at a steady rate from a background thread, then waits for the broker's acks."""

    def __init__(self, publisher, messages: list[tuple[str, str]], *, rate: float):
        super().__init__(name="paced-publish", daemon=True)
        self.publisher, self.messages, self.rate = publisher, messages, rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            t0 = time.monotonic()
            for i, (topic, payload) in enumerate(self.messages):
                self.publisher.publish(topic, payload)
                self.sent = i + 1
                ahead = t0 + self.sent / self.rate - time.monotonic()
                if ahead > 0.005:
                    time.sleep(ahead)
            self.publisher.flush(timeout=120)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, timeout: float) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"the publisher did not finish within {timeout} s (sent {self.sent})"
        assert self.error is None, f"publishing failed: {self.error!r}"


def _count(db, exclude_sensor: int = -1) -> int:
    return db.execute("SELECT count(*) FROM readings WHERE sensor_id <> %s", (exclude_sensor,)).fetchone()[0]


def _assert_exactly_once(db, ids: dict, start: datetime, n: int, *, exclude_sensor: int = -1) -> None:
    rows = db.execute("SELECT sensor_id, time FROM readings WHERE sensor_id <> %s", (exclude_sensor,)).fetchall()
    assert len(rows) == n, f"{len(rows)} rows stored for {n} messages"
    stored = set(rows)
    assert len(stored) == n, f"{n - len(stored)} readings stored twice"
    expected = _expected_keys(ids, start, n)
    missing, extra = expected - stored, stored - expected
    assert not missing and not extra, f"{len(missing)} readings missing, {len(extra)} unexpected"
    assert db.execute("SELECT count(DISTINCT (sensor_id, time)) FROM readings WHERE sensor_id <> %s",
                      (exclude_sensor,)).fetchone()[0] == n
    # The rollups count each reading once: a redelivered (already committed) message adds nothing.
    assert db.execute("SELECT sum(count) FROM readings_1m WHERE sensor_id <> %s",
                      (exclude_sensor,)).fetchone()[0] == n
    assert db.execute("SELECT sum(count) FROM readings_1h WHERE sensor_id <> %s",
                      (exclude_sensor,)).fetchone()[0] == n
    total = db.execute("SELECT sum(value) FROM readings WHERE sensor_id <> %s", (exclude_sensor,)).fetchone()[0]
    assert db.execute("SELECT sum(sum) FROM readings_1m WHERE sensor_id <> %s",
                      (exclude_sensor,)).fetchone()[0] == total
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0


# 1. SIGKILL mid-stream, restart with the same client id -----------------------------------------

KILL_N = 20_000


def _ingest_backends(db, application_name: str, *, waiting_on_lock: bool = False) -> int:
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s"
    if waiting_on_lock:
        query += " AND wait_event_type = 'Lock'"
    return db.execute(query, (application_name,)).fetchone()[0]


def test_worker_killed_mid_stream_restarts_and_stores_every_message_exactly_once(db, database_url, settings,
                                                                                  register, ingest, publisher):
    ids = register("rcvkill", {**{f"d{i}": ["temp"] for i in range(DEVICES)}, "sentinel": ["temp"]})
    # The worker reaches the broker through a relay, so the test can hold back its PUBACKs.
    mqtt_path = TcpProxy(settings.mqtt.host, settings.mqtt.port)
    mqtt_path.start()
    proc = None
    try:
        proc = ingest(mqtt_url=f"mqtt://127.0.0.1:{mqtt_path.port}")
        _killed_twice_mid_stream(db, database_url, ids, proc, mqtt_path, publisher)
    finally:
        if proc is not None:
            proc.stop()  # while its path to the broker is still there
        mqtt_path.stop()


def _killed_twice_mid_stream(db, database_url, ids, proc, mqtt_path, publisher):
    sentinel = ids[("sentinel", "temp")]
    worker = proc.client_ids()[0]
    app_name = f"cimtwin-ingest:{worker}"
    start = _start_time()
    pub = PacedPublish(publisher, _messages("rcvkill", start, KILL_N), rate=2000)
    pub.start()

    # Kill 1, after commits whose PUBACKs never reached the broker: the worker keeps receiving
    # and committing while its acknowledgements are held, then dies. The broker must redeliver
    # those messages, and storing them again must change nothing (rows, rollups).
    wait_for(lambda: _count(db) >= 3000 or not pub.is_alive(), timeout=60, interval=0.01,
             message="for the first 3,000 rows")
    mqtt_path.hold_upstream()
    at_hold = _count(db)
    wait_for(lambda: _count(db) >= at_hold + 1000 or not pub.is_alive(), timeout=30,
             message="for commits while the worker's acknowledgements are held")
    proc.kill()
    mqtt_path.cut()  # the broker sees the connection drop; the held PUBACKs are discarded
    at_kill = _count(db)
    sent_at_kill = pub.sent
    # Genuinely mid-stream: some, but far from all, were stored when the worker died.
    assert 2000 <= at_kill <= 15_000, f"{at_kill} rows were stored when the worker was killed"
    assert sent_at_kill < KILL_N, "the publisher had already finished when the worker was killed"

    # Let a backlog build up at the broker for the offline (persistent) session.
    wait_for(lambda: pub.sent >= min(KILL_N, sent_at_kill + 3000) or not pub.is_alive(), timeout=30,
             message="for messages published while the worker is down")
    assert _count(db) <= at_kill + 2000, "rows kept arriving after the worker was killed"

    mqtt_path.restore()
    proc.start()  # same settings, same client id: the broker resumes the session
    wait_for(lambda: _count(db) >= at_kill + 2000, timeout=60, message="for progress after the first restart")

    def redelivered_already_stored():
        status = proc.statuses()[worker]
        return status["messages_acked"] - status["readings_committed"]
    # The restarted worker did get (and acknowledge) readings that were already stored.
    wait_for(lambda: redelivered_already_stored() > 0, timeout=20, interval=0.3,
             message="for the broker to redeliver the messages whose PUBACKs were lost")

    # Kill 2, inside a write transaction: a lock on `latest` holds the worker's batch between receipt
    # and COMMIT. Those messages must still be unacknowledged, so the broker redelivers them.
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE latest IN EXCLUSIVE MODE")
        wait_for(lambda: _ingest_backends(db, app_name, waiting_on_lock=True), timeout=30,
                 message="for the worker's write to wait on the lock")
        proc.kill()
        at_kill2 = _count(db)
        sent_at_kill2 = pub.sent
        locker.rollback()
    assert at_kill < at_kill2 <= 15_000, f"{at_kill2} rows were stored at the second kill"
    assert sent_at_kill2 < KILL_N, "the publisher had already finished at the second kill"
    # The killed worker's session ends. A small batch goes to the server whole (its rows and COMMIT
    # pipelined), so the server may still commit it once the lock is gone; its messages were not
    # acknowledged either way, and the end of the test checks that they are stored exactly once.
    wait_for(lambda: _ingest_backends(db, app_name) == 0, timeout=30,
             message="for the killed worker's database session to end")
    assert _count(db) - at_kill2 <= SMALL_BATCH_ROWS, "rows kept arriving after the second kill"

    proc.start()
    pub.finish(timeout=90)
    wait_for(lambda: _count(db, sentinel) >= KILL_N, timeout=90,
             message=f"for {KILL_N} rows after the restarts (have {_count(db, sentinel)})")

    # A message published after all the others is delivered after every queued and redelivered one;
    # once it is stored, nothing older is still on its way.
    sentinel_time = start + timedelta(milliseconds=KILL_N + 1)
    publisher.publish("cim/v1/rcvkill/sentinel/up",
                      {"readings": [{"channel": "temp", "value": 1.0, "time": sentinel_time.isoformat()}]})
    publisher.flush()
    wait_for(lambda: db.execute("SELECT 1 FROM readings WHERE sensor_id = %s", (sentinel,)).fetchone(),
             timeout=30, message="for the sentinel reading")

    _assert_exactly_once(db, ids, start, KILL_N, exclude_sensor=sentinel)
    assert proc.proc.poll() is None


# 2. The database path cut for 20 s during a steady publish -------------------------------------

OUTAGE_S = 20
RATE = 200
PUBLISH_S = 35


def _via_proxy(url: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{port}"))


def _health(api) -> tuple[int, dict] | None:
    try:
        r = api.get("/health")
    except httpx.TransportError:
        return None
    return r.status_code, r.json()


def _worker_entry(body: dict, worker: str) -> dict | None:
    return next((w for w in body["ingest"]["workers"] if w["worker"] == worker), None)


def test_database_outage_of_20s_loses_nothing_and_shows_in_health(db, register, ingest, api, publisher,
                                                                   settings):
    ids = register("rcvdb", {f"d{i}": ["temp"] for i in range(DEVICES)})
    db_host = urlsplit(settings.database_url).hostname
    db_port = urlsplit(settings.database_url).port or 5432
    proxy = TcpProxy(db_host, db_port)
    proxy.start()
    proc = None
    try:
        proc = ingest(database_url=_via_proxy(settings.database_url, proxy.port))
        worker = proc.client_ids()[0]

        def healthy():
            h = _health(api)
            return h if h and h[0] == 200 and _worker_entry(h[1], worker) else None
        wait_for(healthy, timeout=30, message="for /health to report the worker and 200 before the outage")

        n = RATE * PUBLISH_S
        start = _start_time()
        pub = PacedPublish(publisher, _messages("rcvdb", start, n), rate=RATE)
        pub.start()
        wait_for(lambda: _count(db) >= 3 * RATE, timeout=30, message="for readings through the proxy")

        proxy.cut()
        cut_at = time.monotonic()

        def degraded():
            h = _health(api)
            if not h or h[0] != 503:
                return None
            entry = _worker_entry(h[1], worker)
            return h if entry and entry.get("db_ok") is False and h[1]["ingest"]["ok"] is False else None
        status, body = wait_for(degraded, timeout=10, interval=0.2,
                                message="for /health to report 503 with the worker's db_ok false")
        assert body["database"]["ok"] is True  # the API's own path to the database is intact
        assert any(worker in p for p in body["ingest"]["problems"]), body["ingest"]["problems"]
        frozen = _count(db)

        # Hold the outage; it stays visible the whole time.
        while time.monotonic() - cut_at < OUTAGE_S:
            h = _health(api)
            assert h is not None and h[0] == 503, f"/health during the outage: {h}"
            entry = _worker_entry(h[1], worker)
            assert entry is not None and entry["db_ok"] is False, f"worker status during the outage: {entry}"
            assert proc.proc.poll() is None, "the ingest worker exited during the outage"
            time.sleep(1.0)
        assert _count(db) == frozen, "readings were stored while the database path was cut"
        assert pub.is_alive() and pub.sent < n, "the publish did not span the outage"

        proxy.restore()
        pub.finish(timeout=PUBLISH_S + 60)
        wait_for(lambda: _count(db) >= n, timeout=60,
                 message=f"for all {n} readings after the outage (have {_count(db)})")
        # Every message was acknowledged once, after its commit; nothing is still being redelivered.
        wait_for(lambda: proc.acked() >= n, timeout=30, message="for the worker to acknowledge every message")

        _assert_exactly_once(db, ids, start, n)
        assert proc.proc.poll() is None, "the ingest worker did not survive the outage"
        status, body = wait_for(healthy, timeout=30, message="for /health to return 200 after the outage")
        assert _worker_entry(body, worker)["db_ok"] is True
    finally:
        if proc is not None:
            proc.stop()
        proxy.stop()


# 3. Two workers on one shared subscription -----------------------------------------------------

SHARED_N = 10_000


def test_two_workers_share_the_load_and_store_each_message_once(db, register, ingest, publisher):
    ids = register("rcvshare", {f"d{i}": ["temp"] for i in range(DEVICES)})
    proc = ingest(ingest_workers=2)
    workers = proc.client_ids()
    assert len(workers) == 2
    start = _start_time()

    assert publisher.publish_many(_messages("rcvshare", start, SHARED_N)) == SHARED_N
    wait_for(lambda: _count(db) >= SHARED_N, timeout=60, message=f"for {SHARED_N} rows")

    def all_acked():
        statuses = proc.statuses()
        return statuses if sum(s.get("messages_acked", 0) for s in statuses.values()) >= SHARED_N else None
    statuses = wait_for(all_acked, timeout=30, interval=0.5, message="for both workers' acknowledgements")

    _assert_exactly_once(db, ids, start, SHARED_N)
    acked = {w: statuses[w]["messages_acked"] for w in workers}
    # Each message went to exactly one member of the group, and both members took part.
    assert sum(acked.values()) == SHARED_N, f"acknowledged per worker: {acked}"
    assert all(a > 0 for a in acked.values()), f"acknowledged per worker: {acked}"
