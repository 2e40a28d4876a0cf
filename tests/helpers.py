"""Real clients and processes for the tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from cimtwin.ingest.worker import connect_properties
from cimtwin.settings import REPO_ROOT, Settings, settings_env


# The admin key of the tests' settings (tests/conftest.py); ApiServer sends it unless told otherwise.
TEST_ADMIN_KEY = "test-admin-key-0123456789abcdef"


def wait_for(predicate: Callable[[], object], *, timeout: float, interval: float = 0.1, message: str = ""):
    """Polls until predicate() is truthy; returns its value or fails with the last value seen."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s {message} (last value: {value!r})")


def create_database(admin_url: str, name: str) -> None:
    """(Re)creates database ``name`` from the bootstrap's template.

    On a TimescaleDB server its background-worker launcher may hold a short-lived
    connection on the template; the copy is retried for a few seconds.
    """
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for attempt in range(20):
            try:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE cimtwin_template')
                return
            except psycopg.errors.ObjectInUse:
                if attempt == 19:
                    raise
                time.sleep(0.5)


def login(client: mqtt.Client, settings: Settings):
    """Gives a paho client the settings' broker login (the service account); returns the endpoint."""
    ep = settings.mqtt
    if ep.username:
        client.username_pw_set(ep.username, ep.password)
    return ep


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A Mosquitto of this test session's own, run with the shipped deploy/mosquitto/cimtwin.conf.

    Like deploy/bootstrap.sh's, it requires logins: its password and ACL files, pid file and the
    service account's password live in its directory (``settings_overrides`` points settings there).
    """

    def __init__(self, workdir: Path | None = None):
        # Mosquitto drops to the 'mosquitto' user right after reading its configuration, and that
        # user must reach its directory (pid file, password and ACL files, log, persistence): pytest's
        # own tmp tree is root-only (0700), so by default the broker gets a directory of its own in /tmp.
        self._own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="cimtwin-test-mosquitto-")) if workdir is None else workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def settings_overrides(self) -> dict:
        return {"mqtt_service_password_file": self.dir / "service.password", "broker_auth_dir": self.dir,
                "broker_pid_file": self.dir / "mosquitto.pid"}

    def start(self) -> None:
        from cimtwin.broker_auth import refresh_service_account

        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", f"persistence_location {self.dir}/",
                 f"log_dest file {self.dir}/mosquitto.log", f"pid_file {self.dir}/mosquitto.pid",
                 f"password_file {self.dir}/passwd", f"acl_file {self.dir}/acl"]
        if os.geteuid() == 0:
            # As root Mosquitto drops to the 'mosquitto' user, which must own its directory.
            shutil.chown(self.dir, "mosquitto", "mosquitto")
            lines.append("user mosquitto")
        # The service account (its password made now) and the ACL; no vendor credentials yet.
        refresh_service_account(Settings(mqtt_url=self.url, **self.settings_overrides))
        conf.write_text("\n".join(lines) + "\n" + (REPO_ROOT / "deploy/mosquitto/cimtwin.conf").read_text())
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

        def listening():
            assert self.proc.poll() is None, f"mosquitto exited: {(self.dir / 'mosquitto.log').read_text()[-2000:]}"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        wait_for(listening, timeout=10, message="for mosquitto")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def log(self) -> str:
        return (self.dir / "mosquitto.log").read_text(errors="replace")

    def pid(self) -> int:
        return int((self.dir / "mosquitto.pid").read_text())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class IngestProcess:
    """`cimtwin ingest` as a subprocess, configured through CIMTWIN_* variables."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.proc: subprocess.Popen | None = None

    def client_ids(self) -> list[str]:
        base, n = self.settings.ingest_client_id, self.settings.ingest_workers
        return [base] if n == 1 else [f"{base}-{i}" for i in range(n)]

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "cimtwin.cli", "ingest"],
                                     env=settings_env(self.settings), start_new_session=True)
        self.wait_until_subscribed()

    def statuses(self, timeout: float = 5.0) -> dict[str, dict]:
        """The retained status each of this process's workers last published."""
        wanted = set(self.client_ids())
        seen: dict[str, dict] = {}
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.on_message = lambda c, u, msg: msg.payload and seen.__setitem__(
            msg.topic.rsplit("/", 1)[-1], json.loads(msg.payload))
        client.on_connect = lambda c, *a: c.subscribe(f"{self.settings.status_topic_prefix}/+")
        ep = login(client, self.settings)
        client.connect(ep.host, ep.port)
        client.loop_start()
        try:
            wait_for(lambda: wanted <= seen.keys(), timeout=timeout, message="for worker statuses")
        finally:
            client.disconnect()
            client.loop_stop()
        return {k: v for k, v in seen.items() if k in wanted}

    def acked(self) -> int:
        return sum(s.get("messages_acked", 0) for s in self.statuses().values())

    def wait_until_subscribed(self, timeout: float = 15.0) -> None:
        """Waits for every worker's retained status saying it is connected."""
        wanted = set(self.client_ids())
        seen: set[str] = set()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

        def on_message(c, u, msg):
            if not msg.payload:  # a cleared (retired) status
                return
            status = json.loads(msg.payload)
            if status.get("broker_connected") and status.get("state") != "offline":
                seen.add(msg.topic.rsplit("/", 1)[-1])

        client.on_message = on_message
        client.on_connect = lambda c, *a: c.subscribe(f"{self.settings.status_topic_prefix}/+")
        ep = login(client, self.settings)
        client.connect(ep.host, ep.port)
        client.loop_start()
        try:
            wait_for(lambda: wanted <= seen or self.proc.poll() is not None, timeout=timeout,
                     message=f"for ingest workers {sorted(wanted)}")
            assert self.proc.poll() is None, f"ingest exited with {self.proc.returncode}"
            time.sleep(0.3)  # the SUBACK follows the CONNACK that the status reports
        finally:
            client.disconnect()
            client.loop_stop()

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean shutdown, no acks for what was in flight."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def clear_mqtt_session(settings: Settings, client_id: str) -> None:
    """Ends a persistent session so the broker stops queueing for it, and clears its retained status."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    ep = login(client, settings)
    client.connect(ep.host, ep.port, clean_start=True, properties=connect_properties(session_expiry_s=0))
    client.loop_start()
    client.publish(f"{settings.status_topic_prefix}/{client_id}", b"", qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


class Publisher:
    """A paho QoS 1 publisher that paces itself and can wait until the broker has everything."""

    def __init__(self, settings: Settings, *, max_inflight: int = 1000):
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        ep = login(self.client, settings)
        self.client.connect(ep.host, ep.port)
        self.client.loop_start()
        self._pending: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes | str | dict, *, qos: int = 1) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        self._pending.append(self.client.publish(topic, payload, qos=qos))
        if len(self._pending) >= 20_000:  # stay well below paho's 65,535 packet ids
            self.flush()

    def publish_many(self, messages: Iterable[tuple[str, bytes | str | dict]]) -> int:
        n = 0
        for topic, payload in messages:
            self.publish(topic, payload)
            n += 1
        self.flush()
        return n

    def flush(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for info in self._pending:
            info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "the broker did not acknowledge a publish"
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()


class ApiServer:
    """`cimtwin serve` on a free port. Its client sends the settings' admin key (X-API-Key)."""

    def __init__(self, settings: Settings):
        self.port = free_port()
        self.settings = settings.model_copy(update={"api_port": self.port})
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        key = settings.admin_api_key
        self.headers = {"X-API-Key": key.get_secret_value()} if key is not None else {}
        self.client = httpx.Client(base_url=self.url, timeout=10, headers=self.headers)

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "cimtwin.cli", "serve"],
                                     env=settings_env(self.settings), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"API exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                return self.client.get("/openapi.json").status_code == 200
            except httpx.TransportError:
                return False
        wait_for(up, timeout=20, message="for the API")

    def get(self, path: str, **kw) -> httpx.Response:
        return self.client.get(path, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return self.client.post(path, **kw)

    def stop(self) -> None:
        self.client.close()
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


class TcpProxy:
    """A TCP relay whose path can be cut (connections dropped, new ones refused) and restored.

    ``hold_upstream()`` stops relaying what clients send (say, a subscriber's PUBACKs) while
    what the target sends still flows; ``cut()`` then drops the held bytes undelivered.
    """

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._running = False
        self._upstream_open = threading.Event()
        self._upstream_open.set()

    def start(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._running = True
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while self._running:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if not self._running or listener is not self._listener:
                # Accepted by a listener that has since been cut: refuse it.
                client.close()
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b, gate in ((client, upstream, self._upstream_open), (upstream, client, None)):
                threading.Thread(target=self._pipe, args=(a, b, gate), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, gate: threading.Event | None = None) -> None:
        try:
            while data := src.recv(65536):
                if gate is not None:
                    gate.wait()  # held: after cut() dst is closed and the data is dropped
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self._running = False
        # Closing a listening socket does not wake a thread blocked in accept(), which would
        # then still take one more connection; shutting it down first does.
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            for s in self._conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._conns.clear()
        self._upstream_open.set()  # held relays wake to closed sockets: what they held is dropped

    def hold_upstream(self) -> None:
        """Stop relaying client → target bytes; target → client keeps flowing."""
        self._upstream_open.clear()

    def release_upstream(self) -> None:
        """Relay the held client → target bytes and carry on."""
        self._upstream_open.set()

    def restore(self) -> None:
        self.start()

    def stop(self) -> None:
        self.cut()
