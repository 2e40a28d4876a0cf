"""Reports over HTTP: the period from the query, the document from the store, its rendering.

Rendering (matplotlib, zip, HTML) runs in a worker thread, off the event loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date

from psycopg_pool import AsyncConnectionPool

from cimtwin.errors import BadRequest
from cimtwin.schemas.reports import CHARTS, Report
from cimtwin.store.reports import fetch_report_async
from cimtwin.twin import reports as twin

MEDIA_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8", "zip": "application/zip",
               "png": "image/png", "html": "text/html; charset=utf-8"}


@dataclass
class Rendered:
    content: bytes
    media_type: str
    filename: str
    attachment: bool

    @property
    def disposition(self) -> str:
        return f'{"attachment" if self.attachment else "inline"}; filename="{self.filename}"'


async def build(pool: AsyncConnectionPool, *, period: str, day: date | None, area_id: int | None,
                area_code: str | None, timezone: str, offline_after_s: float) -> Report:
    if area_id is not None and area_code is not None:
        raise BadRequest("give area_id or area, not both", code="invalid_area")
    span = twin.resolve_period(period, day, timezone)
    query = twin.report_query(span, area_id=area_id, area_code=area_code, offline_after_s=offline_after_s)
    async with pool.connection() as conn:
        raw = await fetch_report_async(conn, query)
    return twin.build_report(raw, span)


def _render(report: Report, fmt: str, chart: str | None, table: str | None) -> Rendered:
    stem = twin.file_stem(report)
    if fmt == "json":
        return Rendered(twin.render_json(report), MEDIA_TYPES["json"], f"{stem}.json", False)
    if fmt == "csv":
        files = twin.csv_tables(report)
        if table is None:
            return Rendered(twin.zip_files(files), MEDIA_TYPES["zip"], f"{stem}-csv.zip", True)
        name = f"{table}.csv"
        if name not in files:
            raise BadRequest(f"unknown table {table!r}; use one of {', '.join(twin.CSV_TABLES)}",
                             code="invalid_table")
        return Rendered(files[name], MEDIA_TYPES["csv"], f"{stem}-{table}.csv", True)
    if fmt == "png":
        chart = chart or "severity"
        if chart not in CHARTS:
            raise BadRequest(f"unknown chart {chart!r}; use one of {', '.join(CHARTS)}", code="invalid_chart")
        pngs, _ = twin.render_charts(report, (chart,))
        return Rendered(pngs[chart], MEDIA_TYPES["png"], f"{stem}-{chart}.png", False)
    if fmt == "html":
        return Rendered(twin.render_html(report), MEDIA_TYPES["html"], f"{stem}.html", False)
    raise BadRequest(f"unknown format {fmt!r}; use json, csv, png or html", code="invalid_format")


async def render(report: Report, *, fmt: str, chart: str | None = None, table: str | None = None) -> Rendered:
    if chart is not None and fmt != "png":
        raise BadRequest("chart= goes with format=png", code="invalid_chart")
    if table is not None and fmt != "csv":
        raise BadRequest("table= goes with format=csv", code="invalid_table")
    if fmt == "json":
        return _render(report, fmt, chart, table)
    return await asyncio.to_thread(_render, report, fmt, chart, table)
