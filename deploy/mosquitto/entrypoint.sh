#!/bin/sh
# Build the password file from secrets at start: the bridge account plus one account per device, given
# as "device-id:password" lines in the mqtt_devices secret (hashed by mosquitto_passwd, never stored
# plain), then exec Mosquitto. The paths can be overridden (the tests run this script outside Docker).
set -eu
: "${MQTT_BRIDGE_PASSWORD:?set MQTT_BRIDGE_PASSWORD}"
src=${CITYINGEST_MQTT_CONF_SRC:-/etc/cityingest}
conf_dir=${MOSQUITTO_CONF_DIR:-/mosquitto/config}
data_dir=${MOSQUITTO_DATA_DIR:-/mosquitto/data}
devices=${MQTT_DEVICES_SECRET:-/run/secrets/mqtt_devices}
passwd="$conf_dir/passwd"
cr=$(printf '\r')

cp "$src/mosquitto.conf" "$conf_dir/mosquitto.conf"
cp "$src/acl" "$conf_dir/acl"
# Built aside and moved into place: a half-written file never becomes the live one.
(umask 077 && : >"$passwd.new")
mosquitto_passwd -b "$passwd.new" bridge "$MQTT_BRIDGE_PASSWORD"
if [ -f "$devices" ]; then
  count=0
  # Blank lines and # comments are skipped; the last line needs no newline; CRLF files work.
  while IFS=: read -r user pass || [ -n "$user" ]; do
    user=${user%"$cr"}
    pass=${pass%"$cr"}
    case "$user" in '' | '#'*) continue ;; esac
    # The ACL substitutes the username into a topic: wildcards or separators there would widen it.
    case "$user" in *[!A-Za-z0-9._-]*)
      echo "entrypoint: device id '$user' may only contain A-Z a-z 0-9 . _ -" >&2
      exit 1 ;;
    esac
    if [ "$user" = bridge ]; then
      echo "entrypoint: 'bridge' is the bridge account, not a device id" >&2
      exit 1
    fi
    if [ -z "$pass" ]; then
      echo "entrypoint: device '$user' has no password" >&2
      exit 1
    fi
    mosquitto_passwd -b "$passwd.new" "$user" "$pass"
    count=$((count + 1))
  done <"$devices"
  echo "entrypoint: $count device accounts"
fi
mv "$passwd.new" "$passwd"
if [ "$(id -u)" = 0 ]; then
  # Mosquitto started as root drops to its own user, which must read the file and write its data.
  chown mosquitto:mosquitto "$passwd" "$data_dir"
fi
exec mosquitto -c "$conf_dir/mosquitto.conf"
