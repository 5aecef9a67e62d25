"""Settings of ``cityingest simulate``: every one is a documented flag, and bad values are refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cli.main import build_parser
from core.types import RejectReason
from simulator.malformed import MALFORMED_REASONS
from simulator.settings import SimulatorSettings
from tests.simulator.conftest import small_city


def test_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["simulate", "--help"])
    assert exited.value.code == 0
    # argparse wraps help text: compare with whitespace collapsed.
    text = " ".join(capsys.readouterr().out.split())
    for name, field in SimulatorSettings.model_fields.items():
        assert f"--{name.replace('_', '-')}" in text
        assert f"CITYINGEST_{name.upper()}" in text
        assert field.description
        assert " ".join(field.description.split()) in text


def test_malformed_reasons_default_to_every_device_fault() -> None:
    assert small_city().malformed_reasons == MALFORMED_REASONS


def test_malformed_reasons_from_a_comma_separated_list() -> None:
    settings = small_city(malformed_reasons="not_utf8, bad_topic,not_utf8")
    assert settings.malformed_reasons == (RejectReason.NOT_UTF8, RejectReason.BAD_TOPIC)


@pytest.mark.parametrize("reasons", ["internal_error", "store_rejected", "no_such_reason"])
def test_reasons_no_payload_causes_are_refused(reasons: str) -> None:
    with pytest.raises(ValidationError, match="malformed_reasons"):
        small_city(malformed_reasons=reasons)


def test_malformed_payloads_need_a_reason() -> None:
    with pytest.raises(ValidationError, match="malformed_reasons"):
        small_city(malformed_reasons="")
    assert small_city(malformed_reasons="", malformed_rate=0).malformed_reasons == ()


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_unit_share_is_a_share(share: float) -> None:
    with pytest.raises(ValidationError, match="non_canonical_unit_share"):
        small_city(non_canonical_unit_share=share)
