-- API keys of the REST API. A key is shown once as cik_<key_id>_<secret>; only the SHA-256 of the
-- secret is stored (the secret is 256 random bits, so a fast hash is enough: nothing to brute-force).
CREATE TABLE api_keys (
    key_id        text PRIMARY KEY,
    name          text NOT NULL,
    secret_sha256 bytea NOT NULL CHECK (length(secret_sha256) = 32),
    scopes        text[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
