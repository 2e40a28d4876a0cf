-- Core registry: vendors, their devices, and each device's measured channels (sensors).
CREATE EXTENSION IF NOT EXISTS postgis;

CREATE TABLE vendors (
    id          bigserial PRIMARY KEY,
    code        text NOT NULL UNIQUE CHECK (code ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    id          bigserial PRIMARY KEY,
    vendor_id   bigint NOT NULL REFERENCES vendors (id) ON DELETE CASCADE,
    -- The id the device uses on the wire; topic-safe (no / + # or spaces).
    ext_id      text NOT NULL CHECK (ext_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'),
    name        text,
    model       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (vendor_id, ext_id)
);

CREATE TABLE sensors (
    id          bigserial PRIMARY KEY,
    device_id   bigint NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    channel     text NOT NULL CHECK (channel ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'),
    quantity    text NOT NULL,
    unit        text NOT NULL,
    min_value   double precision,
    max_value   double precision,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_id, channel),
    CHECK (min_value IS NULL OR max_value IS NULL OR min_value <= max_value)
);

-- Messages that could not be stored, kept with their raw bytes. Identical
-- messages (same topic, payload and reason) fold into one row with a count.
CREATE TABLE dead_letters (
    id                 bigserial PRIMARY KEY,
    digest             bytea NOT NULL UNIQUE,
    topic              text NOT NULL,
    vendor_code        text,
    device_ext_id      text,
    reason_code        text NOT NULL,
    reason             text NOT NULL,
    payload            bytea NOT NULL,
    payload_size       integer NOT NULL,
    first_received_at  timestamptz NOT NULL,
    last_received_at   timestamptz NOT NULL,
    occurrences        integer NOT NULL DEFAULT 1,
    replayed_at        timestamptz
);
CREATE INDEX dead_letters_vendor_time ON dead_letters (vendor_code, last_received_at DESC);
CREATE INDEX dead_letters_reason_time ON dead_letters (reason_code, last_received_at DESC);

-- Devices that published before they were registered, for their vendor to onboard.
CREATE TABLE pending_devices (
    vendor_code    text NOT NULL,
    ext_id         text NOT NULL,
    first_seen     timestamptz NOT NULL,
    last_seen      timestamptz NOT NULL,
    messages       bigint NOT NULL DEFAULT 1,
    last_topic     text NOT NULL,
    last_payload   bytea NOT NULL,
    PRIMARY KEY (vendor_code, ext_id)
);
