-- Rollups per device and metric at 1 hour, 1 day and 1 calendar month (UTC), maintained by the
-- consumer in the same transaction that inserts the raw readings. Rollups are never dropped.
--   count, sum, sum_sq       mean and variance: mean = sum / count
--   min, max                 extremes
--   flagged                  readings flagged OUT_OF_RANGE or NO_TIMESTAMP (flags & 3 <> 0)
--   first_ts/first_value,    earliest and latest reading of the bucket
--   last_ts/last_value
--   increase                 counter metrics only (NULL for gauges): the sum of each reading's
--                            reset-aware increase over its predecessor in time (see consumers/rollup.py)
CREATE TABLE readings_hourly (
    device_id   text NOT NULL,
    metric      text NOT NULL,
    bucket      timestamptz NOT NULL,
    count       bigint NOT NULL,
    sum         double precision NOT NULL,
    sum_sq      double precision NOT NULL,
    min         double precision NOT NULL,
    max         double precision NOT NULL,
    flagged     bigint NOT NULL,
    first_ts    timestamptz NOT NULL,
    first_value double precision NOT NULL,
    last_ts     timestamptz NOT NULL,
    last_value  double precision NOT NULL,
    increase    double precision,
    PRIMARY KEY (device_id, metric, bucket)
) WITH (fillfactor = 70);  -- room for HOT updates: most batches update rows that already exist

CREATE TABLE readings_daily (LIKE readings_hourly INCLUDING ALL) WITH (fillfactor = 70);
CREATE TABLE readings_monthly (LIKE readings_hourly INCLUDING ALL) WITH (fillfactor = 70);

-- City-wide queries ("all water meters in March") scan by bucket.
CREATE INDEX readings_hourly_bucket_idx ON readings_hourly (bucket);
CREATE INDEX readings_daily_bucket_idx ON readings_daily (bucket);
CREATE INDEX readings_monthly_bucket_idx ON readings_monthly (bucket);

-- The counter increase rule of consumers/rollup.py: a reading's reset-aware increase over the previous
-- reading of its series (NULL prev: the first reading, increase 0; a drop: the meter restarted from 0).
CREATE FUNCTION counter_increase(prev double precision, value double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN prev IS NULL THEN 0 WHEN value >= prev THEN value - prev ELSE GREATEST(value, 0) END $$;
