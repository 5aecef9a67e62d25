-- The store is a TimescaleDB database: raw readings live in hypertables partitioned by time.
CREATE EXTENSION IF NOT EXISTS timescaledb;
