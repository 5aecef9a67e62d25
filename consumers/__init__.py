"""Kafka -> TimescaleDB consumer: applies reading batches exactly once and maintains the rollups."""
