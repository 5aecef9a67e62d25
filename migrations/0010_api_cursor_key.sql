-- The key that signs the API's paging cursors when CITYINGEST_CURSOR_SECRET is not set. Every API
-- process of a deployment shares this database, so they all sign and check cursors with the same key
-- and a cursor issued by one replica is accepted by the others. The first API process that needs it
-- inserts 32 random bytes; the others read them (INSERT .. ON CONFLICT DO NOTHING, then SELECT).
CREATE TABLE api_cursor_key (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    secret     bytea NOT NULL CHECK (length(secret) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
