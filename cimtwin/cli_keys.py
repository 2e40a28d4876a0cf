"""``cimtwin keys create|list|revoke``, and the admin key that ``cimtwin up`` makes for a newcomer.

``keys create`` prints the key itself on stdout (and nothing else there), once: it is not stored.
"""

from __future__ import annotations

import asyncio
import getpass
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cimtwin.schemas.access import ApiKeyIn, Role
from cimtwin.settings import Settings, get_settings

keys_app = typer.Typer(help="API keys: make, list and revoke them (the API's roles: admin, operator, analyst, "
                            "vendor).", no_args_is_help=True)
err = Console(stderr=True)
ADMIN_KEY_FILE = "admin-api-key"


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


async def _with_pool(settings: Settings, work):
    from cimtwin.store.db import open_async_pool

    pool = open_async_pool(settings.database_url, application_name="cimtwin-cli", max_size=2)
    await pool.open()
    try:
        return await work(pool)
    finally:
        await pool.close()


@keys_app.command("create")
def create(role: Role = typer.Option(..., "--role", help="admin, operator, analyst or vendor"),
           name: str = typer.Option(..., "--name", help="what the key is for, e.g. 'qgis desk 3'"),
           vendor: str = typer.Option(None, "--vendor", help="the vendor's code (role vendor only)")) -> None:
    """Make a key and print it once."""
    from pydantic import ValidationError

    from cimtwin.errors import CimtwinError
    from cimtwin.store import access

    try:
        body = ApiKeyIn(name=name, role=role, vendor=vendor)
    except ValidationError as exc:
        err.print(f"[red]{'; '.join(e['msg'] for e in exc.errors())}[/]")
        raise typer.Exit(2) from None
    try:
        created = asyncio.run(_with_pool(get_settings(), lambda pool: access.create_key(pool, body, actor=_actor())))
    except CimtwinError as exc:
        err.print(f"[red]{exc.detail}[/]")
        raise typer.Exit(1) from None
    scope = f" for vendor {created.vendor}" if created.vendor else ""
    err.print(f"API key {created.id} ({created.name!r}, {created.role.value}{scope}), prefix {created.prefix}. "
              "It is shown only now:")
    print(created.key)


@keys_app.command("list")
def list_(revoked: bool = typer.Option(True, "--revoked/--active", help="include revoked keys")) -> None:
    """List keys (never the keys themselves)."""
    from cimtwin.store import access

    keys = asyncio.run(_with_pool(get_settings(), lambda pool: access.list_keys(pool, include_revoked=revoked)))
    header = ("id", "name", "role", "vendor", "prefix", "created", "by", "last used", "revoked")
    rows = [(str(k.id), k.name, k.role.value, k.vendor or "", k.prefix, f"{k.created_at:%Y-%m-%d %H:%M}",
             k.created_by, f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "",
             f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "") for k in keys]
    out = Console()
    if not out.is_terminal:  # piped: one tab-separated line per key
        for row in (header, *rows):
            print("\t".join(row))
        return
    table = Table(*header)
    for row in rows:
        table.add_row(*row)
    out.print(table)


@keys_app.command("revoke")
def revoke(key_id: int = typer.Argument(..., help="the key's id (see keys list)")) -> None:
    """Revoke a key; it stops working within seconds."""
    from cimtwin.errors import CimtwinError
    from cimtwin.store import access

    try:
        key = asyncio.run(_with_pool(get_settings(), lambda pool: access.revoke_key(pool, key_id, actor=_actor())))
    except CimtwinError as exc:
        err.print(f"[red]{exc.detail}[/]")
        raise typer.Exit(1) from None
    err.print(f"API key {key.id} ({key.name!r}, prefix {key.prefix}) is revoked since "
              f"{key.revoked_at:%Y-%m-%d %H:%M:%S %Z}")


def _write_private(path: Path, text: str) -> None:
    """Writes ``text`` readable by the owner only (0600), replacing the file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def ensure_admin_key(settings: Settings) -> tuple[Path, bool]:
    """Makes sure ``<state_dir>/admin-api-key`` holds a working admin key; returns (path, made now)."""
    from cimtwin.store import access

    path = Path(settings.state_dir) / ADMIN_KEY_FILE

    async def work(pool) -> bool:
        if path.exists():
            key = path.read_text().strip()
            if key and await access.is_active(pool, key, role=Role.admin):
                return False
        created = await access.create_key(pool, ApiKeyIn(name="admin (cimtwin up)", role=Role.admin),
                                          actor="cimtwin-up")
        _write_private(path, created.key + "\n")
        return True

    return path, asyncio.run(_with_pool(settings, work))
