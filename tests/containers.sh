#!/usr/bin/env bash
# The host's container image as a cluster, with podman: builds connection-host/Dockerfile's `prebuilt`
# target around a binary built on this machine, starts moto on loopback, and runs tests/tests/containers.rs
# (three host containers on the shared tables: cross-container delivery, a SIGKILL, a rolling restart).
# tests/run.sh runs it as its `containers` step; by hand, from the repository root or anywhere:
#
#   tests/containers.sh
#
# What it needs: podman, buildah, runc and debootstrap, installed with apt-get when missing (as root or with
# sudo); without them, or without a way to install them, it prints "containers: skipped — podman not
# available (reason)" and exits 0. No registry is needed: the Debian base image is made with debootstrap and
# `podman import` (localhost/debian:bookworm-slim, kept in podman's image store, so the next run reuses it; the
# slow part, 1.5 to 3 min, happens once). The host's binary: CONTAINERS_HOST_BIN (tests/run.sh passes its build
# step's), else `cargo build --workspace --bin connection-host`; it must run on Debian bookworm's glibc.
# It is copied to .image/ (ignored by git), the build context path the Dockerfile's `prebuilt` target reads.
#
# Environment: CARGO_TARGET_DIR is honoured; CI=true adds --locked to cargo. CONTAINERS_CONF, when set, is
# podman's configuration; otherwise one is written to .test-run/containers/ with runc and explicit ulimits,
# which sandboxes that refuse podman's defaults need. Logs: .test-run/containers/ (ignored by git).
# Exit status: 0 when the test passed or was skipped; otherwise non-zero.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BASE_IMAGE="localhost/debian:bookworm-slim"
IMAGE="localhost/connection-host:test"
DIR="$ROOT/.test-run/containers"
VENV="$ROOT/.venv-test"
PYTHON="${PYTHON:-python3}"
CARGO_FLAGS=()
if [[ "${CI:-}" == "true" ]]; then
    CARGO_FLAGS+=(--locked)
    export CARGO_INCREMENTAL=0
fi
MOTO_PID=""
TEST_PID=""

skip() {
    echo "containers: skipped — podman not available ($1)"
    exit 0
}

cleanup() {
    local rc=$?
    set +e
    # timeout passes the signal on to its process group: cargo and the test binary.
    if [[ -n "$TEST_PID" ]] && kill -0 "$TEST_PID" 2>/dev/null; then
        kill -TERM "$TEST_PID"
        wait "$TEST_PID" 2>/dev/null
    fi
    if [[ -n "$MOTO_PID" ]] && kill -0 "$MOTO_PID" 2>/dev/null; then
        kill -TERM "$MOTO_PID"
        wait "$MOTO_PID" 2>/dev/null
    fi
    # Containers the test left behind (it removes its own; a killed test cannot).
    if command -v podman >/dev/null 2>&1; then
        podman ps -aq --filter label=connection-host-test | xargs -r podman rm -f -t 0 >/dev/null 2>&1
    fi
    rm -rf "$DIR/rootfs"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Root runs apt-get itself; anyone else through sudo, without a password prompt.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo -n "$@"; fi
}

tools() {
    local missing=() tool
    for tool in podman buildah runc debootstrap; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null 2>&1 || skip "${missing[*]} missing, and no apt-get to install them"
    if [[ $(id -u) -ne 0 ]] && ! sudo -n true 2>/dev/null; then
        skip "${missing[*]} missing, and neither root nor sudo to install them"
    fi
    echo "installing ${missing[*]} (apt-get)"
    mkdir -p "$DIR"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0)
    if ! as_root "${apt[@]}" install podman buildah runc debootstrap </dev/null >"$DIR/apt.log" 2>&1; then
        as_root "${apt[@]}" update </dev/null >>"$DIR/apt.log" 2>&1 || true
        as_root "${apt[@]}" install podman buildah runc debootstrap </dev/null >>"$DIR/apt.log" 2>&1 \
            || skip "apt-get could not install them; see ${DIR#"$ROOT/"}/apt.log"
    fi
}

# The Debian mirror apt already uses (one-line or deb822 sources).
mirror() {
    {
        awk '/^deb /{print $2}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
        sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null
    } | grep -v security | head -n1
}

base_image() {
    if podman image exists "$BASE_IMAGE"; then return 0; fi
    local m
    m="$(mirror)"
    m="${m:-http://deb.debian.org/debian}"
    echo "making $BASE_IMAGE with debootstrap from $m (once)"
    rm -rf "$DIR/rootfs"
    as_root debootstrap --variant=minbase bookworm "$DIR/rootfs" "$m" >"$DIR/debootstrap.log" 2>&1 \
        || { tail -n 20 "$DIR/debootstrap.log" >&2; return 1; }
    as_root rm -rf "$DIR/rootfs"/var/cache/apt/archives/*.deb "$DIR/rootfs"/var/lib/apt/lists/*
    as_root tar -C "$DIR/rootfs" -c . | podman import - "$BASE_IMAGE" >>"$DIR/debootstrap.log" 2>&1
    as_root rm -rf "$DIR/rootfs"
}

tools
mkdir -p "$DIR"
if [[ -z "${CONTAINERS_CONF:-}" ]]; then
    # crun fails on some kernels' cgroup setups, and podman's default ulimits exceed what a sandbox may set.
    cat >"$DIR/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF
    export CONTAINERS_CONF="$DIR/containers.conf"
fi
podman info >/dev/null 2>"$DIR/podman-info.log" || skip "podman info fails: $(tail -n1 "$DIR/podman-info.log")"
echo "$(podman --version), $(buildah --version | cut -d' ' -f1-3)"

start=$SECONDS
base_image
echo "base image $BASE_IMAGE ($((SECONDS - start))s)"

bin="${CONTAINERS_HOST_BIN:-}"
if [[ -z "$bin" ]]; then
    cargo build "${CARGO_FLAGS[@]}" --workspace --bin connection-host
    bin="$(cargo metadata "${CARGO_FLAGS[@]}" --format-version 1 --no-deps \
        | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/connection-host"
fi
mkdir -p "$ROOT/.image"
cp "$bin" "$ROOT/.image/connection-host"
start=$SECONDS
# The previous image, removed once replaced: each new binary would otherwise leave one behind.
old="$(podman image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
podman build --pull=never --target prebuilt --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg BINARY=.image/connection-host -f connection-host/Dockerfile -t "$IMAGE" . \
    </dev/null >"$DIR/build.log" 2>&1 || { tail -n 30 "$DIR/build.log" >&2; exit 1; }
new="$(podman image inspect -f '{{.Id}}' "$IMAGE")"
[[ -n "$old" && "$old" != "$new" ]] && podman rmi "$old" >/dev/null 2>&1 || true
echo "image $IMAGE built ($((SECONDS - start))s, log: ${DIR#"$ROOT/"}/build.log)"

# moto (DynamoDB API) on a free loopback port, as the test step starts it.
[[ -x "$VENV/bin/python" ]] || { echo "containers: no $VENV (tests/run.sh --only tools makes it)" >&2; exit 1; }
port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$VENV/bin/python" "$ROOT/tests/moto_dynamodb.py" -H 127.0.0.1 -p "$port" </dev/null >"$DIR/moto.log" 2>&1 &
MOTO_PID=$!
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1 && break
    kill -0 "$MOTO_PID" 2>/dev/null || { cat "$DIR/moto.log" >&2; exit 1; }
    sleep 0.1
done

# --workspace, as the test step runs the tests: the same features, so nothing is built again after it. In the
# background and waited for, so that the INT/TERM traps run at once and cleanup stops it.
CONTAINERS_TEST_IMAGE="$IMAGE" DYNAMODB_TEST_ENDPOINT="http://127.0.0.1:$port" \
    timeout 600 cargo test "${CARGO_FLAGS[@]}" --workspace --test containers -- --nocapture </dev/null &
TEST_PID=$!
wait "$TEST_PID"
