#!/bin/sh
# Entrypoint of the connection host's container image (connection-host/Dockerfile): turns the
# container's environment into the host's configuration, then runs the host in its place.
#
#   ENTRYPOINT_CONFIG_TOML     a whole configuration file; written to a file and given as --config
#   ENTRYPOINT_ADVERTISE_PORT  set cluster.advertise_url to http://<this container's IP>:<port>
#
# Both are removed from the environment before the host starts: the host reads every
# CONNECTION_HOST_* variable as a configuration field, and these are not fields.
set -eu

config=/etc/connection-host/connection-host.toml
if [ -n "${ENTRYPOINT_CONFIG_TOML:-}" ]; then
    config="${TMPDIR:-/tmp}/connection-host.toml"
    printf '%s\n' "$ENTRYPOINT_CONFIG_TOML" >"$config"
fi
unset ENTRYPOINT_CONFIG_TOML

# Other hosts of the cluster reach this one at its own address, which only the running task knows.
if [ -n "${ENTRYPOINT_ADVERTISE_PORT:-}" ] && [ -z "${CONNECTION_HOST_CLUSTER__ADVERTISE_URL:-}" ]; then
    ip=""
    if [ -n "${ECS_CONTAINER_METADATA_URI_V4:-}" ]; then
        # The container's metadata names its awsvpc address: "IPv4Addresses": ["10.0.1.23"].
        ip="$(curl -fsS --max-time 2 "$ECS_CONTAINER_METADATA_URI_V4" 2>/dev/null | tr -d ' \n\t' \
            | sed -n 's/.*"IPv4Addresses":\["\([0-9.]*\)".*/\1/p')" || ip=""
    fi
    if [ -z "$ip" ]; then
        # Outside ECS: the first address of the container's interfaces, never loopback.
        ip="$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -v -e '^127\.' -e '^$' -e ':' | head -n1)" || ip=""
    fi
    if [ -z "$ip" ]; then
        echo "docker-entrypoint: cannot find this container's IP address for cluster.advertise_url" >&2
        exit 1
    fi
    export CONNECTION_HOST_CLUSTER__ADVERTISE_URL="http://$ip:$ENTRYPOINT_ADVERTISE_PORT"
fi
unset ENTRYPOINT_ADVERTISE_PORT

# A --config given as an argument wins over the file above.
for arg in "$@"; do
    case "$arg" in
        -c | --config | --config=*) exec connection-host "$@" ;;
    esac
done
exec connection-host --config "$config" "$@"
