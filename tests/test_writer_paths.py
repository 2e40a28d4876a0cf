"""The writer's small-batch path (one INSERT ... SELECT FROM unnest(arrays) statement) against its
COPY paths (fast, and safe after a conflict or with a NaN), on the real database.

Every test writes through ReadingWriter directly and reads the tables back: the same rows must give
the same ``readings``, ``latest`` and ``readings_1m``/``readings_1h`` rows whichever path stored them,
redeliveries and duplicates must count once, and what goes with a batch (dead letters, the
``on_inserted`` hook's writes) must commit or roll back with it. Rollup tables are the writer's own
only on plain PostgreSQL, so the module is skipped on TimescaleDB.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from cimtwin.store.writer import SMALL_BATCH_ROWS, DeadLetter, ReadingWriter

UTC = timezone.utc
T0 = datetime(2024, 5, 6, 9, 58, tzinfo=UTC)  # two minutes before an hour: the series span three hours
CHUNK = 100  # rows per small batch
TABLES = {"readings": "sensor_id, time, value, received_at", "latest": "sensor_id, time, value, received_at",
          "readings_1m": "sensor_id, bucket, count, sum, min, max",
          "readings_1h": "sensor_id, bucket, count, sum, min, max"}


@pytest.fixture(autouse=True)
def plain_postgres(db):
    if db.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone():
        pytest.skip("with TimescaleDB the rollups are continuous aggregates, not the writer's")


@pytest.fixture
def writer(database_url, db):
    """``writer(**kwargs)``: a ReadingWriter of its own (fresh counters, fresh connection)."""
    made: list[ReadingWriter] = []

    def make(**kwargs) -> ReadingWriter:
        made.append(ReadingWriter(database_url, application_name="test-writer-paths", **kwargs))
        return made[-1]

    yield make
    for w in made:
        w.close()


@pytest.fixture
def sensors(register):
    """``sensors(device, n)``: n fresh sensors (channels c0..c(n-1)) of a new device, in channel order."""

    def make(device: str, n: int = 4) -> list[int]:
        ids = register("wpath", {device: [f"c{i}" for i in range(n)]})
        return [ids[(device, f"c{i}")] for i in range(n)]

    return make


# --- data -------------------------------------------------------------------------------------------

def dyadic(rnd: random.Random) -> float:
    """A value whose sums are exact in any order (multiples of 1/4, small): negative, positive or ±0."""
    return rnd.choice([0.0, -0.0, rnd.randint(-4000, 4000) / 4])


def dyadic_or_nan(rnd: random.Random) -> float:
    return math.nan if rnd.random() < 0.05 else dyadic(rnd)


def sql_order(v: float) -> tuple:
    """How SQL orders float8: NaN above every number."""
    return math.isnan(v), v


def series(times: list[datetime], n_sensors: int, value, *, seed: int = 7) -> list[tuple]:
    """(time, sensor index, value, received_at) rows in message order: per time, every sensor."""
    rnd = random.Random(seed)
    return [(t, i, value(rnd), t + timedelta(seconds=2)) for t in times for i in range(n_sensors)]


def on(ids: list[int], rows: list[tuple]) -> list[tuple]:
    """The series' rows for these sensors (index → sensor id)."""
    return [(t, ids[i], v, r) for t, i, v, r in rows]


def write_in_chunks(w: ReadingWriter, rows: list[tuple], size: int = CHUNK) -> int:
    return sum(w.write(rows[k:k + size]) for k in range(0, len(rows), size))


# --- reading the tables back -------------------------------------------------------------------------

def key(x, bits: bool):
    """A float as compared: its exact representation (sign of zero included) if ``bits``, else by
    float equality (0.0 == -0.0), NaN equal to NaN."""
    if not isinstance(x, float):
        return x
    if bits:
        return x.hex()
    return "NaN" if math.isnan(x) else x


def snapshot(db, ids: list[int], *, bits: bool = True) -> dict[str, list[tuple]]:
    """Every table's rows of these sensors, with sensor ids replaced by their index in ``ids``."""
    index = {s: i for i, s in enumerate(ids)}
    out = {}
    for table, cols in TABLES.items():
        rows = db.execute(f"SELECT {cols} FROM {table} WHERE sensor_id = ANY(%s) ORDER BY 1, 2", (ids,))
        out[table] = [(index[r[0]], *(key(x, bits) for x in r[1:])) for r in rows]
    return out


def expected(rows: list[tuple], *, bits: bool = False) -> dict[str, list[tuple]]:
    """What ``snapshot`` must show for stored rows (sensor indexes), worked out here: the rows,
    each sensor's newest, and per UTC minute/hour count, sum, min and max (NaN above every number,
    as in SQL). Sums are only order-independent for :func:`dyadic` values (or NaN)."""
    newest = {}
    buckets = {"readings_1m": {}, "readings_1h": {}}
    for row in sorted(rows, key=lambda r: r[:2]):
        t, s, v, _ = row
        newest[s] = row
        buckets["readings_1m"].setdefault((s, t.replace(second=0, microsecond=0)), []).append(v)
        buckets["readings_1h"].setdefault((s, t.replace(minute=0, second=0, microsecond=0)), []).append(v)
    out = {"readings": sorted((s, t, key(v, bits), r) for t, s, v, r in rows),
           "latest": [(s, t, key(v, bits), r) for s, (t, _, v, r) in sorted(newest.items())]}
    for table, groups in buckets.items():
        out[table] = [(s, b, len(vs), key(sum(vs), bits), key(min(vs, key=sql_order), bits),
                       key(max(vs, key=sql_order), bits)) for (s, b), vs in sorted(groups.items())]
    return out


def counters(w: ReadingWriter) -> tuple[int, int, int]:
    return w.small_batches, w.fast_batches, w.safe_batches


# --- 1. the same rows, whichever path -----------------------------------------------------------------

@pytest.mark.parametrize("with_nan", [False, True], ids=["finite", "nan"])
def test_small_batches_store_what_one_copy_batch_stores(db, sensors, writer, with_nan):
    times = [T0 + timedelta(seconds=40 * k) for k in range(160)]  # 09:58 to 11:44, 1-2 readings a minute
    rows = series(times, 4, dyadic_or_nan if with_nan else dyadic)
    assert len(rows) > SMALL_BATCH_ROWS >= CHUNK
    values = [r[2] for r in rows]
    assert any(v < 0 for v in values) and any(math.isnan(v) for v in values) == with_nan
    assert {math.copysign(1, v) for v in values if v == 0} == {1.0, -1.0}
    small, copy = sensors("small"), sensors("copy")

    w = writer()
    assert write_in_chunks(w, on(small, rows)) == len(rows)
    assert counters(w) == (len(rows) // CHUNK + 1, 0, 0)
    assert w.write(on(copy, rows)) == len(rows)
    # A NaN has no Python summary: such a batch takes the safe path at once.
    assert counters(w)[1:] == ((0, 1) if with_nan else (1, 0))

    # The rows and each sensor's latest are the same bit for bit (0.0 and -0.0 kept apart)...
    got_small, got_copy = snapshot(db, small), snapshot(db, copy)
    for table in ("readings", "latest"):
        assert got_small[table] == got_copy[table] == expected(rows, bits=True)[table]
    # ...and the rollups as floats: a bucket split across small batches is added up in another
    # order (exact here, the values being dyadic), and min()/max() may keep the other zero of a tie.
    got_small, got_copy = snapshot(db, small, bits=False), snapshot(db, copy, bits=False)
    for table in ("readings_1m", "readings_1h"):
        assert got_small[table] == got_copy[table] == expected(rows)[table]
    assert len(got_small["readings_1h"]) == 4 * 3 and len(got_small["readings_1m"]) == 4 * 107


def test_small_batch_rollups_are_bit_identical_to_the_copy_path_when_each_bucket_is_one_batch(db, sensors, writer):
    # Three hours, one small batch each (180 rows): every rollup row comes from one batch on both sides,
    # so the COPY paths' promise (values added in row order, a tie keeps the later zero) applies.
    times = [T0.replace(minute=0) + timedelta(hours=h, minutes=4 * m, seconds=s)
             for h in range(3) for m in range(15) for s in (0, 20, 40)]
    rows = series(times, 4, lambda rnd: rnd.choice([0.0, -0.0, rnd.uniform(-1000, 1000)]), seed=1)
    small, copy, warm = sensors("small"), sensors("copy"), sensors("warm")
    w = writer()
    for k in range(12):  # past the point where PostgreSQL switches to the statement's generic plan
        w.write(on(warm, rows[k * 45:(k + 1) * 45]))
    for hour in range(3):
        assert w.write(on(small, rows[hour * 180:(hour + 1) * 180])) == 180
    assert w.write(on(copy, rows)) == len(rows) == 540
    assert counters(w) == (15, 1, 0)
    got_small, got_copy = snapshot(db, small), snapshot(db, copy)
    assert got_small["readings"] == got_copy["readings"] and got_small["latest"] == got_copy["latest"]
    diffs = {t: [(a, b) for a, b in zip(got_small[t], got_copy[t]) if a != b] for t in ("readings_1m", "readings_1h")}
    assert diffs == {"readings_1m": [], "readings_1h": []}


# --- 2-4. redelivery, duplicates, overlap -----------------------------------------------------------

def test_a_redelivered_small_batch_changes_nothing(db, sensors, writer):
    ids = sensors("dev")
    rows = series([T0 + timedelta(seconds=25 * k) for k in range(20)], 4, dyadic)  # 80 rows over two hours
    w = writer()
    assert w.write(on(ids, rows)) == 80
    before = snapshot(db, ids)
    assert before["readings"] == expected(rows, bits=True)["readings"]
    assert snapshot(db, ids, bits=False) == expected(rows)
    # The same rows again, received later and with other values: nothing is new, nothing moves.
    again = [(t, s, v + 1.0, r + timedelta(minutes=5)) for t, s, v, r in on(ids, rows)]
    assert w.write(again) == 0
    assert w.write(on(ids, rows)) == 0
    assert snapshot(db, ids) == before
    assert counters(w) == (3, 0, 0)


@pytest.mark.parametrize("filler", [10, SMALL_BATCH_ROWS + 100], ids=["small", "copy"])
def test_a_reading_twice_in_one_batch_is_stored_and_counted_once(db, sensors, writer, filler):
    dup, other = sensors("dev", 2)
    t = T0 + timedelta(minutes=5)
    rows = [(t, dup, 1.5, t), (t + timedelta(seconds=1), dup, 4.0, t), (t, dup, 2.5, t)]  # first (t, dup) wins
    rows += [(T0 + timedelta(seconds=k), other, float(k), T0) for k in range(filler)]
    w = writer()
    assert w.write(rows) == len(rows) - 1
    # A big batch's COPY hits the primary key and is written again on the safe path.
    assert counters(w) == ((1, 0, 0) if filler < SMALL_BATCH_ROWS else (0, 0, 1))
    assert db.execute("SELECT time, value FROM readings WHERE sensor_id = %s ORDER BY time", (dup,)).fetchall() \
        == [(t, 1.5), (t + timedelta(seconds=1), 4.0)]
    stored = [(t, 0, 1.5, t), (t + timedelta(seconds=1), 0, 4.0, t)]
    for table in ("latest", "readings_1m", "readings_1h"):
        assert snapshot(db, [dup])[table] == expected(stored, bits=True)[table]


def test_a_partly_stored_small_batch_counts_only_its_new_rows_and_latest_only_moves_forward(db, sensors, writer):
    a, b = sensors("dev", 2)
    t = [T0 + timedelta(seconds=30 * k) for k in range(12)]
    first = [(t[k], a, float(k), t[k]) for k in range(10)] + [(t[k], b, -float(k), t[k]) for k in range(5)]
    w = writer()
    assert w.write(first) == 15
    # a: five stored rows again (other values, ignored) and one older new one; b: three newer ones.
    older = T0 - timedelta(minutes=70)  # an hour earlier: a bucket of its own
    second = [(t[k], a, 100.0 + k, t[11]) for k in range(5, 10)] + [(older, a, -8.25, t[11])]
    second += [(t[k], b, 0.5 * k, t[11]) for k in range(5, 8)]
    assert w.write(second) == 4
    assert counters(w) == (2, 0, 0)
    stored = [(tt, [a, b].index(s), v, r) for tt, s, v, r in first] + [(older, 0, -8.25, t[11])]
    stored += [(t[k], 1, 0.5 * k, t[11]) for k in range(5, 8)]
    assert snapshot(db, [a, b]) == expected(stored, bits=True)
    assert db.execute("SELECT sensor_id, time, value FROM latest ORDER BY sensor_id").fetchall() == [
        (a, t[9], 9.0), (b, t[7], 3.5)]
    # A batch of only older readings leaves latest where it is.
    assert w.write([(older + timedelta(seconds=1), a, 1.0, t[11]), (t[0] - timedelta(seconds=1), b, 2.0, t[11])]) == 2
    assert db.execute("SELECT sensor_id, time, value FROM latest ORDER BY sensor_id").fetchall() == [
        (a, t[9], 9.0), (b, t[7], 3.5)]


# --- 5. dead letters ----------------------------------------------------------------------------------

def _dead_letter(digest: bytes, reason_code: str | None = "malformed_json") -> DeadLetter:
    return DeadLetter(digest=digest, topic="cim/v1/wpath/dev/up", vendor_code="wpath", device_ext_id="dev",
                      reason_code=reason_code, reason="malformed JSON", payload=b'{"readings": [',
                      received_at=T0 + timedelta(seconds=3), occurrences=2)


def test_dead_letters_go_in_the_small_batchs_transaction(db, sensors, writer):
    ids = sensors("dev")
    rows = on(ids, series([T0 + timedelta(seconds=20 * k) for k in range(10)], 4, dyadic))
    w = writer()
    assert w.write(rows, dead_letters=[_dead_letter(b"d1")]) == 40
    assert counters(w) == (1, 0, 0)
    assert db.execute("SELECT digest, topic, vendor_code, device_ext_id, reason_code, reason, payload, payload_size, "
                      "first_received_at, last_received_at, occurrences, replayed_at FROM dead_letters").fetchall() == [
        (b"d1", "cim/v1/wpath/dev/up", "wpath", "dev", "malformed_json", "malformed JSON", b'{"readings": [', 14,
         T0 + timedelta(seconds=3), T0 + timedelta(seconds=3), 2, None)]
    # One transaction wrote them all (the same xmin).
    xids = {x for table in ("readings", "latest", "readings_1m", "readings_1h", "dead_letters")
            for (x,) in db.execute(f"SELECT DISTINCT xmin::text FROM {table}")}
    assert len(xids) == 1

    # A dead letter the database rejects (no reason code) takes the batch's readings with it,
    # though it is sent after them, with COMMIT, in the same pipeline.
    later = [(t + timedelta(hours=1), s, v, r) for t, s, v, r in rows]
    with pytest.raises(psycopg.errors.NotNullViolation):
        w.write(later, dead_letters=[_dead_letter(b"d2", reason_code=None)])
    assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == 40
    assert db.execute("SELECT sum(count) FROM readings_1h").fetchone()[0] == 40
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 1
    assert w.write(later, dead_letters=[_dead_letter(b"d1")]) == 40  # the writer goes on
    assert db.execute("SELECT occurrences FROM dead_letters").fetchall() == [(4,)]


# --- 6. the on_inserted hook --------------------------------------------------------------------------

class Hook:
    """An ``on_inserted`` hook that records the rows it is given and writes a vendor row of its own;
    ``fail``: then raises ("raise"), or makes its own statement fail in the database ("sql")."""

    def __init__(self, watched: set[int], fail: str | None = None):
        self.watched, self.fail = watched, fail
        self.calls: list[list[tuple]] = []

    def touches(self, rows) -> bool:
        return any(r[1] in self.watched for r in rows)

    def __call__(self, conn, rows) -> None:
        self.calls.append(sorted(rows))
        code = f"hook-{len(self.calls)}"
        conn.execute("INSERT INTO vendors (code, name) VALUES (%s, 'Hook')", (code,))
        if self.fail == "sql":
            conn.execute("INSERT INTO vendors (code, name) VALUES (%s, 'Hook')", (code,))  # unique violation
        elif self.fail == "raise":
            raise RuntimeError("a rule bug")


def _hook_vendors(db) -> list[str]:
    return [c for (c,) in db.execute("SELECT code FROM vendors WHERE code LIKE 'hook-%' ORDER BY code")]


def test_the_hook_gets_exactly_a_small_batchs_new_rows(db, sensors, writer):
    ids = sensors("dev")
    rows = on(ids, series([T0 + timedelta(seconds=20 * k) for k in range(20)], 4, dyadic))
    hook = Hook(set(ids))
    w = writer(on_inserted=hook)
    assert w.write(rows[:40]) == 40
    assert w.write(rows[20:]) == 40  # half redelivered
    assert w.write(rows[30:]) == 0  # all redelivered: not called
    assert hook.calls == [sorted(rows[:40]), sorted(rows[40:])]
    assert all(type(v) is float and t.tzinfo is not None for call in hook.calls for t, _, v, _ in call)
    assert _hook_vendors(db) == ["hook-1", "hook-2"]  # its writes committed with the readings
    assert (w.hook_failures, counters(w)) == (0, (3, 0, 0))
    assert snapshot(db, ids, bits=False) == expected([(t, ids.index(s), v, r) for t, s, v, r in rows])


@pytest.mark.parametrize("fail", ["raise", "sql"])
def test_a_failing_hook_loses_no_reading_and_leaves_nothing_of_its_own(db, sensors, writer, fail):
    ids = sensors("dev")
    rows = on(ids, series([T0 + timedelta(seconds=20 * k) for k in range(10)], 4, dyadic))
    hook = Hook(set(ids), fail=fail)
    w = writer(on_inserted=hook)
    assert w.write(rows, dead_letters=[_dead_letter(b"d1")]) == 40
    assert w.hook_failures == 1
    assert ("a rule bug" if fail == "raise" else "UniqueViolation") in w.last_hook_error
    assert hook.calls == [sorted(rows)]  # tried once, then written again without it
    assert _hook_vendors(db) == []
    # Stored once: the rolled-back attempt left no count behind, and the dead letter is there once.
    assert snapshot(db, ids, bits=False) == expected([(t, ids.index(s), v, r) for t, s, v, r in rows])
    assert db.execute("SELECT occurrences FROM dead_letters").fetchall() == [(2,)]
    assert counters(w) == (1, 0, 0)
