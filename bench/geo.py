"""Spatial query, OGC API Features and vector-tile benchmark, against an in-memory lower bound.

Run:  .venv/bin/python bench/geo.py [--copies 69] [--queries 200] [--tiles 150] [--wait-idle 600]

It prints a table and, as its last line, one JSON object. It is not a test: it exits 0 and
reports what it measured, whatever that is.

Data
----
* ``1k``: the 1,450 real OpenStreetMap buildings around the Bund and Lujiazui
  (``shanghai_huangpu_lujiazui_osm_buildings.geojson`` in the shared data directory,
  © OpenStreetMap contributors, ODbL 1.0), loaded with the product's importer
  (``cimtwin.twin.importer.import_file``, ext_id from ``osm_id``, height from ``height``).
* ``100k``: the same buildings plus ``--copies - 1`` copies (69 in all: 100,050 buildings) made
  with one ``INSERT … SELECT ST_Translate(…)``, each copy shifted by the data's extent
  (plus ~50 m) on a 10-column grid, so they stay in Shanghai (lon 121.48–121.93, lat
  31.23–31.42). Every copy has its own ext_id (``<osm_id>@<copy>``). No areas are loaded
  (buildings.area_id is null); the table is VACUUM ANALYZEd before measuring.

Both live in one database built from ``cimtwin_template`` and migrated (``cimtwin_bench_geo``;
dropped at the end unless ``--keep-db``). One ``cimtwin serve`` subprocess (restarted after
the copies are loaded) serves HTTP on a free port.

Queries (one seeded query set per data set, shared by PostGIS and the STRtree)
-----------------------------------------------------------------------------
* ``polygon_500``: a square turned by a random angle around a random building; its size is
  searched (count ∝ side²) until PostGIS counts 500 ± 10 % intersecting buildings.
  ``GET /spatial/buildings?geom=<WKT>&limit=1000`` (relation ``intersects``, the default).
* ``distance_200m``: buildings within 200 m (geodesic) of a point near a random building
  (jittered ± 150 m): ``GET /spatial/buildings?point=x,y&distance=200&limit=1000``.
* ``nearest_10``: the 10 buildings nearest the same points: ``?point=x,y&nearest=10``.
* ``ogc_items_1000``: ``GET /ogc/collections/buildings/items?limit=1000&offset=<random>``.
* ``ogc_bbox_1000``: the same with a ``bbox`` (a square around a random building holding
  1,200 ± 15 % buildings), which is how QGIS pages through a layer.
* ``tile_z14`` … ``tile_z16``: ``GET /tiles/buildings/{z}/{x}/{y}.mvt`` for tiles holding
  buildings (up to ``--tiles`` of them per zoom, seeded sample; a smaller tile set is
  requested in rounds until at least 100 requests are timed).

Figures (milliseconds; p50 and p95; warm-up requests are not timed)
--------------------------------------------------------------------
* ``*_http_*``: the whole request through ``cimtwin serve`` (httpx, keep-alive, body read);
  ``polygon_500_post_http`` is the same polygons sent to ``POST /spatial/buildings/search``.
* ``*_sql_*``: the store function the endpoint calls, on an async psycopg pool like the
  API's: ``store.blocks.feature_page`` (each feature's GeoJSON geometry and properties
  written by PostgreSQL; with ``point``, geodesic distances and the order by them);
  ``store.ogc.count_items`` + ``store.ogc.items``; ``store.tiles.tile`` (the ST_AsMVT query
  alone; the ETag fingerprint query is ``tile_z*_fingerprint_*``).
* ``*_sqlids_*``: "the query itself", the same work as the STRtree's (an index lookup and
  the exact predicate, ids only): the endpoint's own predicate from
  ``store.blocks.matching_ids_sql``, over one synchronous connection. Polygon:
  ``ST_Intersects``. Within 200 m: the geography index's candidates, most settled by a
  planar test in scaled lon/lat (``geo/dwithin.py``), the rest by the exact geodesic test.
  Nearest 10: the exact 10 nearest, ranked by geodesic distance (which the STRtree's
  answer is too, in its projection): planar KNN for a radius, the geography index's
  candidates within it, each ranked by bounds on its geodesic distance from a scaled
  planar one (``geo/dwithin.py``, "Nearest N"), the exact distance only where bounds
  overlap. The endpoint's full query also computes each result's geodesic distance (to
  the millimetre, for ``distance_m``): that is in ``*_sql_*``, not here.
* ``*_sqlserver_*``, ``*_sqlexec_*``: the same id-only query, timed by PostgreSQL itself
  (planning + execution, and execution alone, from ``EXPLAIN (ANALYZE, TIMING OFF, SUMMARY
  ON)``): the query without the round trip. (The API's pooled connections prepare statements
  that repeat, so it mostly skips parsing; PostgreSQL still plans each call unless it keeps
  a generic plan, which it does for the nearest query, whose N is written into the SQL. The
  bench's own connection prepares the same way, so ``nearest_10_sqlids`` has no planning in
  it while ``nearest_10_sqlserver`` has.)
  ``*_geogonly_sqlexec_*``: for comparison, the predicates used before the planar band and
  the two-step nearest (``ST_DWithin`` on geography for every candidate; KNN on the
  geography index, exact distances of the first 36). ``nearest_10_twostep_sqlexec``: the
  nearest query used before the distance bounds (the same two steps, every candidate's
  geodesic distance exact; still the store's fallback near the poles and the
  antimeridian); the bench checks that both give the same ids in the same order.
  ``roundtrip_select1_*`` (``SELECT 1``) is the round-trip floor under every client figure.
  The bench's connection, like the API's pool, runs without parallel plans.
* ``strtree_*``: a shapely 2 STRtree in memory, built once over the same geometries read
  back from PostGIS: ``tree.query(polygon, predicate='intersects')`` in lon/lat (the same
  planar predicate PostGIS uses on geometry); distances in metres in a transverse Mercator
  centred on the data (k=1; scale error < 1e-5 over the data, i.e. < 2 mm at 200 m):
  ``predicate='dwithin', distance=200``, and for nearest 10 a ``dwithin`` search that
  doubles its radius until 10 are found, then sorted by distance. This is the lower bound.
  The bench checks that PostGIS and the STRtree return the same ids (a warning, not a
  failure, if they do not).

Targets at 100k: polygon_500 p95 < 30 ms (HTTP); tile_z15 p95 < 50 ms (HTTP); the query
itself within 3× of the STRtree (p95), judged both from the client (``sqlids``) and
server-side (``sqlserver``). The JSON keys are ``<figure>_p50_ms_<set>`` and
``<figure>_p95_ms_<set>`` (set = 1k or 100k); the issue's short names
(``polygon_500_p95_ms_100k``, ``tile_z15_p95_ms_100k``, …) are the HTTP figures, and
``strtree_polygon_500_p95_ms_100k`` … the lower bound.

Load: the machine may be shared. Before measuring each data set, the bench waits (polling
every 30 s, up to ``--wait-idle`` seconds in all) while other processes use more than ~30 % of
a core or a pytest, benchmark or compiler runs. While it measures it samples the other
processes' CPU use every 5 s; figures timed while they used more than 30 % of a core are
marked ``*`` (and listed in ``figures_under_load``), and the output says whether the run
happened under load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
import pyproj  # noqa: E402
import shapely  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from cimtwin.settings import Settings  # noqa: E402
from proc_load import HEAVY_NAMES, proc_table  # noqa: E402  (bench/ is the script's folder)

BUILDINGS_FILE = "shanghai_huangpu_lujiazui_osm_buildings.geojson"
GRID_COLUMNS = 10
COPY_GAP_DEG = 0.0005  # ~50 m between copies
POLYGON_TARGET = 500
BBOX_TARGET = 1200
WARMUP = 20
MIN_SAMPLES = 100


# --- load on the machine ---------------------------------------------------------------------------



def _sample(seconds: float) -> tuple[float, float, list[tuple[float, int, str]]]:
    """(start, end, [(cpu % of one core, pid, cmd)]) of every process that used the CPU in
    the next ``seconds``; times are time.monotonic()."""
    hz = os.sysconf("SC_CLK_TCK")
    a = proc_table()
    t0 = time.monotonic()
    time.sleep(seconds)
    b = proc_table()
    t1 = time.monotonic()
    used = [(100.0 * (ticks - a[pid][0]) / hz / (t1 - t0), pid, cmd[:100])
            for pid, (ticks, _, cmd) in b.items() if pid in a and ticks > a[pid][0]]
    return t0, t1, used


def _watch_loop(conn, stop) -> None:
    """In a child process, so that reading /proc never holds this bench's GIL while it times."""
    while not stop.is_set():
        conn.send(_sample(5.0))
    conn.close()


class LoadWatch:
    """CPU use of every process that is not this bench's (its own process, the API server it
    started, and PostgreSQL backends of its database)."""

    def __init__(self, database: str):
        self.database = database
        self.own_pids: set[int] = {os.getpid()}
        self.raw: list[tuple[float, float, list]] = []
        self._proc = None
        self._conn = None
        self._stop = None

    def _summary(self, used: list) -> tuple[float, list[tuple[float, int, str]]]:
        total, busy = 0.0, []
        for pct, pid, cmd in used:
            if pid in self.own_pids or f" {self.database} " in f" {cmd} ":
                continue
            total += pct
            heavy = any(h in cmd for h in HEAVY_NAMES) and "bench/geo.py" not in cmd
            if pct >= 10 or (heavy and pct >= 1):
                busy.append((pct, pid, cmd))
        return total, sorted(busy, reverse=True)

    def measure(self, seconds: float = 3.0) -> tuple[float, list[tuple[float, int, str]]]:
        """(other processes' CPU in % of one core, [(cpu %, pid, cmd) of the busy or heavy ones])."""
        return self._summary(_sample(seconds)[2])

    @staticmethod
    def is_busy(total: float, busy: list[tuple[float, int, str]]) -> bool:
        return total > 30 or any(any(h in cmd for h in HEAVY_NAMES) for _, _, cmd in busy)

    def start(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")  # before any connection or thread is opened
        self._conn, child = ctx.Pipe(duplex=False)
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=_watch_loop, args=(child, self._stop), daemon=True)
        self._proc.start()
        child.close()
        self.own_pids.add(self._proc.pid)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._stop.set()
        try:
            while True:  # until the child closes its end
                self.raw.append(self._conn.recv())
        except (EOFError, OSError):
            pass
        self._proc.join(timeout=10)
        self._proc = None

    @property
    def samples(self) -> list[tuple[float, float, float, list]]:
        """(start, end, % of a core, [(cpu %, pid, cmd) of the busy ones]) of each 5 s sample."""
        return [(t0, t1, *self._summary(used)) for t0, t1, used in self.raw]

    def overlapping(self, windows) -> list[tuple[float, float, float, list]]:
        """The samples that overlap any of the (start, end) windows."""
        windows = list(windows)
        return [smp for smp in self.samples if any(smp[0] <= end and smp[1] >= start for start, end in windows)]

    def during(self, start: float, end: float) -> float:
        """The highest CPU use of other processes in a sample overlapping [start, end]."""
        return max((smp[2] for smp in self.overlapping([(start, end)])), default=0.0)


# --- statistics and geometry helpers ----------------------------------------------------------------

def stats(samples_s: list[float]) -> dict:
    ms = np.asarray(samples_s, dtype=float) * 1000.0
    if ms.size == 0:
        return {"n": 0, "p50": None, "p95": None, "mean": None}
    return {"n": int(ms.size), "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "mean": float(ms.mean())}


def rounded(geom, digits: int = 9):
    """The geometry with coordinates rounded as they travel in WKT, so every path sees the same shape."""
    return shapely.transform(geom, lambda xy: np.round(xy, digits))


def turned_square(cx: float, cy: float, half_m: float, angle: float):
    """A square of side 2·half_m metres turned by ``angle``, around (cx, cy) in lon/lat."""
    m_lat = 111_320.0
    m_lon = m_lat * math.cos(math.radians(cy))
    corners = []
    for k in range(4):
        a = angle + math.pi / 4 + k * math.pi / 2
        dx, dy = half_m * math.sqrt(2) * math.cos(a), half_m * math.sqrt(2) * math.sin(a)
        corners.append((cx + dx / m_lon, cy + dy / m_lat))
    corners.append(corners[0])
    return rounded(shapely.Polygon(corners))


def lonlat_box(cx: float, cy: float, half_m: float) -> tuple[float, float, float, float]:
    m_lat = 111_320.0
    m_lon = m_lat * math.cos(math.radians(cy))
    return (round(cx - half_m / m_lon, 7), round(cy - half_m / m_lat, 7), round(cx + half_m / m_lon, 7),
            round(cy + half_m / m_lat, 7))


def tile_of(lon: np.ndarray, lat: np.ndarray, z: int) -> tuple[np.ndarray, np.ndarray]:
    n = 2 ** z
    x = np.floor((lon + 180.0) / 360.0 * n).astype(int)
    y = np.floor((1.0 - np.arcsinh(np.tan(np.radians(lat))) / math.pi) / 2.0 * n).astype(int)
    return x, y


# --- the bench --------------------------------------------------------------------------------------

@dataclass
class QuerySet:
    polygons: list = field(default_factory=list)          # shapely polygons (lon/lat)
    polygon_counts: list = field(default_factory=list)    # PostGIS count of each
    points: list = field(default_factory=list)            # shapely points (lon/lat)
    bboxes: list = field(default_factory=list)            # (xmin, ymin, xmax, ymax) lon/lat
    offsets: list = field(default_factory=list)           # OGC page offsets
    tiles: dict = field(default_factory=dict)             # z → [(x, y)] requested (with rounds)
    tile_sets: dict = field(default_factory=dict)         # z → number of distinct tiles with data


class Bench:
    def __init__(self, args):
        self.args = args
        base = Settings()
        parts = urlsplit(base.database_url)
        self.admin_url = urlunsplit(parts._replace(path="/postgres"))
        self.db_url = urlunsplit(parts._replace(path=f"/{args.database}"))
        # The API wants a key: the server accepts this one as admin, and ApiServer's client sends it.
        key = base.admin_api_key or SecretStr(secrets.token_urlsafe(24))
        self.settings = base.model_copy(update={"database_url": self.db_url, "admin_api_key": key})
        self.rng = np.random.default_rng(args.seed)
        self.results: dict[str, dict] = {}     # figure key → stats
        self.extra: dict = {}                  # other JSON members
        self.notes: list[str] = []
        self.conn: psycopg.Connection | None = None
        self.server = None
        self.loop = asyncio.new_event_loop()
        self.pool = None
        self.watch = LoadWatch(args.database)
        self.ids: np.ndarray | None = None
        self.geoms = None
        self.tree = None
        self.proj_geoms = None
        self.proj_tree = None
        self.to_local: pyproj.Transformer | None = None
        self.wait_deadline: float | None = None
        self.t_figure = 0.0                    # when the figure being measured started (monotonic)
        self.windows: dict[str, tuple[float, float]] = {}

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    # infrastructure ------------------------------------------------------------------------

    def wait_idle(self, phase: str) -> None:
        """Waits (within the run's --wait-idle budget) until other processes are quiet."""
        if self.wait_deadline is None:
            self.wait_deadline = time.monotonic() + self.args.wait_idle
        deadline = self.wait_deadline
        while True:
            total, busy = self.watch.measure(3.0)
            if not LoadWatch.is_busy(total, busy):
                self.log(f"{phase}: machine idle enough: other processes use {total:.0f} % of a core")
                self.extra[f"load_before_{phase}_pct_of_core"] = round(total, 1)
                return
            desc = "; ".join(f"{pct:.0f}% pid {pid} {cmd[:60]}" for pct, pid, cmd in busy[:4])
            if time.monotonic() >= deadline:
                self.log(f"still busy after waiting ({total:.0f} % of a core: {desc}); measuring anyway")
                self.notes.append(f"{phase} started under load: other processes used {total:.0f} % of a core "
                                  f"({desc})")
                self.extra[f"load_before_{phase}_pct_of_core"] = round(total, 1)
                return
            self.log(f"machine busy ({total:.0f} % of a core: {desc}); waiting 30 s")
            time.sleep(27)

    def setup_database(self) -> None:
        from cimtwin.store.migrate import migrate
        from tests.helpers import create_database  # drops it first; retries while the template is busy

        create_database(self.admin_url, self.args.database)
        report = migrate(self.db_url)
        # Like the API's pool: no parallel plans (store.db.open_async_pool).
        self.conn = psycopg.connect(self.db_url, autocommit=True,
                                    options="-c TimeZone=UTC -c max_parallel_workers_per_gather=0")
        self.log(f"database {self.args.database} ready ({report.backend})")

    def load_real(self) -> int:
        from cimtwin.twin.importer import import_file

        path = Path(self.settings.data_dir) / BUILDINGS_FILE
        if not path.is_file():
            path = Path("/work/shared/data") / BUILDINGS_FILE
        t0 = time.monotonic()
        report = import_file(self.db_url, "buildings", path, id_field="osm_id", height_field="height")
        n = self.count()
        self.extra["load_1k_s"] = round(time.monotonic() - t0, 2)
        if report.rejected:
            self.notes.append(f"importer rejected {len(report.rejected)} of the real buildings")
        self.analyze()
        self.log(f"loaded {n} real buildings with the importer in {self.extra['load_1k_s']} s")
        return n

    def load_copies(self) -> int:
        ext = self.conn.execute("SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) "
                                "FROM (SELECT ST_Extent(geom) e FROM buildings) x").fetchone()
        dx, dy = ext[2] - ext[0] + COPY_GAP_DEG, ext[3] - ext[1] + COPY_GAP_DEG
        t0 = time.monotonic()
        self.conn.execute("""
            INSERT INTO buildings (ext_id, name, address, use, height, min_height, floors_above, floors_below,
                                   occupants, organisations, area_id, area_derived, geom, properties)
            SELECT b.ext_id || '@' || k, b.name, b.address, b.use, b.height, b.min_height, b.floors_above,
                   b.floors_below, b.occupants, b.organisations, NULL, b.area_derived,
                   ST_Translate(b.geom, (k %% %(cols)s) * %(dx)s, (k / %(cols)s) * %(dy)s), b.properties
            FROM buildings b CROSS JOIN generate_series(1, %(copies)s - 1) k
            WHERE b.ext_id NOT LIKE '%%@%%'
            ORDER BY k, b.id""", {"cols": GRID_COLUMNS, "dx": dx, "dy": dy, "copies": self.args.copies})
        self.extra["load_copies_s"] = round(time.monotonic() - t0, 2)
        self.analyze()
        n = self.count()
        bounds = self.conn.execute("SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) "
                                   "FROM (SELECT ST_Extent(geom) e FROM buildings) x").fetchone()
        self.extra["extent_100k"] = [round(v, 5) for v in bounds]
        self.log(f"{n} buildings after {self.args.copies - 1} shifted copies "
                 f"({self.extra['load_copies_s']} s); extent {self.extra['extent_100k']}")
        return n

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM buildings").fetchone()[0]

    def analyze(self) -> None:
        self.conn.execute("VACUUM ANALYZE buildings")

    def start_api(self) -> None:
        from tests.helpers import ApiServer

        self.stop_api()
        self.server = ApiServer(self.settings)
        self.server.start()
        self.watch.own_pids.add(self.server.proc.pid)
        self.server.client.timeout = 60

    def stop_api(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def open_pool(self) -> None:
        from cimtwin.store.db import open_async_pool

        self.close_pool()
        self.pool = open_async_pool(self.db_url, min_size=1, max_size=1,
                                    statement_timeout_ms=self.settings.api_statement_timeout_ms)
        self.loop.run_until_complete(self.pool.open(wait=True))

    def close_pool(self) -> None:
        if self.pool is not None:
            self.loop.run_until_complete(self.pool.close())
            self.pool = None

    # in-memory lower bound -----------------------------------------------------------------

    def build_trees(self, tag: str) -> None:
        rows = self.conn.execute("SELECT id, ST_AsBinary(geom) FROM buildings ORDER BY id").fetchall()
        self.ids = np.array([r[0] for r in rows], dtype=np.int64)
        self.geoms = shapely.from_wkb([bytes(r[1]) for r in rows])
        xmin, ymin, xmax, ymax = shapely.total_bounds(self.geoms)
        local = pyproj.CRS.from_proj4(f"+proj=tmerc +lat_0={(ymin + ymax) / 2:.4f} +lon_0={(xmin + xmax) / 2:.4f} "
                                      f"+k=1 +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs")
        self.to_local = pyproj.Transformer.from_crs("EPSG:4326", local, always_xy=True)
        t0 = time.perf_counter()
        self.tree = shapely.STRtree(self.geoms)
        self.proj_geoms = shapely.transform(self.geoms, lambda xy: np.column_stack(
            self.to_local.transform(xy[:, 0], xy[:, 1])))
        self.proj_tree = shapely.STRtree(self.proj_geoms)
        self.extra[f"strtree_build_s_{tag}"] = round(time.perf_counter() - t0, 3)

    def local_point(self, p):
        x, y = self.to_local.transform(p.x, p.y)
        return shapely.Point(x, y)

    def tree_polygon(self, poly) -> np.ndarray:
        return self.tree.query(poly, predicate="intersects")

    def tree_distance(self, lp, d: float = 200.0) -> np.ndarray:
        return self.proj_tree.query(lp, predicate="dwithin", distance=d)

    def tree_nearest(self, lp, k: int = 10) -> np.ndarray:
        r = 50.0
        while True:
            idx = self.proj_tree.query(lp, predicate="dwithin", distance=r)
            if idx.size >= k or r > 1e6:
                break
            r *= 2
        dist = shapely.distance(self.proj_geoms[idx], lp)
        order = np.lexsort((self.ids[idx], dist))[:k]
        return idx[order]

    # query sets ----------------------------------------------------------------------------

    def pg_count(self, poly) -> int:
        return self.conn.execute("SELECT count(*) FROM buildings t WHERE ST_Intersects(t.geom, "
                                 "ST_GeomFromWKB(%s, 4326))", (shapely.to_wkb(poly),)).fetchone()[0]

    def pg_count_box(self, box) -> int:
        return self.conn.execute("SELECT count(*) FROM buildings b WHERE ST_Intersects(b.geom, "
                                 "ST_MakeEnvelope(%s, %s, %s, %s, 4326))", box).fetchone()[0]

    def calibrate(self, make, count, target: int, tol: float, start_m: float):
        """The shape (and its count) whose PostGIS count is target ± tol, searching the size."""
        half = start_m
        for _ in range(12):
            shape = make(half)
            n = count(shape)
            if abs(n - target) <= tol * target:
                return shape, n
            half *= math.sqrt(target / max(n, 1)) if n else 2.0
            half = min(max(half, 5.0), 20_000.0)
        return None, 0

    def make_queries(self, tag: str, n_buildings: int) -> QuerySet:
        a, rng = self.args, self.rng
        qs = QuerySet()
        reps = shapely.point_on_surface(self.geoms)
        rx, ry = shapely.get_x(reps), shapely.get_y(reps)
        # density guess for the first size: buildings per m² around the data
        t0 = time.monotonic()
        tries = 0
        while len(qs.polygons) < a.queries and tries < a.queries * 3:
            tries += 1
            i = int(rng.integers(len(reps)))
            angle = float(rng.uniform(0, math.pi / 2))
            poly, n = self.calibrate(lambda h: turned_square(rx[i], ry[i], h, angle), self.pg_count,
                                     POLYGON_TARGET, 0.10, 350.0)
            if poly is not None:
                qs.polygons.append(poly)
                qs.polygon_counts.append(n)
        for _ in range(a.queries):
            i = int(rng.integers(len(reps)))
            dx, dy = rng.uniform(-150, 150, size=2)
            lon = rx[i] + dx / (111_320.0 * math.cos(math.radians(ry[i])))
            lat = ry[i] + dy / 111_320.0
            qs.points.append(shapely.Point(round(lon, 7), round(lat, 7)))
        tries = 0
        n_bbox = max(a.queries // 2, 50)
        while n_buildings >= BBOX_TARGET * 1.2 and len(qs.bboxes) < n_bbox and tries < n_bbox * 3:
            tries += 1
            i = int(rng.integers(len(reps)))
            box, _ = self.calibrate(lambda h: lonlat_box(rx[i], ry[i], h), self.pg_count_box, BBOX_TARGET,
                                    0.15, 500.0)
            if box is not None:
                qs.bboxes.append(box)
        hi = max(n_buildings - 1000, 0)
        qs.offsets = [int(v) for v in rng.integers(0, hi + 1, size=n_bbox)]
        for z in (14, 15, 16):
            x, y = tile_of(rx, ry, z)
            distinct = sorted(set(zip(x.tolist(), y.tolist())))
            qs.tile_sets[z] = len(distinct)
            pick = [distinct[j] for j in rng.permutation(len(distinct))[:a.tiles]]
            rounds = max(1, math.ceil(MIN_SAMPLES / len(pick)))
            qs.tiles[z] = pick * rounds
        self.extra[f"polygon_500_queries_{tag}"] = len(qs.polygons)
        self.extra[f"polygon_500_mean_count_{tag}"] = round(float(np.mean(qs.polygon_counts)), 1) \
            if qs.polygon_counts else None
        self.extra[f"tiles_with_data_{tag}"] = {str(z): qs.tile_sets[z] for z in qs.tile_sets}
        self.log(f"{tag}: {len(qs.polygons)} polygons (mean count {self.extra[f'polygon_500_mean_count_{tag}']}), "
                 f"{len(qs.points)} points, {len(qs.bboxes)} bboxes, tiles with data "
                 f"{qs.tile_sets} ({time.monotonic() - t0:.1f} s)")
        return qs

    # timing --------------------------------------------------------------------------------

    def timed(self, items: list, call, warmup: int = WARMUP) -> list[float]:
        self.t_figure = time.monotonic()
        for it in items[:warmup]:
            call(it)
        out = []
        for it in items:
            t0 = time.perf_counter()
            call(it)
            out.append(time.perf_counter() - t0)
        return out

    def timed_async(self, items: list, make_coro, warmup: int = WARMUP) -> list[float]:
        self.t_figure = time.monotonic()

        async def run():
            for it in items[:warmup]:
                await make_coro(it)
            out = []
            for it in items:
                t0 = time.perf_counter()
                await make_coro(it)
                out.append(time.perf_counter() - t0)
            return out
        return self.loop.run_until_complete(run())

    def record(self, key: str, samples: list[float]) -> dict:
        self.windows[key] = (self.t_figure, time.monotonic())
        self.results[key] = stats(samples)
        s = self.results[key]
        self.log(f"{key}: n={s['n']} p50={s['p50']:.2f} ms p95={s['p95']:.2f} ms")
        return s

    def server_time(self, query: str, params) -> tuple[float, float]:
        """(planning + execution, execution) times (s) that PostgreSQL reports for one run of the
        query: without the round trip and the sending of rows."""
        plan = self.conn.execute("EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON, FORMAT JSON) " + query,
                                 params).fetchone()[0][0]
        return (plan["Planning Time"] + plan["Execution Time"]) / 1000.0, plan["Execution Time"] / 1000.0

    def server_timed(self, key: str, items: list, query_of) -> None:
        """Records ``<key>_sqlserver_<tag>`` (planning + execution) and ``<key>_sqlexec_<tag>``;
        ``query_of(item)`` gives (SQL text, params)."""
        stem, tag = key.rsplit("_", 1)
        self.t_figure = time.monotonic()
        for it in items[:WARMUP]:
            self.server_time(*query_of(it))
        both = [self.server_time(*query_of(it)) for it in items]
        self.record(f"{stem}_sqlserver_{tag}", [a for a, _ in both])
        self.record(f"{stem}_sqlexec_{tag}", [b for _, b in both])

    def http(self, path: str, params=None, expect=(200,)) -> bytes:
        r = self.server.client.get(path, params=params)
        if r.status_code not in expect:
            raise RuntimeError(f"GET {path} {params}: {r.status_code} {r.text[:300]}")
        return r.content

    def http_post(self, path: str, body: dict) -> bytes:
        r = self.server.client.post(path, json=body)
        if r.status_code != 200:
            raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:300]}")
        return r.content

    # the figures ---------------------------------------------------------------------------

    def spatial(self, tag: str, qs: QuerySet) -> None:
        from cimtwin.geo.dwithin import scaled_band
        from cimtwin.store import blocks as store

        # the floor under every client-side SQL figure: one round trip of SELECT 1
        self.record(f"roundtrip_select1_{tag}", self.timed(list(range(self.args.queries)),
                                                           lambda i: self.conn.execute("SELECT 1").fetchone()))

        def ids_query(q):
            """The store's own predicate for q, ids only, as (SQL text, params)."""
            query, params = store.matching_ids_sql(q)
            return query.as_string(self.conn), params

        # -- polygon ------------------------------------------------------------------------
        polys = qs.polygons
        idx = list(range(len(polys)))
        wkts = [shapely.to_wkt(p, rounding_precision=9, trim=True) for p in polys]
        wkbs = [shapely.to_wkb(p) for p in polys]
        returned = []

        def http_poly(i):
            body = self.http("/spatial/buildings", {"geom": wkts[i], "limit": 1000})
            returned.append(body.count(b'"type":"Feature"'))
        self.record(f"polygon_500_http_{tag}", self.timed(idx, http_poly))
        self.extra[f"polygon_500_http_mean_features_{tag}"] = round(float(np.mean(returned[WARMUP:])), 1)
        geojson = [shapely.geometry.mapping(p) for p in polys]
        self.record(f"polygon_500_post_http_{tag}", self.timed(idx, lambda i: self.http_post(
            "/spatial/buildings/search", {"geometry": geojson[i], "limit": 1000})))

        def sql_poly(i):
            return store.feature_page(self.pool, store.FeatureQuery(layer="buildings", geom=wkbs[i], limit=1000))
        self.record(f"polygon_500_sql_{tag}", self.timed_async(idx, sql_poly))

        pg_ids: dict[int, set] = {}
        poly_ids = [ids_query(store.FeatureQuery(layer="buildings", geom=w)) for w in wkbs]

        def ids_poly(i):
            pg_ids[i] = {r[0] for r in self.conn.execute(*poly_ids[i]).fetchall()}
        self.record(f"polygon_500_sqlids_{tag}", self.timed(idx, ids_poly))
        self.server_timed(f"polygon_500_{tag}", idx, lambda i: poly_ids[i])

        tree_ids: dict[int, np.ndarray] = {}

        def tree_poly(i):
            tree_ids[i] = self.tree_polygon(polys[i])
        self.record(f"strtree_polygon_500_{tag}", self.timed(idx, tree_poly))
        bad = [i for i in idx if pg_ids[i] != set(self.ids[tree_ids[i]].tolist())]
        self.extra[f"polygon_500_id_mismatches_{tag}"] = len(bad)
        if bad:
            i = bad[0]
            st = set(self.ids[tree_ids[i]].tolist())
            msg = (f"WARNING {tag}: PostGIS and STRtree differ on {len(bad)} of {len(polys)} polygons "
                   f"(first: only PostGIS {sorted(pg_ids[i] - st)[:5]}, only STRtree {sorted(st - pg_ids[i])[:5]})")
            self.notes.append(msg)
            self.log(msg)

        # -- distance -----------------------------------------------------------------------
        pts = qs.points
        idx = list(range(len(pts)))
        pt_params = [f"{p.x:.7f},{p.y:.7f}" for p in pts]
        pt_wkbs = [shapely.to_wkb(p) for p in pts]
        local = [self.local_point(p) for p in pts]
        dist_q = [store.FeatureQuery(layer="buildings", point=pt_wkbs[i], distance_m=200.0,
                                     band=scaled_band(pts[i].x, pts[i].y, 200.0), limit=1000) for i in idx]

        self.record(f"distance_200m_http_{tag}", self.timed(idx, lambda i: self.http(
            "/spatial/buildings", {"point": pt_params[i], "distance": 200, "limit": 1000})))
        self.record(f"distance_200m_sql_{tag}", self.timed_async(idx, lambda i: store.feature_page(
            self.pool, dist_q[i])))
        dist_ids = [ids_query(q) for q in dist_q]
        pg_dist: dict[int, set] = {}

        def ids_dist(i):
            pg_dist[i] = {r[0] for r in self.conn.execute(*dist_ids[i]).fetchall()}
        self.record(f"distance_200m_sqlids_{tag}", self.timed(idx, ids_dist))
        self.server_timed(f"distance_200m_{tag}", idx, lambda i: dist_ids[i])
        # the predicate before the planar band: the exact test on every geography-index candidate
        q_geog = ("SELECT t.id FROM buildings t WHERE ST_DWithin(t.geom::geography, "
                  "ST_GeomFromWKB(%s, 4326)::geography, 200)")
        self.server_timed(f"distance_200m_geogonly_{tag}", idx, lambda i: (q_geog, (pt_wkbs[i],)))
        geog_bad = [i for i in idx if pg_dist[i] != {r[0] for r in self.conn.execute(q_geog, (pt_wkbs[i],))}]
        self.extra[f"distance_200m_band_vs_geography_mismatches_{tag}"] = len(geog_bad)
        if geog_bad:
            self.notes.append(f"WARNING {tag}: the banded distance predicate and plain ST_DWithin(geography) "
                              f"differ on {len(geog_bad)} of {len(pts)} points")
        tree_dist: dict[int, np.ndarray] = {}

        def tree_d(i):
            tree_dist[i] = self.tree_distance(local[i])
        self.record(f"strtree_distance_200m_{tag}", self.timed(idx, tree_d))
        bad = [i for i in idx if pg_dist[i] != set(self.ids[tree_dist[i]].tolist())]
        self.extra[f"distance_200m_id_mismatches_{tag}"] = len(bad)
        self.extra[f"distance_200m_mean_features_{tag}"] = round(float(np.mean([len(v) for v in pg_dist.values()])), 1)
        if bad:
            i = bad[0]
            st = set(self.ids[tree_dist[i]].tolist())
            diff = sorted((pg_dist[i] ^ st))[:3]
            dists = self.conn.execute(
                "SELECT id, ST_Distance(geom::geography, ST_GeomFromWKB(%s, 4326)::geography) FROM buildings "
                "WHERE id = ANY(%s)", (pt_wkbs[i], diff)).fetchall()
            self.notes.append(f"{tag}: distance sets differ on {len(bad)} of {len(pts)} points, at the 200 m edge "
                              f"(first: ids {diff}, PostGIS distances "
                              f"{[round(d, 3) for _, d in dists]} m)")

        # -- nearest ------------------------------------------------------------------------
        near_q = [store.FeatureQuery(layer="buildings", point=pt_wkbs[i], nearest=10) for i in idx]
        self.record(f"nearest_10_http_{tag}", self.timed(idx, lambda i: self.http(
            "/spatial/buildings", {"point": pt_params[i], "nearest": 10})))
        self.record(f"nearest_10_sql_{tag}", self.timed_async(idx, lambda i: store.feature_page(
            self.pool, near_q[i])))
        near_ids = [ids_query(q) for q in near_q]
        pg_near: dict[int, list] = {}

        def ids_near(i):
            pg_near[i] = [r[0] for r in self.conn.execute(*near_ids[i]).fetchall()]
        self.record(f"nearest_10_sqlids_{tag}", self.timed(idx, ids_near))
        self.server_timed(f"nearest_10_{tag}", idx, lambda i: near_ids[i])
        # before: KNN on the geography index, the exact distance of the first 36, the best 10
        q_near_geog = """SELECT id FROM (
                        SELECT t.id, ST_Distance(t.geom::geography, p.g) AS d
                        FROM buildings t, (SELECT ST_GeomFromWKB(%(p)s, 4326)::geography AS g) p
                        ORDER BY t.geom::geography <-> p.g LIMIT 36) c
                    ORDER BY d, id LIMIT 10"""
        self.server_timed(f"nearest_10_geogonly_{tag}", idx, lambda i: (q_near_geog, {"p": pt_wkbs[i]}))
        # before the distance bounds: the same two steps with the exact distance of every row
        near_exact = []
        for q in near_q:
            layer, params = store.LAYERS[q.layer], {"nearest": q.nearest}
            where = store._where(layer, q, params)
            near_exact.append((store._nearest_exact_sql(layer, where, None, params).as_string(self.conn), params))
        self.server_timed(f"nearest_10_twostep_{tag}", idx, lambda i: near_exact[i])
        exact_bad = [i for i in idx if pg_near[i] != [r[0] for r in self.conn.execute(*near_exact[i])]]
        self.extra[f"nearest_10_bounds_vs_exact_mismatches_{tag}"] = len(exact_bad)
        if exact_bad:
            self.notes.append(f"WARNING {tag}: the nearest query with distance bounds and the one with every "
                              f"distance exact differ on {len(exact_bad)} of {len(pts)} points")
        tree_near: dict[int, np.ndarray] = {}

        def tree_n(i):
            tree_near[i] = self.tree_nearest(local[i])
        self.record(f"strtree_nearest_10_{tag}", self.timed(idx, tree_n))
        bad = [i for i in idx if set(pg_near[i]) != set(self.ids[tree_near[i]].tolist())]
        self.extra[f"nearest_10_id_mismatches_{tag}"] = len(bad)
        if bad:
            self.notes.append(f"{tag}: nearest-10 sets differ on {len(bad)} of {len(pts)} points "
                              f"(ties or the 10th place within millimetres)")

    def ogc(self, tag: str, qs: QuerySet) -> None:
        from cimtwin.store import ogc as store

        off = self.settings.sensor_offline_after_s
        offsets = qs.offsets
        idx = list(range(len(offsets)))
        counts = []

        def http_page(i):
            body = self.http("/ogc/collections/buildings/items", {"limit": 1000, "offset": offsets[i]})
            counts.append(body.count(b'"type":"Feature"'))
        self.record(f"ogc_items_1000_http_{tag}", self.timed(idx, http_page))
        self.extra[f"ogc_items_1000_mean_features_{tag}"] = round(float(np.mean(counts[WARMUP:])), 1)

        async def sql_page(i):
            await store.count_items(self.pool, collection="buildings", offline_after_s=off)
            await store.items(self.pool, collection="buildings", limit=1000, offset=offsets[i], offline_after_s=off)
        self.record(f"ogc_items_1000_sql_{tag}", self.timed_async(idx, sql_page))

        if not qs.bboxes:
            return
        boxes = qs.bboxes
        idx = list(range(len(boxes)))
        counts.clear()

        def http_bbox(i):
            body = self.http("/ogc/collections/buildings/items",
                             {"limit": 1000, "bbox": ",".join(f"{v:.7f}" for v in boxes[i])})
            counts.append(body.count(b'"type":"Feature"'))
        self.record(f"ogc_bbox_1000_http_{tag}", self.timed(idx, http_bbox))
        self.extra[f"ogc_bbox_1000_mean_features_{tag}"] = round(float(np.mean(counts[WARMUP:])), 1)

        async def sql_bbox(i):
            await store.count_items(self.pool, collection="buildings", bbox=boxes[i], offline_after_s=off)
            await store.items(self.pool, collection="buildings", bbox=boxes[i], limit=1000, offset=0,
                              offline_after_s=off)
        self.record(f"ogc_bbox_1000_sql_{tag}", self.timed_async(idx, sql_bbox))

    def tiles(self, tag: str, qs: QuerySet) -> None:
        from cimtwin.store import tiles as store

        maxf, off = self.settings.tiles_max_features, self.settings.sensor_offline_after_s
        for z, xy in qs.tiles.items():
            sizes = []

            def http_tile(t, z=z):
                body = self.http(f"/tiles/buildings/{z}/{t[0]}/{t[1]}.mvt", expect=(200, 204))
                sizes.append(len(body))
            self.record(f"tile_z{z}_http_{tag}", self.timed(xy, http_tile, warmup=min(WARMUP, len(xy))))
            self.extra[f"tile_z{z}_mean_kb_{tag}"] = round(float(np.mean(sizes)) / 1024, 1)
            self.extra[f"tile_z{z}_tiles_{tag}"] = len(set(xy))
            self.record(f"tile_z{z}_sql_{tag}", self.timed_async(xy, lambda t, z=z: store.tile(
                self.pool, layer="buildings", z=z, x=t[0], y=t[1], max_features=maxf, offline_after_s=off),
                warmup=min(WARMUP, len(xy))))
            self.record(f"tile_z{z}_fingerprint_{tag}", self.timed_async(xy, lambda t, z=z: store.fingerprint(
                self.pool, layer="buildings", z=z, x=t[0], y=t[1]), warmup=min(WARMUP, len(xy))))

    def explain(self, tag: str, qs: QuerySet) -> None:
        """EXPLAIN ANALYZE of one query of each kind (with --explain): the store's own queries."""
        from cimtwin.geo.dwithin import scaled_band
        from cimtwin.store import blocks as store

        p, pt = qs.polygons[0], qs.points[0]
        z, (x, y) = 15, qs.tiles[15][0]
        queries = [(name, *store.matching_ids_sql(q)) for name, q in (
            ("polygon", store.FeatureQuery(layer="buildings", geom=shapely.to_wkb(p))),
            ("distance", store.FeatureQuery(layer="buildings", point=shapely.to_wkb(pt), distance_m=200.0,
                                            band=scaled_band(pt.x, pt.y, 200.0))),
            ("nearest", store.FeatureQuery(layer="buildings", point=shapely.to_wkb(pt), nearest=10)))]
        queries.append(("tile z15 bbox", "SELECT count(*) FROM buildings b WHERE b.geom && ST_Transform("
                                         "ST_TileEnvelope(%s, %s, %s, margin => 0.015625), 4326)", (z, x, y)))
        for name, query, params in queries:
            text = query if isinstance(query, str) else query.as_string(self.conn)
            plan = self.conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + text, params).fetchall()
            print(f"--- EXPLAIN {name} ({tag})", file=sys.stderr)
            for (line,) in plan:
                print("   " + line, file=sys.stderr)

    def dataset(self, tag: str, n_buildings: int) -> None:
        self.start_api()
        self.open_pool()
        self.build_trees(tag)
        qs = self.make_queries(tag, n_buildings)
        self.extra[f"buildings_{tag}"] = n_buildings
        if self.args.explain:
            self.explain(tag, qs)
        self.spatial(tag, qs)
        self.ogc(tag, qs)
        self.tiles(tag, qs)

    def run(self) -> None:
        started = time.monotonic()
        if self.args.wait_idle > 0:
            self.wait_idle("1k")
        self.watch.start()
        self.setup_database()
        n1 = self.load_real()
        self.dataset("1k", n1)
        if self.args.copies > 1:
            n100 = self.load_copies()
            if self.args.wait_idle > 0:
                self.wait_idle("100k")
            self.dataset("100k", n100)
        self.extra["bench_seconds"] = round(time.monotonic() - started, 1)

    def cleanup(self) -> None:
        self.watch.stop()
        for step in (self.close_pool, self.stop_api):
            try:
                step()
            except Exception as exc:
                self.log(f"cleanup: {exc}")
        if self.conn is not None:
            self.conn.close()
        self.loop.close()
        if not self.args.keep_db:
            try:
                with psycopg.connect(self.admin_url, autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{self.args.database}" WITH (FORCE)')
            except Exception as exc:
                self.log(f"could not drop {self.args.database}: {exc}")


# --- report -----------------------------------------------------------------------------------------

TARGETS = {  # figure (100k) → (p95 limit in ms, or None; what)
    "polygon_500_http_100k": (30.0, "p95 < 30 ms"),
    "tile_z15_http_100k": (50.0, "p95 < 50 ms"),
}
ROWS = [  # (label, figure stem)
    ("polygon (500 buildings), HTTP", "polygon_500_http"),
    ("polygon, HTTP POST search", "polygon_500_post_http"),
    ("polygon, store.feature_page", "polygon_500_sql"),
    ("polygon, the query itself (ids)", "polygon_500_sqlids"),
    ("polygon, the query itself, server: plan+exec", "polygon_500_sqlserver"),
    ("polygon, the query itself, server: exec", "polygon_500_sqlexec"),
    ("polygon, STRtree in memory", "strtree_polygon_500"),
    ("within 200 m, HTTP", "distance_200m_http"),
    ("within 200 m, store.feature_page", "distance_200m_sql"),
    ("within 200 m, the query itself (ids)", "distance_200m_sqlids"),
    ("within 200 m, query itself, server: plan+exec", "distance_200m_sqlserver"),
    ("within 200 m, query itself, server: exec", "distance_200m_sqlexec"),
    ("within 200 m, before (geography only): exec", "distance_200m_geogonly_sqlexec"),
    ("within 200 m, STRtree in memory", "strtree_distance_200m"),
    ("nearest 10, HTTP", "nearest_10_http"),
    ("nearest 10, store.feature_page", "nearest_10_sql"),
    ("nearest 10, the query itself (ids)", "nearest_10_sqlids"),
    ("nearest 10, query itself, server: plan+exec", "nearest_10_sqlserver"),
    ("nearest 10, query itself, server: exec", "nearest_10_sqlexec"),
    ("nearest 10, before (all distances exact): exec", "nearest_10_twostep_sqlexec"),
    ("nearest 10, before (geography KNN): exec", "nearest_10_geogonly_sqlexec"),
    ("nearest 10, STRtree in memory", "strtree_nearest_10"),
    ("round trip floor: SELECT 1", "roundtrip_select1"),
    ("OGC items page of 1,000 (offset), HTTP", "ogc_items_1000_http"),
    ("OGC items page, count + items SQL", "ogc_items_1000_sql"),
    ("OGC items page of 1,000 (bbox), HTTP", "ogc_bbox_1000_http"),
    ("OGC bbox page, count + items SQL", "ogc_bbox_1000_sql"),
    ("tile z14, HTTP", "tile_z14_http"),
    ("tile z14, ST_AsMVT query", "tile_z14_sql"),
    ("tile z14, ETag fingerprint query", "tile_z14_fingerprint"),
    ("tile z15, HTTP", "tile_z15_http"),
    ("tile z15, ST_AsMVT query", "tile_z15_sql"),
    ("tile z15, ETag fingerprint query", "tile_z15_fingerprint"),
    ("tile z16, HTTP", "tile_z16_http"),
    ("tile z16, ST_AsMVT query", "tile_z16_sql"),
    ("tile z16, ETag fingerprint query", "tile_z16_fingerprint"),
]


def report(bench: Bench) -> None:
    r, x = bench.results, bench.extra
    # Load while measuring: only the samples that overlap a figure's timing window count.
    samples = bench.watch.overlapping(bench.windows.values())
    loads = [smp[2] for smp in samples]
    load_mean = float(np.mean(loads)) if loads else 0.0
    load_max = float(np.max(loads)) if loads else 0.0
    heavy: dict[str, float] = {}
    for smp in samples:
        for pct, _, cmd in smp[3]:
            if pct >= 20 or any(h in cmd for h in HEAVY_NAMES):
                heavy[cmd] = max(heavy.get(cmd, 0.0), pct)
    loaded = sorted(k for k, (a, b) in bench.windows.items() if bench.watch.during(a, b) > 30)
    under_load = load_mean > 30 or bool(loaded) or any("under load" in note for note in bench.notes)

    def cell(key, field):
        v = (r.get(key) or {}).get(field)
        mark = "*" if field == "p95" and key in loaded else " "
        return f"{v:9.2f}{mark}" if v is not None else f"{'-':>9} "

    def n(key):
        v = (r.get(key) or {}).get("n")
        return f"{v:>5}" if v else f"{'-':>5}"

    print(f"\ngeo benchmark ({os.cpu_count()} cores; PostgreSQL {bench.extra.get('pg_version', '?')}, "
          f"PostGIS {bench.extra.get('postgis_version', '?')}; buildings: 1k = {x.get('buildings_1k')}, "
          f"100k = {x.get('buildings_100k')}); milliseconds")
    print(f"{'measurement':<46} {'n':>5} {'p50 1k':>9}  {'p95 1k':>9}    {'n':>5} {'p50 100k':>9}  {'p95 100k':>9}")
    print("-" * 106)
    for label, stem in ROWS:
        a, b = f"{stem}_1k", f"{stem}_100k"
        if a not in r and b not in r:
            continue
        print(f"{label:<46} {n(a)} {cell(a, 'p50')} {cell(a, 'p95')}   {n(b)} {cell(b, 'p50')} {cell(b, 'p95')}")
    print("-" * 106)
    if loaded:
        print("* measured while other processes used more than 30 % of a core")

    out: dict = {}
    for key, s in r.items():
        stem, tag = key.rsplit("_", 1)
        if s["p50"] is None:
            continue
        out[f"{stem}_p50_ms_{tag}"] = round(s["p50"], 2)
        out[f"{stem}_p95_ms_{tag}"] = round(s["p95"], 2)
    # the names: the figure a user sees is the HTTP one
    for tag in ("1k", "100k"):
        for stem in ("polygon_500", "distance_200m", "nearest_10", "ogc_items_1000", "ogc_bbox_1000", "tile_z14",
                     "tile_z15", "tile_z16"):
            for p in ("p50", "p95"):
                src = f"{stem}_http_{p}_ms_{tag}"
                if src in out:
                    out[f"{stem}_{p}_ms_{tag}"] = out[src]

    verdicts = []
    for key, (limit, what) in TARGETS.items():
        s = r.get(key)
        met = bool(s and s["p95"] is not None and s["p95"] < limit)
        out[f"target_{key.rsplit('_', 1)[0]}_met"] = met
        verdicts.append(f"{key}: p95 {s['p95']:.2f} ms, target {what}: {'MET' if met else 'MISSED'}"
                        if s else f"{key}: not measured")
    for stem in ("polygon_500", "distance_200m", "nearest_10"):
        for kind in ("sqlexec", "sqlserver", "sqlids", "sql", "http", "geogonly_sqlexec", "twostep_sqlexec"):
            for tag in ("1k", "100k"):
                pg, st = r.get(f"{stem}_{kind}_{tag}"), r.get(f"strtree_{stem}_{tag}")
                for p in ("p50", "p95"):
                    if pg and st and st[p]:
                        out[f"{stem}_{kind}_vs_strtree_{p}_{tag}"] = round(pg[p] / st[p], 2)
        if f"{stem}_sqlids_vs_strtree_p95_100k" not in out:
            continue
        parts = []
        for kind, what in (("sqlids", "from the client"), ("sqlserver", "server plan+exec"),
                           ("sqlexec", "server exec")):
            p95, p50 = out.get(f"{stem}_{kind}_vs_strtree_p95_100k"), out.get(f"{stem}_{kind}_vs_strtree_p50_100k")
            met = p95 is not None and p95 <= 3.0
            out[f"target_{stem}_{kind}_within_3x_strtree_met"] = met
            parts.append(f"{what} {p95}x at p95 / {p50}x at p50: {'MET' if met else 'MISSED'}")
        verdicts.append(f"{stem}, the query itself vs the STRtree (target <= 3x at p95): " + "; ".join(parts)
                        + f" (store function {out.get(f'{stem}_sql_vs_strtree_p95_100k')}x, "
                          f"HTTP {out.get(f'{stem}_http_vs_strtree_p95_100k')}x)")
    for v in verdicts:
        print(v)

    print(f"other processes while measuring: mean {load_mean:.0f} %, max {load_max:.0f} % of one core "
          f"({len(loads)} samples of 5 s); under load: {'YES' if under_load else 'no'}"
          + (f"; {len(loaded)} of {len(bench.windows)} figures overlap a sample above 30 %" if loaded else ""))
    for cmd, pct in sorted(heavy.items(), key=lambda kv: -kv[1])[:6]:
        print(f"  busy: {pct:.0f} % {cmd}")
    if loaded:
        print("  figures measured while others used > 30 % of a core: "
              + ("all" if len(loaded) == len(bench.windows) else ", ".join(loaded)))
    for key in ("polygon_500_id_mismatches_1k", "polygon_500_id_mismatches_100k"):
        if key in x:
            print(f"{key}: {x[key]} (PostGIS vs STRtree ids)")
    for note in bench.notes:
        print(f"NOTE: {note}")
    out.update({k: v for k, v in x.items()})
    out["under_load"] = under_load
    out["figures_under_load"] = loaded
    out["other_cpu_mean_pct_of_core"] = round(load_mean, 1)
    out["other_cpu_max_pct_of_core"] = round(load_max, 1)
    out["notes"] = bench.notes
    print(json.dumps(out, ensure_ascii=False))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--copies", type=int, default=69, help="copies of the 1,450 buildings for the large set "
                                                          "(69: 100,050); 1 skips the large set")
    p.add_argument("--queries", type=int, default=200, help="timed queries per figure (after 20 warm-up)")
    p.add_argument("--tiles", type=int, default=150, help="distinct tiles per zoom (at most)")
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--database", default="cimtwin_bench_geo")
    p.add_argument("--keep-db", action="store_true")
    p.add_argument("--wait-idle", type=float, default=600.0,
                   help="wait up to this many seconds for other heavy processes to finish (0: don't)")
    p.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of sample queries (stderr)")
    args = p.parse_args()
    bench = Bench(args)
    try:
        bench.run()
        with psycopg.connect(bench.db_url) as c:
            bench.extra["pg_version"] = c.execute("SHOW server_version").fetchone()[0].split()[0]
            bench.extra["postgis_version"] = c.execute("SELECT postgis_lib_version()").fetchone()[0]
    except Exception as exc:  # a bench reports what it could measure
        import traceback
        traceback.print_exc()
        bench.notes.append(f"bench aborted: {type(exc).__name__}: {exc}")
    finally:
        bench.cleanup()
    report(bench)


if __name__ == "__main__":
    main()
