"""A small demo registry so a newcomer's first `cimtwin up` has devices to publish as.

The channels follow the gas multisensor of the UCI Air Quality data set
(../shared/data/AirQualityUCI.csv, De Vito et al., CC BY 4.0).
"""

from __future__ import annotations

import asyncio

from cimtwin.schemas import DeviceIn, SensorIn, VendorIn
from cimtwin.settings import Settings
from cimtwin.store import registry
from cimtwin.store.db import open_async_pool

DEMO_VENDOR = VendorIn(code="demo", name="Demo sensors")
DEMO_DEVICES = [
    DeviceIn(vendor="demo", ext_id=f"aq-{n:04d}", name=f"Roadside air quality {n}", model="multisensor",
             sensors=[
                 SensorIn(channel="co", quantity="co_concentration", unit="mg/m3", min_value=0, max_value=100),
                 SensorIn(channel="no2", quantity="no2_concentration", unit="ug/m3", min_value=0, max_value=2000),
                 SensorIn(channel="temperature", quantity="temperature", unit="°C", min_value=-40, max_value=85),
                 SensorIn(channel="humidity", quantity="relative_humidity", unit="%", min_value=0, max_value=100),
             ])
    for n in (1, 2, 3)
]


async def _load(settings: Settings) -> int:
    pool = open_async_pool(settings.database_url, max_size=2)
    await pool.open()
    try:
        await registry.upsert_vendor(pool, DEMO_VENDOR)
        for device in DEMO_DEVICES:
            await registry.register_device(pool, device)
    finally:
        await pool.close()
    return len(DEMO_DEVICES)


def load_demo(settings: Settings) -> int:
    count = asyncio.run(_load(settings))
    # The block-data demo: real OSM buildings around the Bund and Lujiazui, illustrative
    # areas and components (cimtwin/demo_district.py); idempotent, and bulk.
    from cimtwin.demo_district import load_demo_district

    load_demo_district(settings)
    return count
