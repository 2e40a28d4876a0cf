-- Vendor payload profiles as data. A profile is versioned: each version is an immutable
-- row; a device keeps the version it was registered with until it is moved.
CREATE TABLE profiles (
    id          bigserial PRIMARY KEY,
    vendor_id   bigint NOT NULL REFERENCES vendors (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    version     integer NOT NULL CHECK (version >= 1),
    format      text NOT NULL,
    topic       text NOT NULL,
    document    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text,
    UNIQUE (vendor_id, name, version)
);

-- A version in use by a device cannot be deleted.
ALTER TABLE devices ADD COLUMN profile_id bigint REFERENCES profiles (id) ON DELETE RESTRICT;
CREATE INDEX devices_profile ON devices (profile_id) WHERE profile_id IS NOT NULL;

-- The profile version that decoded a pending device's last message, so onboarding can
-- create its sensors from that profile's channels.
ALTER TABLE pending_devices ADD COLUMN profile_id bigint REFERENCES profiles (id) ON DELETE SET NULL;

-- Replay after a fix: when, and what came of it.
ALTER TABLE dead_letters
    ADD COLUMN replay_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN last_replay_reason text;
CREATE INDEX dead_letters_device ON dead_letters (vendor_code, device_ext_id) WHERE replayed_at IS NULL;

-- Ingest workers reload profiles when this changes (cheap to poll).
CREATE TABLE profiles_state (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation  bigint NOT NULL DEFAULT 0
);
INSERT INTO profiles_state DEFAULT VALUES;

CREATE FUNCTION profiles_bump_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE profiles_state SET generation = generation + 1;
    RETURN NULL;
END $$;

CREATE TRIGGER profiles_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON profiles
    FOR EACH STATEMENT EXECUTE FUNCTION profiles_bump_generation();

-- Moving devices to another version must reach ingest workers at once too (they drop
-- their cached devices when the generation moves).
CREATE TRIGGER devices_profile_moved AFTER UPDATE OF profile_id ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION profiles_bump_generation();
