"""The ``cimtwin`` command."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import subprocess
import sys
import threading
import time

import typer
from rich.console import Console

from cimtwin.settings import REPO_ROOT, get_settings

app = typer.Typer(help="cimtwin: IoT sensing and digital twin for a district safety monitoring centre.",
                  no_args_is_help=True, add_completion=False)
console = Console(stderr=True)


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@app.command()
def migrate() -> None:
    """Apply pending database migrations and the storage policies in the settings."""
    from cimtwin.store.migrate import apply_storage_policies
    from cimtwin.store.migrate import migrate as run

    s = get_settings()
    report = run(s.database_url)
    apply_storage_policies(s.database_url, retention_days=s.retention_days,
                           compress_after_days=s.compress_after_days)
    applied = ", ".join(report.applied) or "nothing new"
    console.print(f"migrations: {applied}; schema version {report.current_version}; storage: {report.backend}")


@app.command()
def demo() -> None:
    """Register the demo vendor and devices (idempotent)."""
    from cimtwin.demo import load_demo

    count = load_demo(get_settings())
    console.print(f"demo: vendor 'demo' with {count} devices (aq-0001 … aq-{count:04d})")


def _run_worker(client_id: str, share_group: str | None) -> None:
    from cimtwin.ingest.worker import IngestWorker

    _logging()
    worker = IngestWorker(get_settings(), client_id=client_id, share_group=share_group)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    worker.run()


@app.command()
def ingest(workers: int = typer.Option(None, help="worker processes; >1 uses a $share subscription"),
           client_id: str = typer.Option(None, help="MQTT client id (default CIMTWIN_INGEST_CLIENT_ID)")) -> None:
    """Run the MQTT ingest worker(s) in the foreground."""
    s = get_settings()
    count = workers or s.ingest_workers
    base = client_id or s.ingest_client_id
    if count == 1:
        _run_worker(base, None)
        return
    _logging()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_run_worker, args=(f"{base}-{i}", s.ingest_share_group), name=f"ingest-{i}")
             for i in range(count)]
    for p in procs:
        p.start()

    def forward(*_):
        for p in procs:
            if p.is_alive():
                p.terminate()
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()


@app.command()
def serve(host: str = typer.Option(None), port: int = typer.Option(None)) -> None:
    """Run the HTTP API."""
    import uvicorn

    s = get_settings()
    # Open SSE streams (/alerts/stream) never finish on their own: cut them off after a few seconds
    # on shutdown instead of waiting forever (clients resume with Last-Event-ID).
    uvicorn.run("cimtwin.api.app:create_app", factory=True, host=host or s.api_host, port=port or s.api_port,
                log_level="info", timeout_graceful_shutdown=5)


@app.command()
def notify(stats: bool = typer.Option(False, "--stats", help="print what waits in the outbox as JSON and exit")) -> None:
    """Deliver alert notifications from the outbox: party webhooks (HMAC-signed) and MQTT cim/v1/alerts/…"""
    import asyncio

    from cimtwin.twin.notify import Notifier, outbox_stats

    s = get_settings()
    if stats:
        import json

        typer.echo(json.dumps(asyncio.run(outbox_stats(s)), default=str, indent=2))
        return
    _logging()
    notifier = Notifier(s)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: notifier.stop())
    asyncio.run(notifier.run())


@app.command("alerts-timer")
def alerts_timer(every: float = typer.Option(None, help="seconds between ticks; default "
                                                         "CIMTWIN_ALERTS_TIMER_INTERVAL_S (5)"),
                 once: bool = typer.Option(False, "--once", help="one tick, then exit")) -> None:
    """Alert work on a timer: escalate unacknowledged alerts past their SLA (and offline rules)."""
    import threading

    from cimtwin.twin.alert_timer import run

    _logging()
    s = get_settings()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(s, every=every or s.alerts_timer_interval_s, stop=stop, once=once)


@app.command()
def maintain(every: float = typer.Option(0, help="repeat every this many seconds; 0 runs once")) -> None:
    """Housekeeping: drop readings past CIMTWIN_RETENTION_DAYS (plain PostgreSQL; TimescaleDB runs its own jobs)."""
    from cimtwin.store.db import connect
    from cimtwin.store.migrate import drop_expired_readings

    _logging()
    log = logging.getLogger("cimtwin.maintain")
    s = get_settings()
    while True:
        try:
            with connect(s.database_url, application_name="cimtwin-maintain", autocommit=True) as conn:
                dropped = drop_expired_readings(conn, retention_days=s.retention_days)
            if dropped:
                log.info("dropped %d weekly partition(s) older than %d days", dropped, s.retention_days)
        except Exception as exc:  # keep the loop alive through outages
            log.warning("maintenance failed: %s", exc)
        if not every:
            return
        time.sleep(every)


def _services() -> None:
    script = REPO_ROOT / "deploy" / "bootstrap.sh"
    if not script.exists():
        console.print("[yellow]deploy/bootstrap.sh not found; assuming the services are managed elsewhere[/]")
        return
    subprocess.run(["bash", str(script)], check=True)


class _Supervisor:
    """Runs child commands, restarts any that exits, and stops them all on SIGINT/SIGTERM."""

    def __init__(self, commands: dict[str, list[str]]):
        self.commands = commands
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopping = threading.Event()

    def start(self, name: str) -> None:
        self.procs[name] = subprocess.Popen(self.commands[name])

    def run(self) -> None:
        for name in self.commands:
            self.start(name)
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        while not self.stopping.wait(1.0):
            for name, proc in list(self.procs.items()):
                if proc.poll() is not None:
                    console.print(f"[red]{name} exited with {proc.returncode}; restarting[/]")
                    time.sleep(1)
                    self.start(name)
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@app.command()
def up(services: bool = typer.Option(True, help="install/start PostgreSQL and Mosquitto if needed"),
       demo_data: bool = typer.Option(True, "--demo/--no-demo", help="load the demo registry")) -> None:
    """The main job: services, migrations, demo data, then ingest and the API until Ctrl-C."""
    _logging()
    if services:
        _services()
    migrate()
    if demo_data:
        demo()
    try:  # the broker's password and ACL files from the database (vendors' MQTT credentials)
        broker_sync(no_database=False)
    except typer.Exit:
        console.print("[yellow]the broker's credentials were not synced; vendors' MQTT logins may be stale[/]")
    s = get_settings()
    from cimtwin.cli_keys import ensure_admin_key

    key_file, made = ensure_admin_key(s)
    console.print(f"admin API key {'written to' if made else 'in'} {key_file} (send it as X-API-Key; "
                  "`cimtwin keys create` makes keys for others)")
    exe = [sys.executable, "-m", "cimtwin.cli"]
    console.print(f"[bold]cimtwin is up[/]: API http://{s.api_host}:{s.api_port}/docs, "
                  f"MQTT {s.mqtt_url} (topic cim/v1/{{vendor}}/{{device}}/up). Ctrl-C stops.")
    _Supervisor({"ingest": exe + ["ingest"], "api": exe + ["serve"],
                 "maintain": exe + ["maintain", "--every", "3600"], "notify": exe + ["notify"],
                 "alerts-timer": exe + ["alerts-timer"]}).run()


# cimtwin import areas|buildings|components FILE, cimtwin export LAYER FILE
from cimtwin.cli_geo import export as _export, import_app as _import_app  # noqa: E402

app.add_typer(_import_app, name="import")

from cimtwin.cli_keys import keys_app as _keys_app  # noqa: E402

app.add_typer(_keys_app, name="keys")

from cimtwin.cli_mqtt import broker_sync, mqtt_app as _mqtt_app  # noqa: E402

app.add_typer(_mqtt_app, name="mqtt-credentials")
app.command("broker-sync")(broker_sync)
app.command("export")(_export)

from cimtwin.cli_report import report as _report  # noqa: E402

app.command("report")(_report)


if __name__ == "__main__":
    app()
