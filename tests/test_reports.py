"""Reports: exact figures for a seeded week (alerts written straight into SQL), area filtering,
periods in the report time zone, and every format through the store, the CLI and the API."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import statistics
import subprocess
import sys
import zipfile
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest

from cimtwin.schemas.reports import SEVERITIES, Report
from cimtwin.settings import settings_env
from cimtwin.twin import reports

TZ = ZoneInfo("Asia/Shanghai")
WEEK_START = datetime(2024, 3, 4, tzinfo=TZ)   # a Monday
WEEK_END = datetime(2024, 3, 11, tzinfo=TZ)
AT = WEEK_END.astimezone(timezone.utc)         # the weekly report judges devices at its end
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def local(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2024, month, day, hour, minute, tzinfo=TZ)


def _box(x0, y0, x1, y1) -> str:
    return f"MULTIPOLYGON((({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0})))"


# name, ack delay, resolve delay, close delay (seconds after created_at; None: not done), count, status
ALERTS = [
    # key  area    device severity    kind         source     raised               ack   resolve close  count status
    ("a1", "C1", "A", "critical", "threshold", "rule", local(3, 5, 9), 120, 1800, 3000, 5, "closed"),
    ("a2", "S1", "A", "major", "threshold", "rule", local(3, 5, 10, 30), 600, 3500, 4000, 1, "closed"),
    ("a3", "S1", "B", "warning", "offline", "rule", local(3, 5, 10, 45), None, 900, None, 1, "resolved"),
    ("a4", "S2", "C", "critical", "rate", "rule", local(3, 5, 23, 30), 60, 3600, 3600, 2, "closed"),
    # 07:30 local on the 6th is 23:30 UTC on the 5th: the series must count it on the 6th
    ("a5", "S2", "C", "info", "threshold", "rule", local(3, 6, 7, 30), 300, None, None, 3, "acknowledged"),
    ("a11", "S2", "C", "warning", "threshold", "rule", local(3, 6, 9), 200, None, 1000, 4, "closed"),
    ("a6", "D", None, "major", "fire", "hotline", local(3, 7, 12), 1500, None, 7200, 1, "closed"),
    ("a7", None, None, "warning", "intrusion", "video_ai", local(3, 8, 15), None, None, None, 1, "open"),
    ("a8", "C1", "G", "critical", "threshold", "rule", local(3, 9, 20), 45, None, 600, 10, "closed"),
    ("a9", "S1", "A", "warning", "rate", "rule", local(3, 10, 23, 59), 900, None, None, 1, "dispatched"),
    # outside the week, inside March
    ("b1", "S1", "B", "major", "offline", "rule", local(3, 11, 0), 30, None, 60, 1, "closed"),
    ("b2", "S1", "B", "major", "offline", "rule", local(3, 3, 23, 59), 30, None, 60, 1, "closed"),
    # February
    ("c1", "S2", "C", "critical", "rate", "rule", local(2, 29, 23, 59), 30, None, 60, 1, "closed"),
]
CREATED_LAG_S = 30  # created_at = raised_at + 30 s: durations count from created_at
AREA_PARENT = {"S1": "D", "S2": "D", "C1": "S1", "D": None}


def _in(area: str | None, scope: str | None) -> bool:
    """Is ``area`` the area ``scope`` or inside it (scope None: the city)?"""
    if scope is None:
        return True
    while area is not None:
        if area == scope:
            return True
        area = AREA_PARENT[area]
    return False


def expected_alerts(start: datetime, end: datetime, scope: str | None = None) -> list[tuple]:
    return [a for a in ALERTS if start <= a[6] < end and _in(a[1], scope)]


@pytest.fixture
def seeded(db):
    """Areas (district D with streets S1, S2; community C1 in S1), devices with latest readings,
    alerts; returns their ids."""
    ids: dict[str, int] = {}
    areas = [("D", "440304", "福田区", "district", None, _box(114.0, 22.5, 114.2, 22.6)),
             ("S1", "440304001", "园岭街道", "street", "D", _box(114.0, 22.5, 114.1, 22.6)),
             ("S2", "440304002", "南园街道", "street", "D", _box(114.1, 22.5, 114.2, 22.6)),
             ("C1", "440304001001", "园岭社区", "community", "S1", _box(114.0, 22.5, 114.05, 22.55))]
    for key, code, name, level, parent, wkt in areas:
        ids[key] = db.execute("INSERT INTO areas (code, name, level, parent_id, geom) "
                              "VALUES (%s, %s, %s, %s, ST_GeomFromText(%s, 4326)) RETURNING id",
                              (code, name, level, ids.get(parent), wkt)).fetchone()[0]
    vendor = db.execute("INSERT INTO vendors (code, name) VALUES ('acme', 'ACME') RETURNING id").fetchone()[0]
    registered = datetime(2024, 1, 1, tzinfo=timezone.utc)
    m = timedelta(minutes=1)
    # device: (point or None, created, [(latest time or None, [reading times before `latest`])...])
    devices = {
        "A": ((114.02, 22.52), registered, [(AT - 5 * m, []), (AT - 120 * m, [])]),  # C1: one fresh sensor
        "B": ((114.07, 22.58), registered, [(AT - 60 * m, [])]),                       # S1: stale
        "C": ((114.15, 22.55), registered, [(AT - 1 * m, [])]),                        # S2: online
        "D": ((114.18, 22.52), registered, [(None, [])]),                              # S2: never reported
        "E": (None, registered, [(AT - 1 * m, [])]),                                   # unplaced: city only
        "F": ((114.06, 22.57), AT + timedelta(days=1), [(AT - 1 * m, [])]),            # registered later
        # latest after the period's end: judged by the newest reading before it
        "G": ((114.03, 22.54), registered, [(AT + timedelta(days=2), [AT - 10 * m])]),  # C1: online at AT
        "H": ((114.08, 22.51), registered, [(AT + timedelta(days=1), [])]),             # S1: nothing before AT
        "J": (None, registered, []),                                                    # no sensors at all
    }
    sensors: dict[str, int] = {}
    if db.execute("SELECT to_regproc('cimtwin_ensure_readings_partitions')").fetchone()[0]:
        weeks = sorted({(t - timedelta(days=t.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
                        for _, _, chans in devices.values() for lt, more in chans if lt
                        for t in [lt.astimezone(timezone.utc), *more]})
        db.execute("SELECT cimtwin_ensure_readings_partitions(%s::timestamptz[])", (weeks,))
    for ext, (point, created, channels) in devices.items():
        geom = f"SRID=4326;POINT({point[0]} {point[1]})" if point else None
        dev = db.execute("INSERT INTO devices (vendor_id, ext_id, name, created_at, geom) "
                         "VALUES (%s, %s, %s, %s, %s::geometry) RETURNING id",
                         (vendor, f"dev-{ext}", f"Device {ext}", created, geom)).fetchone()[0]
        ids[f"dev-{ext}"] = dev
        for i, (latest, earlier) in enumerate(channels):
            sid = db.execute("INSERT INTO sensors (device_id, channel, quantity, unit) VALUES (%s, %s, 'x', '1') "
                             "RETURNING id", (dev, f"ch{i}")).fetchone()[0]
            sensors.setdefault(ext, sid)
            for t in [*earlier, *([latest] if latest else [])]:
                db.execute("INSERT INTO readings (time, sensor_id, value, received_at) VALUES (%s, %s, 1, %s)",
                           (t, sid, t))
            if latest:
                db.execute("INSERT INTO latest (sensor_id, time, value, received_at) VALUES (%s, %s, 1, %s)",
                           (sid, latest, latest))
    for key, area, device, severity, kind, source, raised, ack, resolve, close, count, status in ALERTS:
        created = raised + timedelta(seconds=CREATED_LAG_S)
        def after(s, created=created):
            return None if s is None else created + timedelta(seconds=s)
        ids[key] = db.execute(
            """INSERT INTO alerts (source, kind, severity, status, title, sensor_id, area_id, raised_at, last_at,
                                   created_at, acknowledged_at, resolved_at, closed_at, count, ack_due_at,
                                   close_due_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (source, kind, severity, status, f"alert {key}", sensors.get(device), ids.get(area), raised, raised,
             created, after(ack), after(resolve), after(close), count, created + timedelta(minutes=15),
             created + timedelta(hours=1))).fetchone()[0]
    return ids


def make(settings, kind: str, day: date, area: str | None = None) -> Report:
    period = reports.period_bounds(kind, day, settings.report_timezone)
    with psycopg.connect(settings.database_url) as conn:
        return reports.make_report(conn, period, area_code=area, offline_after_s=settings.sensor_offline_after_s)


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def check_counts(report: Report, alerts: list[tuple]) -> None:
    assert report.totals.alerts == len(alerts)
    assert report.totals.occurrences == sum(a[10] for a in alerts)
    sev = Counter(a[3] for a in alerts)
    assert report.by_severity.model_dump() == {k: sev.get(k, 0) for k in SEVERITIES}
    assert {k.key: k.alerts for k in report.by_kind} == dict(Counter(a[4] for a in alerts))
    assert {k.key: k.alerts for k in report.by_source} == dict(Counter(a[5] for a in alerts))
    assert {k.key: k.alerts for k in report.by_status} == dict(Counter(a[11] for a in alerts))
    # the durations, computed here from the seed
    acks = [a[7] for a in alerts if a[7] is not None]
    closes = [a[9] for a in alerts if a[9] is not None]
    tta, ttc = report.time_to_acknowledge, report.time_to_close
    assert (tta.count, tta.missing) == (len(acks), len(alerts) - len(acks))
    assert tta.median_s == pytest.approx(statistics.median(acks))
    assert tta.p90_s == pytest.approx(p90(acks))
    assert tta.max_s == pytest.approx(max(acks))
    assert tta.awaiting == sum(1 for a in alerts if a[7] is None and a[11] in ("open", "acknowledged", "dispatched"))
    assert tta.finished_unacknowledged == sum(1 for a in alerts if a[7] is None and a[11] in ("resolved", "closed"))
    assert (ttc.count, ttc.missing) == (len(closes), len(alerts) - len(closes))
    assert ttc.median_s == pytest.approx(statistics.median(closes))
    assert ttc.p90_s == pytest.approx(p90(closes))
    handled = sum(1 for a in alerts if a[9] is not None and a[9] <= 3600)
    resolved = sum(1 for a in alerts if (a[8] if a[8] is not None else a[9]) is not None
                   and (a[8] if a[8] is not None else a[9]) <= 3600)
    assert (report.sla.eligible, report.sla.not_yet_due) == (len(alerts), 0)
    assert (report.sla.handled, report.sla.resolved) == (handled, resolved)
    assert report.sla.handled_share == pytest.approx(handled / len(alerts))


def test_weekly_city_report_has_the_exact_figures(settings, seeded):
    report = make(settings, "weekly", date(2024, 3, 7))
    assert report.period.label == "2024-W10"
    assert (report.period.start, report.period.end) == (WEEK_START, WEEK_END)
    alerts = expected_alerts(WEEK_START, WEEK_END)
    assert len(alerts) == 10  # the seed's week, by hand: b1 (the next Monday 00:00) and b2 are out
    check_counts(report, alerts)
    # by hand, too: 4 of 10 closed within the hour (a4 at exactly 3600 s counts), 6 resolved
    assert (report.sla.handled, report.sla.handled_share, report.sla.resolved) == (4, 0.4, 6)
    assert report.time_to_acknowledge.median_s == pytest.approx(250.0)

    # one district: grouped by its streets, with the district itself and the unplaced alert apart
    assert report.area_grouping.code == "440304"
    rows = {(r.part, r.code): r for r in report.by_area}
    assert list(rows) == [("child", "440304001"), ("child", "440304002"), ("itself", "440304"), ("no_area", None)]
    assert [r.alerts for r in report.by_area] == [5, 3, 1, 1]
    s1 = rows[("child", "440304001")]
    assert (s1.name, s1.critical, s1.major, s1.warning, s1.info) == ("园岭街道", 2, 1, 2, 0)

    # devices at the week's end: B stale; D, H (only a reading after the end) and J (no sensors) without
    # data; A (one fresh sensor of two), C, E and G (a reading 10 min before the end) online; F not yet there
    off = report.offline
    assert off.at == WEEK_END
    assert (off.devices, off.online, off.stale, off.no_data, off.offline) == (8, 4, 1, 3, 4)
    assert off.rate == 0.5

    # noisiest: most alerts, then most occurrences (C 3 alerts/9, A 3/7, G 1/10, B 1/1)
    top = [(d.ext_id, d.alerts, d.occurrences, d.repeats) for d in report.top_devices]
    assert top == [("dev-C", 3, 9, 6), ("dev-A", 3, 7, 4), ("dev-G", 1, 10, 9), ("dev-B", 1, 1, 0)]
    assert report.top_devices[0].vendor == "acme"

    # per local day: a5 (23:30 UTC on the 5th) is on the 6th
    assert report.series_bucket == "day"
    assert [p.start for p in report.series] == [WEEK_START + timedelta(days=i) for i in range(7)]
    per_day = Counter(a[6].date() for a in alerts)
    assert [p.alerts for p in report.series] == [per_day.get(p.start.date(), 0) for p in report.series]
    assert [p.alerts for p in report.series] == [0, 4, 2, 1, 1, 1, 1]
    assert sum(p.critical for p in report.series) == report.by_severity.critical
    assert report.notes == []


def test_area_report_includes_what_is_inside_and_nothing_else(settings, seeded):
    report = make(settings, "weekly", date(2024, 3, 4), area="440304001")
    alerts = expected_alerts(WEEK_START, WEEK_END, "S1")
    assert sorted(a[0] for a in alerts) == ["a1", "a2", "a3", "a8", "a9"]  # C1's a1, a8 in; S2's out
    check_counts(report, alerts)
    assert report.area.code == "440304001" and report.area_grouping.code == "440304001"
    assert [(r.part, r.code, r.alerts) for r in report.by_area] == [
        ("child", "440304001001", 2), ("itself", "440304001", 3)]
    assert [d.ext_id for d in report.top_devices] == ["dev-A", "dev-G", "dev-B"]
    # S1's devices: A (in C1) and G online, B stale, H no data
    off = report.offline
    assert (off.devices, off.online, off.stale, off.no_data, off.rate) == (4, 2, 1, 1, 0.5)

    other = make(settings, "weekly", date(2024, 3, 4), area="440304002")
    check_counts(other, expected_alerts(WEEK_START, WEEK_END, "S2"))
    assert other.totals.alerts == 3 and {d.ext_id for d in other.top_devices} == {"dev-C"}
    assert (other.offline.devices, other.offline.offline) == (2, 1)
    # S2 has no areas inside: its alerts are on S2 itself
    assert [(r.part, r.code, r.alerts) for r in other.by_area] == [("itself", "440304002", 3)]
    district = make(settings, "weekly", date(2024, 3, 4), area="440304")
    check_counts(district, expected_alerts(WEEK_START, WEEK_END, "D"))
    assert district.totals.alerts == 9  # all but the unplaced a7


def test_daily_and_monthly_periods(settings, seeded):
    daily = make(settings, "daily", date(2024, 3, 5))
    start = datetime(2024, 3, 5, tzinfo=TZ)
    alerts = expected_alerts(start, start + timedelta(days=1))
    assert sorted(a[0] for a in alerts) == ["a1", "a2", "a3", "a4"]
    check_counts(daily, alerts)
    assert daily.series_bucket == "hour" and len(daily.series) == 24
    assert [p.start for p in daily.series][:2] == [start, start + timedelta(hours=1)]
    assert {p.start.hour: p.alerts for p in daily.series if p.alerts} == {9: 1, 10: 2, 23: 1}

    monthly = make(settings, "monthly", date(2024, 3, 31))
    assert monthly.period.label == "2024-03" and len(monthly.series) == 31
    month = expected_alerts(datetime(2024, 3, 1, tzinfo=TZ), datetime(2024, 4, 1, tzinfo=TZ))
    assert len(month) == 12  # the week's 10, b1 and b2; not February's c1
    check_counts(monthly, month)
    feb = make(settings, "monthly", date(2024, 2, 10))
    assert [a.key for a in feb.by_kind] == ["rate"] and feb.totals.alerts == 1 and feb.period.label == "2024-02"


def test_periods_in_the_report_time_zone():
    tz = "Asia/Shanghai"
    p = reports.period_bounds("weekly", date(2024, 3, 10), tz)  # a Sunday
    assert (p.start, p.end, p.label) == (WEEK_START, WEEK_END, "2024-W10")
    assert p.start.astimezone(timezone.utc) == datetime(2024, 3, 3, 16, tzinfo=timezone.utc)
    assert reports.period_bounds("monthly", date(2024, 12, 31), tz).end == datetime(2025, 1, 1, tzinfo=TZ)
    assert reports.period_bounds("weekly", date(2024, 12, 31), tz).label == "2025-W01"
    # the last complete period, seen from 00:30 local time on Monday 2024-03-11 (16:30 UTC on Sunday)
    now = datetime(2024, 3, 10, 16, 30, tzinfo=timezone.utc)
    assert reports.resolve_period("daily", None, tz, now=now).label == "2024-03-10"
    assert reports.resolve_period("weekly", None, tz, now=now).label == "2024-W10"
    assert reports.resolve_period("monthly", None, tz, now=now).label == "2024-02"
    assert reports.resolve_period("daily", None, "UTC", now=now).label == "2024-03-09"
    with pytest.raises(Exception, match="has not begun"):
        reports.resolve_period("daily", date(2024, 3, 12), tz, now=now)
    # hours of a zone with a half-hour offset are still local whole hours
    kolkata = reports.period_bounds("daily", date(2024, 3, 5), "Asia/Kolkata")
    starts = reports._series_starts(kolkata, "hour")
    assert len(starts) == 24 and all(s.minute == 0 for s in starts)


def test_a_running_period_leaves_alerts_whose_hour_is_ahead_out_of_the_share(settings, db):
    now = db.execute("SELECT now()").fetchone()[0]
    for minutes_ago, closed_after in ((10, None), (200, None), (150, 1200)):
        created = now - timedelta(minutes=minutes_ago)
        db.execute("""INSERT INTO alerts (source, kind, severity, title, raised_at, last_at, created_at,
                                          closed_at, status, ack_due_at, close_due_at)
                      VALUES ('manual', 'fire', 'major', 't', %s, %s, %s, %s, %s, %s, %s)""",
                   (created, created, created, closed_after and created + timedelta(seconds=closed_after),
                    "closed" if closed_after else "open", created, created))
    period = reports.period_bounds("monthly", now.astimezone(TZ).date(), settings.report_timezone)
    # Early on the 1st the month holds less than the seed's 200 minutes: start the running period earlier.
    period = period.model_copy(update={"start": min(period.start, now - timedelta(days=1))})
    with psycopg.connect(settings.database_url) as conn:
        report = reports.make_report(conn, period, offline_after_s=900)
    assert report.totals.alerts == 3
    assert (report.sla.eligible, report.sla.not_yet_due, report.sla.handled) == (2, 1, 1)
    assert report.sla.handled_share == 0.5
    assert report.offline.at == report.generated_at  # judged now, not at the month's end
    assert report.notes and "not over" in report.notes[0]


def _pixels_vary(png: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    return len(colours)


def test_formats(settings, seeded):
    report = make(settings, "weekly", date(2024, 3, 5))
    doc = json.loads(reports.render_json(report))
    assert Report.model_validate(doc) == report
    assert doc["by_area"][0]["name"] == "园岭街道"

    files = reports.csv_tables(report)
    assert sorted(files) == sorted(f"{t}.csv" for t in reports.CSV_TABLES)
    for name, data in files.items():
        assert data.startswith("\ufeff".encode()), name  # BOM: Excel reads the Chinese names right
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
        if name == "by_area.csv":
            assert [(r["code"], r["name"], int(r["alerts"])) for r in rows][:2] == [
                ("440304001", "园岭街道", 5), ("440304002", "南园街道", 3)]
        if name == "summary.csv":
            summary = {r["metric"]: r["value"] for r in rows}
            assert summary["alerts"] == "10" and summary["sla_handled_share"] == "0.4"
            assert summary["offline_rate"] == "0.5"
        if name == "series.csv":
            assert [int(r["alerts"]) for r in rows] == [0, 4, 2, 1, 1, 1, 1]
        if name == "top_devices.csv":
            assert [r["ext_id"] for r in rows] == ["dev-C", "dev-A", "dev-G", "dev-B"]
    with zipfile.ZipFile(io.BytesIO(reports.zip_files(files))) as z:
        assert sorted(z.namelist()) == sorted(files)

    charts, notes = reports.render_charts(report)
    assert sorted(charts) == ["areas", "severity", "timeline"]
    for name, png in charts.items():
        assert png.startswith(PNG_SIGNATURE), name
        assert len(png) > 5000, (name, len(png))
        assert _pixels_vary(png) > 50, name  # drawn: many colours (bars, lines, anti-aliased text)
    has_cjk = bool(shutil.which("fc-list") and subprocess.run(["fc-list", ":lang=zh"], capture_output=True,
                                                              text=True).stdout.strip())
    if reports.cjk_font() is None:
        assert any("codes" in n for n in notes)
        assert not has_cjk or reports.cjk_font() is not None
    else:
        assert not any("codes" in n for n in notes)

    page = reports.render_html(report).decode()
    assert page.count('<img src="data:image/png;base64,') == 3
    assert "园岭街道" in page and "2024-W10" in page and "dev-C" in page and "40.0 %" in page
    for external in ("http://", "https://", "<script", "<link"):
        assert external not in page
    # the embedded images are the charts
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        assert base64.b64decode(data).startswith(PNG_SIGNATURE)


def test_cli_writes_the_files(settings, seeded, tmp_path):
    env = settings_env(settings)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "cimtwin.cli", "report", *args], env=env, capture_output=True,
                              cwd=tmp_path, timeout=120)

    out = run("weekly", "--date", "2024-03-06")
    assert out.returncode == 0, out.stderr.decode()
    assert json.loads(out.stdout)["totals"]["alerts"] == 10
    out = run("weekly", "--date", "2024-03-06", "--area", "440304001", "--format", "html",
              "--out", str(tmp_path / "r.html"))
    assert out.returncode == 0, out.stderr.decode()
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "园岭街道" in page
    assert run("daily", "--date", "2024-03-05", "--format", "png").returncode == 0
    folder = tmp_path / "report-daily-2024-03-05-png"
    assert sorted(p.name for p in folder.iterdir()) == ["areas.png", "severity.png", "timeline.png"]
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in folder.iterdir())
    out = run("monthly", "--date", "2024-03-01", "--format", "csv", "--out", str(tmp_path / "m.zip"))
    assert out.returncode == 0, out.stderr.decode()
    with zipfile.ZipFile(tmp_path / "m.zip") as z:
        summary = {r["metric"]: r["value"] for r in csv.DictReader(
            io.StringIO(z.read("summary.csv").decode("utf-8-sig")))}
    assert summary["alerts"] == "12" and summary["period_label"] == "2024-03"
    out = run("weekly", "--area", "nowhere")
    assert out.returncode == 1 and b"does not exist" in out.stderr
    assert run("weekly", "--date", "2024-13-01").returncode == 1


def test_api(api, seeded, settings):
    base = "/reports/weekly?date=2024-03-06"

    def get(**params):
        return api.get("/reports/weekly", params={"date": "2024-03-06", **params})

    r = api.get(base)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = Report.model_validate(r.json())
    local_doc = make(settings, "weekly", date(2024, 3, 6))
    assert doc.model_copy(update={"generated_at": local_doc.generated_at}) == local_doc

    r = get(area_id=seeded["S1"])
    assert r.json()["totals"]["alerts"] == 5
    assert get(area="440304002").json()["totals"]["alerts"] == 3

    r = get(format="csv")
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["content-disposition"] == 'attachment; filename="report-weekly-2024-W10-csv.zip"'
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        assert "by_area.csv" in z.namelist()
    r = get(format="csv", table="by_severity", area_id=seeded["S1"])
    assert r.headers["content-type"].startswith("text/csv")
    assert 'filename="report-weekly-2024-W10-440304001-by_severity.csv"' in r.headers["content-disposition"]
    assert list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))[1] == ["critical", "2"]

    for chart in ("severity", "timeline", "areas"):
        r = get(format="png", chart=chart)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content.startswith(PNG_SIGNATURE) and len(r.content) > 5000
        assert f"report-weekly-2024-W10-{chart}.png" in r.headers["content-disposition"]
    r = get(format="html")
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.text.count('<img src="data:image/png;base64,') == 3

    assert api.get("/reports/yearly").status_code == 422
    assert get(area_id=999999).json()["error"] == "area_not_found"
    assert get(format="json", chart="areas").status_code == 400
    assert get(format="csv", table="nope").json()["error"] == "invalid_table"
    assert api.get("/reports/daily?date=2999-01-01").json()["error"] == "period_in_future"

    # admin, operator and analyst read reports; vendors do not
    for role in ("analyst", "operator", "vendor"):
        body = {"name": f"r-{role}", "role": role, **({"vendor": "acme"} if role == "vendor" else {})}
        key = api.post("/api-keys", json=body).json()["key"]
        r = httpx.get(api.url + base, headers={"X-API-Key": key}, timeout=30)
        assert r.status_code == (403 if role == "vendor" else 200), (role, r.text[:200])
    assert httpx.get(api.url + base, timeout=10).status_code == 401
