"""One flat hierarchy of cityingest errors; callers branch on the class (and ``retriable``), never on text."""

from __future__ import annotations

from typing import ClassVar

from core.types import RejectReason


class CityIngestError(Exception):
    """Root of every error cityingest raises on purpose."""

    retriable: ClassVar[bool] = False


class ConfigError(CityIngestError):
    """Settings are missing or invalid; fix the configuration and start again."""


class Rejected(CityIngestError):
    """Input that can never be taken as it is: it is dead-lettered with ``reason``, never retried."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class RejectedPayload(Rejected):
    """A device payload or one of its readings is invalid; it is dead-lettered with ``reason``."""


class EnvelopeError(Rejected):
    """A Kafka record is not a valid readings envelope; it is dead-lettered, never retried."""


class MigrationError(CityIngestError):
    """The database schema cannot be brought up to date (edited migration, missing extension, ...)."""


class ServiceUnavailable(CityIngestError):
    """A dependency (database, Kafka, MQTT broker) cannot be reached right now; try again later."""

    retriable: ClassVar[bool] = True


class StoreUnavailable(ServiceUnavailable):
    """The database cannot be reached, lost its connection or is out of a resource; try again later."""


class StoreRejectedData(CityIngestError):
    """The database refused the data it was given (SQLSTATE classes 22, 23, 54: invalid or conflicting
    values, a limit): the same data would be refused again, so it is dead-lettered or answered 4xx."""

    retriable: ClassVar[bool] = False


class BrokerUnavailable(ServiceUnavailable):
    """Kafka or the MQTT broker cannot be reached."""


class BrokerRejectedRecord(CityIngestError):
    """Kafka refuses one record for good (too large for the producer, broker or topic): retrying cannot help,
    the record is dead-lettered with what fits and the others flow on."""


class BrokerRefused(CityIngestError):
    """Kafka or the MQTT broker refuses this component for good (authorization, configuration, protocol
    version): retrying in-process cannot help; the component fails so its supervisor restarts it."""


class DynsecUnavailable(BrokerUnavailable):
    """The broker's dynamic security plugin cannot be reached or did not answer in time."""


class DynsecRefused(CityIngestError):
    """The dynamic security plugin refused a command (its ``error`` text is the message)."""


class DynsecNotFound(DynsecRefused):
    """The client or role a dynamic security command names does not exist."""


class DynsecExists(DynsecRefused):
    """The client, role or ACL a dynamic security command creates already exists."""
