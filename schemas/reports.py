"""The safety report (`cimtwin report`, ``GET /reports/{period}``): what one period of the alert
loop looked like in an area.

Definitions (the same in every format):

- **Period**: ``[start, end)`` in the report time zone (setting ``report_timezone``): a day, an ISO
  week (Monday 00:00 to Monday 00:00) or a calendar month. An alert belongs to the period when it
  was *raised* in it (``alerts.raised_at``).
- **Area**: an alert is in the area when its ``area_id`` is the area or any area inside it (the
  ``areas.parent_id`` chain). A city-wide report holds every alert, with or without an area.
- **Durations** run from ``created_at`` (when cimtwin created the alert) to ``acknowledged_at``
  (time to acknowledge) and to ``closed_at`` (time to close), in seconds; median and p90 are
  PostgreSQL's ``percentile_cont`` (linear interpolation) over the alerts that have the timestamp.
  The outcome is the alert's state when the report was generated (``generated_at``).
- **Handled within the target** (``sla``): *closed* (not merely resolved) no later than
  ``target_s`` (3600 s) after ``created_at``. Share = handled ÷ eligible, where eligible = the
  period's alerts less those still unclosed whose target has not yet passed at ``generated_at``.
  The share *resolved* within the target is given beside it for comparison.
- **Offline devices**: at ``offline.at`` (the period end, or now for a period not yet over), a device
  is offline when none of its sensors has a reading in the ``sensor_offline_after_s`` before it
  (``stale``), or none ever reported before it (``no_data``, devices without sensors included).
  In scope: devices registered before ``offline.at`` with a sensor placed in the area
  (``sensor_places`` intersecting the area's geometry); city-wide, every device.
- **Noisy devices**: the devices whose sensors raised the most alerts in the period (then the most
  occurrences: an alert's first reading plus the repeats folded into it, ``alerts.count``, which
  includes repeats after the period's end while the alert stayed open), top 10.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

PeriodKind = Literal["daily", "weekly", "monthly"]
PERIOD_KINDS: tuple[str, ...] = ("daily", "weekly", "monthly")
SEVERITIES: tuple[str, ...] = ("critical", "major", "warning", "info")  # most severe first
REPORT_FORMATS: tuple[str, ...] = ("json", "csv", "png", "html")
CHARTS: tuple[str, ...] = ("severity", "timeline", "areas")


class ReportPeriod(BaseModel):
    kind: PeriodKind
    label: str = Field(description="2024-03-04, 2024-W10 (ISO week) or 2024-03")
    start: datetime = Field(description="inclusive, in the report time zone")
    end: datetime = Field(description="exclusive, in the report time zone")
    timezone: str


class AreaRef(BaseModel):
    id: int
    code: str
    name: str
    level: str


class SeverityCounts(BaseModel):
    critical: int = 0
    major: int = 0
    warning: int = 0
    info: int = 0


class AreaCount(SeverityCounts):
    """Alerts of one area of the grouping level (the areas directly inside the report's area;
    city-wide: the districts, or the streets when there is one district), with everything inside it."""

    part: Literal["child", "itself", "no_area"] = Field(
        description="child: an area of the grouping level; itself: alerts placed on the grouping parent "
                    "itself rather than inside one of its children; no_area: alerts without an area")
    area_id: int | None = None
    code: str | None = None
    name: str | None = None
    level: str | None = None
    alerts: int = 0


class KeyCount(BaseModel):
    key: str
    alerts: int
    occurrences: int = Field(description="the alerts' first readings plus the repeats folded into them")


class DurationStats(BaseModel):
    """Seconds from created_at to the timestamp, over the period's alerts that have it."""

    count: int = Field(description="alerts that have the timestamp")
    missing: int = Field(description="alerts of the period without it (yet)")
    median_s: float | None = None
    p90_s: float | None = None
    mean_s: float | None = None
    max_s: float | None = None


class AckStats(DurationStats):
    awaiting: int = Field(description="of `missing`: still unfinished (open, or dispatched without an acknowledgement)")
    finished_unacknowledged: int = Field(description="of `missing`: resolved or closed without ever being "
                                                     "acknowledged (e.g. cleared by the engine)")


class SlaStats(BaseModel):
    target_s: float
    eligible: int = Field(description="the period's alerts less those unclosed whose target is still ahead")
    not_yet_due: int
    handled: int = Field(description="closed within target_s of created_at")
    handled_share: float | None = Field(default=None, description="handled / eligible (0..1)")
    resolved: int = Field(description="resolved (or closed) within target_s of created_at")
    resolved_share: float | None = None


class OfflineStats(BaseModel):
    at: datetime = Field(description="the moment judged: the period end, or generated_at if earlier")
    offline_after_s: float
    devices: int
    online: int
    stale: int = Field(description="has reported, but not in the offline_after_s before `at`")
    no_data: int = Field(description="no reading before `at` (or no sensors)")
    offline: int = Field(description="stale + no_data")
    rate: float | None = Field(default=None, description="offline / devices (0..1)")


class NoisyDevice(BaseModel):
    device_id: int
    vendor: str
    ext_id: str
    name: str | None = None
    alerts: int
    occurrences: int
    repeats: int = Field(description="occurrences - alerts: repeats folded into open alerts")
    last_raised_at: datetime


class SeriesPoint(SeverityCounts):
    start: datetime
    alerts: int = 0


class ReportTotals(BaseModel):
    alerts: int
    occurrences: int
    open: int = Field(description="alerts of the period still open, acknowledged or dispatched")


class Report(BaseModel):
    title: str
    period: ReportPeriod
    area: AreaRef | None = Field(default=None, description="null: the whole city")
    generated_at: datetime
    totals: ReportTotals
    by_severity: SeverityCounts
    by_kind: list[KeyCount]
    by_source: list[KeyCount]
    by_status: list[KeyCount]
    area_grouping: AreaRef | None = Field(
        default=None, description="the parent whose children are the by_area rows (null: the top-level areas)")
    by_area: list[AreaCount]
    time_to_acknowledge: AckStats
    time_to_close: DurationStats
    sla: SlaStats
    offline: OfflineStats
    top_devices: list[NoisyDevice]
    series_bucket: Literal["hour", "day"]
    series: list[SeriesPoint]
    notes: list[str] = Field(default_factory=list)
