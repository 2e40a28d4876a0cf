"""Safety reports: the period, the document (cimtwin.schemas.reports.Report, whose docstring holds
the definitions) and its renderings.

Formats:

- **json**: the Report model as is; times in the report time zone.
- **csv**: one CSV per table (``summary`` as metric,value rows; ``by_severity``, ``by_kind``,
  ``by_source``, ``by_status``, ``by_area``, ``top_devices``, ``series``: :data:`CSV_TABLES`), UTF-8
  with a byte-order mark so that Excel shows area names (Chinese) right; several files travel as
  one zip (API) or a directory (CLI).
- **png**: three charts (matplotlib, Agg): ``severity`` (bars), ``timeline`` (alerts per local hour
  of a daily report, per local day otherwise, one line per severity) and ``areas`` (stacked bars).
  Area names are drawn only with a font that has their characters; when no installed font has
  them (no CJK font: ``fc-list :lang=zh`` is empty) the chart shows the area codes instead and
  says so in a footnote.
- **html**: one self-contained page: the tables and the three charts as ``data:`` URIs, no
  external resources.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import threading
import zipfile
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from cimtwin.errors import BadRequest
from cimtwin.schemas.reports import (CHARTS, SEVERITIES, AckStats, AreaCount, AreaRef, DurationStats, KeyCount,
                                     NoisyDevice, OfflineStats, Report, ReportPeriod, ReportTotals, SeriesPoint,
                                     SeverityCounts, SlaStats)
from cimtwin.store.reports import ReportQuery, fetch_report

HANDLE_TARGET_S = 3600.0
TOP_DEVICES = 10
CSV_TABLES = ("summary", "by_severity", "by_kind", "by_source", "by_status", "by_area", "top_devices", "series")

# ---------------------------------------------------------------------------------------------
# periods


def period_bounds(kind: str, day: date, tz: str) -> ReportPeriod:
    """The daily / weekly (Monday-start, ISO week) / monthly period that holds ``day``, local to ``tz``."""
    zone = ZoneInfo(tz)
    if kind == "daily":
        first, after, label = day, day + timedelta(days=1), day.isoformat()
    elif kind == "weekly":
        first = day - timedelta(days=day.weekday())
        after = first + timedelta(days=7)
        year, week, _ = first.isocalendar()
        label = f"{year}-W{week:02d}"
    elif kind == "monthly":
        first = day.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
        label = f"{first:%Y-%m}"
    else:
        raise BadRequest(f"unknown report period {kind!r}; use daily, weekly or monthly", code="invalid_period")
    return ReportPeriod(kind=kind, label=label, start=datetime.combine(first, time(0), tzinfo=zone),
                        end=datetime.combine(after, time(0), tzinfo=zone), timezone=tz)


def last_complete_day(kind: str, now: datetime, tz: str) -> date:
    """A day inside the last period of ``kind`` that has ended by ``now``."""
    current = period_bounds(kind, now.astimezone(ZoneInfo(tz)).date(), tz)
    return current.start.date() - timedelta(days=1)


def resolve_period(kind: str, day: date | None, tz: str, *, now: datetime | None = None) -> ReportPeriod:
    now = now or datetime.now(timezone.utc)
    try:
        period = period_bounds(kind, day or last_complete_day(kind, now, tz), tz)
    except OverflowError:
        raise BadRequest(f"no {kind} period around {day}", code="invalid_date") from None
    if period.start > now:
        raise BadRequest(f"the {kind} period {period.label} has not begun", code="period_in_future")
    return period


# ---------------------------------------------------------------------------------------------
# the document


def report_query(period: ReportPeriod, *, area_id: int | None = None, area_code: str | None = None,
                 offline_after_s: float) -> ReportQuery:
    return ReportQuery(start=period.start, end=period.end, timezone=period.timezone,
                       bucket="hour" if period.kind == "daily" else "day", area_id=area_id, area_code=area_code,
                       offline_after_s=offline_after_s, target_s=HANDLE_TARGET_S, top_n=TOP_DEVICES)


def _series_starts(period: ReportPeriod, bucket: str) -> list[datetime]:
    """Every bucket start of the period, aware, in the report time zone."""
    zone = ZoneInfo(period.timezone)
    starts = []
    if bucket == "hour":  # absolute hours: local whole hours also where the offset is not whole hours
        t = period.start.astimezone(timezone.utc)
        end = period.end.astimezone(timezone.utc)
        while t < end:
            local = t.astimezone(zone)
            if local.minute == 0:
                starts.append(local)
            t += timedelta(minutes=30) if local.minute else timedelta(hours=1)
    else:
        d = period.start.date()
        while d < period.end.date():
            starts.append(datetime.combine(d, time(0), tzinfo=zone))
            d += timedelta(days=1)
    return starts


def _area_ref(row: dict | None) -> AreaRef | None:
    return AreaRef(**row) if row else None


def build_report(raw: dict, period: ReportPeriod) -> Report:
    """The Report from fetch_report's rows."""
    zone = ZoneInfo(period.timezone)
    s = raw["summary"]
    generated_at = raw["generated_at"].astimezone(zone)

    facets: dict[str, list[KeyCount]] = {"severity": [], "kind": [], "source": [], "status": []}
    for row in raw["facets"]:
        facets[row["facet"]].append(KeyCount(key=row["key"], alerts=row["alerts"], occurrences=row["occurrences"]))
    by_severity = SeverityCounts(**{k.key: k.alerts for k in facets["severity"]})

    counts = {(r["part"], r["group_id"]): r for r in raw["by_area"]}
    empty = dict.fromkeys(("alerts",) + SEVERITIES, 0)
    by_area = []
    for g in raw["groups"]:
        row = counts.get(("child", g["id"]), empty)
        by_area.append(AreaCount(part="child", area_id=g["id"], code=g["code"], name=g["name"], level=g["level"],
                                 **{k: row[k] for k in empty}))
    itself = counts.get(("itself", None))
    if itself:
        grouping = raw["grouping"] or {}
        # city-wide with several top-level areas, every placed alert has a group: no "itself" row
        by_area.append(AreaCount(part="itself", area_id=grouping.get("id"), code=grouping.get("code"),
                                 name=grouping.get("name"), level=grouping.get("level"),
                                 **{k: itself[k] for k in empty}))
    if counts.get(("no_area", None)):
        by_area.append(AreaCount(part="no_area", **{k: counts[("no_area", None)][k] for k in empty}))

    alerts = s["alerts"]
    eligible = alerts - s["not_yet_due"]
    off = raw["offline"]
    offline = off["stale"] + off["no_data"]

    bucket = "hour" if period.kind == "daily" else "day"
    found = {r["start"]: r for r in raw["series"]}
    series = []
    for start in _series_starts(period, bucket):
        row = found.pop(start, empty)
        series.append(SeriesPoint(start=start, **{k: row[k] for k in empty}))
    if found:  # cannot happen unless the zone's rules disagree with PostgreSQL's; keep every alert visible
        series += [SeriesPoint(start=t.astimezone(zone), **{k: r[k] for k in empty}) for t, r in found.items()]
        series.sort(key=lambda p: p.start)

    notes = []
    if period.end > generated_at:
        notes.append(f"the period is not over: counts run to {generated_at.isoformat(timespec='seconds')}")
    area = _area_ref(raw["area"])
    where = f"{area.name} ({area.code})" if area else "whole city"
    return Report(
        title=f"Safety report, {period.kind} {period.label}, {where}",
        period=period, area=area, generated_at=generated_at,
        totals=ReportTotals(alerts=alerts, occurrences=s["occurrences"], open=s["unfinished"]),
        by_severity=by_severity, by_kind=facets["kind"], by_source=facets["source"], by_status=facets["status"],
        area_grouping=_area_ref(raw["grouping"]), by_area=by_area,
        time_to_acknowledge=AckStats(count=s["ack_count"], missing=s["ack_missing"], median_s=s["ack_median"],
                                     p90_s=s["ack_p90"], mean_s=_float(s["ack_mean"]), max_s=_float(s["ack_max"]),
                                     awaiting=s["ack_awaiting"], finished_unacknowledged=s["ack_finished"]),
        time_to_close=DurationStats(count=s["close_count"], missing=s["close_missing"], median_s=s["close_median"],
                                    p90_s=s["close_p90"], mean_s=_float(s["close_mean"]),
                                    max_s=_float(s["close_max"])),
        sla=SlaStats(target_s=HANDLE_TARGET_S, eligible=eligible, not_yet_due=s["not_yet_due"],
                     handled=s["handled"], handled_share=s["handled"] / eligible if eligible else None,
                     resolved=s["resolved"], resolved_share=s["resolved"] / eligible if eligible else None),
        offline=OfflineStats(at=raw["offline_at"].astimezone(zone), offline_after_s=raw["offline_after_s"],
                             devices=off["devices"], online=off["online"], stale=off["stale"],
                             no_data=off["no_data"], offline=offline,
                             rate=offline / off["devices"] if off["devices"] else None),
        top_devices=[NoisyDevice(**{**r, "last_raised_at": r["last_raised_at"].astimezone(zone)},
                                 repeats=r["occurrences"] - r["alerts"]) for r in raw["top_devices"]],
        series_bucket=bucket, series=series, notes=notes)


def _float(value) -> float | None:
    return None if value is None else float(value)


def make_report(conn, period: ReportPeriod, *, area_id: int | None = None, area_code: str | None = None,
                offline_after_s: float) -> Report:
    """The report for ``period`` from a sync connection (the CLI)."""
    query = report_query(period, area_id=area_id, area_code=area_code, offline_after_s=offline_after_s)
    return build_report(fetch_report(conn, query), period)


def file_stem(report: Report) -> str:
    """report-daily-2024-03-04[-<area code>], ASCII only (for file names and Content-Disposition)."""
    stem = f"report-{report.period.kind}-{report.period.label}"
    if report.area:
        stem += "-" + "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in report.area.code)
    return stem


# ---------------------------------------------------------------------------------------------
# JSON and CSV


def render_json(report: Report) -> bytes:
    return report.model_dump_json(indent=2).encode()


def _summary_rows(r: Report) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = [
        ("title", r.title), ("period", r.period.kind), ("period_label", r.period.label),
        ("start", r.period.start.isoformat()), ("end", r.period.end.isoformat()), ("timezone", r.period.timezone),
        ("area_code", r.area.code if r.area else ""), ("area_name", r.area.name if r.area else "whole city"),
        ("generated_at", r.generated_at.isoformat()),
        ("alerts", r.totals.alerts), ("occurrences", r.totals.occurrences), ("open", r.totals.open)]
    for name, stats in (("ack", r.time_to_acknowledge), ("close", r.time_to_close)):
        for field, value in stats.model_dump().items():
            rows.append((f"time_to_{'acknowledge' if name == 'ack' else 'close'}_{field}", value))
    rows += [(f"sla_{k}", v) for k, v in r.sla.model_dump().items()]
    rows += [(f"offline_{k}", v.isoformat() if isinstance(v, datetime) else v)
             for k, v in r.offline.model_dump().items()]
    rows += [("note", n) for n in r.notes]
    return rows


def _csv(header: list[str], rows: list) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if v is None else v.isoformat() if isinstance(v, datetime) else v for v in row])
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


def csv_tables(report: Report) -> dict[str, bytes]:
    """``{"by_area.csv": b"...", ...}``: every table of the report as its own CSV."""
    r = report
    sev = list(SEVERITIES)
    out = {
        "summary": _csv(["metric", "value"], _summary_rows(r)),
        "by_severity": _csv(["severity", "alerts"], [(k, getattr(r.by_severity, k)) for k in sev]),
        "by_kind": _csv(["kind", "alerts", "occurrences"], [(k.key, k.alerts, k.occurrences) for k in r.by_kind]),
        "by_source": _csv(["source", "alerts", "occurrences"],
                          [(k.key, k.alerts, k.occurrences) for k in r.by_source]),
        "by_status": _csv(["status", "alerts", "occurrences"],
                          [(k.key, k.alerts, k.occurrences) for k in r.by_status]),
        "by_area": _csv(["part", "area_id", "code", "name", "level", "alerts", *sev],
                        [(a.part, a.area_id, a.code, a.name, a.level, a.alerts, *(getattr(a, k) for k in sev))
                         for a in r.by_area]),
        "top_devices": _csv(["rank", "device_id", "vendor", "ext_id", "name", "alerts", "occurrences", "repeats",
                             "last_raised_at"],
                            [(i, d.device_id, d.vendor, d.ext_id, d.name, d.alerts, d.occurrences, d.repeats,
                              d.last_raised_at) for i, d in enumerate(r.top_devices, 1)]),
        "series": _csv(["start", "alerts", *sev], [(p.start, p.alerts, *(getattr(p, k) for k in sev))
                                                   for p in r.series]),
    }
    assert tuple(out) == CSV_TABLES
    return {f"{name}.csv": data for name, data in out.items()}


def zip_files(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# charts

_COLOURS = {"critical": "#c62828", "major": "#ef6c00", "warning": "#f9a825", "info": "#546e7a"}
_KNOWN_CJK = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN", "Noto Sans CJK JP",
              "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Microsoft YaHei", "SimHei", "PingFang SC",
              "Hiragino Sans GB", "Droid Sans Fallback", "AR PL UMing CN", "AR PL UKai CN", "Noto Serif CJK SC")
# matplotlib draws with the Agg backend only; one figure at a time (its font cache is shared)
_RENDER_LOCK = threading.Lock()


@lru_cache(maxsize=64)
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The family name of an installed font with Chinese glyphs, or None. matplotlib's own
    "Last Resort" font maps every character to a box and never counts."""
    from matplotlib import font_manager

    fonts = [f for f in font_manager.fontManager.ttflist if not f.name.startswith("Last Resort")]
    fonts.sort(key=lambda f: (f.name not in _KNOWN_CJK, f.name))
    for f in fonts:
        cmap = _charmap(f.fname)
        if all(ord(c) in cmap for c in "中区街道社网格"):
            return f.name
    return None


@lru_cache(maxsize=1)
def _base_font() -> tuple[str, str]:
    from matplotlib import font_manager

    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"), fallback_to_default=True)
    return "DejaVu Sans", path


def _families() -> list[str]:
    base, _ = _base_font()
    cjk = cjk_font()
    return [base, cjk] if cjk else [base]


def _drawable(text: str) -> bool:
    from matplotlib import font_manager

    cover = set(_charmap(_base_font()[1]))
    cjk = cjk_font()
    if cjk:
        cover |= _charmap(font_manager.findfont(font_manager.FontProperties(family=cjk)))
    return all(ord(c) in cover or c.isspace() for c in text)


def _area_label(a: AreaCount) -> tuple[str, bool]:
    """(label, whether the name had to give way to the code)."""
    if a.part == "no_area":
        return "(no area)", False
    name = a.name or a.code or "?"
    suffix = " itself" if a.part == "itself" else ""
    if _drawable(name):
        return name + suffix, False
    return (a.code or "?") + suffix, True


def _figure(width: float = 9.0, height: float = 4.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="white", metadata={"Software": "cimtwin"})
    return buf.getvalue()


def _subtitle(report: Report) -> str:
    where = f"{report.area.code}" if report.area else "whole city"
    return f"{report.period.kind} {report.period.label} ({report.period.timezone}), {where}"


def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _no_data(ax, text: str = "no alerts in this period") -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#777", fontsize=12)


def chart_severity(report: Report) -> bytes:
    fig = _figure(7.5, 4.5)
    ax = fig.add_subplot()
    values = [getattr(report.by_severity, k) for k in SEVERITIES]
    bars = ax.bar(list(SEVERITIES), values, color=[_COLOURS[k] for k in SEVERITIES])
    ax.bar_label(bars, padding=2)
    ax.set_ylabel("alerts")
    ax.set_title(f"Alerts by severity\n{_subtitle(report)}", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylim(0, max(values + [1]) * 1.15)
    _integer_ticks(ax.yaxis)
    if not any(values):
        _no_data(ax)
    return _png(fig)


def chart_timeline(report: Report) -> bytes:
    import matplotlib.dates as mdates

    fig = _figure(10, 4.8)
    ax = fig.add_subplot()
    # naive local times: the axis shows the report time zone's clock
    xs = [p.start.replace(tzinfo=None) for p in report.series]
    ax.plot(xs, [p.alerts for p in report.series], color="#263238", linewidth=2.2, marker="o", markersize=3,
            label="all")
    for k in SEVERITIES:
        ax.plot(xs, [getattr(p, k) for p in report.series], color=_COLOURS[k], linewidth=1.2, label=k)
    if report.series_bucket == "hour":
        ax.xaxis.set_major_locator(mdates.HourLocator(byhour=range(0, 24, 2)))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    else:
        ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=16))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
    ax.set_ylabel(f"alerts per {report.series_bucket}")
    ax.set_title(f"Alerts over time (local {report.series_bucket}s)\n{_subtitle(report)}", fontsize=11)
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0, top=max([p.alerts for p in report.series] + [1]) * 1.15)
    _integer_ticks(ax.yaxis)
    if len(xs) > 1:
        ax.set_xlim(xs[0], xs[-1])
    ax.legend(loc="upper right", fontsize=8, ncols=5)
    if not report.totals.alerts:
        _no_data(ax)
    return _png(fig)


def chart_areas(report: Report, limit: int = 25) -> tuple[bytes, list[str]]:
    rows = sorted(report.by_area, key=lambda a: (-a.alerts, a.code or "~"))[:limit]
    labels, replaced = [], False
    for a in rows:
        label, swapped = _area_label(a)
        labels.append(label)
        replaced |= swapped
    notes = []
    fig = _figure(9, max(3.5, 1.2 + 0.38 * len(rows)))
    ax = fig.add_subplot()
    y = list(range(len(rows)))[::-1]
    left = [0] * len(rows)
    for k in SEVERITIES:
        values = [getattr(a, k) for a in rows]
        ax.barh(y, values, left=left, color=_COLOURS[k], label=k)
        left = [base + v for base, v in zip(left, values)]
    for yi, total in zip(y, left):
        ax.text(total, yi, f" {total}", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontfamily=_families())
    ax.set_xlim(0, max(left + [1]) * 1.12)
    _integer_ticks(ax.xaxis)
    level = rows[0].level if rows and rows[0].part == "child" else "area"
    ax.set_xlabel("alerts")
    ax.set_title(f"Alerts by {level}\n{_subtitle(report)}", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if not rows:
        _no_data(ax, "no areas")
    if len(report.by_area) > limit:
        notes.append(f"the {limit} areas with most alerts of {len(report.by_area)} are shown")
    if replaced:
        notes.append("area names are shown as codes: no installed font has their characters "
                     "(install a CJK font, e.g. the fonts-noto-cjk package, to see the names)")
    if notes:  # a figure-level label, so that the layout makes room for it
        fig.supxlabel("; ".join(notes), fontsize=7, color="#555", x=0.01, ha="left")
    return _png(fig), notes


def render_charts(report: Report, which: tuple[str, ...] = CHARTS) -> tuple[dict[str, bytes], list[str]]:
    """``({"severity": png, "timeline": png, "areas": png}, notes)``."""
    pngs, notes = {}, []
    with _RENDER_LOCK:
        for name in which:
            if name == "severity":
                pngs[name] = chart_severity(report)
            elif name == "timeline":
                pngs[name] = chart_timeline(report)
            elif name == "areas":
                pngs[name], notes = chart_areas(report)
            else:
                raise BadRequest(f"unknown chart {name!r}; use one of {', '.join(CHARTS)}", code="invalid_chart")
    return pngs, notes


# ---------------------------------------------------------------------------------------------
# HTML


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def _table(header: list[str], rows: list[list], cls: str = "") -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e('' if v is None else str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans","PingFang SC","Microsoft YaHei",sans-serif;
 margin:2rem auto;max-width:1100px;color:#212121;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.meta{color:#555}.kpis{display:flex;flex-wrap:wrap;gap:1rem;margin:1rem 0}
.kpi{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;min-width:9rem}
.kpi b{display:block;font-size:1.4rem}.kpi span{color:#555;font-size:.85rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}td{font-variant-numeric:tabular-nums}
th{background:#f5f5f5}img{max-width:100%;height:auto;border:1px solid #eee;margin:.5rem 0}
.note{color:#555;font-size:.85rem}
"""


def render_html(report: Report, charts: dict[str, bytes] | None = None, chart_notes: list[str] | None = None) -> bytes:
    """One page with everything inline (charts as data: URIs); nothing is fetched from elsewhere."""
    if charts is None:
        charts, chart_notes = render_charts(report)
    e = html.escape
    r = report
    where = f"{r.area.name} ({r.area.code}, {r.area.level})" if r.area else "whole city"

    def img(name: str, alt: str) -> str:
        if name not in charts:
            return ""
        data = base64.b64encode(charts[name]).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{e(alt)}">'

    kpis = [(r.totals.alerts, "alerts raised"), (r.totals.open, "still unfinished"),
            (_duration(r.time_to_acknowledge.median_s), "median time to acknowledge"),
            (_duration(r.time_to_close.median_s), "median time to close"),
            (_share(r.sla.handled_share), "closed within 1 h"),
            (_share(r.offline.rate), f"devices offline ({r.offline.offline}/{r.offline.devices})")]
    sev = list(SEVERITIES)
    grouping = r.area_grouping
    area_rows = [[{"child": "", "itself": "itself", "no_area": "no area"}[a.part], a.code, a.name, a.level, a.alerts,
                  *(getattr(a, k) for k in sev)] for a in r.by_area]

    def durations(d: DurationStats, extra: list[list]) -> str:
        rows = [["alerts with it", d.count], ["without it (yet)", d.missing], ["median", _duration(d.median_s)],
                ["p90", _duration(d.p90_s)], ["mean", _duration(d.mean_s)], ["max", _duration(d.max_s)], *extra]
        return _table(["", "value"], rows)

    ack = r.time_to_acknowledge
    parts = [
        "<!DOCTYPE html>", '<html lang="zh-CN"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(r.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Safety report: {e(r.period.kind)} {e(r.period.label)}</h1>",
        (f'<p class="meta">{e(where)} · {e(r.period.start.isoformat())} to {e(r.period.end.isoformat())} '
         f"({e(r.period.timezone)}) · generated {e(r.generated_at.isoformat(timespec='seconds'))}</p>"),
        '<div class="kpis">' + "".join(f'<div class="kpi"><b>{e(str(v))}</b><span>{e(t)}</span></div>'
                                       for v, t in kpis) + "</div>",
        *(f'<p class="note">{e(n)}</p>' for n in r.notes),
        "<h2>By severity</h2>", img("severity", "alerts by severity"),
        _table(["severity", "alerts"], [[k, getattr(r.by_severity, k)] for k in sev]),
        "<h2>Over time</h2>", img("timeline", f"alerts per {r.series_bucket}"),
        "<details><summary>the series as a table</summary>",
        _table([r.series_bucket, "alerts", *sev], [[p.start.strftime("%Y-%m-%d %H:%M"), p.alerts,
                                                    *(getattr(p, k) for k in sev)] for p in r.series]),
        "</details>",
        "<h2>By area</h2>",
        (f'<p class="note">areas directly inside {e(f"{grouping.name} ({grouping.code})") if grouping else "the city"}'
         ", each with everything inside it</p>"),
        img("areas", "alerts by area"),
        *(f'<p class="note">{e(n)}</p>' for n in (chart_notes or [])),
        _table(["", "code", "name", "level", "alerts", *sev], area_rows),
        "<h2>By kind, source and status</h2>",
        _table(["kind", "alerts", "occurrences"], [[k.key, k.alerts, k.occurrences] for k in r.by_kind]),
        _table(["source", "alerts", "occurrences"], [[k.key, k.alerts, k.occurrences] for k in r.by_source]),
        _table(["status now", "alerts", "occurrences"], [[k.key, k.alerts, k.occurrences] for k in r.by_status]),
        "<h2>Time to acknowledge</h2>",
        durations(ack, [["unacknowledged, still unfinished", ack.awaiting],
                        ["finished without acknowledgement", ack.finished_unacknowledged]]),
        "<h2>Time to close</h2>", durations(r.time_to_close, []),
        "<h2>Handled within the 1-hour target</h2>",
        ('<p class="note">handled = closed within 1 h of the alert\'s creation; alerts still open whose hour has '
         "not passed are left out</p>"),
        _table(["", "value"], [["eligible alerts", r.sla.eligible], ["not yet due", r.sla.not_yet_due],
                          ["closed within 1 h", f"{r.sla.handled} ({_share(r.sla.handled_share)})"],
                          ["resolved within 1 h", f"{r.sla.resolved} ({_share(r.sla.resolved_share)})"]]),
        "<h2>Offline devices</h2>",
        (f'<p class="note">at {e(r.offline.at.isoformat(timespec="seconds"))}: no reading in the '
         f"{r.offline.offline_after_s:g} s before</p>"),
        _table(["", "value"], [["devices", r.offline.devices], ["online", r.offline.online],
                          ["offline: stale", r.offline.stale], ["offline: no data", r.offline.no_data],
                          ["offline rate", _share(r.offline.rate)]]),
        "<h2>Noisiest devices</h2>",
        _table(["#", "vendor", "device", "name", "alerts", "occurrences", "repeats", "last raised"],
               [[i, d.vendor, d.ext_id, d.name, d.alerts, d.occurrences, d.repeats,
                 d.last_raised_at.strftime("%Y-%m-%d %H:%M")] for i, d in enumerate(r.top_devices, 1)]),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p).encode("utf-8")
