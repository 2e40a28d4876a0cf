"""All configuration, read once from ``CIMTWIN_*`` environment variables (or ``.env``)."""

from __future__ import annotations

import json
import os
import re
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cimtwin.schemas.access import Role

REPO_ROOT = Path(__file__).resolve().parent.parent


class MqttEndpoint:
    """Host, port and credentials parsed from an ``mqtt://user:pass@host:port`` URL."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp", "mqtts", "ssl"):
            raise ValueError(f"unsupported MQTT URL scheme {parts.scheme!r} (use mqtt:// or mqtts://)")
        self.tls = parts.scheme in ("mqtts", "ssl")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (8883 if self.tls else 1883)
        self.username = unquote(parts.username) if parts.username is not None else None
        self.password = unquote(parts.password) if parts.password is not None else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CIMTWIN_", env_file=".env", extra="ignore")

    database_url: str = "postgresql://cimtwin:cimtwin@127.0.0.1:5432/cimtwin"
    # The project runs its own broker on 1884 with deploy/mosquitto/cimtwin.conf;
    # the system broker's defaults (1000-message queue, 20 in flight) drop and throttle.
    mqtt_url: str = "mqtt://127.0.0.1:1884"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    state_dir: Path = REPO_ROOT / "var"

    # ingest
    ingest_client_id: str = Field(default_factory=lambda: f"cimtwin-ingest-{socket.gethostname()}")
    ingest_workers: int = Field(default=1, ge=1, le=64)
    ingest_share_group: str = "cimtwin"
    # The canonical format, and every vendor's declared profile topics (vendors/{vendor}/…).
    ingest_topics: list[str] = ["cim/v1/+/+/up", "vendors/#"]
    ingest_session_expiry_s: int = Field(default=7 * 24 * 3600, ge=60)
    ingest_batch_max_messages: int = Field(default=2000, ge=1, le=20000)
    # The longest a batch gathers while the committer is busy; an idle committer takes it at once.
    ingest_batch_max_wait_ms: int = Field(default=20, ge=1, le=10000)
    # MQTT 5 Receive Maximum: unacknowledged messages the broker may send us. Must
    # exceed the batch size so the next batch fills while one commits.
    ingest_receive_maximum: int = Field(default=10000, ge=1, le=65535)
    ingest_max_payload_bytes: int = Field(default=256 * 1024, ge=64)
    ingest_max_future_s: float = Field(default=300.0, ge=0)
    ingest_status_interval_s: float = Field(default=1.0, gt=0)

    # storage
    retention_days: int = Field(default=0, ge=0, description="drop readings older than this; 0 keeps all")
    compress_after_days: int = Field(default=7, ge=1)

    # api
    api_max_raw_rows: int = Field(default=100_000, ge=1)
    api_statement_timeout_ms: int = Field(default=15_000, ge=100)

    # access: API keys live in the database (`cimtwin keys`); this one, if set, is an admin key too
    admin_api_key: SecretStr | None = Field(default=None, description="a key that authenticates as admin")
    auth_anonymous_role: Role | None = Field(
        default=None, description="the role of requests without a key (analyst or operator); unset: 401")

    # broker credentials (cimtwin/broker_auth.py, `cimtwin broker-sync`). cimtwin's own processes log
    # in as the service account whenever mqtt_url names no user; its password is made once, into a
    # 0600 file. Vendors' credentials live (hashed) in the database.
    mqtt_service_username: str = Field(default="cimtwin.service",
                                       description="the broker account of ingest, the API and the tools")
    mqtt_service_password_file: Path | None = Field(
        default=None, description="the service account's password; default <state_dir>/mqtt-service.password")
    broker_auth_dir: Path | None = Field(
        default=None, description="where the broker's passwd and acl files are written; default <state_dir>/mosquitto")
    broker_pid_file: Path | None = Field(
        default=None, description="the broker's pid_file, sent SIGHUP to reload them; "
                                  "default <state_dir>/mosquitto/mosquitto.pid")

    # block data and spatial queries (/areas, /buildings, …, /spatial); past a limit is a 400
    data_dir: Path = Field(default=REPO_ROOT.parent / "shared" / "data",
                           description="the shared real data sets (demo district buildings)")
    api_max_page_size: int = Field(default=10_000, ge=1, description="largest `limit` / `nearest`")
    # One bbox limit for /spatial, the feature lists and /ogc: QGIS and GDAL ask for a layer's
    # whole extent (zoom to layer over a district or a city), and paging plus the statement
    # timeout bound the work of any bbox; this only turns away continent-sized mistakes.
    max_bbox_km2: float = Field(default=250_000.0, gt=0,
                                description="largest query bbox (or a query geometry's bbox), geodesic km²")
    api_max_distance_m: float = Field(default=50_000.0, gt=0, description="largest `distance`")
    api_max_geometry_vertices: int = Field(default=10_000, ge=4, description="largest query geometry")

    # OGC API Features (/ogc) and vector tiles (/tiles)
    ogc_default_limit: int = Field(default=100, ge=1)
    ogc_max_limit: int = Field(default=10_000, ge=1, description="a larger `limit` gets a 400")
    sensor_offline_after_s: float = Field(default=900.0, gt=0,
                                          description="a sensor without a reading for longer is 'offline'")
    tiles_max_zoom: int = Field(default=22, ge=0, le=30)
    tiles_max_features: int = Field(default=50_000, ge=1, description="features per layer per tile")
    tiles_static_max_age_s: int = Field(default=60, ge=0)

    # notifications: `cimtwin notify` delivers the outbox (webhooks, MQTT cim/v1/alerts/…); the API's SSE stream
    notify_batch_size: int = Field(default=50, ge=1, le=1000, description="outbox rows claimed per batch")
    notify_webhook_timeout_s: float = Field(default=5.0, gt=0, le=60, description="per webhook request")
    notify_mqtt_timeout_s: float = Field(default=10.0, gt=0, description="wait for a publish's PUBACK")
    notify_backoff_base_s: float = Field(default=1.0, gt=0, description="the first retry's delay (then doubling)")
    notify_backoff_max_s: float = Field(default=60.0, gt=0, description="the longest delay between retries")
    notify_poll_s: float = Field(default=5.0, gt=0, description="idle re-check (new events wake it at once)")
    stream_queue_size: int = Field(default=1000, ge=10, description="events buffered per SSE client; "
                                                                    "a client that falls further behind is cut off")
    stream_replay_max: int = Field(default=10_000, ge=0, description="events replayed after Last-Event-ID")
    stream_keepalive_s: float = Field(default=15.0, gt=0, description="SSE comment when nothing happens")

    # alerts from external events (POST /events) have no rule: their SLAs, unless the event gives its own;
    # escalation uses the ack SLA again at each level (a rule's alerts use the rule's ack_sla_s)
    alerts_event_ack_sla_s: int = Field(default=900, gt=0, description="seconds to acknowledge an event's alert")
    alerts_event_close_sla_s: int = Field(default=3600, gt=0, description="seconds to close an event's alert")
    alerts_timer_interval_s: float = Field(default=5.0, gt=0, description="`cimtwin alerts-timer` period")

    # reports (`cimtwin report`, /reports): days, weeks (from Monday) and months are local to this zone
    report_timezone: str = Field(default="Asia/Shanghai", description="IANA time zone of report periods")

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str) -> str:
        MqttEndpoint(value)
        return value

    @field_validator("report_timezone")
    @classmethod
    def _check_report_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Asia/Shanghai)") from None
        return value

    @field_validator("mqtt_service_username")
    @classmethod
    def _check_service_username(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
            raise ValueError("mqtt_service_username may hold only letters, digits, '.', '_' and '-'")
        if re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", value):
            # Vendor credentials are named after vendor codes; the service account must not be one.
            raise ValueError(f"mqtt_service_username {value!r} could be a vendor code; "
                             "give it a '.' or a capital letter (e.g. 'cimtwin.service')")
        return value

    @field_validator("auth_anonymous_role")
    @classmethod
    def _check_anonymous_role(cls, value: Role | None) -> Role | None:
        if value in (Role.admin, Role.vendor):
            raise ValueError(f"requests without a key cannot be {value.value}; use analyst or operator")
        return value

    @field_validator("admin_api_key")
    @classmethod
    def _check_admin_api_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("admin_api_key must be at least 16 characters")
        return value

    @property
    def mqtt(self) -> MqttEndpoint:
        """The broker endpoint; without a user in mqtt_url, the service account (if its password file exists)."""
        endpoint = MqttEndpoint(self.mqtt_url)
        if endpoint.username is None:
            try:
                password = self.service_password_path.read_text().strip()
            except FileNotFoundError:
                password = ""
            if password:
                endpoint.username, endpoint.password = self.mqtt_service_username, password
        return endpoint

    @property
    def service_password_path(self) -> Path:
        return self.mqtt_service_password_file or self.state_dir / "mqtt-service.password"

    @property
    def broker_auth_path(self) -> Path:
        return self.broker_auth_dir or self.state_dir / "mosquitto"

    @property
    def broker_pid_path(self) -> Path:
        return self.broker_pid_file or self.state_dir / "mosquitto" / "mosquitto.pid"

    @property
    def status_topic_prefix(self) -> str:
        return "cimtwin/status/ingest"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that hands ``settings`` on to a child process."""
    env = dict(os.environ)
    for name, value in settings.model_dump(mode="json").items():
        secret = getattr(settings, name)
        if isinstance(secret, SecretStr):
            value = secret.get_secret_value()
        if value is None:
            env.pop(f"CIMTWIN_{name.upper()}", None)
            continue
        if isinstance(value, list):
            value = json.dumps(value)
        env[f"CIMTWIN_{name.upper()}"] = str(value)
    return env
