-- The API's city-wide monthly queries (statistics, coverage) select one metric over a few months:
-- the rollup's primary key leads with device_id, and the bucket index alone reads every metric.
-- The monthly table has one row per device, metric and month, so this index costs the consumer little.
CREATE INDEX readings_monthly_metric_bucket_idx ON readings_monthly (metric, bucket)
    INCLUDE (device_id, count, sum, min, max, flagged, increase);
