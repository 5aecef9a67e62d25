"""The device simulator behind ``cityingest simulate``: a realistic city publishing over MQTT.

:func:`generate` yields the messages without publishing (benchmarks, end-to-end tests);
:class:`Truth` accumulates what the pipeline must end up with; :func:`serve` publishes.
"""

from simulator.generate import Simulation, generate
from simulator.model import Device, Message, SimReading
from simulator.publisher import Publisher, serve
from simulator.settings import SimulatorSettings
from simulator.truth import Truth

__all__ = [
    "Device",
    "Message",
    "Publisher",
    "SimReading",
    "Simulation",
    "SimulatorSettings",
    "Truth",
    "generate",
    "serve",
]
