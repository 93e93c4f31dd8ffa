#!/usr/bin/env bash
# The project's one test command (CI runs it through .ci/run). From the repository root or anywhere:
#
# Where the tests are: each crate's own (connection-host/tests/, functions/tests/, unit tests in src/), the
# end-to-end tests against real host processes and function binaries (tests/tests/), all on one harness, the test
# kit (tests/kit, package test-kit: hosts in-process and as processes, the DynamoDB test endpoint and tables,
# WebSocket and SDK clients, the store fault proxy, the network fault proxy (chaos.rs; by hand: the
# fault-proxy binary), and eventually() to wait for an event instead of sleeping).
#
#   tests/run.sh                        every step, in this order:
#     tools        Python venv .venv-test/ with the pinned test tools (kosoku, moto), created/installed only if missing
#     fmt          cargo fmt --all -- --check, for the workspace and for connection-host/fuzz
#     build        cargo build --workspace --all-targets (debug); the handler SDK (ws-handler) also without
#                  its default features, checked to leave out the DynamoDB SDK, reqwest and jsonwebtoken
#     clippy       cargo clippy --workspace --all-targets -- -D warnings
#     test         cargo test --workspace (all unit and integration tests, including tests/tests/layering.rs,
#                  which keeps connection-host's imports pointing down its layers), with a moto server (DynamoDB API)
#                  started on a free loopback port for the test run and DYNAMODB_TEST_ENDPOINT pointing at it;
#                  a DYNAMODB_TEST_ENDPOINT given by the caller (e.g. LocalStack) is used instead, and moto is
#                  not started; installs Debian's prometheus (apt-get) when missing, for
#                  tests/tests/prometheus.rs, which scrapes a host with a real Prometheus; with moto, first
#                  tests/moto_check.py (that tests/moto_dynamodb.py's own serialisation answers as moto's would)
#     infra        the templates of infra/: cfn-lint on each, `sam validate --lint` on the SAM ones (offline),
#                  then tests/infra_deploy.py transforms managed.yaml with aws-sam-translator and deploys it and
#                  self-hosted.yaml to moto's CloudFormation (its own moto, tests/infra_moto.py, on a free
#                  loopback port), checking the tables, roles, functions, load balancers and ECS resources that
#                  come up; also localstack/'s table definitions (created on moto), compose file and host
#                  configuration, and the image's entrypoint; installs cfn-lint, aws-sam-cli and boto3 (pinned)
#                  into the venv when missing
#     monitoring   infra/monitoring/: `promtool check rules` on the alert rules, `promtool test rules` (each alert
#                  fires on a synthetic series, normal values fire none), `promtool check config` on the example
#                  scrape config, and tests/monitoring_check.py (the Grafana dashboard parses and it and the
#                  alerts query only metrics of the catalogue); installs Debian's prometheus (apt-get, with
#                  promtool) when missing, as the test step does for the end-to-end test that scrapes a host
#     conformance  Autobahn cases 1-10 (kosoku, 12.* and 13.* = permessage-deflate excluded) against the
#                  host binary started with tests/conformance.toml; fails on any FAILED / WRONG CODE / ERROR
#     fuzz         the libFuzzer targets in connection-host/fuzz (route selection, proxy responses, management
#                  paths), built with coverage instrumentation on the stable toolchain (and clippy), and run FUZZ_SECONDS
#                  each from the seeds in connection-host/fuzz/seeds; a crash fails the step and leaves its
#                  input in .test-run/fuzz/TARGET/
#     js           the client library clients/js: npm ci, tsc build (dist/ and the demo page's copy in
#                  functions/web/lib/), its unit tests (node --test, fake timers), and an `npm pack` tarball
#                  that installs and imports in a scratch project
#     browser      the demo chat page (functions/web) in headless Chromium against the host running
#                  functions/demo.toml (tests/browser/chat.test.mjs); the client library in Chromium against
#                  the host running tests/browser/client-host.toml through a fault proxy (client.test.mjs:
#                  offline, black hole, restart, kill; reliable mode, 1,000 messages each way); reliable mode
#                  through a SIGKILL of the host holding the session, in a cluster of three with durability
#                  "store" on moto (started as in the test step, or DYNAMODB_TEST_ENDPOINT), resumed on
#                  another host with 1,000 messages each way exactly once and in order (cluster.test.mjs); its token
#                  placements against the host's JWT authorizer with an expired token refreshed (auth.test.mjs);
#                  the reconnect storm of 1,000 Node clients across a host restart (storm.test.mjs, prints the
#                  histogram); the host's status page under load (tests/browser/status.test.mjs; its
#                  screenshot is kept as .test-run/artifacts/status-page.png);
#                  installs Debian's chromium (apt-get) and playwright-core (npm ci in tests/browser/) when
#                  missing, and builds the host and ws-handler (and, without the js step, the library)
#     containers   the host's container image (connection-host/Dockerfile, target `prebuilt`, around the build
#                  step's binary) as a cluster of three containers with podman, against moto: cross-container
#                  delivery, a SIGKILL, a rolling restart (tests/containers.sh, tests/tests/containers.rs);
#                  installs podman, buildah, runc and debootstrap (apt-get) when missing, and makes a Debian
#                  base image with debootstrap once; says "containers: skipped" and passes without podman
#     chaos        reliable delivery under chaos (tests/tests/reliable_chaos.rs): 50 clients × 2,000 messages
#                  each way (about 15 minutes) on a moto of its own, three hosts (a release build, `cargo build
#                  --release -p connection-host`), connections reset and black-holed every 0.5–3 s, one host
#                  SIGKILLed; fails on any loss, duplicate or reordering; then the same with plain clients for
#                  a minute, whose losses it prints (CHAOS_CLIENTS, CHAOS_MESSAGES, CHAOS_RUN_SECS change it;
#                  connection-host/SESSIONS.md, "The chaos test")
#   tests/run.sh --only conformance     only the named steps (repeatable, or comma-separated: --only fmt,clippy);
#                                       conformance builds the workspace itself when run without build
#
# Environment: CARGO_TARGET_DIR is honoured. DYNAMODB_TEST_ENDPOINT: see the test step. CI=true adds --locked
# to cargo and turns off incremental builds. KOSOKU_PARALLELISM (default 4).
# FUZZ_SECONDS (default 20): how long each fuzz target runs.
# PYTHON (default python3) creates the venv. Output of the conformance run and moto's log: .test-run/ (ignored by git).
# The js and browser steps need Node.js 20+ (node, npm); browser also root or sudo when chromium is not installed
# yet, and a file descriptor limit (ulimit -n) of at least 2,100 for the storm. The test and monitoring steps need
# root or sudo when prometheus is not installed yet.
# Exit status: 0 when every step passed; otherwise non-zero, with the failing step named on stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ALL_STEPS=(tools fmt build clippy test infra monitoring conformance fuzz js browser containers chaos)
KOSOKU_VERSION="0.1.0"
MOTO_VERSION="5.2.5"
# The infra step's tools (aws-sam-cli brings aws-sam-translator; pinned too, since the transform uses it).
CFN_LINT_VERSION="1.58.0"
SAM_CLI_VERSION="1.170.0"
SAM_TRANSLATOR_VERSION="1.115.0"
BOTO3_VERSION="1.43.108"
VENV="$ROOT/.venv-test"
RUN_DIR="$ROOT/.test-run"
PYTHON="${PYTHON:-python3}"
KOSOKU_PARALLELISM="${KOSOKU_PARALLELISM:-4}"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
FUZZ_TARGETS=(route_selection proxy_response management_path)

# The header comment above, from line 2 to the first line that is not a comment.
usage() { sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; }

only=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --only) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; IFS=, read -ra s <<<"$2"; only+=("${s[@]}"); shift 2 ;;
        --only=*) IFS=, read -ra s <<<"${1#--only=}"; only+=("${s[@]}"); shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "tests/run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
for s in "${only[@]}"; do
    [[ " ${ALL_STEPS[*]} " == *" $s "* ]] || { echo "tests/run.sh: unknown step: $s (steps: ${ALL_STEPS[*]})" >&2; exit 2; }
done
selected() { [[ ${#only[@]} -eq 0 || " ${only[*]} " == *" $1 "* ]]; }

CARGO_FLAGS=()
if [[ "${CI:-}" == "true" ]]; then
    CARGO_FLAGS+=(--locked)
    # A one-off build gains nothing from incremental state, which would double target/'s size.
    export CARGO_INCREMENTAL=0
fi

# ---- bookkeeping: current step, timings, cleanup of everything started -----------------------------
CURRENT_STEP="setup"
# Tests and conformance cases counted over the run, for the closing summary line.
PASSED=0
FAILED=0
TIMINGS=()
HOST_PID=""
MOTO_PID=""
INFRA_MOTO_PID=""
BROWSER_TEST_PID=""

# Stops a process this script started: SIGTERM, up to 15 s to exit, then SIGKILL.
stop_pid() {
    local pid="$1"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

# Stops the moto server started by step_test or step_browser.
stop_moto() {
    stop_pid "$MOTO_PID"
    MOTO_PID=""
}

cleanup() {
    local rc=$?
    set +e
    stop_moto
    stop_pid "$INFRA_MOTO_PID"
    INFRA_MOTO_PID=""
    stop_pid "$HOST_PID"
    HOST_PID=""
    # SIGTERM lets the browser test stop its host and Chromium itself (within ~10 s).
    stop_pid "$BROWSER_TEST_PID"
    BROWSER_TEST_PID=""
    if [[ ${#TIMINGS[@]} -gt 0 ]]; then
        echo "==> step times: ${TIMINGS[*]}"
    fi
    if [[ $rc -ne 0 ]]; then
        echo "tests/run.sh: FAILED at step '$CURRENT_STEP' (exit $rc)" >&2
    else
        echo "tests/run.sh: all steps passed"
    fi
    # Rust tests plus Autobahn cases, as the last line (a plain "N passed, N failed" summary).
    echo "total: $PASSED passed, $FAILED failed"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

run_step() {
    local name="$1"; shift
    selected "$name" || return 0
    CURRENT_STEP="$name"
    echo "==> $name"
    local start=$SECONDS
    "$@"
    TIMINGS+=("$name=$((SECONDS - start))s")
}

# ---- steps ------------------------------------------------------------------------------------------
step_tools() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        "$PYTHON" -m venv "$VENV"
    fi
    local have
    have="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("kosoku"))' 2>/dev/null || true)"
    if [[ "$have" != "$KOSOKU_VERSION" || ! -x "$VENV/bin/kosoku" ]]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
            "kosoku==$KOSOKU_VERSION" </dev/null
    fi
    have="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || true)"
    if [[ "$have" != "$MOTO_VERSION" || ! -x "$VENV/bin/moto_server" ]]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
            "moto[server]==$MOTO_VERSION" </dev/null
    fi
    echo "kosoku $KOSOKU_VERSION, moto $MOTO_VERSION in ${VENV#"$ROOT/"}/"
}

# The fuzz targets are a workspace of their own, so `--all` does not reach them.
step_fmt() {
    cargo fmt --all -- --check
    cargo fmt --all --manifest-path "$ROOT/connection-host/fuzz/Cargo.toml" -- --check
}

step_build() {
    cargo build "${CARGO_FLAGS[@]}" --workspace --all-targets
    # The handler SDK without its default features (rooms, examples) builds, and compiles neither
    # the DynamoDB SDK, an HTTP client of its own nor the JWT library.
    cargo build "${CARGO_FLAGS[@]}" -p ws-handler --no-default-features --lib
    local heavy
    heavy="$(cargo tree "${CARGO_FLAGS[@]}" -p ws-handler --no-default-features -e normal --prefix none \
        | grep -E '^(aws-sdk-dynamodb|reqwest|jsonwebtoken) ' || true)"
    if [[ -n "$heavy" ]]; then
        echo "ws-handler --no-default-features still depends on: $heavy" >&2
        return 1
    fi
}

step_clippy() { cargo clippy "${CARGO_FLAGS[@]}" --workspace --all-targets -- -D warnings; }

free_port() {
    "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to TRIES × 0.1 s for URL to answer, while PID lives; on failure prints WHAT and LOG.
wait_ready() {
    local url="$1" pid="$2" log="$3" what="$4" tries="$5"
    for _ in $(seq "$tries"); do
        curl -sf --max-time 1 "$url" >/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "$what did not become ready at $url; its log:" >&2
    cat "$log" >&2
    return 1
}

# Starts moto (the DynamoDB API) on a free loopback port; sets MOTO_PID and MOTO_ENDPOINT.
start_moto() {
    [[ -x "$VENV/bin/moto_server" ]] || step_tools
    local port log="$RUN_DIR/moto.log"
    port="$(free_port)"
    mkdir -p "$RUN_DIR"
    # One request at a time, so conditional writes are atomic as on DynamoDB (tests/moto_dynamodb.py).
    "$VENV/bin/python" "$ROOT/tests/moto_dynamodb.py" -H 127.0.0.1 -p "$port" </dev/null >"$log" 2>&1 &
    MOTO_PID=$!
    wait_ready "http://127.0.0.1:$port/moto-api/" "$MOTO_PID" "$log" moto 300 || return 1
    MOTO_ENDPOINT="http://127.0.0.1:$port"
    echo "moto pid $MOTO_PID on $MOTO_ENDPOINT (log: ${log#"$ROOT/"})"
}

step_test() {
    prometheus_tools
    local endpoint="${DYNAMODB_TEST_ENDPOINT:-}"
    if [[ -n "$endpoint" ]]; then
        echo "DynamoDB API for the tests: $endpoint (DYNAMODB_TEST_ENDPOINT; moto not started)"
    else
        start_moto
        endpoint="$MOTO_ENDPOINT"
        "$VENV/bin/python" "$ROOT/tests/moto_check.py" </dev/null
    fi
    mkdir -p "$RUN_DIR"
    DYNAMODB_TEST_ENDPOINT="$endpoint" cargo test "${CARGO_FLAGS[@]}" --workspace --no-fail-fast </dev/null 2>&1 \
        | tee "$RUN_DIR/cargo-test.log"
    # cargo prints one "test result" line per test binary; the run's totals are their sum.
    read -r p f < <(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' \
        "$RUN_DIR/cargo-test.log" | awk '{p += $1; f += $2} END {print p + 0, f + 0}')
    PASSED=$((PASSED + p)); FAILED=$((FAILED + f))
    stop_moto
}

# Installs the infra step's tools into the venv, each only when its pinned version is missing.
infra_tools() {
    [[ -x "$VENV/bin/moto_server" ]] || step_tools
    local want=() pkg version have
    for pkg in "cfn-lint==$CFN_LINT_VERSION" "aws-sam-cli==$SAM_CLI_VERSION" \
        "aws-sam-translator==$SAM_TRANSLATOR_VERSION" "boto3==$BOTO3_VERSION"; do
        version="${pkg#*==}"
        have="$("$VENV/bin/python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' \
            "${pkg%%==*}" 2>/dev/null || true)"
        [[ "$have" == "$version" ]] || want+=("$pkg")
    done
    if [[ ${#want[@]} -gt 0 ]]; then
        echo "installing ${want[*]}"
        # moto again, so that pip keeps its pinned version while resolving the others.
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
            "${want[@]}" "moto[server]==$MOTO_VERSION" </dev/null
    fi
    echo "cfn-lint $CFN_LINT_VERSION, aws-sam-cli $SAM_CLI_VERSION, aws-sam-translator $SAM_TRANSLATOR_VERSION, boto3 $BOTO3_VERSION in ${VENV#"$ROOT/"}/"
}

# One check of the infra step: counted in the totals, its output kept in a log.
infra_check() {
    local name="$1"; shift
    if "$@" >"$RUN_DIR/infra/check.log" 2>&1; then
        PASSED=$((PASSED + 1)); echo "ok      $name"
    else
        FAILED=$((FAILED + 1)); echo "FAILED  $name"; sed 's/^/        /' "$RUN_DIR/infra/check.log"
        INFRA_FAILED=1
    fi
}

step_infra() {
    infra_tools
    mkdir -p "$RUN_DIR/infra"
    INFRA_FAILED=0
    # Offline: no credentials, no telemetry, no instance metadata; nothing here calls AWS. Local to
    # this step (exported to its commands only), so the later steps see the caller's environment.
    local -x AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
        SAM_CLI_TELEMETRY=0 AWS_EC2_METADATA_DISABLED=true
    local template
    for template in infra/*.yaml; do
        infra_check "cfn-lint $template" timeout 120 "$VENV/bin/cfn-lint" "$template"
        if grep -q '^Transform: AWS::Serverless' "$template"; then
            infra_check "sam validate --lint $template" timeout 120 "$VENV/bin/sam" validate --lint -t "$template"
        fi
    done

    # Its own moto: CloudFormation state must not mix with the test step's tables.
    local port log="$RUN_DIR/infra/moto.log"
    port="$(free_port)"
    "$VENV/bin/python" "$ROOT/tests/infra_moto.py" -H 127.0.0.1 -p "$port" </dev/null >"$log" 2>&1 &
    INFRA_MOTO_PID=$!
    wait_ready "http://127.0.0.1:$port/moto-api/" "$INFRA_MOTO_PID" "$log" "moto (CloudFormation)" 300 || return 1
    echo "moto (CloudFormation) pid $INFRA_MOTO_PID on http://127.0.0.1:$port (log: ${log#"$ROOT/"})"

    # The host's own `config check` of the configuration self-hosted.yaml gives its containers,
    # when the build step has made the binary.
    local host_bin=() dir
    if dir="$(target_dir 2>/dev/null)" && [[ -x "$dir/debug/connection-host" ]]; then
        host_bin=(--host-bin "$dir/debug/connection-host")
    fi
    local rc=0
    timeout 170 "$VENV/bin/python" "$ROOT/tests/infra_deploy.py" --endpoint "http://127.0.0.1:$port" \
        --out "$RUN_DIR/infra" "${host_bin[@]}" </dev/null 2>&1 | tee "$RUN_DIR/infra/deploy.log" || rc=$?
    stop_pid "$INFRA_MOTO_PID"
    INFRA_MOTO_PID=""
    local p f
    read -r p f < <(sed -n 's/^infra: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$RUN_DIR/infra/deploy.log" \
        | tail -n1 | awk '{print $1 + 0, $2 + 0}')
    # No summary line means the script died (or timed out) before its end: one failure at least.
    if ! grep -q '^infra: [0-9]* passed' "$RUN_DIR/infra/deploy.log"; then f=$((f + 1)); fi
    PASSED=$((PASSED + p)); FAILED=$((FAILED + f))
    if [[ $rc -ne 0 || $f -ne 0 || $INFRA_FAILED -ne 0 ]]; then
        echo "infra: FAILED (logs: ${RUN_DIR#"$ROOT/"}/infra/)" >&2
        return 1
    fi
    echo "infra: templates linted, validated and deployed to moto; transformed template: ${RUN_DIR#"$ROOT/"}/infra/managed.transformed.json"
}

# One check of the monitoring step, as infra_check: counted in the totals, its output shown when it fails.
monitoring_check() {
    local name="$1"; shift
    if "$@" >"$RUN_DIR/monitoring/check.log" 2>&1; then
        PASSED=$((PASSED + 1)); echo "ok      $name"
    else
        FAILED=$((FAILED + 1)); echo "FAILED  $name"; sed 's/^/        /' "$RUN_DIR/monitoring/check.log"
        MONITORING_FAILED=1
    fi
}

step_monitoring() {
    prometheus_tools
    [[ -x "$VENV/bin/python" ]] || step_tools
    local dir="$ROOT/infra/monitoring"
    mkdir -p "$RUN_DIR/monitoring"
    MONITORING_FAILED=0
    monitoring_check "promtool check rules alerts.yml" promtool check rules "$dir/alerts.yml"
    # From the folder: the tests name their rule file relative to it.
    monitoring_check "promtool test rules alerts.test.yml" env -C "$dir" promtool test rules alerts.test.yml
    monitoring_check "promtool check config prometheus.yml" promtool check config "$dir/prometheus.yml"
    monitoring_check "dashboard and alerts query catalogue metrics" \
        "$VENV/bin/python" "$ROOT/tests/monitoring_check.py"
    [[ $MONITORING_FAILED -eq 0 ]]
}

target_dir() {
    # Wherever cargo puts artifacts (CARGO_TARGET_DIR, .cargo/config.toml, or ./target).
    cargo metadata "${CARGO_FLAGS[@]}" --format-version 1 --no-deps \
        | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

step_conformance() {
    [[ -x "$VENV/bin/kosoku" ]] || step_tools
    # The same command as the build step, so a no-op after it (building `-p connection-host` alone
    # would unify features differently and rebuild); it builds the host when only conformance runs.
    selected build || step_build
    local bin config=tests/conformance.toml
    bin="$(target_dir)/debug/connection-host"
    "$bin" config check "$config"

    local stage port report="$RUN_DIR/autobahn" log="$RUN_DIR/connection-host.log"
    stage="$(sed -n 's/^stage *= *"\(.*\)"/\1/p' "$config" | head -n1)"
    stage="${stage:-dev}"
    port="$(free_port)"
    rm -rf "$report" "$RUN_DIR/autobahn-counts"
    mkdir -p "$RUN_DIR"

    RUST_LOG="${RUST_LOG:-warn}" "$bin" --config "$config" --listen "127.0.0.1:$port" </dev/null >"$log" 2>&1 &
    HOST_PID=$!
    wait_ready "http://127.0.0.1:$port/health" "$HOST_PID" "$log" connection-host 200 || return 1
    echo "connection-host pid $HOST_PID on 127.0.0.1:$port (log: ${log#"$ROOT/"})"

    # kosoku's verdict (exit status) and our own reading of index.json must both be clean.
    local kosoku_rc=0
    timeout 600 "$VENV/bin/kosoku" -x '12.*' -x '13.*' -p "$KOSOKU_PARALLELISM" -o "$report" \
        "ws://127.0.0.1:$port/$stage" </dev/null || kosoku_rc=$?

    local verdict_rc=0
    "$VENV/bin/python" - "$report/index.json" "$RUN_DIR/autobahn-counts" <<'EOF' || verdict_rc=$?
import json, sys
from collections import Counter

try:
    with open(sys.argv[1]) as f:
        index = json.load(f)
except (OSError, ValueError) as e:
    sys.exit(f"autobahn: no readable report: {e}")

BAD = {"FAILED", "WRONG CODE", "ERROR"}
counts, failed = Counter(), []
for agent, cases in index.items():
    for case, r in cases.items():
        b, bc = r.get("behavior"), r.get("behaviorClose")
        if b in BAD or bc in BAD:
            counts["FAILED"] += 1
            failed.append(f"  {case}: behavior={b}, behaviorClose={bc}, remoteCloseCode={r.get('remoteCloseCode')}")
        else:
            counts[b] += 1
total = sum(counts.values())
print("autobahn: " + ", ".join(f"{counts[k]} {k}" for k in
      ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")) + f" ({total} cases)")
if failed:
    print("\n".join(sorted(failed, key=lambda l: [int(p) for p in l.split(":")[0].split(".")])))
with open(sys.argv[2], "w") as f:
    f.write(f"{total - counts['FAILED']} {counts['FAILED']}\n")
if total == 0 or failed:
    sys.exit(1)
EOF
    if [[ -f "$RUN_DIR/autobahn-counts" ]]; then
        read -r p f <"$RUN_DIR/autobahn-counts"
        PASSED=$((PASSED + p)); FAILED=$((FAILED + f))
        rm -f "$RUN_DIR/autobahn-counts"
    fi
    [[ $verdict_rc -eq 0 ]] || return 1
    if [[ $kosoku_rc -ne 0 ]]; then
        echo "kosoku exited with status $kosoku_rc" >&2
        return 1
    fi
    echo "reports: ${report#"$ROOT/"}/index.html"
}

# The instrumentation cargo-fuzz adds, without AddressSanitizer (which needs a nightly toolchain):
# the targets are safe Rust, so a panic or an abort is what the fuzzer looks for.
FUZZ_RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"

step_fuzz() {
    local dir="$ROOT/connection-host/fuzz" out="$RUN_DIR/fuzz" host target bin t rc
    host="$(rustc -vV | sed -n 's/^host: //p')"
    # Its own target directory: the instrumented build must not replace the workspace's artifacts.
    target="$(target_dir)/fuzz"
    # An explicit --target keeps the instrumentation out of build scripts and proc macros.
    RUSTFLAGS="$FUZZ_RUSTFLAGS" CARGO_TARGET_DIR="$target" cargo build "${CARGO_FLAGS[@]}" \
        --manifest-path "$dir/Cargo.toml" --target "$host" --bins
    RUSTFLAGS="$FUZZ_RUSTFLAGS" CARGO_TARGET_DIR="$target" cargo clippy "${CARGO_FLAGS[@]}" \
        --manifest-path "$dir/Cargo.toml" --target "$host" --bins -- -D warnings
    for t in "${FUZZ_TARGETS[@]}"; do
        bin="$target/$host/debug/$t"
        mkdir -p "$out/$t/corpus"
        cp "$dir/seeds/$t"/* "$out/$t/corpus/"
        rc=0
        "$bin" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
            -artifact_prefix="$out/$t/" "$out/$t/corpus" </dev/null >"$out/$t.log" 2>&1 || rc=$?
        if [[ $rc -eq 0 ]]; then
            PASSED=$((PASSED + 1))
            echo "fuzz $t: $(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$t.log") runs in ${FUZZ_SECONDS}s, no crash"
        else
            FAILED=$((FAILED + 1))
            echo "fuzz $t: exit $rc; the end of its log (${out#"$ROOT/"}/$t.log):" >&2
            tail -n 40 "$out/$t.log" >&2
            return 1
        fi
    done
}

# Root runs apt-get itself; anyone else through sudo, without a password prompt (no stdin here).
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        echo "tests/run.sh: '$*' needs root, and sudo is not available" >&2
        return 1
    fi
}

# Debian's prometheus (the server, and promtool with it), for the monitoring step and the end-to-end test.
prometheus_tools() {
    if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
        echo "installing prometheus (apt-get)"
        apt_install prometheus
    fi
    prometheus --version 2>&1 | head -n1
}

# Installs Debian packages; a fresh machine may have no package lists (or stale ones): update, then try again.
apt_install() {
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0)
    if ! as_root "${apt[@]}" install --no-install-recommends "$@" </dev/null; then
        as_root "${apt[@]}" update </dev/null
        as_root "${apt[@]}" install --no-install-recommends "$@" </dev/null
    fi
}

# What the browser test needs: Debian's Chromium and playwright-core (which never downloads a browser).
browser_tools() {
    if [[ ! -x /usr/bin/chromium ]]; then
        echo "installing chromium (apt-get)"
        apt_install chromium
    fi
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
        || { echo "tests/run.sh: the browser step needs Node.js 20+ (node and npm)" >&2; return 1; }
    local dir="$ROOT/tests/browser" want have
    want="$(node -p 'require(process.argv[1]).dependencies["playwright-core"]' "$dir/package.json")"
    have="$(node -p 'require(process.argv[1]).version' "$dir/node_modules/playwright-core/package.json" 2>/dev/null || true)"
    if [[ "$have" != "$want" ]]; then
        (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error </dev/null)
    fi
    echo "$(/usr/bin/chromium --version 2>/dev/null || echo chromium), playwright-core $want in tests/browser/node_modules/"
}

need_node() {
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
        || { echo "tests/run.sh: the $CURRENT_STEP step needs Node.js 20+ (node and npm)" >&2; return 1; }
}

# Installs the library's build tools (npm ci) when its lockfile changed, and builds it: dist/ and the demo's copy.
js_build() {
    need_node
    local dir="$ROOT/clients/js"
    if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.installed-lock.json"; then
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error </dev/null)
        cp "$dir/package-lock.json" "$dir/node_modules/.installed-lock.json"
    fi
    (cd "$dir" && npm run --silent build) </dev/null
    # functions/web/lib is committed (the README's run command needs no Node.js): it must be what the
    # library's source compiles to.
    local scratch
    scratch="$(mktemp -d)"
    (cd "$dir" && npx --no-install tsc -p tsconfig.json --outDir "$scratch" --declaration false) </dev/null
    if ! diff -r "$scratch" "$ROOT/functions/web/lib" >/dev/null; then
        rm -rf "$scratch"
        echo "functions/web/lib differs from what clients/js compiles to: run (cd clients/js && npm run build:demo) and commit it" >&2
        return 1
    fi
    rm -rf "$scratch"
}

step_js() {
    js_build
    local dir="$ROOT/clients/js" rc=0 scratch
    mkdir -p "$RUN_DIR"
    (cd "$dir" && node --test --test-reporter=spec test/) </dev/null 2>&1 | tee "$RUN_DIR/js-test.log" || rc=$?
    read -r p f < <(sed -n 's/^ℹ \(pass\|fail\) \([0-9]*\)$/\1 \2/p' "$RUN_DIR/js-test.log" \
        | awk '$1 == "pass" {p = $2} $1 == "fail" {f = $2} END {print p + 0, f + 0}')
    PASSED=$((PASSED + p)); FAILED=$((FAILED + f))
    [[ $rc -eq 0 ]] || return "$rc"
    # The tarball users install: it must hold the module and its types, and import by its name.
    scratch="$(mktemp -d)"
    (cd "$dir" && npm pack --silent --pack-destination "$scratch" </dev/null >/dev/null)
    (cd "$scratch" && npm init -y >/dev/null && npm install --no-audit --no-fund --loglevel=error ./connection-host-client-*.tgz </dev/null \
        && test -f node_modules/connection-host-client/dist/index.d.ts \
        && node --input-type=module -e 'import { Client, backoffDelay } from "connection-host-client"; if (typeof Client !== "function" || backoffDelay(0, {}, () => 0) !== 1000) process.exit(1);') \
        || rc=$?
    rm -rf "$scratch"
    if [[ $rc -ne 0 ]]; then echo "js: the npm pack tarball does not install and import" >&2; return "$rc"; fi
    echo "js: npm pack tarball installs and imports"
}

step_browser() {
    browser_tools
    selected js || js_build
    # The host and the chat and authorizer functions, as the build step made them (a no-op after
    # it). The demo's `build` commands (`cargo build -p ws-handler --bins`) would compile the
    # functions again with a different feature set, so the test runs functions/demo.toml without
    # them, on the workspace build's binaries; tests/tests/chat.rs checks the rest of that file.
    cargo build "${CARGO_FLAGS[@]}" --workspace --all-targets
    local bin rc=0
    bin="$(target_dir)/debug/connection-host"
    mkdir -p "$RUN_DIR"
    sed -e '/^build = /d' -e "s|\${CARGO_TARGET_DIR:-target}|$(target_dir)|g" \
        "$ROOT/functions/demo.toml" >"$RUN_DIR/browser-demo.toml"
    # In the background and waited for, so that the INT/TERM traps run at once and cleanup stops it.
    BROWSER_TEST_HOST_BIN="$bin" BROWSER_TEST_CONFIG="$RUN_DIR/browser-demo.toml" \
        node "$ROOT/tests/browser/chat.test.mjs" </dev/null &
    BROWSER_TEST_PID=$!
    wait "$BROWSER_TEST_PID" || rc=$?
    BROWSER_TEST_PID=""
    # Each end-to-end test counts as one in the totals.
    if [[ $rc -eq 0 ]]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); return "$rc"; fi
    # The client library's tests run their host with tests/browser/client-host.toml, whose function
    # commands name ${CARGO_TARGET_DIR:-target}: point it at the build's target directory.
    local test flags=()
    # Node 20 has its WebSocket behind a flag; 22 and later have it on.
    node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' || flags+=(--experimental-websocket --no-warnings)
    local endpoint="${DYNAMODB_TEST_ENDPOINT:-}"
    for test in "client.test.mjs" "cluster.test.mjs" "auth.test.mjs" "storm.test.mjs"; do
        rc=0
        # The cluster test needs DynamoDB: moto as for the test step, or the caller's DYNAMODB_TEST_ENDPOINT.
        if [[ "$test" == "cluster.test.mjs" && -z "$endpoint" ]]; then
            start_moto
            endpoint="$MOTO_ENDPOINT"
        fi
        CARGO_TARGET_DIR="$(target_dir)" BROWSER_TEST_HOST_BIN="$bin" DYNAMODB_TEST_ENDPOINT="$endpoint" \
            node "${flags[@]}" "$ROOT/tests/browser/$test" </dev/null &
        BROWSER_TEST_PID=$!
        wait "$BROWSER_TEST_PID" || rc=$?
        BROWSER_TEST_PID=""
        if [[ $rc -eq 0 ]]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); return "$rc"; fi
        stop_moto
    done
    browser_status_test
}

# The status page (tests/browser/status.test.mjs) under a load of WebSocket clients from Node,
# which has a global WebSocket from Node 22 on and behind a flag in Node 20.
browser_status_test() {
    local rc=0 flags=() shot="$RUN_DIR/artifacts/status-page.png"
    node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' || flags=(--experimental-websocket)
    rm -f "$shot"
    BROWSER_TEST_HOST_BIN="$(target_dir)/debug/connection-host" STATUS_TEST_SCREENSHOT="$shot" \
        node "${flags[@]}" "$ROOT/tests/browser/status.test.mjs" </dev/null &
    BROWSER_TEST_PID=$!
    wait "$BROWSER_TEST_PID" || rc=$?
    BROWSER_TEST_PID=""
    if [[ $rc -eq 0 ]]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
    [[ -f "$shot" ]] && echo "status page screenshot (test artefact): ${shot#"$ROOT"/}"
    return "$rc"
}

step_containers() {
    [[ -x "$VENV/bin/python" ]] || step_tools
    # The build step's binary (a no-op build after it), as the conformance step uses it.
    selected build || step_build
    local rc=0
    CONTAINERS_HOST_BIN="$(target_dir)/debug/connection-host" "$ROOT/tests/containers.sh" </dev/null \
        2>&1 | tee "$RUN_DIR/containers.log" || rc=$?
    if grep -q '^containers: skipped' "$RUN_DIR/containers.log"; then return 0; fi
    if [[ $rc -eq 0 ]]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
    return "$rc"
}

# The reliable-delivery chaos test, ignored by the test step for its length, on a moto of its own so that
# no other test's requests slow the store it measures.
step_chaos() {
    # The test itself is the build step's; the three hosts it starts are a release build, as deployed:
    # a debug host costs about 15 times the CPU per message, which 50 clients cannot spend on two
    # cores next to moto.
    selected build || step_build
    cargo build "${CARGO_FLAGS[@]}" --release -p connection-host
    start_moto
    local rc=0
    CONNECTION_HOST_BIN="$(target_dir)/release/connection-host" DYNAMODB_TEST_ENDPOINT="$MOTO_ENDPOINT" \
        CHAOS_CLIENTS="${CHAOS_CLIENTS:-50}" CHAOS_MESSAGES="${CHAOS_MESSAGES:-2000}" \
        CHAOS_RUN_SECS="${CHAOS_RUN_SECS:-1500}" \
        cargo test "${CARGO_FLAGS[@]}" -p e2e-tests --test reliable_chaos \
        -- --ignored </dev/null 2>&1 | tee "$RUN_DIR/chaos.log" || rc=$?
    read -r p f < <(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' \
        "$RUN_DIR/chaos.log" | awk '{p += $1; f += $2} END {print p + 0, f + 0}')
    PASSED=$((PASSED + p)); FAILED=$((FAILED + f))
    stop_moto
    return "$rc"
}

run_step tools step_tools
run_step fmt step_fmt
run_step build step_build
run_step clippy step_clippy
run_step test step_test
run_step infra step_infra
run_step monitoring step_monitoring
run_step conformance step_conformance
run_step fuzz step_fuzz
run_step js step_js
run_step browser step_browser
run_step containers step_containers
run_step chaos step_chaos
CURRENT_STEP="done"
