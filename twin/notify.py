"""``cimtwin notify``: delivers the notification outbox to webhooks and MQTT.

Every alert event leaves outbox rows in the transaction that wrote it (migration 0011): one MQTT
row (topic ``cim/v1/alerts/{area code|none}/{severity}``) and, when the alert's party has a
webhook, one webhook row. This worker claims due rows in small batches (``FOR UPDATE SKIP
LOCKED``, so several workers may run), delivers them, and marks each delivered or schedules its
retry with exponential backoff and jitter, capped at ``notify_backoff_max_s``. A row is never
dropped: a target that keeps failing is retried at the cap for as long as it takes, and the rows
queued behind it wait, so each target receives its events in order.

Delivery is at least once: a worker that dies after a delivery but before its commit delivers
that row again. Receivers deduplicate on ``X-Cimtwin-Event-Id`` (webhooks) or on ``event.id``.

Webhooks
    ``POST <url>`` with the JSON document as the body and the headers

    - ``X-Cimtwin-Event-Id``: the alert event's id (the same as the SSE event id)
    - ``X-Cimtwin-Delivery``: the outbox row's id; ``X-Cimtwin-Attempt``: 1, 2, …
    - ``X-Cimtwin-Timestamp``: Unix seconds when this attempt was signed
    - ``X-Cimtwin-Signature``: ``sha256=<hex>``, the HMAC-SHA256 of ``"<timestamp>.<body>"``
      (the raw body bytes) keyed with the party's webhook secret

    Any 2xx is delivered; anything else (3xx included), a timeout or a refused connection retries.
    The party's webhook is ``parties.channels.webhook = {"url": ..., "secret": ...}``; a plain URL
    string is sent unsigned (no ``X-Cimtwin-Signature``). See ``verify_signature``.

MQTT
    QoS 1 publish of the compact JSON document as the service account; the row is delivered when
    the broker's PUBACK arrives (with a success reason code).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass

import httpx
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import cimtwin
from cimtwin.settings import Settings
from cimtwin.store import notifications as store

log = logging.getLogger("cimtwin.notify")

SIGNATURE_HEADER = "X-Cimtwin-Signature"
TIMESTAMP_HEADER = "X-Cimtwin-Timestamp"
EVENT_ID_HEADER = "X-Cimtwin-Event-Id"


class DeliveryError(Exception):
    """One attempt failed; the message says why (kept in notification_outbox.last_error)."""


# ----------------------------------------------------------------------------- signatures

def body_bytes(payload: dict) -> bytes:
    """The exact bytes sent (and signed): compact JSON with sorted keys, UTF-8."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Cimtwin-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, *, timestamp: str, body: bytes, signature: str, tolerance_s: float = 300,
                     now: float | None = None) -> bool:
    """How a receiver checks a delivery (the same steps in any language):

    1. take ``X-Cimtwin-Timestamp`` and the raw request body, exactly as received;
    2. compute ``HMAC-SHA256(secret, timestamp + "." + body)`` as lowercase hex;
    3. compare ``"sha256=" + hex`` with ``X-Cimtwin-Signature`` in constant time;
    4. reject timestamps more than a few minutes from your clock (replays).

    Deduplicate on ``X-Cimtwin-Event-Id``: delivery is at least once.
    """
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    if age > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def backoff_s(attempts: int, *, base: float, cap: float) -> float:
    """The wait after the ``attempts``-th failure: exponential, capped, with jitter in [½, 1]×."""
    delay = min(cap, base * 2 ** min(max(attempts - 1, 0), 30))
    return delay * (0.5 + random.random() / 2)


# ----------------------------------------------------------------------------- MQTT

class MqttPublisher:
    """A paho client (the service account) whose QoS 1 publishes can be awaited until their PUBACK."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop):
        self.settings = settings
        self.loop = loop
        self.connected = threading.Event()
        self._waiting: dict[int, asyncio.Future] = {}
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cimtwin-notify-{uuid.uuid4().hex[:12]}",
                                   protocol=mqtt.MQTTv5)
        endpoint = settings.mqtt
        if endpoint.username:
            self._client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls:
            self._client.tls_set()
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        # At most one batch (notify_batch_size) is in flight at a time, well inside this window.
        self._client.max_inflight_messages_set(1000)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._props = Properties(PacketTypes.PUBLISH)
        self._props.ContentType = "application/json"

    def start(self) -> None:
        ep = self.settings.mqtt
        connect = Properties(PacketTypes.CONNECT)
        connect.SessionExpiryInterval = 0
        self._client.connect_async(ep.host, ep.port, keepalive=30, clean_start=True, properties=connect)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        self.connected.set()
        log.info("connected to the broker")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected.clear()
        self.loop.call_soon_threadsafe(self._fail_waiting, f"disconnected from the MQTT broker ({reason_code})")

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        # paho's network thread, inside paho's locks: hand over to the event loop and return.
        self.loop.call_soon_threadsafe(self._acked, mid, reason_code)

    def _acked(self, mid: int, reason_code) -> None:
        future = self._waiting.pop(mid, None)
        if future is not None and not future.done():  # else: the ack of a publish that timed out
            future.set_result(reason_code)

    def _fail_waiting(self, why: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(DeliveryError(why))

    async def publish(self, topic: str, body: bytes, *, timeout: float) -> None:
        if not self.connected.is_set():
            raise DeliveryError("not connected to the MQTT broker")
        info = self._client.publish(topic, body, qos=1, properties=self._props)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise DeliveryError(f"MQTT publish failed: {mqtt.error_string(info.rc)}")
        # The ack callback runs on this loop, so it cannot run before the future is registered
        # (nothing is awaited in between), even when the PUBACK is already in.
        future = self.loop.create_future()
        self._waiting[info.mid] = future
        try:
            reason = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise DeliveryError(f"no PUBACK within {timeout:g} s") from None
        finally:
            if self._waiting.get(info.mid) is future:
                del self._waiting[info.mid]
        if getattr(reason, "is_failure", False):
            raise DeliveryError(f"the broker refused the publish: {reason}")


# ----------------------------------------------------------------------------- the worker

@dataclass
class CycleResult:
    claimed: int = 0
    delivered: int = 0
    failed: int = 0


class Notifier:
    """Claims due outbox rows, delivers them, and records the outcome, until ``stop()``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._stopping: asyncio.Event | None = None
        self.http: httpx.AsyncClient | None = None
        self.mqtt: MqttPublisher | None = None
        self.delivered = 0
        self.failed = 0

    def stop(self) -> None:
        """Safe from a signal handler: the loop finishes its batch and exits."""
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        s = self.settings
        self.mqtt = MqttPublisher(s, self._loop)
        self.mqtt.start()
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(s.notify_webhook_timeout_s), follow_redirects=False,
            headers={"User-Agent": f"cimtwin/{cimtwin.__version__} (webhook)"})
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.mqtt.connected.wait, 5)
            failures = 0
            while not self._stopping.is_set():
                try:
                    await self._serve()
                    failures = 0
                except (psycopg.Error, OSError) as exc:
                    failures += 1
                    delay = min(10.0, 0.5 * 2 ** min(failures, 5))
                    log.warning("database unavailable (%s); retrying in %.1f s", exc, delay)
                    await self._sleep(delay)
        finally:
            await self.http.aclose()
            self.mqtt.stop()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _serve(self) -> None:
        s = self.settings
        async with await store.connect(s.database_url, application_name="cimtwin-notify") as listener, \
                await store.connect(s.database_url, application_name="cimtwin-notify", autocommit=False) as conn:
            await store.listen(listener)
            log.info("delivering the notification outbox")
            while not self._stopping.is_set():
                result = await self.cycle(conn)
                if result.claimed >= s.notify_batch_size:
                    continue  # more may be due at once
                async with conn.transaction():
                    due_in = await store.seconds_until_due(conn)
                if result.claimed and due_in == 0:
                    continue
                # A due head may be held by another worker: do not spin on it.
                wait = s.notify_poll_s if due_in is None else min(s.notify_poll_s, max(due_in, 0.05))
                await self._wait_for_events(listener, wait)

    async def _wait_for_events(self, listener: psycopg.AsyncConnection, timeout: float) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        notified = asyncio.ensure_future(self._next_notify(listener, timeout))
        try:
            await asyncio.wait({stop, notified}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stop, notified):
                if not task.done():
                    task.cancel()
            await asyncio.gather(stop, notified, return_exceptions=True)
        if notified.done() and not notified.cancelled() and notified.exception() is not None:
            raise notified.exception()

    @staticmethod
    async def _next_notify(listener: psycopg.AsyncConnection, timeout: float) -> None:
        async for _ in listener.notifies(timeout=timeout, stop_after=1):
            pass

    async def cycle(self, conn: psycopg.AsyncConnection) -> CycleResult:
        """One batch: claim, deliver concurrently, record, commit (the locks hold until then)."""
        s = self.settings
        result = CycleResult()
        async with conn.transaction():
            rows = await store.claim_due(conn, limit=s.notify_batch_size)
            result.claimed = len(rows)
            if not rows:
                return result
            outcomes = await asyncio.gather(*(self._deliver(row) for row in rows))
            delivered = [row.id for row, error in zip(rows, outcomes) if error is None]
            failed = [(row.id, error, backoff_s(row.attempts + 1, base=s.notify_backoff_base_s,
                                                 cap=s.notify_backoff_max_s))
                      for row, error in zip(rows, outcomes) if error is not None]
            await store.mark_delivered(conn, delivered)
            await store.mark_failed(conn, failed)
        result.delivered, result.failed = len(delivered), len(failed)
        self.delivered += result.delivered
        self.failed += result.failed
        for row_id, error, delay in failed:
            log.info("outbox row %d failed (%s); retry in %.1f s", row_id, error, delay)
        return result

    async def _deliver(self, row: store.OutboxRow) -> str | None:
        """None when delivered, else why not."""
        try:
            if row.channel == "webhook":
                await self._webhook(row)
            elif row.channel == "mqtt":
                await self.mqtt.publish(row.target, body_bytes(row.payload),
                                        timeout=self.settings.notify_mqtt_timeout_s)
            else:
                raise DeliveryError(f"unknown channel {row.channel!r}")
        except DeliveryError as exc:
            return str(exc)
        except Exception as exc:  # one bad row must not stop the others
            return f"{type(exc).__name__}: {exc}"
        return None

    async def _webhook(self, row: store.OutboxRow) -> None:
        body = body_bytes(row.payload)
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", EVENT_ID_HEADER: str(row.alert_event_id),
                   "X-Cimtwin-Delivery": str(row.id), "X-Cimtwin-Attempt": str(row.attempts + 1),
                   TIMESTAMP_HEADER: timestamp}
        if row.secret:
            headers[SIGNATURE_HEADER] = sign(row.secret, timestamp, body)
        try:
            response = await self.http.post(row.target, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"HTTP {response.status_code}: {response.text[:200]}")


async def outbox_stats(settings: Settings) -> dict:
    async with await store.connect(settings.database_url, application_name="cimtwin-notify-stats") as conn:
        return await store.outbox_stats(conn)
