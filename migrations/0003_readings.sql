-- Raw readings, one row per (device, metric, ts): a retransmitted reading is stored once (first wins).
-- Chunks of one day: at 10,000 devices x several metrics per minute a day is ~40M rows, whose unique
-- index still fits comfortably in memory while inserting, and retention drops whole days.
CREATE TABLE readings (
    device_id text NOT NULL,
    metric    text NOT NULL,
    ts        timestamptz NOT NULL,
    value     double precision NOT NULL,
    flags     smallint NOT NULL DEFAULT 0,
    CONSTRAINT readings_device_metric_ts_key UNIQUE (device_id, metric, ts)
);

-- No default ts index: every query on raw readings names the device and metric, and each extra
-- index costs insert throughput. Rollups answer the city-wide queries.
SELECT create_hypertable(
    'readings', 'ts',
    chunk_time_interval => interval '1 day',
    create_default_indexes => false
);
