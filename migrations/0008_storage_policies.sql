-- Compression and retention of raw readings.
--
-- TimescaleDB's community edition (license 'timescale', the official Docker image) compresses old raw
-- chunks and drops expired ones in its own background jobs. The Apache edition has neither, so there
-- the consumer's maintenance task drops expired chunks itself. Which path is in force is decided here,
-- once, and recorded in store_features; the consumer reads it and never drops chunks twice.
-- Rollups are never compressed nor dropped.

-- Ages of the storage policies. Set at first migration from the custom settings
-- cityingest.raw_retention_days / cityingest.compress_after_days when present (e.g. as query parameters
-- of the migrating connection's DSN, or `ALTER DATABASE ... SET`), else the defaults below. Change
-- them later with UPDATE followed by `SELECT * FROM cityingest_apply_storage_policies()`.
CREATE TABLE store_settings (
    name        text PRIMARY KEY,
    value       interval NOT NULL CHECK (value > interval '0'),
    description text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- What the database can do and what this store decided to use; `detail` says why, for operators.
CREATE TABLE store_features (
    name       text PRIMARY KEY,
    enabled    boolean NOT NULL,
    detail     text NOT NULL,
    checked_at timestamptz NOT NULL DEFAULT now()
);

-- The pure decision: which storage policies a TimescaleDB with this license and these SQL functions
-- supports. Kept free of catalogue lookups so that both editions' answers can be tested anywhere.
CREATE FUNCTION cityingest_timescale_features(license text, has_policy_functions boolean)
RETURNS TABLE (name text, enabled boolean, detail text)
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    reason text;
BEGIN
    IF license IS NULL OR license = '' THEN
        reason := 'timescaledb license unknown';
    ELSIF license = 'apache' THEN
        reason := 'apache edition';
    ELSIF license <> 'timescale' THEN
        reason := format('unknown timescaledb license %L', license);
    ELSIF has_policy_functions IS NOT TRUE THEN
        reason := 'policy functions missing';
    END IF;
    IF reason IS NULL THEN
        RETURN QUERY VALUES
            ('compression', true, 'compression enabled: community edition'),
            ('retention_policy', true, 'retention policy enabled: timescaledb drops expired raw chunks');
    ELSE
        RETURN QUERY VALUES
            ('compression', false, 'compression disabled: ' || reason),
            ('retention_policy', false,
             'retention policy disabled: ' || reason || '; the consumer drops expired raw chunks');
    END IF;
END
$$;

-- Detect the edition, record the decision and (re)apply the policies with the ages in store_settings.
-- Idempotent: run it again after changing store_settings.
CREATE FUNCTION cityingest_apply_storage_policies()
RETURNS SETOF store_features
LANGUAGE plpgsql
AS $$
DECLARE
    has_functions boolean;
    compress_enabled boolean;
    retention_enabled boolean;
    compress_after interval;
    raw_retention interval;
BEGIN
    -- The Apache build ships these SQL functions too (they raise a license error), hence the license check.
    SELECT count(DISTINCT p.proname) = 2 INTO has_functions
      FROM pg_proc p
     WHERE p.proname IN ('add_compression_policy', 'add_retention_policy');

    INSERT INTO store_features AS f (name, enabled, detail)
    SELECT d.name, d.enabled, d.detail
      FROM cityingest_timescale_features(current_setting('timescaledb.license', true), has_functions) d
    ON CONFLICT (name) DO UPDATE
       SET enabled = excluded.enabled, detail = excluded.detail, checked_at = now();

    SELECT f.enabled INTO compress_enabled FROM store_features f WHERE f.name = 'compression';
    SELECT f.enabled INTO retention_enabled FROM store_features f WHERE f.name = 'retention_policy';
    SELECT s.value INTO compress_after FROM store_settings s WHERE s.name = 'compress_after';
    SELECT s.value INTO raw_retention FROM store_settings s WHERE s.name = 'raw_retention';

    IF compress_enabled THEN
        -- Segment by series: the only access path to raw readings names the device and metric, and
        -- the unique (device_id, metric, ts) constraint keeps working on compressed chunks.
        IF NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables h
                        WHERE h.hypertable_name = 'readings' AND h.compression_enabled) THEN
            ALTER TABLE readings SET (
                timescaledb.compress,
                timescaledb.compress_segmentby = 'device_id, metric',
                timescaledb.compress_orderby = 'ts DESC'
            );
        END IF;
        PERFORM remove_compression_policy('readings', if_exists => true);
        PERFORM add_compression_policy('readings', compress_after => compress_after);
    END IF;

    IF retention_enabled THEN
        PERFORM remove_retention_policy('readings', if_exists => true);
        PERFORM add_retention_policy('readings', drop_after => raw_retention);
    END IF;

    RETURN QUERY SELECT * FROM store_features ORDER BY name;
END
$$;

INSERT INTO store_settings (name, value, description) VALUES
    ('raw_retention',
     coalesce(nullif(current_setting('cityingest.raw_retention_days', true), '')::double precision, 90)
       * interval '1 day',
     'Raw readings older than this are dropped (rollups are kept).'),
    ('compress_after',
     coalesce(nullif(current_setting('cityingest.compress_after_days', true), '')::double precision, 7)
       * interval '1 day',
     'Raw chunks older than this are compressed (community edition only).');

SELECT cityingest_apply_storage_policies();
