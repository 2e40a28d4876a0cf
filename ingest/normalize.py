"""Turns a batch of raw MQTT messages into reading rows, dead letters and pending devices."""

from __future__ import annotations

import hashlib
import threading
import time as _time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cimtwin.store.writer import DeadLetter, DeviceRef, PendingDevice

from .decoders import CanonicalDecoder, Decoded, DecodeError, Decoder

Row = tuple[datetime, int, float, datetime]
DeviceKey = tuple[str, str]


@dataclass(slots=True)
class RawMessage:
    topic: str
    payload: bytes
    received_at: datetime
    mid: int = 0
    qos: int = 1


@dataclass(slots=True)
class NormalizedBatch:
    rows: list[Row] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    pending: list[PendingDevice] = field(default_factory=list)


def _dead_letter(msg: RawMessage, code: str, reason: str, vendor: str | None = None,
                 device: str | None = None) -> DeadLetter:
    # Identical messages rejected for the same reason fold into one row.
    digest = hashlib.sha256(b"%s\0%s\0%s" % (msg.topic.encode(), code.encode(), msg.payload)).digest()
    return DeadLetter(digest, msg.topic, vendor, device, code, reason, msg.payload, msg.received_at)


def topic_vendor(topic: str) -> str | None:
    """The vendor whose namespace a topic is in (``cim/v1/{vendor}/…`` or ``vendors/{vendor}/…``)."""
    levels = topic.split("/", 3)
    if len(levels) >= 3 and levels[0] == "cim" and levels[1] == "v1":
        return levels[2] or None
    if len(levels) >= 2 and levels[0] == "vendors":
        return levels[1] or None
    return None


def _fmt(value: float) -> str:
    return f"{value:g}"


def _identify(decoder: Decoder, topic: str, payload: bytes) -> DeviceKey | None:
    identify = getattr(decoder, "identify", None)
    return identify(topic, payload) if identify is not None else None


class DeviceDirectory:
    """A cache of registered devices in front of a batch lookup.

    Unknown keys are always looked up again (a device registered a moment ago is
    found at once); known ones are refreshed after ``ttl_s``, or sooner when a
    message names a channel the cached entry lacks.
    """

    def __init__(self, lookup: Callable[[Sequence[DeviceKey]], dict[DeviceKey, DeviceRef]], *,
                 ttl_s: float = 30.0, stale_channel_s: float = 1.0):
        self._lookup = lookup
        self._ttl_s = ttl_s
        self._stale_channel_s = stale_channel_s
        self._cache: dict[DeviceKey, tuple[float, DeviceRef]] = {}
        self._lock = threading.Lock()  # an ingest worker's two stages may resolve at once

    def resolve(self, wanted: dict[DeviceKey, set[str]]) -> dict[DeviceKey, DeviceRef]:
        with self._lock:
            return self._resolve(wanted)

    def _resolve(self, wanted: dict[DeviceKey, set[str]]) -> dict[DeviceKey, DeviceRef]:
        now = _time.monotonic()
        refresh = []
        for key, channels in wanted.items():
            cached = self._cache.get(key)
            if cached is None or now - cached[0] > self._ttl_s or (
                    now - cached[0] > self._stale_channel_s and not channels <= cached[1].sensors.keys()):
                refresh.append(key)
        if refresh:
            found = self._lookup(refresh)
            for key in refresh:
                if key in found:
                    self._cache[key] = (now, found[key])
                else:
                    self._cache.pop(key, None)
        return {key: self._cache[key][1] for key in wanted if key in self._cache}

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


class Normalizer:
    def __init__(self, directory: DeviceDirectory, *, max_payload_bytes: int, max_future_s: float,
                 decoders: Sequence[Decoder] = (CanonicalDecoder(),)):
        self._directory = directory
        self._max_payload_bytes = max_payload_bytes
        self._max_future = timedelta(seconds=max_future_s)
        self._decoders = list(decoders)

    def _decoder_for(self, topic: str) -> Decoder | None:
        for decoder in self._decoders:
            if decoder.handles(topic):
                return decoder
        return None

    def reject_only(self, msg: RawMessage, code: str, reason: str) -> NormalizedBatch:
        return NormalizedBatch(dead_letters=[_dead_letter(msg, code, reason)])

    def normalize(self, messages: Sequence[RawMessage]) -> NormalizedBatch:
        out = NormalizedBatch()
        dead: dict[bytes, DeadLetter] = {}
        pending: dict[DeviceKey, PendingDevice] = {}

        def reject(msg: RawMessage, code: str, reason: str, vendor: str | None = None, device: str | None = None):
            letter = _dead_letter(msg, code, reason, vendor, device)
            if letter.digest in dead:
                dead[letter.digest].occurrences += 1
            else:
                dead[letter.digest] = letter

        decoded: list[tuple[RawMessage, Decoded]] = []
        undecoded: list[tuple[RawMessage, Decoder, DecodeError, DeviceKey]] = []
        wanted: dict[DeviceKey, set[str]] = {}
        max_bytes = self._max_payload_bytes
        only = self._decoders[0] if len(self._decoders) == 1 else None
        for msg in messages:
            topic, payload = msg.topic, msg.payload
            if len(payload) > max_bytes:
                reject(msg, "payload_too_large", f"payload is {len(payload)} bytes; the limit is {max_bytes}",
                       topic_vendor(topic))
                continue
            if only is not None:
                decoder = only if only.handles(topic) else None
            else:
                decoder = self._decoder_for(topic)
            if decoder is None:
                reject(msg, "bad_topic", f"no decoder handles topic {topic!r}", topic_vendor(topic))
                continue
            try:
                d = decoder.decode(topic, payload, now=msg.received_at)
            except DecodeError as exc:
                # A device pinned to another profile version may still decode: look it up first.
                key = _identify(decoder, topic, payload)
                if key is None:
                    reject(msg, exc.reason_code, exc.reason, topic_vendor(topic))
                else:
                    undecoded.append((msg, decoder, exc, key))
                    wanted.setdefault(key, set())
                continue
            decoded.append((msg, d))
            key = (d.vendor_code, d.device_ext_id)
            channels = wanted.get(key)
            if channels is None:
                wanted[key] = channels = set()
            channels.update([r[0] for r in d.readings])

        devices = self._directory.resolve(wanted)
        for msg, decoder, exc, key in undecoded:
            device = devices.get(key)
            pinned = device.profile_id if device is not None else None
            try:
                if pinned is None:
                    raise exc
                d = decoder.decode_with(pinned, msg.topic, msg.payload, now=msg.received_at)
            except DecodeError as again:
                reject(msg, again.reason_code, again.reason, *key)
                continue
            decoded.append((msg, d))
        rows = out.rows
        append = rows.append
        max_future = self._max_future
        for msg, d in decoded:
            key = (d.vendor_code, d.device_ext_id)
            device = devices.get(key)
            if device is not None and device.profile_id is not None and d.profile_id is not None \
                    and d.profile_id != device.profile_id:
                # The device keeps the profile version it was registered with.
                try:
                    d = self._decoder_for(msg.topic).decode_with(device.profile_id, msg.topic, msg.payload,
                                                                  now=msg.received_at)
                except DecodeError as exc:
                    reject(msg, exc.reason_code, exc.reason, *key)
                    continue
            if device is None:
                reject(msg, "unknown_device",
                       f"unknown device {d.device_ext_id!r} of vendor {d.vendor_code!r}; "
                       "listed in pending devices for onboarding", *key)
                seen = pending.get(key)
                if seen is None:
                    pending[key] = PendingDevice(d.vendor_code, d.device_ext_id, msg.topic, msg.payload,
                                                 msg.received_at, msg.received_at, profile_id=d.profile_id)
                else:
                    seen.messages += 1
                    seen.last_seen, seen.topic, seen.payload = msg.received_at, msg.topic, msg.payload
                    seen.profile_id = d.profile_id or seen.profile_id
                continue
            problems: list[tuple[str, str]] = []
            received_at = msg.received_at
            latest_allowed = received_at + max_future
            default_time = d.time or received_at
            sensors = device.sensors
            for i, (channel, v, reading_time) in enumerate(d.readings):
                sensor = sensors.get(channel)
                if sensor is None:
                    problems.append(("unknown_channel", f"readings[{i}]: unknown channel {channel!r} "
                                     f"(device has: {', '.join(sorted(sensors)) or 'no channels'})"))
                    continue
                t = reading_time or default_time
                if t > latest_allowed:
                    ahead = (t - received_at).total_seconds()
                    problems.append(("future_time", f"readings[{i}]: time {t.isoformat()} is {ahead:.0f} s "
                                     f"in the future (limit {self._max_future.total_seconds():.0f} s)"))
                    continue
                lo, hi = sensor.min_value, sensor.max_value
                if (lo is not None and v < lo) or (hi is not None and v > hi):
                    lo = "-inf" if lo is None else _fmt(lo)
                    hi = "inf" if hi is None else _fmt(hi)
                    problems.append(("out_of_range", f"readings[{i}]: value {_fmt(v)} of channel {channel!r} "
                                     f"is outside its valid range [{lo}, {hi}]"))
                    continue
                append((t, sensor.id, v, received_at))
            if problems:
                stored = len(d.readings) - len(problems)
                suffix = f" ({stored} other reading(s) of this message were stored)" if stored else ""
                reject(msg, problems[0][0], "; ".join(p[1] for p in problems) + suffix, *key)
        out.dead_letters = list(dead.values())
        out.pending = list(pending.values())
        return out
