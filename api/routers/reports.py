"""Safety reports: ``GET /reports/{daily|weekly|monthly}`` as JSON, CSV, PNG charts or one HTML page.

The definitions (period, area, durations, the 1-hour target, offline devices) are in
cimtwin.schemas.reports."""

from datetime import date as Date
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from cimtwin.api.auth import READERS, Principal, require
from cimtwin.api.deps import get_pool
from cimtwin.api.services import reports as service
from cimtwin.schemas.reports import Report

router = APIRouter(tags=["reports"])


@router.get(
    "/reports/{period}", response_model=Report,
    summary="A safety report for one day, week or month: JSON, CSV (zip, or one table), PNG chart or HTML page",
    responses={200: {"content": {"application/zip": {}, "text/csv": {}, "image/png": {}, "text/html": {}},
                     "description": "the report; format=json gives the Report model"}})
async def get_report(
    request: Request,
    period: Literal["daily", "weekly", "monthly"],
    date: Annotated[Date | None, Query(description="a day inside the period, in the report time zone; "
                                                   "default: the last complete period")] = None,
    area_id: Annotated[int | None, Query(description="the area and everything inside it; default: the city")] = None,
    area: Annotated[str | None, Query(description="the same by area code")] = None,
    format: Literal["json", "csv", "png", "html"] = "json",
    chart: Annotated[Literal["severity", "timeline", "areas"] | None,
                     Query(description="format=png: which chart (default severity)")] = None,
    table: Annotated[str | None, Query(description="format=csv: one table as text/csv instead of the zip of "
                                                   "all (summary, by_severity, by_kind, by_source, by_status, "
                                                   "by_area, top_devices, series)")] = None,
    principal: Principal = Depends(require(*READERS)),
    pool=Depends(get_pool),
):
    settings = request.app.state.settings
    report = await service.build(pool, period=period, day=date, area_id=area_id, area_code=area,
                                 timezone=settings.report_timezone, offline_after_s=settings.sensor_offline_after_s)
    out = await service.render(report, fmt=format, chart=chart, table=table)
    headers = {"Content-Disposition": out.disposition} if format != "json" else {}
    return Response(out.content, media_type=out.media_type, headers=headers)
