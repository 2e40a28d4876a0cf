"""Per-vendor MQTT credentials, enforced by the real Mosquitto and seen through a real ingest worker.

What Mosquitto 2.0.11 does, as these tests pin down:
- wrong password, no login, or a username holding + or # (none can exist in the password file):
  CONNACK 135 "Not authorized";
- a vendor publishing outside its prefixes: CONNACK fine, PUBACK 135 "Not authorized" (MQTT 5), the
  message is dropped, and then the broker closes that connection (with cimtwin's max_queued_messages 0);
  an MQTT 3.1.1 client gets a plain PUBACK (3.1.1 has no reason codes), and the message is dropped all
  the same;
- a client id holding + or #: the CONNECT is accepted (Mosquitto has no such check), but because
  vendors' rights come from pattern rules, every publish is denied (PUBACK 135, logged as
  "dangerous client id") and nothing reaches ingest;
- a revoked credential: after the sync's SIGHUP, new CONNECTs are refused and open connections
  are dropped at once.
"""

from __future__ import annotations

import base64
import json
import re
import stat
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cimtwin.broker_auth import mosquitto_hash, sync_broker_auth, verify_mosquitto_hash
from cimtwin.settings import Settings, settings_env

from .helpers import wait_for

NOT_AUTHORIZED = 135


class Device:
    """A paho client logging in with the given credential; records CONNACK, PUBACKs and disconnects."""

    def __init__(self, settings: Settings, username: str | None, password: str | None, *,
                 client_id: str | None = None, protocol=mqtt.MQTTv5):
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"dev-{uuid.uuid4().hex[:8]}",
                                  protocol=protocol)
        self.connack = None
        self.pubacks: dict[int, object] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.disconnected = threading.Event()
        self._connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_publish = lambda c, u, mid, rc, props: self.pubacks.__setitem__(mid, rc)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.on_disconnect = lambda *a: self.disconnected.set()
        if username is not None:
            self.client.username_pw_set(username, password)
        ep = settings.mqtt
        self.client.connect(ep.host, ep.port)
        self.client.loop_start()
        assert self._connected.wait(5), "no CONNACK"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if self.connack is None:
            self.connack = reason_code
        self._connected.set()

    @property
    def refused(self) -> bool:
        return self.connack.is_failure

    def publish(self, topic: str, payload: dict | bytes):
        """Publishes at QoS 1 and returns the PUBACK's reason code."""
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)
        assert info.is_published(), "no PUBACK"
        wait_for(lambda: info.mid in self.pubacks, timeout=5, message="for the PUBACK's reason code")
        return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(autouse=True)
def clean_broker(db, settings):
    """The broker's files as the (just emptied) database says: no vendor credentials left from another test."""
    sync_broker_auth(settings)


@pytest.fixture
def devices(settings):
    made: list[Device] = []

    def connect(username, password, **kw) -> Device:
        d = Device(settings, username, password, **kw)
        made.append(d)
        return d

    yield connect
    for d in made:
        d.close()


def reading(value: float) -> dict:
    return {"readings": [{"channel": "temp", "value": value, "time": datetime.now(timezone.utc).isoformat()}]}


def stored(db, vendor: str) -> list[float]:
    return [v for (v,) in db.execute(
        """SELECT r.value FROM readings r JOIN sensors s ON s.id = r.sensor_id JOIN devices d ON d.id = s.device_id
           JOIN vendors v ON v.id = d.vendor_id WHERE v.code = %s ORDER BY r.value""", (vendor,))]


def create_credential(api, vendor: str, **body) -> dict:
    resp = api.post(f"/vendors/{vendor}/mqtt-credentials", json=body or None)
    assert resp.status_code == 201, resp.text
    made = resp.json()
    assert made["broker_synced"] is True, made
    return made


# --- the hash -------------------------------------------------------------------------------------

def test_hash_is_mosquitto_passwd_format(tmp_path):
    """Our $7$ hash is what mosquitto_passwd makes: each verifies the other's."""
    pwfile = tmp_path / "pw"
    pwfile.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "someone", "s3cret pass"], check=True)
    theirs = pwfile.read_text().strip().split(":", 1)[1]
    assert theirs.startswith("$7$101$")
    assert verify_mosquitto_hash("s3cret pass", theirs)
    assert not verify_mosquitto_hash("s3cret pasS", theirs)
    _, _, iterations, salt, _ = theirs.split("$")
    assert mosquitto_hash("s3cret pass", iterations=int(iterations), salt=base64.b64decode(salt)) == theirs
    ours = mosquitto_hash("another")
    assert re.fullmatch(r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==", ours)
    assert verify_mosquitto_hash("another", ours) and not verify_mosquitto_hash("Another", ours)


# --- publishing -----------------------------------------------------------------------------------

def test_vendor_publishes_only_under_its_own_prefix(db, register, ingest, api, devices):
    """A's credential: its own topic is stored; B's topics are refused by the broker (PUBACK 135),
    and nothing reaches ingest as B's: no reading, no dead letter, no pending device."""
    register("acme", {"dev-1": ["temp"]})
    register("beta", {"dev-1": ["temp"]})
    ingest()
    cred = create_credential(api, "acme")
    assert cred["username"] == "acme" and cred["topics"] == ["cim/v1/acme/#", "vendors/acme/#"]

    a = devices("acme", cred["password"])
    assert not a.refused
    assert a.publish("cim/v1/acme/dev-1/up", reading(1)).value == 0
    # Each on a connection of its own: the broker closes one after a denied publish (see below).
    for topic in ("cim/v1/beta/dev-1/up", "cim/v1/beta/ghost/up", "vendors/beta/env/dev-1/data",
                  "cim/v1/alerts/x/up", "cimtwin/status/ingest/forged"):
        assert devices("acme", cred["password"]).publish(topic, reading(666)).value == NOT_AUTHORIZED, topic
    # MQTT 3.1.1 has no reason codes: the PUBACK comes, the message is dropped all the same.
    a311 = devices("acme", cred["password"], protocol=mqtt.MQTTv311)
    assert not a311.refused
    a311.publish("cim/v1/beta/dev-1/up", reading(667))
    # Once this later reading is stored, anything the broker had let through would have been too.
    assert a.publish("cim/v1/acme/dev-1/up", reading(2)).value == 0
    wait_for(lambda: stored(db, "acme") == [1.0, 2.0], timeout=15, message="for acme's two readings")
    time.sleep(0.5)
    assert stored(db, "beta") == []
    assert db.execute("SELECT topic, vendor_code FROM dead_letters").fetchall() == []
    assert db.execute("SELECT vendor_code, ext_id FROM pending_devices").fetchall() == []


def test_denied_publish_closes_the_connection(db, register, api, devices):
    """Mosquitto 2.0.11, configured as cimtwin runs it (max_queued_messages 0), sends PUBACK 135 for a
    denied publish and then closes the connection; the credential's other connections stay up."""
    register("acme", {"dev-1": ["temp"]})
    cred = create_credential(api, "acme")
    bystander = devices("acme", cred["password"])
    offender = devices("acme", cred["password"])
    assert offender.publish("cim/v1/beta/dev-1/up", reading(1)).value == NOT_AUTHORIZED
    assert offender.disconnected.wait(5)
    assert not bystander.disconnected.is_set()
    assert not bystander.publish("cim/v1/acme/dev-1/up", reading(2)).is_failure


def test_vendor_cannot_read_other_topics(db, register, api, devices, publisher):
    """Vendor credentials are write-only: subscribing is answered, but nothing is delivered."""
    register("acme", {"dev-1": ["temp"]})
    cred = create_credential(api, "acme")
    a = devices("acme", cred["password"])
    a.client.subscribe([("cim/#", 1), ("vendors/#", 1), ("cimtwin/#", 1)])
    time.sleep(0.3)
    publisher.publish("cim/v1/beta/dev-1/up", reading(5))
    publisher.publish("cim/v1/acme/dev-1/up", reading(6))
    publisher.flush()
    time.sleep(0.5)
    assert a.messages == []


def test_client_id_with_wildcards_cannot_publish(db, register, ingest, api, devices, broker):
    """Mosquitto accepts a client id holding + or # at CONNECT, but its pattern ACL denies every publish
    from such a client, even under the vendor's own prefix."""
    register("acme", {"dev-1": ["temp"]})
    ingest()
    cred = create_credential(api, "acme")
    for client_id in ("acme+1", "acme#1", "#", "+"):
        d = devices("acme", cred["password"], client_id=client_id)
        assert not d.refused, f"Mosquitto 2.0.11 accepts the CONNECT of client id {client_id!r}"
        assert d.publish("cim/v1/acme/dev-1/up", reading(666)).value == NOT_AUTHORIZED, client_id
    assert 'ACL denying access to client with dangerous client id "acme+1"' in broker.log()
    ok = devices("acme", cred["password"], client_id="acme-1")
    assert ok.publish("cim/v1/acme/dev-1/up", reading(1)).value == 0
    wait_for(lambda: stored(db, "acme") == [1.0], timeout=15, message="for the well-named client's reading")
    time.sleep(0.5)
    assert stored(db, "acme") == [1.0]
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0


# --- logging in -----------------------------------------------------------------------------------

def test_connect_refused_without_a_valid_login(db, register, api, devices):
    register("acme", {"dev-1": ["temp"]})
    cred = create_credential(api, "acme")
    refused = {
        "wrong password": devices("acme", cred["password"] + "x"),
        "no login": devices(None, None),
        "unknown user": devices("nobody", cred["password"]),
        "username with +": devices("acme+", cred["password"]),
        "username with #": devices("#", cred["password"]),
        "username +": devices("+", cred["password"]),
    }
    for what, d in refused.items():
        assert d.connack.value == NOT_AUTHORIZED, (what, d.connack)
    assert devices("acme", cred["password"], protocol=mqtt.MQTTv311).refused is False
    assert devices("acme", "wrong", protocol=mqtt.MQTTv311).refused is True


def test_usernames_with_wildcards_cannot_be_created(db, register, api):
    """A credential's username is its vendor's code: topic-safe by the vendor code's rule, by the
    table's CHECK, and by the key that ties it to the vendor."""
    register("acme", {"dev-1": ["temp"]})
    vendor_id = db.execute("SELECT id FROM vendors WHERE code = 'acme'").fetchone()[0]
    for username in ("ac+me", "acme#", "acme/x", "ac me", "+", "#"):
        with pytest.raises(psycopg.errors.CheckViolation):
            db.execute("INSERT INTO mqtt_credentials (vendor_id, username, password_hash, created_by) "
                       "VALUES (%s, %s, %s, 'test')", (vendor_id, username, mosquitto_hash("x")))
    # A username that is not the vendor's code does not fit the key either.
    db.execute("INSERT INTO vendors (code, name) VALUES ('beta', 'Beta')")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        db.execute("INSERT INTO mqtt_credentials (vendor_id, username, password_hash, created_by) "
                   "VALUES (%s, 'beta', %s, 'test')", (vendor_id, mosquitto_hash("x")))
    # Nor does a plain password where the hash goes.
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("INSERT INTO mqtt_credentials (vendor_id, username, password_hash, created_by) "
                   "VALUES (%s, 'acme', 'plain-password', 'test')", (vendor_id,))
    # Through the API: no vendor code with + or # can exist, and no username can be chosen.
    assert api.post("/vendors", json={"code": "ac+me", "name": "x"}).status_code == 422
    assert api.post("/vendors", json={"code": "acme#", "name": "x"}).status_code == 422
    assert api.post("/vendors/ac%2Bme/mqtt-credentials").status_code == 404
    resp = api.post("/vendors/acme/mqtt-credentials", json={"username": "ac+me"})
    assert resp.status_code == 422 and "username" in resp.text
    assert db.execute("SELECT count(*) FROM mqtt_credentials").fetchone()[0] == 0


# --- revoking, replacing ------------------------------------------------------------------------------

def test_revoked_credential_is_refused_and_cut_off(db, register, api, devices, broker):
    register("acme", {"dev-1": ["temp"]})
    cred = create_credential(api, "acme")
    online = devices("acme", cred["password"])
    assert not online.publish("cim/v1/acme/dev-1/up", reading(1)).is_failure
    pid = broker.pid()

    resp = api.client.delete(f"/vendors/acme/mqtt-credentials/{cred['id']}")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["revoked_at"] and body["broker_synced"] and f"pid {pid}" in body["broker_note"]
    # Mosquitto re-checks connected clients on SIGHUP and drops this one.
    assert online.disconnected.wait(5), "the revoked credential's open connection was not dropped"
    assert devices("acme", cred["password"]).connack.value == NOT_AUTHORIZED
    assert broker.pid() == pid  # reloaded, not restarted
    # Revoking again changes nothing, and says so without error.
    again = api.client.delete(f"/vendors/acme/mqtt-credentials/{cred['id']}")
    assert again.status_code == 200 and again.json()["revoked_at"] == body["revoked_at"]


def test_one_active_credential_per_vendor_and_replace(db, register, api, devices):
    register("acme", {"dev-1": ["temp"]})
    first = create_credential(api, "acme")
    conflict = api.post("/vendors/acme/mqtt-credentials")
    assert conflict.status_code == 409 and conflict.json()["credential_id"] == first["id"]
    second = create_credential(api, "acme", replace=True)
    assert second["password"] != first["password"]
    assert devices("acme", first["password"]).connack.value == NOT_AUTHORIZED
    assert not devices("acme", second["password"]).refused
    listed = api.get("/vendors/acme/mqtt-credentials").json()
    assert [(c["id"], c["revoked_at"] is None) for c in listed] == [(second["id"], True), (first["id"], False)]
    assert all(set(c) == {"id", "vendor", "username", "created_at", "created_by", "revoked_at", "revoked_by"}
               for c in listed)


def test_vendor_key_manages_only_its_own(db, register, api, devices):
    register("acme", {"dev-1": ["temp"]})
    register("beta", {"dev-1": ["temp"]})
    resp = api.post("/api-keys", json={"name": "acme ops", "role": "vendor", "vendor": "acme"})
    assert resp.status_code == 201, resp.text
    acme = {"X-API-Key": resp.json()["key"]}
    beta_cred = create_credential(api, "beta")

    mine = api.client.post("/vendors/acme/mqtt-credentials", headers=acme)
    assert mine.status_code == 201, mine.text
    assert mine.json()["created_by"].startswith("key:")
    assert api.client.post("/vendors/beta/mqtt-credentials", headers=acme,
                           json={"replace": True}).status_code == 403
    assert api.client.get("/vendors/beta/mqtt-credentials", headers=acme).status_code == 404
    assert api.client.delete(f"/vendors/beta/mqtt-credentials/{beta_cred['id']}", headers=acme).status_code == 403
    assert api.client.delete(f"/vendors/acme/mqtt-credentials/{beta_cred['id']}", headers=acme).status_code == 404
    assert [c["vendor"] for c in api.client.get("/vendors/acme/mqtt-credentials", headers=acme).json()] == ["acme"]
    # beta's credential is untouched.
    assert not devices("beta", beta_cred["password"]).refused
    assert httpx.post(f"{api.url}/vendors/acme/mqtt-credentials").status_code == 401  # no key at all


# --- what is stored ---------------------------------------------------------------------------------

def test_audited_and_only_hashes_stored(db, register, api, settings):
    register("acme", {"dev-1": ["temp"]})
    first = create_credential(api, "acme")
    second = create_credential(api, "acme", replace=True)
    api.client.delete(f"/vendors/acme/mqtt-credentials/{second['id']}")

    rows = db.execute("SELECT actor, action, target, detail FROM audit_log WHERE action LIKE 'mqtt_credential.%' "
                      "ORDER BY id").fetchall()
    assert [(a, t) for _, a, t, _ in rows] == [
        ("mqtt_credential.create", f"mqtt_credential:{first['id']}"),
        ("mqtt_credential.revoke", f"mqtt_credential:{first['id']}"),
        ("mqtt_credential.create", f"mqtt_credential:{second['id']}"),
        ("mqtt_credential.revoke", f"mqtt_credential:{second['id']}")]
    assert {actor for actor, *_ in rows} == {"admin-setting"}
    assert rows[1][3]["reason"] == "replaced" and rows[3][3]["reason"] == "revoked"

    # The passwords appear nowhere in the database, nor in the broker's files; their hashes verify.
    for password in (first["password"], second["password"]):
        for (table,) in db.execute("SELECT quote_ident(table_name) FROM information_schema.tables "
                                   "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'").fetchall():
            hits = db.execute(f"SELECT count(*) FROM {table} t WHERE t::text LIKE %s",
                              (f"%{password}%",)).fetchone()[0]
            assert hits == 0, f"a password is stored in {table}"
        for path in settings.broker_auth_path.iterdir():
            if path.is_file() and path.name != "mosquitto.db":
                assert password not in path.read_text(errors="replace"), path
    hashes = dict(db.execute("SELECT id, password_hash FROM mqtt_credentials").fetchall())
    assert verify_mosquitto_hash(first["password"], hashes[first["id"]])
    assert verify_mosquitto_hash(second["password"], hashes[second["id"]])


def test_broker_files_and_cli_sync(db, register, api, settings, devices):
    """`cimtwin broker-sync` writes only active credentials, 0600; an unchanged database leaves the broker alone."""
    register("acme", {"dev-1": ["temp"]})
    register("beta", {"dev-1": ["temp"]})
    acme = create_credential(api, "acme")
    beta = create_credential(api, "beta")
    api.client.delete(f"/vendors/beta/mqtt-credentials/{beta['id']}")
    passwd = settings.broker_auth_path / "passwd"
    users = [line.split(":")[0] for line in passwd.read_text().splitlines() if not line.startswith("#")]
    assert users == [settings.mqtt_service_username, "acme"]
    for path in (passwd, settings.broker_auth_path / "acl", settings.service_password_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    # A credential written straight into the database reaches the broker with the CLI's sync.
    db.execute("UPDATE mqtt_credentials SET revoked_at = now(), revoked_by = 'test' WHERE id = %s", (acme["id"],))
    env = settings_env(settings)
    run = subprocess.run([sys.executable, "-m", "cimtwin.cli", "broker-sync"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "reloaded" in run.stderr
    assert devices("acme", acme["password"]).connack.value == NOT_AUTHORIZED
    again = subprocess.run([sys.executable, "-m", "cimtwin.cli", "broker-sync"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and "unchanged" in again.stderr, again.stderr


def test_cli_create_list_revoke(db, register, settings, devices):
    register("acme", {"dev-1": ["temp"]})
    env = settings_env(settings)
    cli = [sys.executable, "-m", "cimtwin.cli", "mqtt-credentials"]
    made = subprocess.run(cli + ["create", "--vendor", "acme"], env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    password = made.stdout.strip()
    assert len(password) == 43 and "\n" not in password
    assert not devices("acme", password).refused
    listed = subprocess.run(cli + ["list", "--vendor", "acme"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "acme" in listed.stdout and password not in listed.stdout
    cred_id = db.execute("SELECT id FROM mqtt_credentials").fetchone()[0]
    dup = subprocess.run(cli + ["create", "--vendor", "acme"], env=env, capture_output=True, text=True, timeout=60)
    assert dup.returncode == 1 and "already has an active MQTT credential" in dup.stderr
    revoked = subprocess.run(cli + ["revoke", str(cred_id), "--vendor", "acme"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert revoked.returncode == 0, revoked.stderr
    assert devices("acme", password).connack.value == NOT_AUTHORIZED
    actors = {a for (a,) in db.execute("SELECT actor FROM audit_log WHERE action LIKE 'mqtt_credential.%'")}
    assert len(actors) == 1 and actors.pop().startswith("cli")
