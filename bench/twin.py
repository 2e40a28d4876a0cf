"""Twin benchmark: ``GET /twin/buildings/{id}`` for one large building, over HTTP.

Run:  .venv/bin/python bench/twin.py [--floors 40] [--rooms 2000] [--sensors 10000] [--requests 200]

It prints a table and, as its last line, one JSON object. It is not a test: it exits 0 and
reports what it measured.

Data (its own database ``cimtwin_bench_twin`` from ``cimtwin_template``, migrated with
``cimtwin.store.migrate.migrate``; dropped at the end unless ``--keep-db``)
----------------------------------------------------------------------------------------
* one building (a 100 m square in Shanghai) with ``--floors`` floors (3.5 m each, one of them a
  basement) and ``--rooms`` rooms spread evenly over them, each room a polygon of its floor;
* one component per room (a smoke detector, a point in the room), plus 100 building-level
  components (half of them on a floor without a room);
* ``--sensors`` sensors on 5-channel devices: 40 % on the room components, 60 % in the rooms;
* latest values: 90 % fresh, 5 % an hour old (offline), 5 % never reported (offline);
  unfinished alerts on 1 % of the sensors (half major, half warning) plus 2,000 closed ones;
* noise: a second building with 200 rooms and 1,000 sensors, so the queries must select.

Measured: ``--requests`` timed requests (after 20 warm-up) by one httpx client against one
``cimtwin serve`` subprocess (admin key), sequentially; p50/p95/max of the wall time from sending
the request to having received the whole body. The client's own JSON parsing of the body is
reported apart (``client_json_parse_p50_ms``). Also the response size and node counts.

The API caches a building's structure and reads only the live part per request (api/services/twin.py),
so the figures above are for a cached structure. ``--cold-requests`` more requests each follow a change
to the structure (a room renamed to its own name, which moves the structure generation): the first
request after any structural change pays for reading the structure again (``twin_tree_cold_*``).

Then the console (bench/console_ready.py): the demo district (1,450 buildings, as ``cimtwin up`` loads
it) is added to the same database, and headless Debian Chromium loads ``/`` from the same server
``--console-runs`` times, each in a fresh browser context; ``console_ready_ms`` is the p50 of the time
from navigation start to the console's ``cimtwin-ready`` mark (map style and first tiles drawn, SSE
connected, alerts and states fetched). It is null when web/dist or /usr/bin/chromium is missing.

Targets (issue 6): ``twin_tree_p95_ms`` < 100 for 40 floors, 2,000 rooms and 10,000 sensors;
``console_ready_ms`` < 3000.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from console_ready import CHROMIUM, measure_console_ready  # noqa: E402


def log(msg: str) -> None:
    print(f"[twin-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# One building: floors, rooms (a grid of cells in the footprint), room components, sensors.
_SEED = """
WITH b AS (
    INSERT INTO buildings (name, height, floors_above, floors_below, geom)
    VALUES (%(name)s, %(floors)s * 3.5, %(floors)s - 1, 1,
            ST_Multi(ST_MakeEnvelope(%(x0)s, %(y0)s, %(x0)s + 0.001, %(y0)s + 0.001, 4326)))
    RETURNING id),
f AS (
    INSERT INTO floors (building_id, level, name, elevation, height)
    SELECT b.id, g - 1, 'L' || (g - 1), (g - 1) * 3.5, 3.5  -- level -1 is a basement
      FROM b, generate_series(0, %(floors)s - 1) g
    RETURNING id, level)
SELECT (SELECT id FROM b) AS building_id, array_agg(id ORDER BY level) AS floor_ids FROM f"""

_ROOMS = """
INSERT INTO rooms (floor_id, ext_id, name, geom)
SELECT (%(floor_ids)s::bigint[])[1 + (g %% %(nfloors)s)], 'r' || g, 'Room ' || g,
       ST_Multi(ST_MakeEnvelope(%(x0)s + cx * 0.00002, %(y0)s + cy * 0.00002,
                                %(x0)s + cx * 0.00002 + 0.000018, %(y0)s + cy * 0.00002 + 0.000018, 4326))
  FROM generate_series(0, %(nrooms)s - 1) g,
       LATERAL (SELECT (g / %(nfloors)s) %% 50 AS cx, (g / %(nfloors)s) / 50 AS cy) c"""

_COMPONENTS = """
INSERT INTO components (kind, name, building_id, floor_id, room_id, geom)
SELECT 'smoke_detector', 'Smoke ' || r.id, %(building_id)s, r.floor_id, r.id, ST_PointOnSurface(r.geom)
  FROM rooms r JOIN floors f ON f.id = r.floor_id WHERE f.building_id = %(building_id)s;
INSERT INTO components (kind, name, building_id, floor_id, geom)
SELECT 'extinguisher', 'Extinguisher ' || g, %(building_id)s,
       CASE WHEN g %% 2 = 0 THEN (%(floor_ids)s::bigint[])[1 + g %% %(nfloors)s] END,
       ST_SetSRID(ST_MakePoint(%(x0)s + 0.0005, %(y0)s + 0.0005), 4326)
  FROM generate_series(1, 100) g"""

_DEVICES = """
INSERT INTO devices (vendor_id, ext_id)
SELECT %(vendor_id)s, %(prefix)s || g FROM generate_series(0, (%(nsensors)s + 4) / 5 - 1) g"""

# Sensor i: device i/5, channel c(i%5); 40 % on room components, the rest in rooms (round robin).
_SENSORS = """
WITH d AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM devices WHERE ext_id LIKE %(prefix)s || '%%'),
     rm AS (SELECT r.id, row_number() OVER (ORDER BY r.id) - 1 AS n FROM rooms r JOIN floors f ON f.id = r.floor_id
             WHERE f.building_id = %(building_id)s),
     cp AS (SELECT c.id, row_number() OVER (ORDER BY c.id) - 1 AS n FROM components c
             WHERE c.building_id = %(building_id)s AND c.room_id IS NOT NULL),
     nums AS (SELECT g FROM generate_series(0, %(nsensors)s - 1) g)
INSERT INTO sensors (device_id, channel, quantity, unit, component_id, room_id)
SELECT d.id, 'c' || (g %% 5), 'temperature', 'Cel',
       CASE WHEN g %% 5 < 2 THEN cp.id END, CASE WHEN g %% 5 >= 2 THEN rm.id END
  FROM nums JOIN d ON d.n = g / 5
  LEFT JOIN cp ON cp.n = g %% (SELECT count(*) FROM cp)
  LEFT JOIN rm ON rm.n = g %% (SELECT count(*) FROM rm)"""

_LATEST = """
INSERT INTO latest (sensor_id, time, value, received_at)
SELECT s.id, CASE WHEN s.id %% 20 = 1 THEN now() - interval '1 hour' ELSE now() END, s.id %% 40, now()
  FROM sensors s JOIN devices d ON d.id = s.device_id
 WHERE d.ext_id LIKE %(prefix)s || '%%' AND s.id %% 20 <> 0"""

_ALERTS = """
INSERT INTO alerts (source, kind, severity, status, title, sensor_id, raised_at, last_at, ack_due_at, close_due_at)
SELECT 'manual', 'bench', CASE WHEN s.id %% 200 = 3 THEN 'major' ELSE 'warning' END,
       CASE WHEN s.id %% 3 = 0 THEN 'acknowledged' ELSE 'open' END, 'bench', s.id, now(), now(), now(), now()
  FROM sensors s JOIN devices d ON d.id = s.device_id
 WHERE d.ext_id LIKE %(prefix)s || '%%' AND s.id %% 100 = 3;
INSERT INTO alerts (source, kind, severity, status, title, sensor_id, raised_at, last_at, ack_due_at, close_due_at)
SELECT 'manual', 'bench', 'critical', 'closed', 'old', s.id, now() - interval '1 day', now() - interval '1 day',
       now(), now()
  FROM sensors s JOIN devices d ON d.id = s.device_id
 WHERE d.ext_id LIKE %(prefix)s || '%%' AND s.id %% 5 = 4"""


def seed_building(conn, *, vendor_id: int, name: str, prefix: str, floors: int, rooms: int, sensors: int,
                  x0: float, y0: float) -> int:
    row = conn.execute(_SEED, {"name": name, "floors": floors, "x0": x0, "y0": y0}).fetchone()
    building_id, floor_ids = row
    p = {"building_id": building_id, "floor_ids": floor_ids, "nfloors": floors, "nrooms": rooms,
         "x0": x0, "y0": y0, "vendor_id": vendor_id, "prefix": prefix, "nsensors": sensors}
    conn.execute(_ROOMS, p)
    for statement in _COMPONENTS.split(";"):
        conn.execute(statement, p)
    conn.execute(_DEVICES, p)
    conn.execute(_SENSORS, p)
    conn.execute(_LATEST, p)
    for statement in _ALERTS.split(";"):
        conn.execute(statement, p)
    return building_id


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def console_figures(settings, url: str, key: str, *, runs: int) -> dict:
    """console_ready_ms and its companions, over the demo district; {} when the console can't run here."""
    from cimtwin.demo_district import load_demo_district
    from cimtwin.settings import REPO_ROOT
    if not (REPO_ROOT / "web" / "dist" / "index.html").is_file() or not Path(CHROMIUM).is_file():
        log("console: web/dist or chromium missing (run ./deploy/bootstrap.sh --test); not measured")
        return {}
    load_demo_district(settings)
    figures = measure_console_ready(url, key, runs=runs)
    print(f"{'console_ready_ms (p50)':<28}{figures['console_ready_ms']:>12}  max {figures['console_ready_max_ms']}, "
          f"warm {figures['console_ready_warm_ms']}")
    print(f"{'target console < 3000 ms':<28}{'met' if figures['console_ready_ms'] < 3000 else 'NOT met':>12}")
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--floors", type=int, default=40)
    p.add_argument("--rooms", type=int, default=2000)
    p.add_argument("--sensors", type=int, default=10000)
    p.add_argument("--requests", type=int, default=200, help="timed requests (after 20 warm-up)")
    p.add_argument("--cold-requests", type=int, default=10, help="timed requests after a structure change")
    p.add_argument("--console-runs", type=int, default=5, help="cold console loads (0: skip)")
    p.add_argument("--database", default="cimtwin_bench_twin")
    p.add_argument("--keep-db", action="store_true")
    args = p.parse_args()

    import httpx
    import psycopg
    from cimtwin.store.migrate import migrate
    from pydantic import SecretStr

    from cimtwin.settings import Settings
    from tests.helpers import ApiServer

    base = Settings()
    parts = urlsplit(base.database_url)
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    db_url = urlunsplit(parts._replace(path=f"/{args.database}"))
    key = f"bench-{uuid.uuid4().hex}"
    settings = base.model_copy(update={"database_url": db_url, "admin_api_key": SecretStr(key)})
    server = None
    result = {"twin_tree_p50_ms": None, "twin_tree_p95_ms": None, "console_ready_ms": None}
    try:
        t0 = time.monotonic()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{args.database}" TEMPLATE cimtwin_template')
        migrate(db_url)
        with psycopg.connect(db_url, autocommit=True) as conn:
            vendor_id = conn.execute("INSERT INTO vendors (code, name) VALUES ('bench', 'Bench') "
                                     "RETURNING id").fetchone()[0]
            building = seed_building(conn, vendor_id=vendor_id, name="Tower", prefix="t", floors=args.floors,
                                     rooms=args.rooms, sensors=args.sensors, x0=121.50, y0=31.20)
            seed_building(conn, vendor_id=vendor_id, name="Noise", prefix="n", floors=10, rooms=200,
                          sensors=1000, x0=121.51, y0=31.21)
            conn.execute("VACUUM ANALYZE")
            counts = conn.execute(
                """SELECT (SELECT count(*) FROM floors WHERE building_id = %(b)s),
                          (SELECT count(*) FROM rooms r JOIN floors f ON f.id = r.floor_id WHERE f.building_id = %(b)s),
                          (SELECT count(*) FROM sensors s JOIN devices d ON d.id = s.device_id
                            WHERE d.ext_id LIKE 't%%'),
                          (SELECT count(*) FROM alerts WHERE status IN ('open', 'acknowledged', 'dispatched'))""",
                {"b": building}).fetchone()
        log(f"seeded in {time.monotonic() - t0:.1f} s: building {building}: {counts[0]} floors, {counts[1]} rooms, "
            f"{counts[2]} sensors, {counts[3]} unfinished alerts")

        server = ApiServer(settings)
        server.start()
        server.client.timeout = 60
        path = f"/twin/buildings/{building}"
        with httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=60) as http:
            for _ in range(20):
                r = http.get(path)
                r.raise_for_status()
            tree = r.json()
            times, parse = [], []
            for _ in range(args.requests):
                start = time.perf_counter()
                r = http.get(path)  # the whole body received
                got = time.perf_counter()
                r.json()
                times.append((got - start) * 1000)
                parse.append((time.perf_counter() - got) * 1000)
                assert r.status_code == 200
            cold = []
            with psycopg.connect(db_url, autocommit=True) as conn:
                for _ in range(args.cold_requests):
                    conn.execute("UPDATE rooms SET name = name WHERE id = (SELECT min(id) FROM rooms)")
                    start = time.perf_counter()
                    r = http.get(path)
                    cold.append((time.perf_counter() - start) * 1000)
                    assert r.status_code == 200
        nodes = {"floor": 0, "room": 0, "component": 0, "sensor": 0}

        def walk(node):
            for key_ in ("floors", "rooms", "components", "sensors"):
                for child in node.get(key_, []):
                    nodes[child["node"]] += 1
                    walk(child)
        walk(tree)
        result.update({
            "twin_tree_p50_ms": round(statistics.median(times), 1),
            "twin_tree_p95_ms": round(pct(times, 0.95), 1),
            "twin_tree_max_ms": round(max(times), 1),
            "client_json_parse_p50_ms": round(statistics.median(parse), 1),
            "twin_tree_cold_p50_ms": round(statistics.median(cold), 1) if cold else None,
            "twin_tree_cold_max_ms": round(max(cold), 1) if cold else None,
            "requests": len(times), "response_bytes": len(r.content),
            "floors": nodes["floor"], "rooms": nodes["room"], "components": nodes["component"],
            "sensors": nodes["sensor"], "building_state": tree["state"], "building_counts": tree["counts"],
        })
        print(f"{'figure':<28}{'value':>12}")
        for k in ("twin_tree_p50_ms", "twin_tree_p95_ms", "twin_tree_max_ms", "client_json_parse_p50_ms",
                  "twin_tree_cold_p50_ms", "twin_tree_cold_max_ms",
                  "requests", "response_bytes",
                  "floors", "rooms", "components", "sensors"):
            print(f"{k:<28}{str(result[k]):>12}")
        print(f"{'building_state':<28}{tree['state']:>12}  counts {tree['counts']}")
        print(f"{'target p95 < 100 ms':<28}{'met' if result['twin_tree_p95_ms'] < 100 else 'NOT met':>12}")
        if args.console_runs:
            result.update(console_figures(settings, server.url, key, runs=args.console_runs))
    except Exception as exc:  # a benchmark reports, it does not fail
        result["error"] = f"{type(exc).__name__}: {exc}"
        log(f"failed: {result['error']}")
    finally:
        if server is not None:
            server.stop()
        if not args.keep_db:
            try:
                with psycopg.connect(admin_url, autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
            except Exception as exc:
                log(f"could not drop {args.database}: {exc}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
