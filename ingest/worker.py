"""The ingest worker: MQTT (QoS 1, persistent session, manual ack) → batches → PostgreSQL.

The paho callback only enqueues. Two threads then form a two-stage pipeline:

* **prepare** cuts batches (at once when the committer is idle, else growing with the load up
  to a size and a time limit), decodes and normalizes them, and turns their
  rows into binary COPY data and a summary for ``latest`` and the rollups (pure Python,
  plus a device lookup on its own connection when the cache misses);
* **commit** (the thread that called :meth:`IngestWorker.run`) writes each prepared batch
  in one transaction and acknowledges its messages only after COMMIT, in the order
  they were received.

So Python prepares batch n+1 while PostgreSQL works on batch n. At most one prepared
batch waits for the committer. A database outage holds the batch being committed and
retries; the prepare stage then blocks, the inbox fills up to the broker's in-flight
window (MQTT 5 Receive Maximum) and the broker stops sending, so nothing is lost and
memory stays bounded. Messages received but not committed when the worker stops stay
unacknowledged, and the broker delivers them again.

Paho's per-message overhead is most of an ingest process's CPU. :class:`IngestClient`
trims it for a busy subscriber (bulk socket reads, many packets per loop pass, one
write for a batch's PUBACKs); see there.
"""

from __future__ import annotations

import collections
import gc
import json
import logging
import queue
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from cimtwin.settings import Settings
from cimtwin.store.writer import DeviceLookup, PreparedRows, ReadingWriter, prepare_rows

from cimtwin.twin.alerting import AlertEngine
from .decoders import CanonicalDecoder
from .normalize import DeviceDirectory, NormalizedBatch, Normalizer, RawMessage
from .profile_sync import ProfileSync
from .profiles import ProfileDecoder

log = logging.getLogger("cimtwin.ingest")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


# --- paho --------------------------------------------------------------------------------------

class _BufferedSocket:
    """Reads the socket 64 KiB at a time and serves paho's small reads from that buffer.

    paho reads every packet with three ``recv`` calls (1 byte, the length bytes, the
    rest). ``pending()`` tells paho's loop that buffered bytes are waiting, as it already
    asks an SSL socket, so it does not block in select() while data is at hand.
    """

    __slots__ = ("_sock", "_buf", "_pos")

    def __init__(self, sock):
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        pos = self._pos
        available = len(self._buf) - pos
        if available <= 0:
            data = self._sock.recv(bufsize if bufsize > 65536 else 65536)
            if len(data) <= bufsize:
                return data
            self._buf, self._pos = data, bufsize
            return data[:bufsize]
        buf = self._buf
        if bufsize >= available:
            self._buf, self._pos = b"", 0
            return buf[pos:] if pos else buf
        self._pos = pos + bufsize
        return buf[pos:pos + bufsize]

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    def send(self, data) -> int:
        return self._sock.send(data)

    def close(self) -> None:
        self._buf, self._pos = b"", 0
        self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def __getattr__(self, name):
        return getattr(self._sock, name)


_PUBACK = struct.Struct("!BBH")
# The paho internals IngestClient builds on; checked once, so a paho that changed them
# still works, only without the shortcuts.
_PAHO_INTERNALS = all(hasattr(mqtt.Client, name) for name in (
    "_create_socket", "_packet_read", "_loop_rc_handle", "_packet_queue", "_handle_publish",
    "_handle_on_message", "_send_puback")) and \
    hasattr(mqtt, "time_func") and set(mqtt.MQTTMessage.__slots__) == {
        "_topic", "dup", "info", "mid", "payload", "properties", "qos", "retain", "state", "timestamp"}
# What paho attaches to a received MQTT 5 message without properties; one shared instance.
_NO_PUBLISH_PROPERTIES = Properties(PacketTypes.PUBLISH)


class _ReceivedMessage(mqtt.MQTTMessage):
    """An MQTTMessage built without the MQTTMessageInfo (a threading.Condition) that paho
    makes for every message but uses only for outgoing ones; ``info`` is None."""

    __slots__ = ()

    def __init__(self, mid: int, topic: bytes, qos: int, dup: bool, retain: bool, payload: bytes):
        self.timestamp = mqtt.time_func()
        self.state = mqtt.mqtt_ms_invalid
        self.dup = dup
        self.mid = mid
        self._topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.info = None
        self.properties = _NO_PUBLISH_PROPERTIES


class IngestClient(mqtt.Client):
    """A paho client for a subscriber that receives messages in bulk.

    Plain paho spends most of a bare subscriber's time per message on its own
    bookkeeping: one pass of its network loop (a select() call and housekeeping) per
    incoming packet, three recv() calls per packet, and for MQTT 5 a ``Properties``
    object (two dicts of 28 entries built afresh) and an ``MQTTMessageInfo`` (with a
    threading.Condition) per received message. This client:

    * reads the socket in 64 KiB blocks and handles up to ``read_burst`` packets per pass;
    * decodes a QoS 0/1 PUBLISH without properties itself (the usual device message): the
      same fields, a shared empty ``Properties``, no ``info``; anything else (properties
      present, QoS 2, debug logging on, a packet that does not add up) goes to paho;
    * :meth:`ack_qos1` queues the PUBACKs of a whole batch as one write instead of one
      send() (and one wake-up of the loop) each.

    Callbacks run through paho's own dispatch (``_handle_on_message``), and reconnects,
    keepalive and all other packets are paho's code unchanged.
    """

    read_burst = 1000

    def _create_socket(self):
        sock = super()._create_socket()
        return _BufferedSocket(sock) if _PAHO_INTERNALS else sock

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        if not _PAHO_INTERNALS:
            return super().loop_read(max_packets)
        for _ in range(self.read_burst):
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_publish(self) -> MQTTErrorCode:
        if not _PAHO_INTERNALS or self._protocol != mqtt.MQTTv5 or self._logger is not None \
                or self.on_log is not None:
            return super()._handle_publish()
        header = self._in_packet["command"]
        packet = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        size = len(packet)
        if qos == 2 or size < 2:
            return super()._handle_publish()
        end = 2 + ((packet[0] << 8) | packet[1])  # after the topic
        if qos:
            if end + 2 > size:
                return super()._handle_publish()
            mid = (packet[end] << 8) | packet[end + 1]
            end += 2
        else:
            mid = 0
        if end >= size or packet[end] != 0:  # properties present (or a malformed packet)
            return super()._handle_publish()
        view = memoryview(packet)
        message = _ReceivedMessage(mid, bytes(view[2:end - 2 if qos else end]), qos, bool(header & 0x08),
                                   bool(header & 0x01), bytes(view[end + 1:]))
        self._handle_on_message(message)
        if qos and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_qos1(self, mids: Sequence[int]) -> None:
        """Acknowledge QoS 1 messages (manual ack), in the given order, with one write."""
        if not mids:
            return
        if not _PAHO_INTERNALS:
            for mid in mids:
                self.ack(mid, 1)
            return
        pack = _PUBACK.pack
        # The very bytes paho's ack() sends for each: PUBACK, remaining length 2, packet id.
        self._packet_queue(mqtt.PUBACK, b"".join([pack(mqtt.PUBACK, 2, mid) for mid in mids]), 0, 0)


def make_client(settings: Settings, client_id: str, *, manual_ack: bool = False,
                client_class: type[mqtt.Client] = mqtt.Client) -> mqtt.Client:
    """A paho MQTT 5 client configured from settings (credentials, TLS), not yet connected."""
    endpoint = settings.mqtt
    client = client_class(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
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


# --- the worker --------------------------------------------------------------------------------

@dataclass(slots=True)
class _Batch:
    messages: list[mqtt.MQTTMessage]
    raws: list[RawMessage]
    result: NormalizedBatch | None  # None: the database refused the lookup; write message by message
    rows: PreparedRows | None  # the rows' COPY data and summary, made ahead of the write


class IngestWorker:
    def __init__(self, settings: Settings, *, client_id: str | None = None, share_group: str | None = None):
        self.settings = settings
        self.client_id = client_id or settings.ingest_client_id
        self.share_group = share_group
        self.status_topic = f"{settings.status_topic_prefix}/{self.client_id}"
        self._inbox: queue.SimpleQueue[mqtt.MQTTMessage] = queue.SimpleQueue()
        self._prepared: queue.Queue[_Batch] = queue.Queue(maxsize=1)
        self._committing = False  # the committer is writing a batch (read by the collector)
        app = f"cimtwin-ingest:{self.client_id}"
        self._alerts = AlertEngine(settings.database_url, application_name=app)
        self._writer = ReadingWriter(settings.database_url, application_name=app, on_inserted=self._alerts)
        self._lookup = DeviceLookup(settings.database_url, application_name=app)
        directory = DeviceDirectory(self._lookup)
        self._profiles = ProfileSync(settings.database_url, ProfileDecoder(()), application_name=app,
                                     on_change=directory.clear)
        self._normalizer = Normalizer(directory,
                                      max_payload_bytes=settings.ingest_max_payload_bytes,
                                      max_future_s=settings.ingest_max_future_s,
                                      decoders=(CanonicalDecoder(), self._profiles.decoder))
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._connected = False
        # Status, read by the status thread.
        self._db_ok = True
        self._db_error: str | None = None
        # (monotonic receive time of its first message, size) of each batch received and not yet
        # acknowledged or dropped, oldest first.
        self._held: collections.deque[tuple[float, int]] = collections.deque()
        self._last_commit: float | None = None
        self.readings_committed = 0
        self.messages_acked = 0
        self.dead_letters = 0
        self._client = self._make_client()

    # MQTT -----------------------------------------------------------------

    def _make_client(self) -> IngestClient:
        s = self.settings
        client = make_client(s, self.client_id, manual_ack=True, client_class=IngestClient)
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

    # stage 1: prepare -----------------------------------------------------

    def _collect(self) -> list[mqtt.MQTTMessage]:
        """Up to ingest_batch_max_messages, cut as soon as the committer could take it.

        It blocks only for the first message, then drains the inbox. When the inbox is empty and
        the committer is idle, the batch goes at once (waiting would only add latency); while the
        committer is busy it keeps gathering, at most ingest_batch_max_wait_ms after the first
        message, so batches grow with the load (group commit). It polls rather than blocking:
        waking on every message would cost a thread switch per message.
        """
        try:
            first = self._inbox.get(timeout=0.05)
        except queue.Empty:
            return []
        batch = [first]
        limit = self.settings.ingest_batch_max_messages
        deadline = time.monotonic() + self.settings.ingest_batch_max_wait_ms / 1000.0
        get_nowait, append = self._inbox.get_nowait, batch.append
        while True:
            try:
                while len(batch) < limit:
                    append(get_nowait())
                return batch
            except queue.Empty:
                if not self._committing and self._prepared.empty():
                    return batch
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return batch
                time.sleep(min(remaining, 0.001))

    def _to_raw(self, batch: list[mqtt.MQTTMessage]) -> list[RawMessage]:
        # paho stamps messages with time.monotonic(); turn that into wall time.
        offset = time.time() - time.monotonic()
        utc = timezone.utc
        return [RawMessage(m.topic, m.payload, datetime.fromtimestamp(m.timestamp + offset, tz=utc), m.mid, m.qos)
                for m in batch]

    def _db_failed(self, exc: BaseException) -> None:
        self._db_ok, self._db_error = False, str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)

    def _db_succeeded(self) -> None:
        if not self._db_ok:
            log.info("database reachable again")
        self._db_ok, self._db_error = True, None

    def _prepare(self, messages: list[mqtt.MQTTMessage]) -> _Batch | None:
        """Normalize and prepare the rows; retries device lookups through outages. None if stopped first."""
        raws = self._to_raw(messages)
        delay = 0.5
        while True:
            try:
                result = self._normalizer.normalize(raws)
            except psycopg.OperationalError as exc:
                self._db_failed(exc)
                log.warning("database unavailable for device lookup (%s); retrying in %.1f s",
                            self._db_error, delay)
                if self._stop.wait(delay):
                    return None
                delay = min(delay * 2, 5.0)
                continue
            except psycopg.Error as exc:
                log.error("database refused a device lookup (%s); writing the batch message by message", exc)
                return _Batch(messages, raws, None, None)
            return _Batch(messages, raws, result, prepare_rows(result.rows) if result.rows else None)

    def _prepare_loop(self) -> None:
        try:
            while not self._stop.is_set():
                messages = self._collect()
                if messages:
                    self._held.append((messages[0].timestamp, len(messages)))
                    batch = self._prepare(messages)
                    while batch is not None and not self._stop.is_set():
                        try:
                            self._prepared.put(batch, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                # Profiles and rules are checked (at most every 50 ms) between batches, once this one is
                # handed on, so no batch waits for the check: what was committed before it applies to
                # the next batch.
                self._profiles.maybe_refresh()
                self._alerts.maybe_refresh()
        except BaseException as exc:  # a bug: stop the worker rather than stall it
            self._failure = exc
            self._stop.set()

    # stage 2: commit ------------------------------------------------------

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

    def _store(self, batch: _Batch) -> NormalizedBatch | None:
        """Write one prepared batch; retries through database outages. None if stopped first."""
        delay = 0.5
        while True:
            try:
                try:
                    result = batch.result
                    if result is None:
                        result = self._write_each(batch.raws)
                    else:
                        self.readings_committed += self._writer.write(
                            result.rows, dead_letters=result.dead_letters, pending=result.pending,
                            prepared=batch.rows)
                except psycopg.OperationalError:
                    raise
                except psycopg.Error as exc:
                    log.error("database refused a batch (%s); writing its messages one by one", exc)
                    result = self._write_each(batch.raws)
                self._db_succeeded()
                return result
            except psycopg.OperationalError as exc:
                self._db_failed(exc)
                log.warning("database unavailable (%s); retrying in %.1f s", self._db_error, delay)
                self._writer.close()
                if self._stop.wait(delay):
                    return None
                delay = min(delay * 2, 5.0)

    def _commit(self, batch: _Batch) -> None:
        result = self._store(batch)
        if result is None:
            return  # stopping: unacknowledged messages stay with the broker
        messages = batch.messages
        self._client.ack_qos1([m.mid for m in messages if m.qos == 1])
        for m in messages:
            if m.qos > 1:
                self._client.ack(m.mid, m.qos)
        self.messages_acked += len(messages)
        self.dead_letters += len(result.dead_letters)
        self._last_commit = time.time()
        self._held.popleft()

    # status -----------------------------------------------------------------

    def status(self) -> dict:
        held = list(self._held)
        return {
            "worker": self.client_id,
            "state": "running" if self._db_ok else "database_unavailable",
            "db_ok": self._db_ok,
            "db_error": self._db_error,
            "broker_connected": self._connected,
            "lag_s": round(time.monotonic() - held[0][0], 3) if held else 0.0,
            "in_progress": sum(size for _, size in held),
            "queued": self._inbox.qsize(),
            "last_commit_at": _iso(self._last_commit),
            "readings_committed": self.readings_committed,
            "messages_acked": self.messages_acked,
            "dead_letters": self.dead_letters,
            "alerts": {"evaluated": self._alerts.evaluated, "raised": self._alerts.raised,
                       "late_readings": self._alerts.late,
                       "too_late_readings": self._alerts.too_late, "replays": self._alerts.replays,
                       "withdrawn": self._alerts.withdrawn, "engine_failures": self._writer.hook_failures,
                       "last_engine_error": self._writer.last_hook_error},
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
        # Three busy threads share the GIL (paho's loop, prepare, commit). A 0.5 ms switch interval
        # (Python's default is 5 ms) cut bench/alerts.py's SSE p99 from 114-120 to 41-90 ms at no
        # measured cost in throughput.
        sys.setswitchinterval(0.0005)
        endpoint = s.mqtt
        # Profiles and alert rules are loaded before the first message is taken.
        self._profiles.maybe_refresh()
        self._alerts.maybe_refresh()
        # What is loaded by now (modules, profiles, rules) lives as long as the process: frozen, it is
        # left out of the collector's full passes, which otherwise held the GIL for 25-100 ms.
        gc.collect()
        gc.freeze()
        self._client.connect_async(
            endpoint.host, endpoint.port, keepalive=30, clean_start=False,
            properties=connect_properties(session_expiry_s=s.ingest_session_expiry_s,
                                          receive_maximum=s.ingest_receive_maximum))
        self._client.loop_start()
        status_thread = threading.Thread(target=self._publish_status, name="ingest-status", daemon=True)
        status_thread.start()
        prepare_thread = threading.Thread(target=self._prepare_loop, name="ingest-prepare", daemon=True)
        prepare_thread.start()
        log.info("ingest worker %s started (topics: %s)", self.client_id, ", ".join(self._subscriptions()))
        if s.ingest_receive_maximum < 3 * s.ingest_batch_max_messages:
            # One batch is committed, one prepared and one collected at a time; with a smaller
            # window the broker stops sending before the next batch can fill.
            log.warning("CIMTWIN_INGEST_RECEIVE_MAXIMUM (%d) is below 3 x CIMTWIN_INGEST_BATCH_MAX_MESSAGES "
                        "(%d): batches will be cut by time, not size", s.ingest_receive_maximum,
                        s.ingest_batch_max_messages)
        try:
            while not self._stop.is_set():
                try:
                    batch = self._prepared.get(timeout=0.2)
                except queue.Empty:
                    continue
                self._committing = True
                try:
                    self._commit(batch)
                finally:
                    self._committing = False
            prepare_thread.join(timeout=10)
            if self._failure is not None:
                raise self._failure
        finally:
            self._stop.set()
            if self._connected:
                info = self._client.publish(self.status_topic, json.dumps(
                    {"worker": self.client_id, "state": "offline"}), qos=1, retain=True)
                info.wait_for_publish(timeout=2)
            self._client.disconnect()
            self._client.loop_stop()
            self._writer.close()
            self._lookup.close()
            self._profiles.close()
            self._alerts.close()
            log.info("ingest worker %s stopped", self.client_id)
