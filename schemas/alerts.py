"""Alert rules, alerts, their lifecycle and external events.

A rule's ``condition`` depends on its ``kind``; the engine in ingest reads the stored JSON:

- ``threshold``: ``{"op": ">"|">="|"<"|"<=", "value", "clear_value" (hysteresis; null = value),
  "hold_s" (how long the condition must hold, on reading times; 0 = at once)}``
- ``rate``: ``{"op": ">"|"<", "per_s" (change per second), "window_s"}``
- ``offline``: ``{"silent_s"}`` (no reading for that long; evaluated on a timer)
- ``composite``: ``{"mode": "all"|"any", "conditions": [{"quantity", "op", "value"}, …], "hold_s"}``
  on the channels of one device

``scope`` narrows the sensors a rule watches; every key given must hold.

The lifecycle of an alert (``/alerts/{id}/…``):

====================  ==========================================  ==================================
action                from                                        to
====================  ==========================================  ==================================
acknowledge           open                                        acknowledged
dispatch              open, acknowledged, dispatched              dispatched (from open it also
                                                                  acknowledges: sets acknowledged_at)
resolve               open, acknowledged, dispatched              resolved
close                 resolved                                    closed (final)
reopen                resolved                                    open (a fresh acknowledge SLA)
notes                 any, closed included                        (unchanged)
====================  ==========================================  ==================================
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

Severity = Literal["info", "warning", "major", "critical"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "major", "critical")
Status = Literal["open", "acknowledged", "dispatched", "resolved", "closed"]
STATUSES: tuple[str, ...] = ("open", "acknowledged", "dispatched", "resolved", "closed")
Source = Literal["rule", "hotline", "video_ai", "manual", "other"]
EventSource = Literal["hotline", "video_ai", "manual", "other"]
RuleKind = Literal["threshold", "rate", "offline", "composite"]
ThresholdOp = Literal[">", ">=", "<", "<="]
DispatchLevel = Literal["component", "room", "building", "grid", "community", "street", "district", "manual",
                        "none"]

Seconds = Annotated[float, Field(ge=0, le=366 * 24 * 3600)]
PositiveSeconds = Annotated[float, Field(gt=0, le=366 * 24 * 3600)]
Sla = Annotated[int, Field(gt=0, le=366 * 24 * 3600)]
Note = Annotated[str, Field(min_length=1, max_length=5000)]
Quantity = Annotated[str, Field(min_length=1, max_length=64, description="a sensor quantity, e.g. co or gas_lel")]
KindCode = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$", description="a code from GET /component-kinds")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ----------------------------------------------------------------------------- conditions

class ThresholdCondition(_In):
    """The value crosses ``value`` (``op``); with ``clear_value`` the alert's condition clears only
    once the value is back past it (hysteresis), on the safe side of ``value``."""

    op: ThresholdOp
    value: float
    clear_value: float | None = Field(default=None, description="hysteresis; null = value")
    hold_s: Seconds = Field(default=0, description="the condition must hold this long (reading times); 0 = at once")

    @model_validator(mode="after")
    def _clear_on_safe_side(self) -> "ThresholdCondition":
        if self.clear_value is None:
            return self
        if self.op in (">", ">=") and self.clear_value > self.value:
            raise ValueError(f"clear_value {self.clear_value:g} must not be above value {self.value:g} for op "
                             f"{self.op!r} (the alert clears when the value falls back below clear_value)")
        if self.op in ("<", "<=") and self.clear_value < self.value:
            raise ValueError(f"clear_value {self.clear_value:g} must not be below value {self.value:g} for op "
                             f"{self.op!r} (the alert clears when the value rises back above clear_value)")
        return self


class RateCondition(_In):
    """The value changes faster than ``per_s`` (per second; negative for falling) over ``window_s``."""

    op: Literal[">", "<"]
    per_s: float = Field(description="change per second, e.g. 5 cm/min = 0.000833 m/s")
    window_s: PositiveSeconds


class OfflineCondition(_In):
    """No reading for ``silent_s`` seconds."""

    silent_s: PositiveSeconds


class CompositeTerm(_In):
    quantity: Quantity
    op: ThresholdOp
    value: float


class CompositeCondition(_In):
    """All (or any) of the terms, on the channels of one device; the alert's sensor is the first term's."""

    mode: Literal["all", "any"]
    conditions: Annotated[list[CompositeTerm], Field(min_length=1, max_length=20)]
    hold_s: Seconds = 0


CONDITIONS: dict[str, type[_In]] = {"threshold": ThresholdCondition, "rate": RateCondition,
                                    "offline": OfflineCondition, "composite": CompositeCondition}


class RuleScope(_In):
    """Which sensors a rule watches; every key given must hold (none: every sensor)."""

    sensor_id: int | None = None
    quantity: Quantity | None = None
    component_kind: KindCode | None = None
    area_id: int | None = Field(default=None, description="the area and everything inside it")
    floor_min: int | None = Field(default=None, ge=-20, le=300)
    floor_max: int | None = Field(default=None, ge=-20, le=300)

    @model_validator(mode="after")
    def _floor_range(self) -> "RuleScope":
        if self.floor_min is not None and self.floor_max is not None and self.floor_min > self.floor_max:
            raise ValueError(f"floor_min {self.floor_min} is above floor_max {self.floor_max}")
        return self


# ----------------------------------------------------------------------------- rules

class _RuleBase(_In):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    scope: RuleScope = RuleScope()
    severity: Severity
    auto_clear: bool = Field(default=True, description="true: the alert resolves itself when the condition "
                                                       "clears; false: a person resolves or closes it")
    ack_sla_s: Sla = Field(default=900, description="seconds to acknowledge before it escalates")
    close_sla_s: Sla = Field(default=3600, description="seconds to close (the 1-hour target by default)")
    enabled: bool = True

    def definition(self) -> dict[str, Any]:
        """The stored form: the scope without the keys not given."""
        data = self.model_dump(mode="json")
        data["scope"] = self.scope.model_dump(mode="json", exclude_none=True)
        return data


class ThresholdRuleIn(_RuleBase):
    kind: Literal["threshold"]
    condition: ThresholdCondition


class RateRuleIn(_RuleBase):
    kind: Literal["rate"]
    condition: RateCondition


class OfflineRuleIn(_RuleBase):
    kind: Literal["offline"]
    condition: OfflineCondition


class CompositeRuleIn(_RuleBase):
    kind: Literal["composite"]
    condition: CompositeCondition


#: A rule as posted: ``kind`` picks the shape of ``condition``.
RuleIn = Annotated[ThresholdRuleIn | RateRuleIn | OfflineRuleIn | CompositeRuleIn, Field(discriminator="kind")]
RULE_IN: TypeAdapter = TypeAdapter(RuleIn)


class RulePatch(_In):
    """Any of a rule's fields; the result is validated as a whole (a new ``condition`` must fit the
    rule's ``kind``, or the new ``kind`` given with it). Each change makes a new version."""

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    kind: RuleKind | None = None
    condition: dict[str, Any] | None = None
    scope: dict[str, Any] | None = None
    severity: Severity | None = None
    auto_clear: bool | None = None
    ack_sla_s: Sla | None = None
    close_sla_s: Sla | None = None
    enabled: bool | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> "RulePatch":
        for name in self.model_fields_set:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null (leave it out to keep it)")
        return self


class Rule(BaseModel):
    id: int
    name: str
    version: int
    enabled: bool
    kind: RuleKind
    condition: dict[str, Any]
    scope: dict[str, Any]
    severity: Severity
    auto_clear: bool
    ack_sla_s: int
    close_sla_s: int
    created_at: datetime
    updated_at: datetime
    created_by: str | None
    deleted_at: datetime | None


class RuleVersion(BaseModel):
    """One version of a rule. ``superseded_at``/``superseded_by``: when and by whom the next version
    replaced it (null for the current version)."""

    rule_id: int
    version: int
    current: bool
    snapshot: dict[str, Any]
    superseded_at: datetime | None
    superseded_by: str | None


class RulePage(BaseModel):
    items: list[Rule]
    numberMatched: int
    numberReturned: int
    links: list[dict] = []


# ----------------------------------------------------------------------------- alerts

class AlertEvent(BaseModel):
    """One step of an alert's append-only trail; its id is the SSE event id."""

    id: int
    alert_id: int
    at: datetime
    actor: str = Field(description="engine, escalation, key:<id>:<name>, admin-setting, …")
    action: Literal["raised", "repeated", "acknowledged", "dispatched", "escalated", "cleared", "resolved", "closed",
                    "reopened", "note", "withdrawn"]
    from_status: Status | None
    to_status: Status | None
    note: str | None
    detail: dict[str, Any]


class Alert(BaseModel):
    id: int
    rule_id: int | None
    rule_version: int | None
    rule_name: str | None
    source: Source
    kind: str
    severity: Severity
    status: Status
    title: str
    description: str | None
    media: list[Any]
    external_ref: str | None
    sensor_id: int | None
    geometry: dict[str, Any] | None = Field(description="GeoJSON Point in the response's crs (default CRS84)")
    area_id: int | None
    area_code: str | None
    area_name: str | None
    area_level: str | None
    building_id: int | None
    floor_id: int | None
    room_id: int | None
    component_id: int | None
    party_id: int | None = Field(description="the responsible party now; null: nobody is assigned")
    party_code: str | None
    party_name: str | None
    dispatch_level: str | None = Field(description="where the party was found: component, room, building, grid, "
                                                   "community, street, district; manual (dispatch override); none")
    escalation_level: int = Field(description="the rank in the dispatch chain (0 = the most specific)")
    escalation_ended_at: datetime | None = Field(description="escalation reached the top of the chain")
    first_value: float | None
    last_value: float | None
    count: int
    raised_at: datetime
    last_at: datetime
    cleared_at: datetime | None
    created_at: datetime
    acknowledged_at: datetime | None
    dispatched_at: datetime | None
    resolved_at: datetime | None
    closed_at: datetime | None
    ack_due_at: datetime
    close_due_at: datetime
    withdrawn_at: datetime | None = Field(
        None, description="set when a late reading showed the engine should never have raised it (then closed)")


class AlertWithTrail(Alert):
    events: list[AlertEvent]


class AlertPage(BaseModel):
    items: list[Alert]
    numberMatched: int
    numberReturned: int
    links: list[dict] = []


# ----------------------------------------------------------------------------- lifecycle inputs

class AckIn(_In):
    note: Note | None = None


class DispatchIn(_In):
    """Dispatch to the alert's party (from its dispatch chain), or to ``party_id`` (dispatch_level
    becomes ``manual``)."""

    party_id: int | None = None
    note: Note | None = None


class ResolveIn(_In):
    note: Note | None = None


class CloseIn(_In):
    note: Note | None = None


class ReopenIn(_In):
    note: Note = Field(description="why it is reopened")


class NoteIn(_In):
    note: Note


# ----------------------------------------------------------------------------- external events

class MediaLink(_In):
    url: Annotated[str, Field(max_length=2000, pattern=r"^https?://\S+$")]
    type: Literal["image", "video", "audio", "document", "other"] = "other"
    caption: Annotated[str, Field(max_length=500)] | None = None


class EventIn(_In):
    """A report from outside (12345 hotline, video AI, a person): it becomes an alert, placed and
    dispatched like any other. Where: ``location`` (a GeoJSON Point in ``geom-crs``, default CRS84),
    and/or ``building_id``, ``room_id``, ``component_id``; ``area_id`` names the area when known.
    Without any of these it is still raised, with nobody assigned (dispatch_level ``none``)."""

    source: EventSource
    kind: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,62}$", examples=["fire", "gas_leak", "waterlogging"])]
    severity: Severity = "warning"
    title: Annotated[str, Field(min_length=1, max_length=300)]
    description: Annotated[str, Field(max_length=10_000)] | None = None
    media: Annotated[list[MediaLink | Annotated[str, Field(max_length=2000, pattern=r"^https?://\S+$")]],
                     Field(max_length=50)] = []
    external_ref: Annotated[str, Field(min_length=1, max_length=200,
                                       description="the source's id, e.g. the hotline ticket")] | None = None
    observed_at: datetime | None = Field(default=None, description="when it happened (default: now)")
    location: dict[str, Any] | None = Field(default=None, description="GeoJSON Point in geom-crs",
                                            examples=[{"type": "Point", "coordinates": [121.4997, 31.2397]}])
    area_id: int | None = None
    building_id: int | None = None
    room_id: int | None = None
    component_id: int | None = None
    ack_sla_s: Sla | None = Field(default=None, description="default CIMTWIN_ALERTS_EVENT_ACK_SLA_S")
    close_sla_s: Sla | None = Field(default=None, description="default CIMTWIN_ALERTS_EVENT_CLOSE_SLA_S")

    @field_validator("location", mode="before")
    @classmethod
    def _point(cls, value):
        if value is None:
            return value
        if not isinstance(value, dict) or value.get("type") != "Point":
            raise ValueError("must be a GeoJSON Point")
        coords = value.get("coordinates")
        if (not isinstance(coords, list) or len(coords) not in (2, 3)
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)
                           for c in coords)):
            raise ValueError("a Point's coordinates must be [x, y] numbers")
        return value

    @field_validator("observed_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone (e.g. Z or +08:00)")
        return value

    def media_links(self) -> list[dict]:
        return [m.model_dump(exclude_none=True) if isinstance(m, MediaLink) else {"url": m, "type": "other"}
                for m in self.media]
