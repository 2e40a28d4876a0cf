"""SQL for a sensor's place on the map and its live state, shared by OGC API Features, tiles, the
buildings' live state (store/live_state.py) and the twin's tree and floor plans (store/twin.py).

Where a sensor is comes from the ``sensor_places`` view (migration 0004): its component, else its
room, else its building, else its device's own point. Here that place is reduced to one point (a
point as is, a line or polygon to a point on it), so every collection and tile layer of sensors
has one geometry type for QGIS and MapLibre. A sensor without a place has no geometry.

A sensor's state is one SQL ``CASE``, the first that holds of:

* ``alarm``: it has an unfinished alert (open, acknowledged or dispatched) of severity major or critical;
* ``warning``: it has an unfinished alert of severity info or warning;
* ``no_data``: it has never reported;
* ``offline``: its latest reading is older than ``offline_after_s`` seconds;
* ``ok``: otherwise.

The alerts come in as two hashed sets, built once per statement from the partial index
``alerts_unfinished_sensor`` (migration 0012, ``(sensor_id, severity) WHERE status IN ('open',
'acknowledged', 'dispatched')``; the predicate below repeats the index's, so an index-only scan of
the few unfinished alerts builds them), then one hash probe per sensor. For 6,000 sensors (a
dense z14 tile) that costs about 1.5 ms, where an index probe per sensor cost about 12 ms.
(Unfinished alerts are few; past some 100,000 of them PostgreSQL would stop hashing the sets.)

Every query that uses :data:`STATUS` must bind ``offline_after_s`` (seconds, a float). It reads
the aliases ``s`` (sensors) and ``l`` (latest, left-joined).
"""

from __future__ import annotations

STATUSES = ("alarm", "warning", "offline", "no_data", "ok")
STATUS_DESCRIPTION = ("alarm (an unfinished major/critical alert) | warning (an unfinished info/warning alert) "
                      "| offline (no reading for longer than the offline threshold) | no_data (never reported) | ok")

# Aliases: s sensor, d device, v vendor, l latest, sp place.
FROM = """sensors s
    JOIN devices d ON d.id = s.device_id
    JOIN vendors v ON v.id = d.vendor_id
    LEFT JOIN latest l ON l.sensor_id = s.id
    LEFT JOIN sensor_places sp ON sp.sensor_id = s.id"""

GEOM = """CASE WHEN GeometryType(sp.geom) = 'POINT' THEN sp.geom ELSE ST_PointOnSurface(sp.geom) END"""

PLACED_BY = "sp.place"

_UNFINISHED = "a.status IN ('open', 'acknowledged', 'dispatched') AND a.sensor_id IS NOT NULL"

STATUS = f"""CASE
    WHEN s.id IN (SELECT a.sensor_id FROM alerts a WHERE {_UNFINISHED} AND a.severity IN ('major', 'critical'))
        THEN 'alarm'
    WHEN s.id IN (SELECT a.sensor_id FROM alerts a WHERE {_UNFINISHED}) THEN 'warning'
    WHEN l.sensor_id IS NULL THEN 'no_data'
    WHEN l.time < now() - make_interval(secs => %(offline_after_s)s) THEN 'offline'
    ELSE 'ok' END"""
