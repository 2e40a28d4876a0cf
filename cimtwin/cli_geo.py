"""``cimtwin import areas|buildings|components|cityjson|ifc FILE`` and ``cimtwin export LAYER FILE``.

Import exit codes: 0 every feature was stored (inserted, updated or unchanged); 3 some
features were rejected (each one is listed; the others were stored); 1 nothing was
imported (unreadable file, missing column, unknown CRS, database error).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cimtwin.settings import get_settings

import_app = typer.Typer(help="Import areas, buildings or components from GeoJSON, GeoPackage, Shapefile, CSV "
                              "(WKT or lon/lat columns), … in any CRS. Re-importing updates, never duplicates.",
                         no_args_is_help=True)
err = Console(stderr=True)
EXIT_REJECTED = 3

_STAGES = {"read": "reading", "check": "checking geometries", "store": "storing"}

FileArg = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="the file to import")
CrsOpt = typer.Option(None, "--crs", help="CRS of the coordinates when the file names none (or the wrong one): "
                                          "EPSG:4490, EPSG:4549, EPSG:3857, GCJ02, …")
LayerOpt = typer.Option(None, "--layer", help="layer to read (GeoPackage, …); needed when there are several")
IdOpt = typer.Option(None, "--id-field", help="column with each feature's stable id; re-imports upsert on it")
GeomFieldOpt = typer.Option(None, "--geometry-field", help="CSV: the WKT column (found by name otherwise)")
DryRunOpt = typer.Option(False, "--dry-run", help="check everything, write nothing")
ReportOpt = typer.Option(None, "--report", help="also write the full report as JSON to this file")


@contextmanager
def _progress():
    columns = [TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(_STAGES.get(stage, stage), total=max(total, 1))
            bar.update(tasks[stage], completed=done, total=max(total, 1))

        yield update


def _run(kind: str, path: Path, report_path: Path | None, *, importer=None, **options) -> None:
    from cimtwin.geo.crs import UnknownCrsError
    from cimtwin.geo.io import FileFormatError
    from cimtwin.twin.importer import import_file

    settings = get_settings()
    try:
        with _progress() as progress:
            if importer is not None:  # a format with its own reader (cityjson)
                report = importer(settings.database_url, path, progress=progress, **options)
            else:
                report = import_file(settings.database_url, kind, path, progress=progress, **options)
    except (FileFormatError, UnknownCrsError) as exc:
        err.print(f"[red]import {kind}: {exc}[/]", soft_wrap=True)
        raise typer.Exit(1) from None
    except Exception as exc:  # database down, constraint we did not foresee: say it, exit 1
        err.print(f"[red]import {kind} failed, nothing was imported: {type(exc).__name__}: {exc}[/]", soft_wrap=True)
        raise typer.Exit(1) from None
    for note in report.notes:
        typer.echo(f"note: {note}")
    for issue in report.repaired:
        typer.echo(f"repaired {issue}")
    for issue in report.rejected:
        typer.echo(f"rejected {issue}")
    stored = report.inserted + report.updated + report.unchanged
    verb = "would store" if report.dry_run else "stored"
    typer.echo(f"{kind}: read {report.read} features from {path.name}"
               f"{f' (layer {report.layer})' if report.layer and path.suffix.lower() == '.gpkg' else ''} "
               f"in {report.crs} ({report.crs_origin}); {verb} {stored}: {report.inserted} inserted, "
               f"{report.updated} updated, {report.unchanged} unchanged; {len(report.repaired)} repaired; "
               f"{len(report.rejected)} rejected")
    if report.derived:
        typer.echo("derived links: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report.derived.items()))
    if report_path is not None:
        report_path.write_text(json.dumps(report.as_dict(), ensure_ascii=False, indent=2), encoding="utf-8")
    if report.rejected:
        raise typer.Exit(EXIT_REJECTED)


@import_app.command("areas")
def import_areas(path: Path = FileArg, crs: str = CrsOpt, layer: str = LayerOpt,
                 id_field: str = typer.Option(None, "--id-field", help="column with the area code (default: code, "
                                                                        "adcode, area_code or id)"),
                 level: str = typer.Option(None, "--level", help="the level of every feature, if the file has no "
                                                                 "'level' column: district|street|community|grid"),
                 geometry_field: str = GeomFieldOpt, dry_run: bool = DryRunOpt, report: Path = ReportOpt) -> None:
    """Areas: district → street → community → grid.

    Columns: code, name, level, parent_code; a parent left out is derived spatially (the area
    one level up that holds it). Other columns are kept as attributes."""
    _run("areas", path, report, crs=crs, layer=layer, id_field=id_field, level=level,
         geometry_field=geometry_field, dry_run=dry_run)


@import_app.command("buildings")
def import_buildings(path: Path = FileArg, crs: str = CrsOpt, layer: str = LayerOpt, id_field: str = IdOpt,
                     height_field: str = typer.Option(None, "--height-field",
                                                      help="column with the height in metres (default: height)"),
                     area_field: str = typer.Option(None, "--area-field",
                                                    help="column with an area code; without it the area is derived"),
                     geometry_field: str = GeomFieldOpt, dry_run: bool = DryRunOpt, report: Path = ReportOpt) -> None:
    """Buildings: footprints with height, floors, use and address.

    Columns: name, address (or addr_street + addr_housenumber), use, height, min_height,
    floors_above, floors_below, occupants, organisations (counts only). Other columns are kept
    as attributes. The area is derived spatially unless --area-field is given."""
    _run("buildings", path, report, crs=crs, layer=layer, id_field=id_field, height_field=height_field,
         area_field=area_field, geometry_field=geometry_field, dry_run=dry_run)


@import_app.command("components")
def import_components(path: Path = FileArg, crs: str = CrsOpt, layer: str = LayerOpt, id_field: str = IdOpt,
                      kind: str = typer.Option(None, "--kind", help="the kind of every feature, if the file has no "
                                                                    "'kind' column (see GET /component-kinds)"),
                      building_field: str = typer.Option(None, "--building-field",
                                                         help="column with the building's id; without it the "
                                                              "building is derived spatially"),
                      area_field: str = typer.Option(None, "--area-field", help="column with an area code"),
                      geometry_field: str = GeomFieldOpt, dry_run: bool = DryRunOpt,
                      report: Path = ReportOpt) -> None:
    """Components (部件): hydrants, manhole covers, cameras, …

    Columns: kind (a code from GET /component-kinds), name. The building and area are derived
    spatially unless --building-field / --area-field are given."""
    _run("components", path, report, crs=crs, layer=layer, id_field=id_field, component_kind=kind,
         building_field=building_field, area_field=area_field, geometry_field=geometry_field, dry_run=dry_run)


@import_app.command("cityjson")
def import_cityjson(path: Path = FileArg,
                    crs: str = typer.Option(None, "--crs", help="CRS of the x/y coordinates, overriding the file's "
                                                                "metadata.referenceSystem (compound CRSs such as "
                                                                "EPSG:7415 use their horizontal part)"),
                    dry_run: bool = DryRunOpt, report: Path = ReportOpt) -> None:
    """Buildings from a CityJSON 1.x/2.0 city model: footprint and height from LoD1/LoD2.

    One building per Building city object (its BuildingParts merged in), keyed by its id;
    footprint = 2D union of its surfaces at the highest LoD present, height =
    measuredHeight or max z - min z. Re-importing updates, never duplicates."""
    from cimtwin.twin.cityjson_import import import_cityjson as importer

    _run("cityjson", path, report, importer=importer, crs=crs, dry_run=dry_run)


@import_app.command("ifc")
def import_ifc(path: Path = FileArg,
               building: str = typer.Option(..., "--building", help="the building (its ext_id, or its id) the "
                                                                     "interior belongs to; import it first"),
               anchor: str = typer.Option(None, "--anchor", help="lon,lat of the IFC origin when the file has no "
                                                                 "IfcMapConversion (default: the IfcSite reference)"),
               rotation: float = typer.Option(0.0, "--rotation", help="degrees clockwise from north to the model's "
                                                                      "+y axis (with --anchor or the IfcSite point)"),
               dry_run: bool = DryRunOpt, report: Path = ReportOpt) -> None:
    """A building's interior from IFC: IfcBuildingStorey → floors, IfcSpace → rooms.

    Room footprints are the spaces' shapes in plan; re-importing updates floors (by level)
    and rooms (by IfcSpace GlobalId), never duplicates."""
    from cimtwin.geo.io import FileFormatError
    from cimtwin.twin.ifc_import import import_ifc as run, parse_anchor

    try:
        result = run(get_settings().database_url, path, building=building, anchor=parse_anchor(anchor),
                     rotation=rotation, dry_run=dry_run)
    except FileFormatError as exc:
        err.print(f"[red]import ifc: {exc}[/]", soft_wrap=True)
        raise typer.Exit(1) from None
    except Exception as exc:
        err.print(f"[red]import ifc failed, nothing was imported: {type(exc).__name__}: {exc}[/]", soft_wrap=True)
        raise typer.Exit(1) from None
    for note in result.notes:
        typer.echo(f"note: {note}")
    for issue in result.rejected:
        typer.echo(f"rejected {issue}")
    for guid in result.outside:
        typer.echo(f"warning: room {guid} is not within the building's footprint")
    for f in result.floors:
        typer.echo(f"floor {f['level']}: {f['name']} at {f['elevation']:g} m, {f['rooms']} rooms")
    verb = "would store" if dry_run else "stored"
    typer.echo(f"ifc: placed by {result.georef}; {verb} {len(result.floors)} floors ({result.floors_inserted} "
               f"inserted, {result.floors_updated} updated) and {result.rooms} rooms ({result.rooms_inserted} "
               f"inserted, {result.rooms_updated} updated); {len(result.rejected)} rejected")
    if report is not None:
        report.write_text(json.dumps(result.as_dict(), ensure_ascii=False, indent=2), encoding="utf-8")
    if result.rejected:
        raise typer.Exit(EXIT_REJECTED)


def export(layer: str = typer.Argument(..., help="areas, buildings, floors, rooms, components or sensors"),
           path: Path = typer.Argument(..., dir_okay=False, help="output file: .geojson, .gpkg (also .shp, .fgb, "
                                                                 ".csv)"),
           crs: str = typer.Option("CRS84", "--crs", help="CRS of the output: CRS84, EPSG:4490, EPSG:3857, "
                                                          "EPSG:4549, GCJ02, …")) -> None:
    """Export one layer as a file, reprojected to --crs."""
    from cimtwin.geo.crs import UnknownCrsError, parse_crs
    from cimtwin.geo.io import FileFormatError
    from cimtwin.twin.exporter import EXPORT_LAYERS, export_layer

    if layer not in EXPORT_LAYERS:
        err.print(f"[red]export: unknown layer {layer!r}; use one of {', '.join(EXPORT_LAYERS)}[/]")
        raise typer.Exit(1)
    try:
        ref = parse_crs(crs)
        with _progress() as progress:
            count, driver = export_layer(get_settings().database_url, layer, path, crs=ref, progress=progress)
    except (FileFormatError, UnknownCrsError) as exc:
        err.print(f"[red]export: {exc}[/]", soft_wrap=True)
        raise typer.Exit(1) from None
    typer.echo(f"{layer}: wrote {count} features to {path} ({driver}, {ref.code})")
