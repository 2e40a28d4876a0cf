"""API keys, roles, vendor scoping and the audit log, against a real `cimtwin serve` and database."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import httpx
import psycopg
import pytest
from pydantic import SecretStr
from shapely.geometry import box, mapping

from cimtwin.schemas.access import Role
from cimtwin.settings import settings_env
from cimtwin.store import readings as readings_store
from cimtwin.store.db import open_async_pool

from .blockdata import seed
from .helpers import ApiServer, wait_for

# Queries that take their parameters in a body: they change nothing, so analysts may POST them.
READ_ONLY_POSTS = {("post", "/spatial/{layer}/search")}
PUBLIC = ["/health", "/openapi.json", "/docs", "/redoc", "/schemas", "/schemas/device",
          "/schemas/canonical-message"]


def client(api: ApiServer, key: str | None = None, *, how: str = "header") -> httpx.Client:
    """A client of ``api`` that sends ``key`` by X-API-Key ("header"), Bearer ("bearer") or ?api_key= ("query")."""
    headers, params = {}, {}
    if key is not None:
        if how == "header":
            headers["X-API-Key"] = key
        elif how == "bearer":
            headers["Authorization"] = f"Bearer {key}"
        else:
            params["api_key"] = key
    return httpx.Client(base_url=api.url, headers=headers, params=params, timeout=10)


def make_key(api: ApiServer, role: str, vendor: str | None = None, name: str | None = None) -> dict:
    body = {"name": name or f"{role} {vendor or ''}".strip(), "role": role}
    if vendor:
        body["vendor"] = vendor
    r = api.post("/api-keys", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def error(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json().get("error")


def _concrete(path: str) -> str:
    """An OpenAPI path template with its parameters filled in."""
    return re.sub(r"\{[^}]+\}", "1", path)


def test_without_a_key_only_the_public_paths_answer(api, db):
    anonymous = client(api)
    for path in PUBLIC:
        r = anonymous.get(path)
        assert r.status_code in (200, 503), (path, r.status_code, r.text[:200])  # /health is 503 without ingest

    r = anonymous.get("/devices")
    assert error(r) == (401, "missing_api_key")
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "X-API-Key" in r.json()["detail"] and "api_key" in r.json()["detail"]

    # Every other operation the API documents refuses a request without a key, whatever its method.
    doc = api.get("/openapi.json").json()
    public = {p for p in PUBLIC}
    checked = 0
    for path, operations in doc["paths"].items():
        if path in public or path.startswith("/schemas"):
            continue
        for method in operations:
            r = anonymous.request(method.upper(), _concrete(path))
            assert (r.status_code, r.headers.get("www-authenticate", "")[:6]) == (401, "Bearer"), \
                (method, path, r.status_code, r.text[:200])
            checked += 1
    assert checked > 60

    # An unknown key is a 401 too, never a fall-through to anonymous.
    for key in ("nonsense", "cimtwin_deadbeef_" + "x" * 43, "y" * 5000):
        assert error(client(api, key).get("/devices")) == (401, "invalid_api_key")
    # The settings' admin key works (the test settings set one).
    assert client(api, api.settings.admin_api_key.get_secret_value()).get("/api-keys").status_code == 200


def test_a_key_works_by_bearer_header_and_query(api, db):
    seed(db)
    key = make_key(api, "analyst")
    assert key["key"].startswith(f"cimtwin_{key['prefix']}_") and len(key["key"]) > 50
    stored = db.execute("SELECT secret_hash, prefix FROM api_keys WHERE id = %s", (key["id"],)).fetchone()
    assert bytes(stored[0]) == hashlib.sha256(key["key"].encode()).digest()  # only the hash is kept
    assert key["key"] not in str(api.get("/api-keys").json())

    for how in ("header", "bearer", "query"):
        r = client(api, key["key"], how=how).get("/devices")
        assert r.status_code == 200, (how, r.text)

    # ?api_key= is not an OGC property filter, and the paging links carry it on.
    by_query = client(api, key["key"], how="query")
    page = by_query.get("/ogc/collections/buildings/items", params={"limit": 150})
    assert page.status_code == 200, page.text
    nxt = next(link["href"] for link in page.json()["links"] if link["rel"] == "next")
    assert f"api_key={key['key']}" in nxt
    assert httpx.get(nxt, timeout=10).json()["numberReturned"] == 150
    # The tile URLs of TileJSON carry it too, for map clients that cannot set headers.
    tiles = by_query.get("/tiles/buildings.json").json()["tiles"][0]
    assert tiles.endswith(f".mvt?api_key={key['key']}")
    # Given by header, nothing is copied into the links.
    header_page = client(api, key["key"]).get("/ogc/collections/buildings/items", params={"limit": 150}).json()
    assert all("api_key" not in link["href"] for link in header_page["links"])


def test_gdal_reads_ogc_with_the_key_in_a_header_or_in_the_url(api, db):
    seed(db)
    key = make_key(api, "analyst")["key"]
    base = f"OAPIF:{api.url}/ogc"

    def ogrinfo(url: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["ogrinfo", "-ro", "-al", "-q", "-oo", "PAGE_SIZE=150", url, "buildings"],
                              capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})

    def features(out: subprocess.CompletedProcess) -> int:
        assert out.returncode == 0, out.stderr
        return len(re.findall(r"^OGRFeature\(buildings\):\d+$", out.stdout, re.M))

    assert ogrinfo(base).returncode != 0  # no key
    assert features(ogrinfo(base, {"GDAL_HTTP_HEADERS": f"X-API-Key: {key}"})) == 400
    # In the URL: GDAL adds it to the requests it builds and follows the next links that carry it.
    assert features(ogrinfo(f"{base}?api_key={key}")) == 400


def test_revoked_key_is_refused_at_once_here_and_within_seconds_elsewhere(api, db, settings):
    key = make_key(api, "operator", name="ops desk")
    ops = client(api, key["key"])
    assert ops.get("/devices").status_code == 200
    listed = {k["id"]: k for k in api.get("/api-keys").json()}
    assert listed[key["id"]]["last_used_at"] is not None and listed[key["id"]]["revoked_at"] is None

    assert api.client.delete(f"/api-keys/{key['id']}").status_code == 204
    assert error(ops.get("/devices")) == (401, "invalid_api_key")
    assert api.get(f"/api-keys/{key['id']}").json()["revoked_at"] is not None
    assert [k["id"] for k in api.get("/api-keys", params={"revoked": "false"}).json()] == []
    assert api.client.delete(f"/api-keys/{key['id']}").status_code == 204  # again: no change
    assert error(api.client.delete("/api-keys/999999")) == (404, "api_key_not_found")

    # Revoked by another process (the CLI), while this server has the key cached.
    other = make_key(api, "analyst")
    analyst = client(api, other["key"])
    assert analyst.get("/devices").status_code == 200
    out = subprocess.run([sys.executable, "-m", "cimtwin.cli", "keys", "revoke", str(other["id"])],
                         env=settings_env(settings), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: analyst.get("/devices").status_code == 401, timeout=3, interval=0.1,
             message="for the revoked key to be refused")


def test_role_matrix(api, db):
    analyst = client(api, make_key(api, "analyst")["key"])
    operator = client(api, make_key(api, "operator")["key"])
    building = {"ext_id": "b-1", "name": "B", "geometry": mapping(box(121.60, 31.20, 121.6002, 31.2002))}

    # Analysts read block data, spatial, OGC, tiles, readings and the registry; they write nothing.
    for path in ("/buildings", "/parties", "/spatial/buildings?bbox=121.5,31.2,121.6,31.3", "/ogc", "/tiles",
                 "/devices", "/vendors", "/readings/latest"):
        assert analyst.get(path).status_code == 200, path
    r = analyst.post("/buildings", json=building)
    assert error(r) == (403, "forbidden_role") and "analyst may not POST /buildings" in r.json()["detail"]
    for path in ("/dead-letters", "/pending-devices", "/api-keys", "/audit"):
        assert error(analyst.get(path)) == (403, "forbidden_role"), path
    doc = api.get("/openapi.json").json()
    for path, operations in doc["paths"].items():
        for method in set(operations) - {"get"}:
            if (method, path) in READ_ONLY_POSTS:
                continue
            r = analyst.request(method.upper(), _concrete(path), json={})
            assert r.status_code == 403, (method, path, r.status_code, r.text[:200])

    # Operators write block data and read everything, but manage neither keys nor vendors.
    assert operator.post("/buildings", json=building).status_code == 201
    assert operator.get("/dead-letters").status_code == 200
    assert error(operator.post("/api-keys", json={"name": "x", "role": "admin"})) == (403, "forbidden_role")
    assert error(operator.get("/audit")) == (403, "forbidden_role")
    assert error(operator.post("/vendors", json={"code": "v", "name": "V"})) == (403, "forbidden_role")
    assert error(operator.post("/devices", json={"vendor": "v", "ext_id": "d", "sensors": [
        {"channel": "t", "quantity": "temperature", "unit": "°C"}]})) == (403, "forbidden_role")

    # Vendors read block data (to place their sensors), but not parties, OGC, tiles or spatial queries.
    assert api.post("/vendors", json={"code": "acme", "name": "ACME"}).status_code == 201
    vendor = client(api, make_key(api, "vendor", "acme")["key"])
    for path in ("/buildings", "/components", "/component-kinds", "/devices", "/dead-letters", "/pending-devices"):
        assert vendor.get(path).status_code == 200, path
    for path in ("/ogc", "/ogc/collections/sensors/items", "/tiles", "/tiles/sensors/15/0/0.mvt",
                 "/spatial/sensors?point=121.5,31.2&distance=100", "/parties", "/party-assignments", "/api-keys"):
        assert error(vendor.get(path)) == (403, "forbidden_role"), path
    assert error(vendor.post("/buildings", json=building)) == (403, "forbidden_role")


def _scoping_data(db, register) -> dict:
    """Vendors acme and rival with a device each, latest values, dead letters and pending devices."""
    ids = {**register("acme", {"a-1": ["t"], "a-2": ["t"]}), **register("rival", {"r-1": ["t"]})}
    now = datetime.now(timezone.utc)
    for sensor in ids.values():
        db.execute("INSERT INTO latest (sensor_id, time, value, received_at) VALUES (%s, %s, 1, %s)",
                   (sensor, now, now))
    for n, (vendor, device) in enumerate((("acme", "a-1"), ("rival", "r-1"), (None, None))):
        db.execute("""INSERT INTO dead_letters (digest, topic, vendor_code, device_ext_id, reason_code, reason,
                          payload, payload_size, first_received_at, last_received_at)
                      VALUES (%s, %s, %s, %s, 'malformed_json', 'bad', 'x', 1, %s, %s)""",
                   (bytes([n]) * 32, f"cim/v1/{vendor or 'x/y'}/{device or ''}/up", vendor, device, now, now))
    for vendor, device in (("acme", "a-9"), ("rival", "r-9")):
        db.execute("""INSERT INTO pending_devices (vendor_code, ext_id, first_seen, last_seen, last_topic, last_payload)
                      VALUES (%s, %s, %s, %s, %s, 'x')""", (vendor, device, now, now, f"cim/v1/{vendor}/{device}/up"))
    devices = dict(db.execute("SELECT ext_id, id FROM devices").fetchall())
    return {"sensors": ids, "devices": devices}


def test_a_vendor_sees_and_changes_only_its_own(api, db, register):
    data = _scoping_data(db, register)
    own_sensor, rival_sensor = data["sensors"][("a-1", "t")], data["sensors"][("r-1", "t")]
    own_device, rival_device = data["devices"]["a-1"], data["devices"]["r-1"]
    acme = client(api, make_key(api, "vendor", "acme")["key"])

    assert [d["ext_id"] for d in acme.get("/devices").json()] == ["a-1", "a-2"]
    assert acme.get("/devices", params={"vendor": "rival"}).json() == []
    assert [v["code"] for v in acme.get("/vendors").json()] == ["acme"]
    assert acme.get(f"/devices/{own_device}").status_code == 200
    assert acme.get(f"/sensors/{own_sensor}").status_code == 200
    assert acme.get(f"/sensors/{own_sensor}/readings").status_code == 200

    # Another vendor's objects do not exist for this key.
    for path in (f"/devices/{rival_device}", f"/sensors/{rival_sensor}", f"/sensors/{rival_sensor}/readings",
                 f"/sensors/{rival_sensor}/readings?bucket=1h", f"/sensors/{rival_sensor}/place"):
        assert acme.get(path).status_code == 404, path
    latest = acme.get("/readings/latest").json()
    assert {r["vendor"] for r in latest} == {"acme"} and len(latest) == 2
    assert acme.get("/readings/latest", params={"sensor_id": rival_sensor}).json() == []
    assert acme.get("/readings/latest", params={"vendor": "rival"}).json() == []
    assert [d["vendor"] for d in acme.get("/dead-letters").json()] == ["acme"]
    assert acme.get("/dead-letters", params={"vendor": "rival"}).json() == []
    assert [p["ext_id"] for p in acme.get("/pending-devices").json()] == ["a-9"]

    # Writes for another vendor are refused; its own go through.
    device = {"vendor": "rival", "ext_id": "r-2", "sensors": [{"channel": "t", "quantity": "temperature",
                                                               "unit": "°C"}]}
    assert error(acme.post("/devices", json=device)) == (403, "other_vendor")
    assert acme.post("/devices", json={**device, "vendor": "acme", "ext_id": "a-3"}).status_code == 201
    point = {"geometry": {"type": "Point", "coordinates": [121.5, 31.24]}}
    assert acme.put(f"/devices/{rival_device}/location", json=point).status_code == 404
    assert acme.put(f"/devices/{own_device}/location", json=point).status_code == 204
    place = {"component_id": None, "room_id": None, "building_id": None}
    assert acme.put(f"/sensors/{rival_sensor}/place", json=place).status_code == 404
    assert acme.put(f"/sensors/{own_sensor}/place", json=place).status_code == 200
    assert db.execute("SELECT count(*) FROM devices WHERE ext_id = 'r-2'").fetchone()[0] == 0

    # Staff see every vendor's, and the dead letters that have no vendor.
    assert len(api.get("/dead-letters").json()) == 3
    operator = client(api, make_key(api, "operator")["key"])
    assert {d["vendor"] for d in operator.get("/dead-letters").json()} == {"acme", "rival", None}
    assert len(operator.get("/pending-devices").json()) == 2
    assert len(operator.get("/devices").json()) == 4


def test_store_queries_are_scoped_themselves(database_url, db, register):
    """The readings queries filter by vendor in SQL, even when called with another vendor's sensor id."""
    data = _scoping_data(db, register)
    rival_sensor = data["sensors"][("r-1", "t")]
    acme, rival = (db.execute("SELECT id FROM vendors WHERE code = %s", (c,)).fetchone()[0] for c in ("acme", "rival"))
    now = datetime.now(timezone.utc).replace(microsecond=0)
    if db.execute("SELECT to_regproc('cimtwin_ensure_readings_partitions')").fetchone()[0] is not None:
        db.execute("SELECT cimtwin_ensure_readings_partitions(ARRAY[date_trunc('week', %s::timestamptz)])", (now,))
    db.execute("INSERT INTO readings (time, sensor_id, value, received_at) VALUES (%s, %s, 5, %s)",
               (now - timedelta(minutes=5), rival_sensor, now))
    if db.execute("SELECT relkind FROM pg_class WHERE oid = 'readings_1h'::regclass").fetchone()[0] == "r":
        db.execute("INSERT INTO readings_1h (sensor_id, bucket, count, sum, min, max) "
                   "VALUES (%s, date_trunc('hour', %s::timestamptz - interval '5 minutes'), 1, 5, 5, 5)",
                   (rival_sensor, now))

    async def run(vendor_id):
        pool = open_async_pool(database_url, max_size=1)
        await pool.open()
        try:
            span = {"sensor_id": rival_sensor, "start": now - timedelta(days=1), "end": now + timedelta(hours=1),
                    "vendor_id": vendor_id}
            raw = await readings_store.raw_readings(pool, limit=10, **span)
            buckets = await readings_store.bucketed_readings(pool, bucket=timedelta(hours=1), **span)
            latest = await readings_store.latest_readings(pool, vendor=None, device=None, sensor_ids=[rival_sensor],
                                                          limit=10, offset=0, vendor_id=vendor_id)
            dead = await readings_store.dead_letters(pool, vendor="rival", reason_code=None, since=None, limit=10,
                                                     offset=0, vendor_id=vendor_id)
            pending = await readings_store.pending_devices(pool, vendor="rival", limit=10, offset=0,
                                                           vendor_id=vendor_id)
            return [len(x) for x in (raw, buckets, latest, dead, pending)]
        finally:
            await pool.close()

    assert asyncio.run(run(None)) == [1, 1, 1, 1, 1]
    assert asyncio.run(run(rival)) == [1, 1, 1, 1, 1]
    assert asyncio.run(run(acme)) == [0, 0, 0, 0, 0]


def test_keys_are_validated(api, db):
    for body, code in (({"name": "v", "role": "vendor"}, 422), ({"name": "a", "role": "analyst", "vendor": "x"}, 422),
                       ({"name": "a", "role": "root"}, 422), ({"name": "", "role": "admin"}, 422),
                       ({"name": "a", "role": "admin", "extra": 1}, 422)):
        assert api.post("/api-keys", json=body).status_code == code, body
    assert error(api.post("/api-keys", json={"name": "v", "role": "vendor", "vendor": "nobody"})) == \
        (404, "vendor_not_found")


def test_audit_log_records_credentials_and_vendors_and_is_append_only(api, db):
    assert api.post("/vendors", json={"code": "acme", "name": "ACME"}).status_code == 201
    key = make_key(api, "vendor", "acme", name="acme uplink")
    assert api.client.delete(f"/api-keys/{key['id']}").status_code == 204

    entries = api.get("/audit").json()
    assert [(e["action"], e["target"], e["actor"]) for e in entries] == [
        ("api_key.revoke", f"api_key:{key['id']}", "admin-setting"),
        ("api_key.create", f"api_key:{key['id']}", "admin-setting"),
        ("vendor.create", "vendor:acme", "admin-setting"),
    ]
    assert entries[1]["detail"] == {"name": "acme uplink", "role": "vendor", "vendor": "acme",
                                    "prefix": key["prefix"]}
    assert key["key"] not in str(entries)
    assert key["created_by"] == "admin-setting"

    # An admin key from the database is named by its id and name.
    admin = make_key(api, "admin", name="second admin")
    assert client(api, admin["key"]).post("/api-keys", json={"name": "n", "role": "analyst"}).status_code == 201
    assert api.get("/audit", params={"actor": f"key:{admin['id']}:second admin"}).json()[0]["action"] == \
        "api_key.create"

    # Filters and paging.
    assert [e["action"] for e in api.get("/audit", params={"action": "api_key."}).json()] == \
        ["api_key.create", "api_key.create", "api_key.revoke", "api_key.create"]
    assert [e["target"] for e in api.get("/audit", params={"target": "vendor:"}).json()] == ["vendor:acme"]
    assert len(api.get("/audit", params={"limit": 2, "offset": 4}).json()) == 1
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    assert api.get("/audit", params={"since": future}).json() == []
    assert len(api.get("/audit", params={"until": future}).json()) == 5
    assert error(api.get("/audit", params={"since": future, "until": future})) == (400, "invalid_range")

    # Nobody rewrites history, not even the database owner.
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        db.execute("UPDATE audit_log SET actor = 'someone else'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        db.execute("DELETE FROM audit_log WHERE action = 'vendor.create'")
    assert db.execute("SELECT count(*) FROM audit_log").fetchone()[0] == 5


def test_cli_keys_and_the_admin_key_of_cimtwin_up(api, db, settings, tmp_path):
    from cimtwin.cli_keys import ensure_admin_key

    assert api.post("/vendors", json={"code": "acme", "name": "ACME"}).status_code == 201
    env = settings_env(settings)
    made = subprocess.run([sys.executable, "-m", "cimtwin.cli", "keys", "create", "--role", "vendor", "--vendor",
                           "acme", "--name", "acme gateway"], env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert re.fullmatch(r"cimtwin_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", key)
    assert client(api, key).get("/vendors").json()[0]["code"] == "acme"
    listing = subprocess.run([sys.executable, "-m", "cimtwin.cli", "keys", "list"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert "acme gateway" in listing.stdout and key not in listing.stdout
    bad = subprocess.run([sys.executable, "-m", "cimtwin.cli", "keys", "create", "--role", "vendor", "--name", "x"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "vendor" in bad.stderr
    assert api.get("/audit").json()[0]["actor"].startswith("cli")

    # `cimtwin up` leaves a working admin key for a newcomer, readable by its owner only.
    local = settings.model_copy(update={"state_dir": tmp_path / "var"})
    path, created = ensure_admin_key(local)
    assert created and path == tmp_path / "var" / "admin-api-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    admin_key = path.read_text().strip()
    assert client(api, admin_key).get("/audit").status_code == 200
    assert ensure_admin_key(local) == (path, False) and path.read_text().strip() == admin_key
    # A key that no longer works (revoked, or another database) is replaced.
    key_id = next(k["id"] for k in api.get("/api-keys").json() if k["name"] == "admin (cimtwin up)")
    assert api.client.delete(f"/api-keys/{key_id}").status_code == 204
    assert ensure_admin_key(local) == (path, True) and path.read_text().strip() != admin_key


def test_anonymous_role_opens_read_access_only(settings, db):
    server = ApiServer(settings.model_copy(update={"auth_anonymous_role": Role.analyst,
                                                   "admin_api_key": SecretStr("another-admin-key-0123456789")}))
    server.start()
    try:
        anonymous = client(server)
        assert anonymous.get("/buildings").status_code == 200
        assert error(anonymous.post("/buildings", json={})) == (403, "forbidden_role")
        assert error(anonymous.get("/api-keys")) == (403, "forbidden_role")
        assert error(client(server, "wrong").get("/buildings")) == (401, "invalid_api_key")
        assert client(server, "another-admin-key-0123456789").get("/api-keys").status_code == 200
    finally:
        server.stop()
