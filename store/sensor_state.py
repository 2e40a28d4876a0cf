"""SQL for a sensor's place on the map and its live status, shared by OGC API Features and tiles.

Where a sensor is comes from the ``sensor_places`` view (migration 0004): its component, else its
room, else its building, else its device's own point. Here that place is reduced to one point (a
point as is, a line or polygon to a point on it), so every collection and tile layer of sensors
has one geometry type for QGIS and MapLibre. A sensor without a place has no geometry.

The status is one SQL ``CASE`` so that later states slot in front of the existing branches
(the alerting issue will put 'alarm' and 'warning', from open alerts, before 'offline'):

* ``no_data``: the sensor has never reported;
* ``offline``: its latest reading is older than ``offline_after_s`` seconds;
* ``ok``: otherwise.

Every query that uses :data:`STATUS` must bind ``offline_after_s`` (seconds, a float).
"""

from __future__ import annotations

STATUSES = ("ok", "offline", "no_data")

# Aliases: s sensor, d device, v vendor, l latest, sp place.
FROM = """sensors s
    JOIN devices d ON d.id = s.device_id
    JOIN vendors v ON v.id = d.vendor_id
    LEFT JOIN latest l ON l.sensor_id = s.id
    LEFT JOIN sensor_places sp ON sp.sensor_id = s.id"""

GEOM = """CASE WHEN GeometryType(sp.geom) = 'POINT' THEN sp.geom ELSE ST_PointOnSurface(sp.geom) END"""

PLACED_BY = "sp.place"

STATUS = """CASE
    WHEN l.sensor_id IS NULL THEN 'no_data'
    WHEN l.time < now() - make_interval(secs => %(offline_after_s)s) THEN 'offline'
    ELSE 'ok' END"""
