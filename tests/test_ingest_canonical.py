"""Reliability of canonical ingest: exact counts, idempotent redelivery, rollups."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from .helpers import wait_for

N = 10_000


def _messages(start: datetime, n: int):
    for i in range(n):
        device = f"d{i % 10}"
        t = start + timedelta(milliseconds=i)
        yield f"cim/v1/acme/{device}/up", {"readings": [{"channel": "temp", "value": i * 0.5, "time": t.isoformat()}]}


def test_10k_readings_stored_exactly_once_and_republish_is_a_no_op(db, register, ingest, publisher):
    register("acme", {f"d{i}": ["temp"] for i in range(10)})
    worker = ingest()
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
    count = lambda: db.execute("SELECT count(*) FROM readings").fetchone()[0]

    assert publisher.publish_many(_messages(start, N)) == N
    wait_for(lambda: count() >= N, timeout=60, message="for 10,000 rows")

    assert publisher.publish_many(_messages(start, N)) == N
    # The republished copies are acknowledged only after their (no-op) commit.
    wait_for(lambda: worker.acked() >= 2 * N, timeout=60, message="for the republished messages")
    assert count() == N
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0
    assert db.execute("SELECT count(DISTINCT (sensor_id, time)) FROM readings").fetchone()[0] == N
    # The rollups count each reading once, not twice.
    assert db.execute("SELECT sum(count) FROM readings_1m").fetchone()[0] == N
    assert db.execute("SELECT sum(count) FROM readings_1h").fetchone()[0] == N
    total = db.execute("SELECT sum(value) FROM readings").fetchone()[0]
    assert db.execute("SELECT sum(sum) FROM readings_1h").fetchone()[0] == total
    # latest holds each device's newest reading.
    newest = db.execute("SELECT max(l.time), count(*) FROM latest l").fetchone()
    assert newest[1] == 10
    assert newest[0] == start + timedelta(milliseconds=N - 1)
