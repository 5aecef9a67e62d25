-- Kafka positions of the consumers, stored in the same transaction as the data they produced: the
-- single source of truth on restart and rebalance. next_offset is the offset of the next record to read.
CREATE TABLE consumer_offsets (
    group_id    text NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL CHECK (partition >= 0),
    next_offset bigint NOT NULL CHECK (next_offset >= 0),
    consumer_id text NOT NULL,
    -- When the last batch of this partition was applied (the API's /v1/ops/lag shows it).
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
