-- The safety loop: rules, the engine's state, alerts with their lifecycle and append-only
-- trail, and a transactional outbox for notifications.

-- Rules are versioned: each change bumps `version` and keeps the old definition in
-- alert_rule_versions; every change is also in the audit log.
CREATE TABLE alert_rules (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL,
    version       integer NOT NULL DEFAULT 1,
    enabled       boolean NOT NULL DEFAULT true,
    kind          text NOT NULL CHECK (kind IN ('threshold', 'rate', 'offline', 'composite')),
    -- kind-specific; validated by cimtwin.schemas.alerts (threshold: op, value, clear_value
    -- (hysteresis), hold_s; rate: op, per_s, window_s; offline: silent_s; composite: all/any of
    -- conditions on one sensor's device)
    condition     jsonb NOT NULL,
    -- {sensor_id?, quantity?, component_kind?, area_id?, floor_min?, floor_max?}; all given must hold
    scope         jsonb NOT NULL DEFAULT '{}',
    severity      text NOT NULL CHECK (severity IN ('info', 'warning', 'major', 'critical')),
    auto_clear    boolean NOT NULL DEFAULT true,   -- false: a person must resolve/close it
    ack_sla_s     integer NOT NULL DEFAULT 900 CHECK (ack_sla_s > 0),
    close_sla_s   integer NOT NULL DEFAULT 3600 CHECK (close_sla_s > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text,
    deleted_at    timestamptz
);

CREATE TABLE alert_rule_versions (
    rule_id     bigint NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    version     integer NOT NULL,
    snapshot    jsonb NOT NULL,          -- the whole rule as it was
    changed_at  timestamptz NOT NULL DEFAULT now(),
    changed_by  text,
    PRIMARY KEY (rule_id, version)
);

-- Ingest workers reload rules (and their sensor matches) when this moves.
CREATE TABLE alert_rules_state (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation  bigint NOT NULL DEFAULT 0
);
INSERT INTO alert_rules_state DEFAULT VALUES;

CREATE FUNCTION alert_rules_bump_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE alert_rules_state SET generation = generation + 1;
    RETURN NULL;
END $$;
CREATE TRIGGER alert_rules_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON alert_rules
    FOR EACH STATEMENT EXECUTE FUNCTION alert_rules_bump_generation();

-- The engine's memory per (rule, sensor), written in the same transaction as the readings
-- it has seen, so a restart resumes exactly (hold timers and hysteresis included).
CREATE TABLE alert_rule_state (
    rule_id     bigint NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    sensor_id   bigint NOT NULL REFERENCES sensors (id) ON DELETE CASCADE,
    phase       text NOT NULL CHECK (phase IN ('clear', 'pending', 'active')),
    since       timestamptz,              -- pending: when the condition started; active: when it fired
    last_time   timestamptz NOT NULL,     -- the newest reading evaluated
    last_value  double precision,
    memory      jsonb NOT NULL DEFAULT '{}',  -- kind-specific (e.g. the rate window's points)
    PRIMARY KEY (rule_id, sensor_id)
);

CREATE TABLE alerts (
    id                bigserial PRIMARY KEY,
    rule_id           bigint REFERENCES alert_rules (id) ON DELETE SET NULL,
    rule_version      integer,
    source            text NOT NULL CHECK (source IN ('rule', 'hotline', 'video_ai', 'manual', 'other')),
    kind              text NOT NULL,            -- the rule's kind, or the external event's kind
    severity          text NOT NULL CHECK (severity IN ('info', 'warning', 'major', 'critical')),
    status            text NOT NULL DEFAULT 'open'
                      CHECK (status IN ('open', 'acknowledged', 'dispatched', 'resolved', 'closed')),
    title             text NOT NULL,
    description       text,
    media             jsonb NOT NULL DEFAULT '[]',   -- links (photos, video clips)
    external_ref      text,                          -- e.g. the 12345 hotline ticket number
    sensor_id         bigint REFERENCES sensors (id) ON DELETE SET NULL,
    -- where: a point, and the block-data chain it falls in
    geom              geometry(Point, 4326),
    area_id           bigint REFERENCES areas (id) ON DELETE SET NULL,
    building_id       bigint REFERENCES buildings (id) ON DELETE SET NULL,
    floor_id          bigint REFERENCES floors (id) ON DELETE SET NULL,
    room_id           bigint REFERENCES rooms (id) ON DELETE SET NULL,
    component_id      bigint REFERENCES components (id) ON DELETE SET NULL,
    -- dispatch: the responsible party and at which level it was found; null party = nobody assigned
    party_id          bigint REFERENCES parties (id) ON DELETE SET NULL,
    dispatch_level    text,        -- component | room | building | grid | community | street | district | none
    escalation_level  integer NOT NULL DEFAULT 0,
    -- the readings behind it; repeats of an open alert fold in
    first_value       double precision,
    last_value        double precision,
    count             integer NOT NULL DEFAULT 1,
    raised_at         timestamptz NOT NULL,     -- time of the reading (or event) that raised it
    last_at           timestamptz NOT NULL,
    cleared_at        timestamptz,              -- the condition cleared (auto_clear resolves too)
    created_at        timestamptz NOT NULL DEFAULT now(),
    acknowledged_at   timestamptz,
    dispatched_at     timestamptz,
    resolved_at       timestamptz,
    closed_at         timestamptz,
    ack_due_at        timestamptz NOT NULL,
    close_due_at      timestamptz NOT NULL
);
-- At most one unfinished alert per (rule, sensor): a repeat folds into it.
CREATE UNIQUE INDEX alerts_open_per_rule_sensor ON alerts (rule_id, sensor_id)
    WHERE status IN ('open', 'acknowledged', 'dispatched') AND rule_id IS NOT NULL;
CREATE INDEX alerts_status_due ON alerts (ack_due_at) WHERE status = 'open';
CREATE INDEX alerts_area_time ON alerts (area_id, raised_at DESC);
CREATE INDEX alerts_time ON alerts (raised_at DESC);
CREATE INDEX alerts_geom ON alerts USING gist (geom);

-- Every change of every alert, append-only. Its id is the SSE event id (Last-Event-ID).
CREATE TABLE alert_events (
    id           bigserial PRIMARY KEY,
    alert_id     bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL,            -- engine, escalation, key:<id>:<name>, …
    action       text NOT NULL CHECK (action IN ('raised', 'repeated', 'acknowledged', 'dispatched', 'escalated',
                                                 'cleared', 'resolved', 'closed', 'reopened', 'note')),
    from_status  text,
    to_status    text,
    note         text,
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, id);

CREATE FUNCTION alert_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'alert_events is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER alert_events_no_change BEFORE UPDATE OR DELETE ON alert_events
    FOR EACH STATEMENT EXECUTE FUNCTION alert_events_append_only();

-- Wake SSE streams: the payload is the new event's id.
CREATE FUNCTION alert_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cimtwin_alert_events', NEW.id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER alert_events_notify AFTER INSERT ON alert_events
    FOR EACH ROW EXECUTE FUNCTION alert_events_notify();

-- Transactional outbox: written in the transaction that changes the alert, delivered after.
CREATE TABLE notification_outbox (
    id               bigserial PRIMARY KEY,
    alert_event_id   bigint NOT NULL REFERENCES alert_events (id) ON DELETE CASCADE,
    channel          text NOT NULL CHECK (channel IN ('webhook', 'mqtt')),
    party_id         bigint REFERENCES parties (id) ON DELETE CASCADE,
    target           text NOT NULL,      -- webhook URL or MQTT topic
    payload          jsonb NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notification_outbox_due ON notification_outbox (next_attempt_at) WHERE delivered_at IS NULL;
