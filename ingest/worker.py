"""The ingest worker: MQTT (QoS 1, persistent session, manual ack) → batches → PostgreSQL.

The paho callback only enqueues. One worker thread cuts batches by size and time,
normalizes and writes them in one transaction, and acknowledges each message only
after COMMIT. A database outage holds the batch and retries; the broker's in-flight
window (MQTT 5 Receive Maximum) then stops further deliveries, so nothing is lost
and memory stays bounded.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from cimtwin.settings import Settings
from cimtwin.store.writer import ReadingWriter

from .normalize import DeviceDirectory, NormalizedBatch, Normalizer, RawMessage

log = logging.getLogger("cimtwin.ingest")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def make_client(settings: Settings, client_id: str, *, manual_ack: bool = False) -> mqtt.Client:
    """A paho MQTT 5 client configured from settings (credentials, TLS), not yet connected."""
    endpoint = settings.mqtt
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=manual_ack)
    if endpoint.username:
        client.username_pw_set(endpoint.username, endpoint.password)
    if endpoint.tls:
        client.tls_set()
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    return client


def connect_properties(*, session_expiry_s: int, receive_maximum: int | None = None) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry_s
    if receive_maximum:
        props.ReceiveMaximum = receive_maximum
    return props


class IngestWorker:
    def __init__(self, settings: Settings, *, client_id: str | None = None, share_group: str | None = None):
        self.settings = settings
        self.client_id = client_id or settings.ingest_client_id
        self.share_group = share_group
        self.status_topic = f"{settings.status_topic_prefix}/{self.client_id}"
        self._inbox: queue.SimpleQueue[mqtt.MQTTMessage] = queue.SimpleQueue()
        self._writer = ReadingWriter(settings.database_url, application_name=f"cimtwin-ingest:{self.client_id}")
        self._normalizer = Normalizer(DeviceDirectory(self._writer.lookup_devices),
                                      max_payload_bytes=settings.ingest_max_payload_bytes,
                                      max_future_s=settings.ingest_max_future_s)
        self._stop = threading.Event()
        self._connected = False
        # Status, read by the status thread.
        self._db_ok = True
        self._db_error: str | None = None
        self._batch_started: float | None = None  # monotonic receive time of the oldest unacked message
        self._batch_size = 0
        self._last_commit: float | None = None
        self.readings_committed = 0
        self.messages_acked = 0
        self.dead_letters = 0
        self._client = self._make_client()

    # MQTT -----------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = make_client(s, self.client_id, manual_ack=True)
        client.max_queued_messages_set(0)
        client.will_set(self.status_topic, json.dumps({"worker": self.client_id, "state": "offline"}),
                        qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _subscriptions(self) -> list[str]:
        if self.share_group:
            return [f"$share/{self.share_group}/{t}" for t in self.settings.ingest_topics]
        return list(self.settings.ingest_topics)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("MQTT connect refused: %s", reason_code)
            return
        self._connected = True
        log.info("MQTT connected (session present: %s)", flags.session_present)
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in self._subscriptions()])

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._connected = False
        if not self._stop.is_set():
            log.warning("MQTT disconnected: %s; reconnecting", reason_code)

    def _on_message(self, client, userdata, message):
        self._inbox.put(message)

    # batches ----------------------------------------------------------------

    def _collect(self) -> list[mqtt.MQTTMessage]:
        try:
            first = self._inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        limit = self.settings.ingest_batch_max_messages
        deadline = time.monotonic() + self.settings.ingest_batch_max_wait_ms / 1000.0
        get_nowait, get = self._inbox.get_nowait, self._inbox.get
        while len(batch) < limit:
            try:
                batch.append(get_nowait())
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(get(timeout=remaining))
                except queue.Empty:
                    break
        return batch

    def _to_raw(self, batch: list[mqtt.MQTTMessage]) -> list[RawMessage]:
        # paho stamps messages with time.monotonic(); turn that into wall time.
        offset = time.time() - time.monotonic()
        utc = timezone.utc
        return [RawMessage(m.topic, m.payload, datetime.fromtimestamp(m.timestamp + offset, tz=utc), m.mid, m.qos)
                for m in batch]

    def _write(self, raws: list[RawMessage]) -> NormalizedBatch:
        result = self._normalizer.normalize(raws)
        self.readings_committed += self._writer.write(
            result.rows, dead_letters=result.dead_letters, pending=result.pending)
        return result

    def _write_each(self, raws: list[RawMessage]) -> NormalizedBatch:
        """Isolates the message the database refuses; it becomes a dead letter, the rest are stored."""
        merged = NormalizedBatch()
        for raw in raws:
            try:
                result = self._write([raw])
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                result = self._normalizer.reject_only(
                    raw, "storage_rejected", f"the database refused this message: {str(exc).strip()[:500]}")
                self._writer.write((), dead_letters=result.dead_letters)
            merged.dead_letters += result.dead_letters
        return merged

    def _store(self, raws: list[RawMessage]) -> NormalizedBatch | None:
        """Normalize and write; retries through database outages. None if stopped first."""
        delay = 0.5
        while True:
            try:
                try:
                    result = self._write(raws)
                except psycopg.OperationalError:
                    raise
                except psycopg.Error as exc:
                    log.error("database refused a batch (%s); writing its messages one by one", exc)
                    result = self._write_each(raws)
                if not self._db_ok:
                    log.info("database reachable again")
                self._db_ok, self._db_error = True, None
                return result
            except psycopg.OperationalError as exc:
                self._db_ok, self._db_error = False, str(exc).strip().splitlines()[0][:300]
                log.warning("database unavailable (%s); retrying in %.1f s", self._db_error, delay)
                self._writer.close()
                if self._stop.wait(delay):
                    return None
                delay = min(delay * 2, 5.0)

    def _process(self, batch: list[mqtt.MQTTMessage]) -> None:
        self._batch_started, self._batch_size = batch[0].timestamp, len(batch)
        try:
            result = self._store(self._to_raw(batch))
            if result is None:
                return  # stopping: unacknowledged messages stay with the broker
            ack = self._client.ack
            for m in batch:
                if m.qos:
                    ack(m.mid, m.qos)
            self.messages_acked += len(batch)
            self.dead_letters += len(result.dead_letters)
            self._last_commit = time.time()
        finally:
            self._batch_started, self._batch_size = None, 0

    # status -----------------------------------------------------------------

    def status(self) -> dict:
        started = self._batch_started
        return {
            "worker": self.client_id,
            "state": "running" if self._db_ok else "database_unavailable",
            "db_ok": self._db_ok,
            "db_error": self._db_error,
            "broker_connected": self._connected,
            "lag_s": round(time.monotonic() - started, 3) if started is not None else 0.0,
            "in_progress": self._batch_size,
            "queued": self._inbox.qsize(),
            "last_commit_at": _iso(self._last_commit),
            "readings_committed": self.readings_committed,
            "messages_acked": self.messages_acked,
            "dead_letters": self.dead_letters,
            "updated_at": _iso(time.time()),
        }

    def _publish_status(self) -> None:
        while not self._stop.wait(self.settings.ingest_status_interval_s):
            if self._connected:
                self._client.publish(self.status_topic, json.dumps(self.status()), qos=0, retain=True)

    # lifecycle --------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        s = self.settings
        endpoint = s.mqtt
        self._client.connect_async(
            endpoint.host, endpoint.port, keepalive=30, clean_start=False,
            properties=connect_properties(session_expiry_s=s.ingest_session_expiry_s,
                                          receive_maximum=s.ingest_receive_maximum))
        self._client.loop_start()
        status_thread = threading.Thread(target=self._publish_status, name="ingest-status", daemon=True)
        status_thread.start()
        log.info("ingest worker %s started (topics: %s)", self.client_id, ", ".join(self._subscriptions()))
        try:
            while not self._stop.is_set():
                batch = self._collect()
                if batch:
                    self._process(batch)
        finally:
            if self._connected:
                info = self._client.publish(self.status_topic, json.dumps(
                    {"worker": self.client_id, "state": "offline"}), qos=1, retain=True)
                info.wait_for_publish(timeout=2)
            self._client.disconnect()
            self._client.loop_stop()
            self._writer.close()
            log.info("ingest worker %s stopped", self.client_id)
