"""Health of the database, the broker and the ingest workers."""

from __future__ import annotations

import time

from psycopg_pool import AsyncConnectionPool

from cimtwin.ingest.status import StatusBoard
from cimtwin.store import readings as store

MAX_HEALTHY_LAG_S = 10.0


async def health(*, pool: AsyncConnectionPool, board: StatusBoard) -> dict:
    started = time.perf_counter()
    try:
        await store.ping(pool)
        database = {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
    except Exception as exc:  # any failure to answer is the answer
        database = {"ok": False, "error": str(exc).strip().splitlines()[0][:300] if str(exc) else type(exc).__name__}

    workers = board.workers()
    live = [w for w in workers if w.get("state") != "offline" and not w["stale"]]
    lag = max((w.get("lag_s") or 0.0 for w in live), default=None)
    problems = []
    if not live:
        problems.append("no ingest worker is running")
    for w in live:
        if not w.get("db_ok", False):
            problems.append(f"ingest worker {w['worker']} cannot reach the database: {w.get('db_error')}")
        elif (w.get("lag_s") or 0) > MAX_HEALTHY_LAG_S:
            problems.append(f"ingest worker {w['worker']} is {w['lag_s']:.0f} s behind")
    ingest = {"ok": not problems, "lag_s": lag, "problems": problems, "workers": workers}
    broker = {"ok": board.connected}
    ok = database["ok"] and broker["ok"] and ingest["ok"]
    return {"status": "ok" if ok else "degraded", "database": database, "broker": broker, "ingest": ingest}
