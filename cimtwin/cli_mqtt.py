"""``cimtwin mqtt-credentials create|list|revoke`` and ``cimtwin broker-sync``.

``mqtt-credentials create`` prints the password on stdout (and nothing else there), once: only
its hash is stored.
"""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console
from rich.table import Table

from cimtwin.cli_keys import _actor, _with_pool
from cimtwin.settings import get_settings

mqtt_app = typer.Typer(help="Vendors' MQTT credentials, enforced by the broker: a vendor publishes only under "
                            "cim/v1/<code>/# and vendors/<code>/#.", no_args_is_help=True)
err = Console(stderr=True)


def _fail(exc: Exception) -> None:
    err.print(f"[red]{getattr(exc, 'detail', exc)}[/]")
    raise typer.Exit(1) from None


@mqtt_app.command("create")
def create(vendor: str = typer.Option(..., "--vendor", help="the vendor's code; it is also the MQTT username"),
           replace: bool = typer.Option(False, "--replace", help="revoke the vendor's active credential first "
                                                                 "(its devices are cut off at once)")) -> None:
    """Make a vendor's MQTT credential and print its password once."""
    from cimtwin.api.services import mqtt_credentials as service
    from cimtwin.errors import CimtwinError

    settings = get_settings()
    try:
        made = asyncio.run(_with_pool(settings, lambda pool: service.create_credential(
            pool=pool, settings=settings, vendor_code=vendor, actor=_actor(), replace=replace)))
    except CimtwinError as exc:
        _fail(exc)
    err.print(f"MQTT credential {made.id} for vendor {made.vendor}: username [bold]{made.username}[/], "
              f"may publish to {', '.join(made.topics)}. Broker: {made.broker_note}. The password is shown only now:")
    if not made.broker_synced:
        err.print("[yellow]the broker does not know it yet; run `cimtwin broker-sync`[/]")
    print(made.password)


@mqtt_app.command("list")
def list_(vendor: str = typer.Option(None, "--vendor", help="only this vendor's"),
          revoked: bool = typer.Option(True, "--revoked/--active", help="include revoked credentials")) -> None:
    """List credentials (never passwords or hashes)."""
    from cimtwin.api.services import mqtt_credentials as service
    from cimtwin.errors import CimtwinError

    try:
        creds = asyncio.run(_with_pool(get_settings(), lambda pool: service.list_credentials(
            pool=pool, vendor_code=vendor, include_revoked=revoked)))
    except CimtwinError as exc:
        _fail(exc)
    table = Table("id", "vendor", "username", "created", "by", "revoked", "revoked by")
    for c in creds:
        table.add_row(str(c.id), c.vendor, c.username, f"{c.created_at:%Y-%m-%d %H:%M}", c.created_by,
                      f"{c.revoked_at:%Y-%m-%d %H:%M}" if c.revoked_at else "", c.revoked_by or "")
    Console().print(table)


@mqtt_app.command("revoke")
def revoke(credential_id: int = typer.Argument(..., help="the credential's id (see mqtt-credentials list)"),
           vendor: str = typer.Option(..., "--vendor", help="the vendor's code")) -> None:
    """Revoke a credential; the broker drops it at once, open connections included."""
    from cimtwin.api.services import mqtt_credentials as service
    from cimtwin.errors import CimtwinError

    settings = get_settings()
    try:
        cred = asyncio.run(_with_pool(settings, lambda pool: service.revoke_credential(
            pool=pool, settings=settings, vendor_code=vendor, credential_id=credential_id, actor=_actor())))
    except CimtwinError as exc:
        _fail(exc)
    err.print(f"MQTT credential {cred.id} ({cred.username}) is revoked since {cred.revoked_at:%Y-%m-%d %H:%M:%S %Z}. "
              f"Broker: {cred.broker_note}")


def broker_sync(no_database: bool = typer.Option(
        False, "--no-database", help="only (re)write the service account and the ACL, keeping the vendor "
                                     "entries the password file holds (deploy/bootstrap.sh, before migrations)")
        ) -> None:
    """Write the broker's password and ACL files from the database and make the broker reload them."""
    from cimtwin.broker_auth import refresh_service_account, sync_broker_auth

    settings = get_settings()
    try:
        result = refresh_service_account(settings) if no_database else sync_broker_auth(settings)
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not trace back
        _fail(exc)
    err.print(f"broker auth: {result.summary()}")
