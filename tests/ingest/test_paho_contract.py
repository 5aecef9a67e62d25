"""The private parts of paho-mqtt that ingest/paho_client.py and ingest/records.py rely on still exist.

A paho release that renames or reshapes one of them fails here, naming it, instead of as a bridge that
silently stops receiving messages.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ingest.paho_client import OVERRIDDEN_METHODS, AsyncioPahoClient

VERSION = version("paho-mqtt")


def _advice(what: str) -> str:
    return (
        f"paho-mqtt {VERSION}: {what}. ingest/paho_client.py depends on it; review the override against "
        "this paho release before moving the pin in pyproject.toml"
    )


@pytest.mark.parametrize(("name", "params"), sorted(OVERRIDDEN_METHODS.items()))
def test_overridden_method_exists_with_its_parameters(name: str, params: tuple[str, ...]) -> None:
    original = getattr(paho.Client, name, None)
    assert original is not None, _advice(f"Client.{name} no longer exists")
    found = tuple(inspect.signature(original).parameters)
    assert found == params, _advice(f"Client.{name} now takes {found}, not {params}")
    assert getattr(AsyncioPahoClient, name) is not original, f"AsyncioPahoClient does not override {name}"


@pytest.mark.parametrize(
    ("caller", "call"),
    [
        ("_packet_read", "self._sock_recv("),
        ("_packet_handle", "self._handle_publish()"),
        ("_create_socket", "self._create_socket_connection()"),
    ],
)
def test_paho_still_calls_the_overridden_methods(caller: str, call: str) -> None:
    method = getattr(paho.Client, caller, None)
    assert method is not None, _advice(f"Client.{caller} no longer exists")
    assert call in inspect.getsource(method), _advice(f"Client.{caller} no longer calls {call}")


def test_private_attributes_the_overrides_read() -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    assert isinstance(getattr(client, "_in_packet", None), dict), _advice("Client._in_packet is gone")
    missing = {"command", "packet"} - set(client._in_packet)
    assert not missing, _advice(f"Client._in_packet has no {sorted(missing)}")
    assert hasattr(client, "_sock"), _advice("Client._sock is gone")


def test_message_keeps_its_raw_topic() -> None:
    message = paho.MQTTMessage(mid=7, topic=b"city/water/\xff/telemetry")
    assert getattr(message, "_topic", None) == b"city/water/\xff/telemetry", _advice(
        "MQTTMessage._topic changed"
    )
    assert message.mid == 7
    message.qos, message.dup, message.retain, message.payload = 1, False, True, b"{}"
    assert (message.qos, message.dup, message.retain, message.payload) == (1, False, True, b"{}")
