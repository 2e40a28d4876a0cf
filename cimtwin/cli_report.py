"""``cimtwin report daily|weekly|monthly [--date D] [--area CODE] [--format F] [--out PATH]``.

Where it writes:

- json: ``--out`` file, or standard output without ``--out``;
- html: ``--out`` file, default ``./report-<period>-<label>[-<area>].html``;
- csv / png: several files (one CSV per table; severity.png, timeline.png, areas.png) into the
  directory ``--out`` (default ``./report-<period>-<label>[-<area>]-csv|png/``), or into one zip
  when ``--out`` ends with ``.zip``.

Exit codes: 0 written; 1 bad arguments, unknown area, database error.
"""

from __future__ import annotations

import sys
from datetime import date as Date
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from cimtwin.settings import get_settings

err = Console(stderr=True)


class Period(str, Enum):
    daily = "daily"
    weekly = "weekly"
    monthly = "monthly"


class Format(str, Enum):
    json = "json"
    csv = "csv"
    png = "png"
    html = "html"


def report(
    period: Period = typer.Argument(..., help="daily, weekly (Monday to Sunday) or monthly"),
    date: str = typer.Option(None, "--date", metavar="YYYY-MM-DD",
                             help="a day inside the period (report time zone); default: the last complete period"),
    area: str = typer.Option(None, "--area", metavar="CODE", help="an area's code: it and everything inside it; "
                                                                   "default: the whole city"),
    fmt: Format = typer.Option(Format.json, "--format", help="json, csv (one file per table), png (three charts) "
                                                             "or html (one page with everything)"),
    out: Path = typer.Option(None, "--out", help="file (json, html) or directory / .zip (csv, png)"),
) -> None:
    """A safety report: alerts by area, kind and severity, time to acknowledge and close, the share
    closed within 1 h, offline devices, the noisiest devices; as JSON, CSV, PNG charts or HTML."""
    from cimtwin.errors import CimtwinError
    from cimtwin.store.db import connect
    from cimtwin.twin import reports

    s = get_settings()
    try:
        day = Date.fromisoformat(date) if date else None
    except ValueError:
        err.print(f"[red]--date {date!r} is not a date (YYYY-MM-DD)[/]")
        raise typer.Exit(1) from None
    try:
        span = reports.resolve_period(period.value, day, s.report_timezone)
        with connect(s.database_url, application_name="cimtwin-report") as conn:
            doc = reports.make_report(conn, span, area_code=area, offline_after_s=s.sensor_offline_after_s)
    except CimtwinError as exc:
        err.print(f"[red]{exc.detail}[/]")
        raise typer.Exit(1) from None

    stem = reports.file_stem(doc)
    if fmt is Format.json:
        data = reports.render_json(doc)
        if out is None:
            sys.stdout.buffer.write(data + b"\n")
            return
        _write(out, data)
    elif fmt is Format.html:
        _write(out or Path(f"{stem}.html"), reports.render_html(doc))
    else:
        if fmt is Format.csv:
            files, notes = reports.csv_tables(doc), []
        else:
            charts, notes = reports.render_charts(doc)
            files = {f"{name}.png": data for name, data in charts.items()}
        target = out or Path(f"{stem}-{fmt.value}")
        if target.suffix.lower() == ".zip":
            _write(target, reports.zip_files(files))
        else:
            target.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                _write(target / name, data)
        for note in notes:
            err.print(f"[yellow]{note}[/]")
    err.print(f"{doc.title}: {doc.totals.alerts} alerts")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    err.print(f"wrote {path}")
