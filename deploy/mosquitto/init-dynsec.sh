#!/bin/sh
# Create the dynamic-security file of a cluster broker before mosquitto starts.
#
# Runs in the official eclipse-mosquitto:2 image (it ships mosquitto_ctrl): the
# "mqtt-init-*" services of docker-compose.yml and the init container of
# helm/edge-cluster (a copy of this file: helm/edge-cluster/files/init-dynsec.sh).
# It does what cluster_orchestrator.broker.write_broker_files does for a broker the
# orchestrator starts itself (docs/broker.md):
#
#   * `mosquitto_ctrl dynsec init FILE ADMIN` with the password on stdin (never on a
#     command line), umask 077;
#   * defaultACLAccess forced to deny-by-default (publishClientReceive too: the
#     plain `dynsec init` allows it);
#   * an existing file is left alone, so node clients, roles and the admin password
#     survive restarts. Changing MQTT_ADMIN_PASSWORD later does not change the
#     stored admin password: see "Rotate tokens" in docs/operations.md.
#
# Environment:
#   MQTT_ADMIN_PASSWORD  (required) the dynsec admin password; the cluster
#                        orchestrator gets the same value as EDGE_BROKER_ADMIN_PASSWORD
#   MQTT_ADMIN_USERNAME  admin user name (default admin; EDGE_BROKER_ADMIN_USERNAME)
#   DYNSEC_FILE          default /mosquitto/data/dynamic-security.json
#   DYNSEC_OWNER         chown target when run as root (default mosquitto:mosquitto
#                        if that user exists)
#   MOSQUITTO_CTRL       default mosquitto_ctrl
set -eu

file="${DYNSEC_FILE:-/mosquitto/data/dynamic-security.json}"
user="${MQTT_ADMIN_USERNAME:-admin}"
ctrl="${MOSQUITTO_CTRL:-mosquitto_ctrl}"

if [ -s "$file" ]; then
    echo "init-dynsec: $file exists; keeping it (clients, roles and admin password unchanged)"
    exit 0
fi

password="${MQTT_ADMIN_PASSWORD:-}"
if [ -z "$password" ]; then
    echo "init-dynsec: MQTT_ADMIN_PASSWORD is not set" >&2
    exit 2
fi
# mosquitto_ctrl reads the password with a small buffer and silently truncates long
# ones; write_broker_files refuses more than 128 bytes for the same reason.
if [ "$(printf '%s' "$password" | wc -c)" -gt 128 ]; then
    echo "init-dynsec: MQTT_ADMIN_PASSWORD is longer than 128 bytes" >&2
    exit 2
fi
case "$user" in
    *[!A-Za-z0-9_.-]* | "")
        echo "init-dynsec: invalid MQTT_ADMIN_USERNAME: $user" >&2
        exit 2
        ;;
esac

umask 077
mkdir -p "$(dirname "$file")"
tmp="$file.init"
rm -f "$tmp"
printf '%s\n%s\n' "$password" "$password" | "$ctrl" dynsec init "$tmp" "$user" >/dev/null
# mosquitto_ctrl exits 0 even when it did not write the file: check it.
if [ ! -s "$tmp" ]; then
    echo "init-dynsec: mosquitto_ctrl dynsec init did not create $tmp" >&2
    exit 1
fi
# Deny by default. Only the defaultACLAccess object has "<type>": true|false pairs;
# role ACLs spell "acltype": "<type>".
sed -e 's/\("publishClientSend":[[:space:]]*\)true/\1false/' \
    -e 's/\("publishClientReceive":[[:space:]]*\)true/\1false/' \
    -e 's/\("subscribe":[[:space:]]*\)true/\1false/' \
    "$tmp" >"$tmp.acl"
if ! grep -q '"publishClientReceive":[[:space:]]*false' "$tmp.acl"; then
    echo "init-dynsec: could not set defaultACLAccess in $tmp" >&2
    rm -f "$tmp" "$tmp.acl"
    exit 1
fi
rm -f "$tmp"
chmod 600 "$tmp.acl"
if [ "$(id -u)" = 0 ]; then
    owner="${DYNSEC_OWNER:-}"
    if [ -z "$owner" ] && id mosquitto >/dev/null 2>&1; then
        owner="mosquitto:mosquitto"
    fi
    if [ -n "$owner" ]; then
        chown "$owner" "$tmp.acl"
    fi
fi
mv -f "$tmp.acl" "$file"
echo "init-dynsec: created $file with admin user '$user' (deny-by-default ACLs)"
