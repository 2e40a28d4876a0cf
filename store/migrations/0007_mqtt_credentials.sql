-- Per-vendor MQTT credentials, enforced by the broker: cimtwin/broker_auth.py writes
-- Mosquitto's password file and ACL file from this table and makes the broker reload them.
--
-- The username is the vendor's code. The ACL gives vendors their rights through pattern rules
-- (`pattern write cim/v1/%u/#`, `pattern write vendors/%u/#`), so a username can publish only
-- under its own vendor's prefixes; and pattern rules are what make Mosquitto deny every
-- publish from a client whose client id or username contains + or #. Hence one active
-- credential per vendor (the password file holds one hash per username).
--
-- Only the hash is kept, in Mosquitto's own format ($7$ = PBKDF2-SHA512, a 12-byte salt and a
-- 64-byte key, both base64), so the password file is written without the password ever being
-- stored. The password is shown once, when the credential is made.

-- For the composite key below: a credential's username is its vendor's code, always.
ALTER TABLE vendors ADD CONSTRAINT vendors_id_code_key UNIQUE (id, code);

CREATE TABLE mqtt_credentials (
    id             bigserial PRIMARY KEY,
    vendor_id      bigint NOT NULL,
    -- Topic-safe: no + # / or spaces (the vendor code's own rule).
    username       text NOT NULL CHECK (username ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    password_hash  text NOT NULL
                   CHECK (password_hash ~ '^\$7\$[1-9][0-9]{0,6}\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==$'),
    created_at     timestamptz NOT NULL DEFAULT now(),
    created_by     text NOT NULL,
    revoked_at     timestamptz,
    revoked_by     text,
    FOREIGN KEY (vendor_id, username) REFERENCES vendors (id, code) ON DELETE CASCADE ON UPDATE CASCADE,
    CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);
CREATE UNIQUE INDEX mqtt_credentials_one_active ON mqtt_credentials (username) WHERE revoked_at IS NULL;
CREATE INDEX mqtt_credentials_vendor ON mqtt_credentials (vendor_id, id);
