-- API keys with roles, and the audit log.

-- A key is shown once, when it is made. Only its SHA-256 is kept (the key is 256 random
-- bits, so a plain hash is enough); `prefix` is its short public part, for telling keys apart.
CREATE TABLE api_keys (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role          text NOT NULL CHECK (role IN ('admin', 'operator', 'analyst', 'vendor')),
    vendor_id     bigint REFERENCES vendors (id) ON DELETE CASCADE,
    prefix        text NOT NULL UNIQUE,
    secret_hash   bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    -- A vendor key belongs to exactly one vendor; no other key belongs to any.
    CHECK ((role = 'vendor') = (vendor_id IS NOT NULL))
);
CREATE INDEX api_keys_vendor ON api_keys (vendor_id) WHERE vendor_id IS NOT NULL;

-- Who did what to which object. Append-only: UPDATE and DELETE are refused by a trigger.
-- (TRUNCATE, which only the table's owner may run, still empties it: the test suite does.)
CREATE TABLE audit_log (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    action  text NOT NULL,
    target  text NOT NULL,
    detail  jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_actor ON audit_log (actor, at DESC);
CREATE INDEX audit_log_action ON audit_log (action, at DESC);
CREATE INDEX audit_log_target ON audit_log (target text_pattern_ops);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
