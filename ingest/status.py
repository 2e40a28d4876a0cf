"""Ingest workers publish their status (retained, with a will); the API reads it here.

The status travels over MQTT rather than the database, so a worker that has lost
its database path can still say so.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

from cimtwin.settings import Settings

from .worker import connect_properties, make_client


class StatusBoard:
    """Keeps the latest status of every ingest worker; also tells whether the broker is reachable."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._workers: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()
        self.connected = False
        self._client = make_client(settings, f"cimtwin-api-{uuid.uuid4().hex[:12]}")
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            self.connected = True
            client.subscribe(f"{self.settings.status_topic_prefix}/+", qos=0)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected = False

    def _on_message(self, client, userdata, message):
        worker = message.topic.rsplit("/", 1)[-1]
        if not message.payload:  # retained status cleared: the worker is retired
            with self._lock:
                self._workers.pop(worker, None)
            return
        try:
            status = json.loads(message.payload)
        except ValueError:
            return
        with self._lock:
            self._workers[worker] = (time.monotonic(), status)

    def start(self) -> None:
        endpoint = self.settings.mqtt
        self._client.connect_async(endpoint.host, endpoint.port, keepalive=15, clean_start=True,
                                   properties=connect_properties(session_expiry_s=0))
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def workers(self) -> list[dict]:
        """Each known worker's last status, with ``stale`` when it has gone quiet."""
        stale_after = 3 * self.settings.ingest_status_interval_s + 2
        now = time.monotonic()
        with self._lock:
            items = sorted(self._workers.items())
        out = []
        for name, (seen, status) in items:
            quiet = now - seen
            out.append({**status, "worker": name, "seconds_since_status": round(quiet, 1),
                        "stale": status.get("state") != "offline" and quiet > stale_after})
        return out
