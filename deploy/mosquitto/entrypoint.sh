#!/bin/sh
# Production Mosquitto start: TLS files from the secrets, then the dynamic security state, then exec
# Mosquitto. The state (deploy/mosquitto, docs/operations.md "Dynamic security"):
#   - first start (no dynamic-security.json in the data volume): `mosquitto_ctrl dynsec init` creates it
#     with the admin client cityingest-admin;
#   - every start: the admin's password is set from MQTT_ADMIN_PASSWORD in the file itself (so a rotated
#     secret applies without knowing the old one), then a broker on a loopback port, reachable by nothing
#     else and gone before the real one starts, applies through mosquitto_ctrl: the default ACL access,
#     the admin role without read access to the devices' topics, and the bridge's role and client
#     (cityingest-bridge, MQTT_BRIDGE_PASSWORD), recreated exactly.
#   Devices' clients and roles, created by the API, are never touched here.
# The paths can be overridden (the tests run this script outside Docker, on Debian's Mosquitto).
set -eu
: "${MQTT_ADMIN_PASSWORD:?set MQTT_ADMIN_PASSWORD}"
: "${MQTT_BRIDGE_PASSWORD:?set MQTT_BRIDGE_PASSWORD}"
src=${CITYINGEST_MQTT_CONF_SRC:-/etc/cityingest}
conf_dir=${MOSQUITTO_CONF_DIR:-/mosquitto/config}
data_dir=${MOSQUITTO_DATA_DIR:-/mosquitto/data}
secrets=${MQTT_SECRETS_DIR:-/run/secrets}
prefix=${CITYINGEST_MQTT_TOPIC_PREFIX:-city}
bootstrap_port=${MOSQUITTO_BOOTSTRAP_PORT:-8880}
admin=cityingest-admin
bridge=cityingest-bridge
dynsec="$data_dir/dynamic-security.json"

fail() {
  echo "entrypoint: $*" >&2
  exit 1
}

# The eclipse-mosquitto image and Debian install the plugin in different places.
plugin=${MOSQUITTO_DYNSEC_PLUGIN:-}
if [ -z "$plugin" ]; then
  for candidate in /usr/lib/mosquitto_dynamic_security.so /usr/lib/*-linux-gnu/mosquitto_dynamic_security.so; do
    if [ -f "$candidate" ]; then
      plugin=$candidate
      break
    fi
  done
fi
[ -n "$plugin" ] && [ -f "$plugin" ] || fail "mosquitto_dynamic_security.so not found: set MOSQUITTO_DYNSEC_PLUGIN"
# The prefix becomes the bridge's ACL filter: a wildcard there would widen it.
case "$prefix" in '' | *[!A-Za-z0-9._/-]* | /* | */ | *//*)
  fail "CITYINGEST_MQTT_TOPIC_PREFIX '$prefix' may only contain A-Z a-z 0-9 . _ - and inner /" ;;
esac

umask 077
if [ "$(id -u)" = 0 ]; then
  owner=mosquitto:mosquitto
else
  owner=
fi

# TLS: Mosquitto reads these as user mosquitto, and a secret mounted by Compose keeps its host owner.
mkdir -p "$conf_dir/tls"
for pair in mqtt_server_cert:server.crt mqtt_server_key:server.key mqtt_device_ca:device-ca.crt; do
  secret=${pair%%:*}
  [ -s "$secrets/$secret" ] || fail "secret $secrets/$secret is missing or empty"
  cp "$secrets/$secret" "$conf_dir/tls/${pair#*:}.new"
  mv "$conf_dir/tls/${pair#*:}.new" "$conf_dir/tls/${pair#*:}"
done

sed "s|^plugin .*|plugin $plugin|" "$src/mosquitto.conf" >"$conf_dir/mosquitto.conf.new"
case "${MQTT_CLIENT_CERT_LISTENER:-false}" in
  true) { echo; cat "$src/client-cert-listener.conf"; } >>"$conf_dir/mosquitto.conf.new" ;;
  false) ;;
  *) fail "MQTT_CLIENT_CERT_LISTENER must be true or false" ;;
esac
mv "$conf_dir/mosquitto.conf.new" "$conf_dir/mosquitto.conf"

work=$(mktemp -d)
bootstrap_pid=
cleanup() {
  if [ -n "$bootstrap_pid" ]; then
    kill "$bootstrap_pid" 2>/dev/null || true
    wait "$bootstrap_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# The admin's password hash, from a file `dynsec init` writes for it alone, replaces the one in the
# state: the three lines "password", "salt", "iterations" of the client whose username is the admin's.
mosquitto_ctrl dynsec init "$work/admin.json" "$admin" "$MQTT_ADMIN_PASSWORD" >/dev/null
if [ -f "$dynsec" ]; then
  awk -v user="\"$admin\"" -v fresh="$work/admin.json" '
    function key(line,  k) { k = line; sub(/^[ \t]*"/, "", k); sub(/".*/, "", k); return k }
    function bare(line) { sub(/,[ \t]*$/, "", line); return line }
    BEGIN {
      while ((getline line <fresh) > 0)
        if (line ~ /^[ \t]*"(password|salt|iterations)"[ \t]*:/) hash[key(line)] = bare(line)
    }
    /^[ \t]*"username"[ \t]*:/ { inside = index($0, user) > 0 }
    inside && /^[ \t]*"(password|salt|iterations)"[ \t]*:/ {
      k = key($0); print hash[k] ($0 ~ /,[ \t]*$/ ? "," : ""); done[k] = 1; next
    }
    { print }
    END { exit !(done["password"] && done["salt"] && done["iterations"]) }
  ' "$dynsec" >"$work/state.json" || fail "no password of client $admin found in $dynsec"
  cp "$work/state.json" "$dynsec.new"
  echo "entrypoint: dynamic security state found, admin password set from the secret"
else
  # Written here rather than taken from `dynsec init` as it is: the stock admin role may also read
  # every topic, and the API needs only the control topics (and $SYS).
  hash=$(sed -nE 's/,[[:space:]]*$//; /^[[:space:]]*"(password|salt|iterations)"[[:space:]]*:/p' "$work/admin.json" | sed '$!s/$/,/')
  [ "$(echo "$hash" | wc -l)" = 3 ] || fail "unexpected output of mosquitto_ctrl dynsec init"
  cat >"$dynsec.new" <<JSON
{
	"defaultACLAccess": {"publishClientSend": false, "publishClientReceive": true, "subscribe": false, "unsubscribe": true},
	"clients": [{
		"username": "$admin",
		"textname": "cityingest API (dynamic security admin)",
		"roles": [{"rolename": "admin"}],
$hash
	}],
	"groups": [],
	"roles": [{
		"rolename": "admin",
		"acls": [
			{"acltype": "publishClientSend", "topic": "\$CONTROL/dynamic-security/#", "allow": true},
			{"acltype": "publishClientReceive", "topic": "\$CONTROL/dynamic-security/#", "allow": true},
			{"acltype": "subscribePattern", "topic": "\$CONTROL/dynamic-security/#", "allow": true},
			{"acltype": "publishClientReceive", "topic": "\$SYS/#", "allow": true},
			{"acltype": "subscribePattern", "topic": "\$SYS/#", "allow": true}
		]
	}]
}
JSON
  echo "entrypoint: dynamic security state created"
fi
mv "$dynsec.new" "$dynsec"
if [ -n "$owner" ]; then
  # Mosquitto started as root drops to its own user, which must read the files and write its data.
  chown -R "$owner" "$conf_dir/tls" "$data_dir"
fi

# The bootstrap broker: loopback only, no persistence (the real broker's data is not opened).
cat >"$work/bootstrap.conf" <<EOF
per_listener_settings false
allow_anonymous false
plugin $plugin
plugin_opt_config_file $dynsec
listener $bootstrap_port 127.0.0.1
persistence false
log_dest stderr
log_type error
log_type warning
EOF
mosquitto -c "$work/bootstrap.conf" 2>"$work/bootstrap.log" &
bootstrap_pid=$!

# ctl [-ok MESSAGE] COMMAND ARGS...: a dynsec command as the admin on the bootstrap broker. mosquitto_ctrl
# 2.0 exits 0 on errors, so its output decides; only the error MESSAGE (if given) is accepted.
ctl() {
  ok=
  if [ "$1" = -ok ]; then
    ok=$2
    shift 2
  fi
  out=$(mosquitto_ctrl -h 127.0.0.1 -p "$bootstrap_port" -u "$admin" -P "$MQTT_ADMIN_PASSWORD" dynsec "$@" 2>&1) || true
  case "$out" in
    *Error*)
      if [ -n "$ok" ]; then
        case "$out" in *"$ok"*) return 0 ;; esac
      fi
      echo "entrypoint: dynsec $1: $(echo "$out" | grep Error)" >&2
      return 1 ;;
  esac
  printf '%s\n' "$out"
}

tries=0
until ctl getDefaultACLAccess >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 100 ] || ! kill -0 "$bootstrap_pid" 2>/dev/null; then
    cat "$work/bootstrap.log" >&2
    fail "the bootstrap broker did not accept the admin on 127.0.0.1:$bootstrap_port"
  fi
  sleep 0.2
done

ctl setDefaultACLAccess publishClientSend deny >/dev/null
ctl setDefaultACLAccess publishClientReceive allow >/dev/null
ctl setDefaultACLAccess subscribe deny >/dev/null
ctl setDefaultACLAccess unsubscribe allow >/dev/null

# The bridge may subscribe under the prefix, shared or not (Mosquitto 2.0's dynamic security checks a
# shared subscription with its $share/<group>/ part), and to the broker's uptime (the healthcheck),
# nothing else. Recreated on every start: exactly this.
ctl -ok "Client not found" deleteClient "$bridge" >/dev/null
ctl -ok "Role not found" deleteRole "$bridge" >/dev/null
ctl createRole "$bridge" >/dev/null
ctl addRoleACL "$bridge" subscribePattern "$prefix/#" allow >/dev/null
ctl addRoleACL "$bridge" subscribePattern "\$share/+/$prefix/#" allow >/dev/null
ctl addRoleACL "$bridge" subscribePattern '$SYS/broker/uptime' allow >/dev/null
ctl createClient "$bridge" -p "$MQTT_BRIDGE_PASSWORD" >/dev/null
ctl addClientRole "$bridge" "$bridge" >/dev/null

kill "$bootstrap_pid"
wait "$bootstrap_pid" || true
bootstrap_pid=
trap - EXIT INT TERM
rm -rf "$work"
chmod 600 "$dynsec"
echo "entrypoint: bridge account $bridge set, topic prefix $prefix"
exec mosquitto -c "$conf_dir/mosquitto.conf"
