#!/bin/sh
# Build the password file from secrets at start: the bridge account plus any device accounts given as
# "device-id:password" lines in /run/secrets/mqtt_devices (hashed by mosquitto_passwd, never stored plain).
set -eu
: "${MQTT_BRIDGE_PASSWORD:?set MQTT_BRIDGE_PASSWORD}"
passwd=/mosquitto/config/passwd
cp /etc/cityingest/mosquitto.conf /mosquitto/config/mosquitto.conf
cp /etc/cityingest/acl /mosquitto/config/acl
: >"$passwd"
mosquitto_passwd -b "$passwd" bridge "$MQTT_BRIDGE_PASSWORD"
if [ -f /run/secrets/mqtt_devices ]; then
  while IFS=: read -r user pass; do
    [ -n "$user" ] && mosquitto_passwd -b "$passwd" "$user" "$pass"
  done </run/secrets/mqtt_devices
fi
chown mosquitto:mosquitto "$passwd" /mosquitto/data
chmod 0700 "$passwd"
exec mosquitto -c /mosquitto/config/mosquitto.conf
