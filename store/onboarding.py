"""Registering vendors' devices in bulk (import, onboarding of pending devices)."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import NotFound
from cimtwin.schemas.registry import SensorIn
from cimtwin.store.audit import record
from cimtwin.store.profiles import vendor_id


@dataclass
class NewDevice:
    ext_id: str
    sensors: list[SensorIn]
    name: str | None = None
    model: str | None = None
    profile_id: int | None = None
    building_id: int | None = None
    room_id: int | None = None
    component_id: int | None = None
    lon: float | None = None
    lat: float | None = None


@dataclass(frozen=True)
class Registered:
    device_id: int
    ext_id: str
    created: bool


async def pending_device(pool: AsyncConnectionPool, *, vendor: str, ext_id: str, scope: int | None) -> dict:
    async with pool.connection() as conn:
        await vendor_id(conn, vendor, scope=scope)
        cur = await conn.cursor(row_factory=dict_row).execute(
            """SELECT vendor_code, ext_id, last_topic, last_payload, profile_id FROM pending_devices
               WHERE vendor_code = %s AND ext_id = %s""", (vendor, ext_id))
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"vendor {vendor!r} has no pending device {ext_id!r}", code="pending_device_not_found")
    return row


async def profile_by_id(pool: AsyncConnectionPool, *, profile_id: int) -> dict:
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT id, name, version, document FROM profiles WHERE id = %s", (profile_id,))
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"profile {profile_id} does not exist", code="profile_not_found")
    return row


async def missing_places(pool: AsyncConnectionPool, *, buildings: set[int], rooms: set[int],
                         components: set[int]) -> set[tuple[str, int]]:
    """The ``(kind, id)`` pairs among those named that do not exist."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            """SELECT 'building', id FROM unnest(%s::bigint[]) AS k(id) WHERE NOT EXISTS (SELECT FROM buildings b WHERE b.id = k.id)
               UNION ALL
               SELECT 'room', id FROM unnest(%s::bigint[]) AS k(id) WHERE NOT EXISTS (SELECT FROM rooms r WHERE r.id = k.id)
               UNION ALL
               SELECT 'component', id FROM unnest(%s::bigint[]) AS k(id)
               WHERE NOT EXISTS (SELECT FROM components c WHERE c.id = k.id)""",
            (sorted(buildings), sorted(rooms), sorted(components)))
        return {(kind, ident) for kind, ident in await cur.fetchall()}


async def existing_devices(pool: AsyncConnectionPool, *, vendor: str, scope: int | None,
                           ext_ids: list[str]) -> set[str]:
    async with pool.connection() as conn:
        owner = await vendor_id(conn, vendor, scope=scope)
        cur = await conn.execute("SELECT ext_id FROM devices WHERE vendor_id = %s AND ext_id = ANY(%s)",
                                 (owner, ext_ids))
        return {r[0] for r in await cur.fetchall()}


_UPSERT_DEVICE = """
    INSERT INTO devices (vendor_id, ext_id, name, model, profile_id, geom)
    VALUES (%(vendor)s, %(ext_id)s, %(name)s, %(model)s, %(profile)s,
            CASE WHEN %(lon)s::float8 IS NULL THEN NULL
                 ELSE ST_SetSRID(ST_MakePoint(%(lon)s, %(lat)s), 4326) END)
    ON CONFLICT (vendor_id, ext_id) DO UPDATE
        SET name = coalesce(excluded.name, devices.name), model = coalesce(excluded.model, devices.model),
            profile_id = coalesce(excluded.profile_id, devices.profile_id),
            geom = coalesce(excluded.geom, devices.geom)
    RETURNING id, (xmax = 0) AS created"""

_UPSERT_SENSOR = """
    INSERT INTO sensors (device_id, channel, quantity, unit, min_value, max_value, building_id, room_id, component_id)
    VALUES (%(device)s, %(channel)s, %(quantity)s, %(unit)s, %(min)s, %(max)s, %(building)s, %(room)s, %(component)s)
    ON CONFLICT (device_id, channel) DO UPDATE
        SET quantity = excluded.quantity, unit = excluded.unit, min_value = excluded.min_value,
            max_value = excluded.max_value,
            building_id = CASE WHEN %(placed)s THEN excluded.building_id ELSE sensors.building_id END,
            room_id = CASE WHEN %(placed)s THEN excluded.room_id ELSE sensors.room_id END,
            component_id = CASE WHEN %(placed)s THEN excluded.component_id ELSE sensors.component_id END"""


async def register_devices(pool: AsyncConnectionPool, *, vendor: str, scope: int | None, actor: str,
                           devices: list[NewDevice]) -> list[Registered]:
    """Create or update devices, their sensors and places, all in one transaction.

    A device given a place puts all its sensors there; one without keeps their places.
    Channels are added or updated, never dropped. The devices leave the pending list.
    """
    async with pool.connection() as conn, conn.transaction():
        owner = await vendor_id(conn, vendor, scope=scope)
        registered = []
        for d in devices:
            cur = await conn.execute(_UPSERT_DEVICE, {
                "vendor": owner, "ext_id": d.ext_id, "name": d.name, "model": d.model, "profile": d.profile_id,
                "lon": d.lon, "lat": d.lat})
            device_id, created = await cur.fetchone()
            placed = any(v is not None for v in (d.building_id, d.room_id, d.component_id))
            async with conn.cursor() as c:
                await c.executemany(_UPSERT_SENSOR, [{
                    "device": device_id, "channel": s.channel, "quantity": s.quantity, "unit": s.unit,
                    "min": s.min_value, "max": s.max_value, "building": d.building_id, "room": d.room_id,
                    "component": d.component_id, "placed": placed} for s in d.sensors])
            registered.append(Registered(device_id, d.ext_id, created))
        await conn.execute("DELETE FROM pending_devices WHERE vendor_code = %s AND ext_id = ANY(%s)",
                           (vendor, [d.ext_id for d in devices]))
        await record(conn, actor=actor, action="device.register", target=f"vendor:{vendor}",
                     detail={"created": [r.ext_id for r in registered if r.created],
                             "updated": [r.ext_id for r in registered if not r.created]})
        return registered
