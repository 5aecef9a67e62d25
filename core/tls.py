"""The client TLS context to the MQTT broker, from the shared MQTT settings (bridge, API, simulator)."""

from __future__ import annotations

import ssl

from core.errors import ConfigError
from core.settings import MqttSettings


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """The client context for ``--mqtt-tls`` (certificate and host name verified), else None."""
    if not settings.mqtt_tls:
        if settings.mqtt_cert_file or settings.mqtt_ca_file:
            raise ConfigError("--mqtt-ca-file and --mqtt-cert-file need --mqtt-tls")
        return None
    try:
        context = ssl.create_default_context(cafile=settings.mqtt_ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.mqtt_cert_file:
            context.load_cert_chain(settings.mqtt_cert_file, settings.mqtt_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the MQTT TLS files: {exc}") from exc
    return context
