-- Device MQTT credentials issued by the API (POST /v1/devices/{id}/credentials). The database is the
-- source of truth; the broker's dynamic security plugin is kept in step by the API's reconciler.
--
-- No password is stored, in clear or encrypted: a password is HMAC-SHA256(key, device id, nonce) with a
-- key held only by the API processes (CITYINGEST_DEVICE_CREDENTIAL_KEY), so the reconciler can give it
-- back to a broker that lost it while this table alone reveals nothing. password_hash (scrypt, per-secret
-- salt) lets the API check a derivation before it is pushed (a changed key is detected, never pushed).
CREATE TABLE device_credentials (
    credential_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id            text NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    -- 1 for the first credential of a device, +1 on every rotation.
    generation           integer NOT NULL CHECK (generation >= 1),
    nonce                bytea NOT NULL CHECK (length(nonce) = 32),
    -- scrypt$<n>$<r>$<p>$<salt base64>$<hash base64>
    password_hash        text NOT NULL CHECK (password_hash LIKE 'scrypt$%'),
    -- Which derivation key made the password (a fingerprint of the key, not the key): a password made
    -- with another key than the API's current one cannot be restored and is reported, never pushed.
    key_id               text NOT NULL,
    issued_at            timestamptz NOT NULL DEFAULT now(),
    revoked_at           timestamptz,
    certificate_serial   text,
    certificate_sha256   text,
    certificate_not_after timestamptz,
    UNIQUE (device_id, generation),
    CHECK (revoked_at IS NULL OR revoked_at >= issued_at)
);

-- At most one live credential per device.
CREATE UNIQUE INDEX device_credentials_live_idx ON device_credentials (device_id) WHERE revoked_at IS NULL;
