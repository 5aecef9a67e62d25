"""The dev stack uses the configured topic names (and consumer group) like its components do."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.settings import DevSettings
from devstack.stack import DevStack


def test_configured_topics_are_created_drained_and_shown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CITYINGEST_READINGS_TOPIC", "city-a.readings")
    monkeypatch.setenv("CITYINGEST_DLQ_TOPIC", "city-a.dlq")
    monkeypatch.setenv("CITYINGEST_KAFKA_PARTITIONS", "3")
    monkeypatch.setenv("CITYINGEST_GROUP_ID", "city-a-consumers")
    stack = DevStack(DevSettings(state_dir=tmp_path))
    assert stack._topics() == {"city-a.readings": 3, "city-a.dlq": 1}
    assert stack._group == "city-a-consumers"
    banner = stack.describe()
    assert "topics: city-a.readings (3 partitions), city-a.dlq" in banner
    assert "readings.dlq" not in banner
