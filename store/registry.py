"""Vendors, devices and sensors (async, for the API)."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import Conflict, NotFound
from cimtwin.schemas import Device, DeviceIn, Sensor, Vendor, VendorIn

from . import audit

# Functions that read vendor-owned objects take ``vendor_id``: None reads every vendor's,
# a vendor's id confines the query to that vendor (anything else is "does not exist").
_DEVICE_COLUMNS = """d.id, v.code AS vendor, d.ext_id, d.name, d.model, d.created_at"""


async def create_vendor(pool: AsyncConnectionPool, vendor: VendorIn, *, actor: str | None = None) -> Vendor:
    """Creates a vendor; with ``actor``, audited as ``vendor.create`` in the same transaction."""
    async with pool.connection() as conn, conn.transaction():
        try:
            cur = await conn.cursor(row_factory=dict_row).execute(
                "INSERT INTO vendors (code, name) VALUES (%s, %s) RETURNING id, code, name, created_at",
                (vendor.code, vendor.name))
        except psycopg.errors.UniqueViolation:
            raise Conflict(f"vendor {vendor.code!r} already exists") from None
        created = Vendor(**await cur.fetchone())
        if actor is not None:
            await audit.record(conn, actor=actor, action="vendor.create", target=f"vendor:{created.code}",
                               detail={"id": created.id, "name": created.name})
        return created


async def upsert_vendor(pool: AsyncConnectionPool, vendor: VendorIn) -> Vendor:
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            """INSERT INTO vendors (code, name) VALUES (%s, %s)
               ON CONFLICT (code) DO UPDATE SET name = excluded.name
               RETURNING id, code, name, created_at""", (vendor.code, vendor.name))
        return Vendor(**await cur.fetchone())


async def list_vendors(pool: AsyncConnectionPool, *, vendor_id: int | None) -> list[Vendor]:
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT id, code, name, created_at FROM vendors WHERE %(vendor_id)s::bigint IS NULL OR id = %(vendor_id)s "
            "ORDER BY code", {"vendor_id": vendor_id})
        return [Vendor(**r) for r in await cur.fetchall()]


async def _sensors(conn, device_ids: list[int]) -> dict[int, list[Sensor]]:
    cur = await conn.cursor(row_factory=dict_row).execute(
        """SELECT id, device_id, channel, quantity, unit, min_value, max_value
           FROM sensors WHERE device_id = ANY(%s) ORDER BY device_id, channel""", (device_ids,))
    by_device: dict[int, list[Sensor]] = {}
    for row in await cur.fetchall():
        by_device.setdefault(row["device_id"], []).append(Sensor(**row))
    return by_device


async def register_device(pool: AsyncConnectionPool, device: DeviceIn) -> Device:
    """Create the device, or update it and add/update its sensors (channels are never dropped here)."""
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute("SELECT id FROM vendors WHERE code = %s", (device.vendor,))
        vendor = await cur.fetchone()
        if vendor is None:
            raise NotFound(f"vendor {device.vendor!r} does not exist", code="vendor_not_found")
        cur = await conn.execute(
            """INSERT INTO devices (vendor_id, ext_id, name, model) VALUES (%s, %s, %s, %s)
               ON CONFLICT (vendor_id, ext_id) DO UPDATE SET name = excluded.name, model = excluded.model
               RETURNING id""", (vendor[0], device.ext_id, device.name, device.model))
        device_id = (await cur.fetchone())[0]
        async with conn.cursor() as c:
            await c.executemany(
                """INSERT INTO sensors (device_id, channel, quantity, unit, min_value, max_value)
                   VALUES (%s, %s, %s, %s, %s, %s)
                   ON CONFLICT (device_id, channel) DO UPDATE SET quantity = excluded.quantity,
                       unit = excluded.unit, min_value = excluded.min_value, max_value = excluded.max_value""",
                [(device_id, s.channel, s.quantity, s.unit, s.min_value, s.max_value) for s in device.sensors])
        await conn.execute("DELETE FROM pending_devices WHERE vendor_code = %s AND ext_id = %s",
                           (device.vendor, device.ext_id))
        return await _device(conn, device_id)


async def _device(conn, device_id: int, *, vendor_id: int | None = None) -> Device:
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"""SELECT {_DEVICE_COLUMNS} FROM devices d JOIN vendors v ON v.id = d.vendor_id
            WHERE d.id = %(id)s AND (%(vendor_id)s::bigint IS NULL OR d.vendor_id = %(vendor_id)s)""",
        {"id": device_id, "vendor_id": vendor_id})
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"device {device_id} does not exist", code="device_not_found")
    return Device(**row, sensors=(await _sensors(conn, [device_id])).get(device_id, []))


async def get_device(pool: AsyncConnectionPool, device_id: int, *, vendor_id: int | None) -> Device:
    async with pool.connection() as conn:
        return await _device(conn, device_id, vendor_id=vendor_id)


async def list_devices(pool: AsyncConnectionPool, *, vendor: str | None, limit: int, offset: int,
                       vendor_id: int | None) -> list[Device]:
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"""SELECT {_DEVICE_COLUMNS} FROM devices d JOIN vendors v ON v.id = d.vendor_id
                WHERE (%(vendor)s::text IS NULL OR v.code = %(vendor)s)
                  AND (%(vendor_id)s::bigint IS NULL OR d.vendor_id = %(vendor_id)s)
                ORDER BY v.code, d.ext_id LIMIT %(limit)s OFFSET %(offset)s""",
            {"vendor": vendor, "vendor_id": vendor_id, "limit": limit, "offset": offset})
        rows = await cur.fetchall()
        sensors = await _sensors(conn, [r["id"] for r in rows])
        return [Device(**r, sensors=sensors.get(r["id"], [])) for r in rows]


async def get_sensor(pool: AsyncConnectionPool, sensor_id: int, *, vendor_id: int | None) -> Sensor:
    async with pool.connection() as conn:
        cur = await conn.cursor(row_factory=dict_row).execute(
            """SELECT s.id, s.device_id, s.channel, s.quantity, s.unit, s.min_value, s.max_value
               FROM sensors s JOIN devices d ON d.id = s.device_id
               WHERE s.id = %(id)s AND (%(vendor_id)s::bigint IS NULL OR d.vendor_id = %(vendor_id)s)""",
            {"id": sensor_id, "vendor_id": vendor_id})
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"sensor {sensor_id} does not exist", code="sensor_not_found")
    return Sensor(**row)
