#!/usr/bin/env bash
# Load benchmark: scopegate against nginx and HAProxy, on loopback only.
#
#   benches/load/run.sh            full run (writes benches/RESULTS.md)
#   benches/load/run.sh --smoke    1-2 s per contender, few connections; checks
#                                  that everything starts and answers 2xx, and
#                                  asserts nothing about speed
#   benches/load/run.sh --instructions
#                                  user-space instructions and allocations
#                                  (malloc, calloc, realloc) per proxied request
#                                  (valgrind callgrind, one keep-alive client)
#                                  of hyper-floor, scopegate-warm and
#                                  scopegate-introspect: repeatable where
#                                  requests/s on a shared VM are not; prints
#                                  them and writes nothing
#
# Contenders, each with one worker thread, all in front of the same nginx
# `return 200` upstream and loaded by wrk with the same connections/duration.
# All are started first; then each round loads every contender once, in
# turn, and the table reports each one's median over the rounds, so that a
# machine whose speed drifts (a shared VM) moves all contenders alike instead
# of favouring whichever ran in a fast minute. Ratios are of the medians,
# with the range of the per-round ratios beside them:
#   direct          wrk -> upstream
#   nginx-proxy     plain reverse proxy, keep-alive upstream pool
#   hyper-floor     examples/hyper_floor.rs: a bare hyper proxy (no auth, no
#                   header hygiene), what hyper and tokio alone cost
#   haproxy-jwt     HAProxy jwt_verify (ES256) + iss/aud/exp/scope checks
#   scopegate-warm  one token repeated (verified-token cache hits)
#   scopegate-cold  a different valid token on every request (all misses)
#   scopegate-introspect  one opaque token, RFC 7662 introspection answered
#                   by the upstream nginx, cached after the first request
#
# Environment overrides (defaults: full / smoke):
#   BENCH_CONNECTIONS   wrk connections        64 / 8
#   BENCH_THREADS       wrk threads            2 / 1
#   BENCH_DURATION      per contender & round  10s / 2s
#   BENCH_ROUNDS        rounds                 3 / 1
#   BENCH_TOKENS        pre-minted tokens      200000 x rounds / 100000
#   BENCH_FILL_TOKENS   distinct tokens the cache must have seen before the
#                       "cached tokens" RSS is read (full mode) 100000
#   BENCH_PROFILE       cargo profile          release
#   BENCH_SCOPEGATE_LOG RUST_LOG for scopegate (access log is info) warn
#   BENCH_KEEP=1        keep the temp directory (configs, logs, wrk output)
#   BENCH_NO_INSTALL=1  never apt-get install missing tools
#
# Exits non-zero if a contender fails to start or a pre-flight request (200
# for a good token; for the JWT contenders also 401 or 403 for each of mint's
# negatives.txt, validly signed tokens that break one of the iss, aud, exp and
# scope checks), or if wrk reports under load an error status (4xx, 5xx) or a
# socket error of any kind (connect, read, write, timeout).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

SMOKE=0
INSTRUCTIONS=0
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        --instructions) INSTRUCTIONS=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "run.sh: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

if [ "$SMOKE" = 1 ]; then
    CONNECTIONS=${BENCH_CONNECTIONS:-8}
    THREADS=${BENCH_THREADS:-1}
    DURATION=${BENCH_DURATION:-2s}
    ROUNDS=${BENCH_ROUNDS:-1}
    # Enough for 2 s of all-cold requests on a fast host (24 334 in one
    # CI run; 20 000 ran out), so that every one is a cache miss.
    TOKENS=${BENCH_TOKENS:-100000}
else
    CONNECTIONS=${BENCH_CONNECTIONS:-64}
    THREADS=${BENCH_THREADS:-2}
    DURATION=${BENCH_DURATION:-10s}
    ROUNDS=${BENCH_ROUNDS:-3}
    # The all-cold contender needs a fresh token for every request of every
    # round (about 10 000/s here); a reused one would be a cache hit.
    TOKENS=${BENCH_TOKENS:-$((200000 * ROUNDS))}
fi
[ "$INSTRUCTIONS" = 0 ] || TOKENS=${BENCH_TOKENS:-10}
FILL_TOKENS=${BENCH_FILL_TOKENS:-100000}
PROFILE=${BENCH_PROFILE:-release}
SCOPEGATE_LOG=${BENCH_SCOPEGATE_LOG:-warn}

ISSUER=https://issuer.bench.local
AUDIENCE=bench-api
SCOPE=orders:read
REQUEST_PATH=/api/orders/42

log() { printf '[load] %s\n' "$*" >&2; }
die() {
    printf '[load] FAILED: %s\n' "$*" >&2
    exit 1
}

# --------------------------------------------------------------------------
# Tools

need_tools() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v curl >/dev/null || missing+=(curl)
    command -v ss >/dev/null || missing+=(iproute2)
    command -v pgrep >/dev/null || missing+=(procps)
    [ "$INSTRUCTIONS" = 0 ] || command -v callgrind_control >/dev/null || missing+=(valgrind)
    if [ "${#missing[@]}" -gt 0 ]; then
        if [ "${BENCH_NO_INSTALL:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            log "installing ${missing[*]} (Debian packages)"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        else
            die "missing tools: ${missing[*]} (apt-get install ${missing[*]})"
        fi
    fi
    local version
    version=$(haproxy -v | sed -n 's/^HAProxy version \([0-9]*\.[0-9]*\).*/\1/p' | head -1)
    case "$version" in
        1.* | 2.[0-4] | "") die "HAProxy $version has no jwt_verify (needs >= 2.5)" ;;
    esac
}

# --------------------------------------------------------------------------
# Processes (every one we start is recorded and stopped on exit)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/scopegate-load.XXXXXX")
PIDS=()

cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background, output to $WORK/NAME.log;
# the pid is left in $STARTED.
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}

# stop PID: stops one process we started and forgets it.
stop() {
    local pid=$1 rest=() p
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
        [ "$p" = "$pid" ] || rest+=("$p")
    done
    PIDS=("${rest[@]}")
}

# wait_http NAME PID URL: until URL answers at all (bounded, 15 s).
wait_http() {
    local name=$1 pid=$2 url=$3
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || {
            tail -n 20 "$WORK/$name.log" >&2 || true
            die "$name exited during start-up"
        }
        if curl -s -o /dev/null --max-time 1 "$url"; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$WORK/$name.log" >&2 || true
    die "$name did not start listening ($url)"
}

# free_port VAR: sets VAR to a loopback port no socket uses (and that this
# run has not handed out yet), below the kernel's ephemeral range so that no
# outgoing connection of the run can take it before the listener binds.
USED_PORTS=" "
EPHEMERAL_LOW=32768
if [ -r /proc/sys/net/ipv4/ip_local_port_range ]; then
    read -r EPHEMERAL_LOW _ </proc/sys/net/ipv4/ip_local_port_range
fi
[ "$EPHEMERAL_LOW" -gt 12000 ] || EPHEMERAL_LOW=12000
free_port() {
    local port
    for _ in $(seq 200); do
        port=$((EPHEMERAL_LOW - 1 - RANDOM % 10000))
        case "$USED_PORTS" in *" $port "*) continue ;; esac
        if [ -z "$(ss -Htan "sport = :$port")" ]; then
            USED_PORTS="$USED_PORTS$port "
            printf -v "$1" '%s' "$port"
            return 0
        fi
    done
    die "no free loopback port"
}

# render TEMPLATE OUT: replaces @VARS@ in a benches/load template.
render() {
    sed -e "s|@WORK@|$WORK|g" \
        -e "s|@KEYS@|$WORK/keys|g" \
        -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" \
        -e "s|@PROXY_PORT@|${PROXY_PORT:-0}|g" \
        -e "s|@ADMIN_PORT@|${ADMIN_PORT:-0}|g" \
        -e "s|@ISSUER@|$ISSUER|g" \
        -e "s|@AUDIENCE@|$AUDIENCE|g" \
        -e "s|@SCOPE@|$SCOPE|g" \
        -e "s|@USER@|$NGINX_USER|g" \
        "$HERE/$1" >"$2"
}

# expect_status NAME URL STATUS [TOKEN]: one pre-flight request.
expect_status() {
    local name=$1 url=$2 want=$3 token=${4:-} got
    if [ -n "$token" ]; then
        got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $token" "$url" || true)
    else
        got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url" || true)
    fi
    [ "$got" = "$want" ] || die "$name: pre-flight GET $url answered $got, expected $want"
}

# expect_negatives NAME URL: every token of mint's negatives.txt (each validly
# signed, each breaking one of the iss, aud, exp and scope checks) gets the
# status written beside it, so no contender is credited with a check it skips.
expect_negatives() {
    local name=$1 url=$2 case status token
    while read -r case status token; do
        [ -n "$token" ] || continue
        expect_status "$name ($case)" "$url" "$status" "$token"
    done <"$NEGATIVES_FILE"
}

# --------------------------------------------------------------------------
# wrk and its output

# to_ms VALUE: wrk latency ("812.00us", "1.23ms", "2.01s") in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n = n / 1000
        else if (v ~ /ms$/) n = n
        else if (v ~ /m$/) n = n * 60000
        else if (v ~ /s$/) n = n * 1000
        printf "%.3f", n
    }'
}

declare -A RPS P50 P99 REQS CPU_US RPS_ROUNDS P50_ROUNDS P99_ROUNDS CPU_ROUNDS
ORDER=()
LAST_REQUESTS=0
CLK_TCK=$(getconf CLK_TCK)

# cpu_ticks PID...: user + system CPU ticks the processes have used so far.
cpu_ticks() {
    local pid total=0
    for pid in "$@"; do
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
    done
    echo "$total"
}

# check_wrk NAME FILE: dies unless wrk's output FILE shows only 2xx answers,
# no socket error of any kind and at least one request. A timed-out request is
# left out of wrk's latency figures and a reset one out of its count, so a
# contender that stalls or drops connections must not pass with a clean p99.
check_wrk() {
    local name=$1 out=$2 non2xx errors requests
    non2xx=$(sed -n 's/.*Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$out")
    errors=$(sed -n 's/.*Socket errors: \(.*\)/\1/p' "$out")
    requests=$(sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' "$out")
    if [ -n "$non2xx" ] && [ "$non2xx" != 0 ]; then
        cat "$out" >&2
        die "$name: $non2xx non-2xx responses"
    fi
    if [ -n "$errors" ] && [ "$errors" != "connect 0, read 0, write 0, timeout 0" ]; then
        cat "$out" >&2
        die "$name: socket errors under load ($errors)"
    fi
    if [ -z "$requests" ] || [ "$requests" = 0 ]; then
        cat "$out" >&2
        die "$name: no requests completed"
    fi
}

# load NAME URL [wrk args...]: runs wrk, checks it, records the numbers. The
# CPU time of the processes in $CONTENDER_PIDS (the contender's own, not
# wrk's or the upstream's) is divided by the requests served.
CONTENDER_PIDS=""
load() {
    local name=$1 url=$2
    shift 2
    local out="$WORK/wrk-$name.txt" secs ticks_before=""
    # shellcheck disable=SC2086 # a list of pids
    [ -n "$CONTENDER_PIDS" ] && ticks_before=$(cpu_ticks $CONTENDER_PIDS)
    secs=$(awk -v d="$DURATION" 'BEGIN { n = d + 0; if (d ~ /m$/) n *= 60; print int(n) + 30 }')
    log "$name: wrk -t$THREADS -c$CONNECTIONS -d$DURATION $url"
    if ! timeout "$secs" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout 5s --latency "$@" "$url" >"$out" 2>&1; then
        cat "$out" >&2
        die "$name: wrk failed"
    fi
    local ticks_used=""
    # shellcheck disable=SC2086
    [ -n "$ticks_before" ] && ticks_used=$(($(cpu_ticks $CONTENDER_PIDS) - ticks_before))
    check_wrk "$name" "$out"
    local requests
    requests=$(sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' "$out")
    local rps p50 p99 cpu="-"
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    if [ -n "$ticks_used" ]; then
        cpu=$(awk -v t="$ticks_used" -v hz="$CLK_TCK" -v n="$requests" \
            'BEGIN { printf "%.1f", t * 1000000 / hz / n }')
    fi
    RPS_ROUNDS[$name]="${RPS_ROUNDS[$name]:-}$rps "
    P50_ROUNDS[$name]="${P50_ROUNDS[$name]:-}$p50 "
    P99_ROUNDS[$name]="${P99_ROUNDS[$name]:-}$p99 "
    CPU_ROUNDS[$name]="${CPU_ROUNDS[$name]:-}$cpu "
    REQS[$name]=$((${REQS[$name]:-0} + requests))
    LAST_REQUESTS=$requests
    CONTENDER_PIDS=""
    case " ${ORDER[*]} " in *" $name "*) ;; *) ORDER+=("$name") ;; esac
    log "$name: $rps req/s, p50 $p50 ms, p99 $p99 ms, CPU $cpu µs/request ($requests requests)"
}

# median "V1 V2 ...": the middle value (mean of the two middle ones for an
# even count), or "-" when there are no numbers.
median() {
    # shellcheck disable=SC2086 # a list of numbers
    printf '%s\n' $1 | { grep -v '^-$' || true; } | sort -g | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) print "-"
            else if (NR % 2) print v[(NR + 1) / 2]
            else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}

# round_ratios "A1 A2 ..." "B1 B2 ...": "min-max" of the per-round A/B.
round_ratios() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        n = split(a, x, " "); split(b, y, " ")
        for (i = 1; i <= n; i++) {
            if (y[i] + 0 == 0) continue
            r = x[i] / y[i]
            if (!seen || r < lo) lo = r
            if (!seen || r > hi) hi = r
            seen = 1
        }
        if (!seen) print "n/a"; else if (n == 1) printf "%.2f", lo; else printf "%.2f-%.2f", lo, hi
    }'
}

# --------------------------------------------------------------------------
# scopegate helpers

status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
mb() { awk -v kb="$1" 'BEGIN { printf "%.1f", kb / 1024 }'; }

# cache_misses ADMIN_PORT: tokens the verified-token cache did not have.
cache_misses() {
    curl -s --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk '/^scopegate_token_cache_requests_total/ && /kind="jwt"/ && /result="miss"/ { print int($2) }'
}

# start_scopegate NAME TEMPLATE GOOD_TOKEN [BAD_TOKEN]: starts scopegate on
# fresh ports; sets SG_PID, PROXY_PORT, ADMIN_PORT and records the idle RSS.
start_scopegate() {
    local name=$1 template=$2 good=$3 bad=${4:-}
    free_port PROXY_PORT
    free_port ADMIN_PORT
    render "$template" "$WORK/$name.yaml"
    RUST_LOG=$SCOPEGATE_LOG start "$name" "$SCOPEGATE" run --config "$WORK/$name.yaml"
    SG_PID=$STARTED
    wait_http "$name" "$SG_PID" "http://127.0.0.1:$ADMIN_PORT/readyz"
    expect_status "$name" "http://127.0.0.1:$ADMIN_PORT/readyz" 200
    sleep 0.5
    IDLE_KB[$name]=$(status_kb "$SG_PID" VmRSS)
    expect_status "$name" "http://127.0.0.1:$PROXY_PORT$REQUEST_PATH" 401
    if [ -n "$bad" ]; then
        expect_status "$name" "http://127.0.0.1:$PROXY_PORT$REQUEST_PATH" 401 "$bad"
        expect_negatives "$name" "http://127.0.0.1:$PROXY_PORT$REQUEST_PATH"
    fi
    expect_status "$name" "http://127.0.0.1:$PROXY_PORT$REQUEST_PATH" 200 "$good"
    CONTENDER_PIDS=$SG_PID
}

declare -A IDLE_KB HWM_KB

# --------------------------------------------------------------------------
# --instructions: callgrind counts instead of wrk

INSTRUCTION_REQUESTS=${BENCH_INSTRUCTION_REQUESTS:-5000}

# count_instructions NAME URL TOKEN CMD...: runs CMD under callgrind, sends 200
# warm-up requests bearing TOKEN and then INSTRUCTION_REQUESTS counted ones over one
# keep-alive connection (curl reuses it for a list of URLs), and records the
# instructions executed per counted request in INSTR[NAME], and the calls to
# malloc, calloc and realloc per counted request in ALLOCS[NAME].
declare -A INSTR ALLOCS
count_instructions() {
    local name=$1 url=$2 token=$3
    shift 3
    local out="$WORK/callgrind-$name"
    start "$name" valgrind --tool=callgrind --callgrind-out-file="$out.%p" "$@"
    local pid=$STARTED
    for _ in $(seq 600); do
        curl -s -o /dev/null --max-time 2 "$url" && break
        kill -0 "$pid" 2>/dev/null || die "$name exited under valgrind"
        sleep 0.2
    done
    requests() {
        awk -v n="$1" -v u="$url" 'BEGIN { for (i = 0; i < n; i++) printf "url = \"%s\"\noutput = \"/dev/null\"\n", u }' >"$WORK/urls.txt"
        curl -s --fail -H "Authorization: Bearer $token" -K "$WORK/urls.txt" ||
            die "$name: a request failed"
    }
    requests 200
    callgrind_control -z "$pid" >/dev/null 2>&1
    requests "$INSTRUCTION_REQUESTS"
    callgrind_control -d "$pid" >/dev/null 2>&1
    local dump
    for _ in $(seq 50); do
        dump=$(ls "$out.$pid".* 2>/dev/null | head -n 1 || true)
        [ -n "$dump" ] && grep -q '^totals:' "$dump" && break
        sleep 0.2
    done
    [ -n "$dump" ] || die "$name: no callgrind dump"
    stop "$pid"
    local total
    total=$(awk '/^totals:/ { print $2 }' "$dump")
    log "$name: $total instructions for $INSTRUCTION_REQUESTS requests"
    INSTR[$name]=$(awk -v t="$total" -v n="$INSTRUCTION_REQUESTS" 'BEGIN { printf "%.0f", t / n }')
    # Calls into the allocator: each `calls=` line follows the `cfn=` of the
    # function called, named at its first mention and by number after.
    ALLOCS[$name]=$(awk -v n="$INSTRUCTION_REQUESTS" '
        /^c?fn=\(/ {
            id = $0; sub(/^c?fn=\(/, "", id); sub(/\).*/, "", id)
            if ($0 ~ /\) /) { fname = $0; sub(/^[^)]*\) /, "", fname); names[id] = fname }
            if ($0 ~ /^cfn=/) called = names[id]
        }
        /^calls=/ && called ~ /^(malloc|calloc|realloc)$/ { split($0, a, /[= ]/); calls += a[2] }
        END { printf "%.2f", calls / n }' "$dump")
}

instructions_report() {
    export RUST_LOG=$SCOPEGATE_LOG
    free_port PROXY_PORT
    count_instructions hyper-floor "http://127.0.0.1:$PROXY_PORT$REQUEST_PATH" "$FIRST_TOKEN" \
        "$HYPER_FLOOR" "127.0.0.1:$PROXY_PORT" "127.0.0.1:$UPSTREAM_PORT"
    free_port PROXY_PORT
    free_port ADMIN_PORT
    render scopegate.yaml "$WORK/scopegate-warm.yaml"
    count_instructions scopegate-warm "http://127.0.0.1:$PROXY_PORT$REQUEST_PATH" "$FIRST_TOKEN" \
        "$SCOPEGATE" run --config "$WORK/scopegate-warm.yaml"
    free_port PROXY_PORT
    free_port ADMIN_PORT
    printf 'bench-introspection-secret\n' >"$WORK/introspection-secret"
    render scopegate-introspect.yaml "$WORK/scopegate-introspect.yaml"
    count_instructions scopegate-introspect "http://127.0.0.1:$PROXY_PORT$REQUEST_PATH" "$OPAQUE_TOKEN" \
        "$SCOPEGATE" run --config "$WORK/scopegate-introspect.yaml"
    local floor=${INSTR[hyper-floor]} scopegate=${INSTR[scopegate-warm]}
    echo
    echo "User-space instructions per proxied request (valgrind callgrind, $INSTRUCTION_REQUESTS"
    echo "requests on one keep-alive connection after 200 warm-up ones; commit $(git -C "$ROOT" rev-parse --short HEAD)):"
    echo
    echo "| contender | instructions/request | allocations/request |"
    echo "|---|---:|---:|"
    echo "| hyper-floor | $floor | ${ALLOCS[hyper-floor]} |"
    echo "| scopegate-warm | $scopegate | ${ALLOCS[scopegate-warm]} |"
    echo "| scopegate-introspect | ${INSTR[scopegate-introspect]} | ${ALLOCS[scopegate-introspect]} |"
    echo
    echo "scopegate-warm / hyper-floor: $(awk -v a="$scopegate" -v b="$floor" 'BEGIN { printf "%.2f", a / b }')x." \
        "valgrind hides SHA-NI, so the token digest runs aws-lc's AVX code here."
}

# ==========================================================================

need_tools
ulimit -n 65536 2>/dev/null || true
cd "$ROOT"

if [ "$PROFILE" = release ]; then
    BUILD_ARGS=(--release)
    OUT_DIR=release
else
    BUILD_ARGS=(--profile "$PROFILE")
    OUT_DIR=$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
fi
log "building scopegate, examples/mint.rs and examples/hyper_floor.rs ($PROFILE)"
cargo build "${BUILD_ARGS[@]}" --bin scopegate --example mint --example hyper_floor >&2
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SCOPEGATE=$TARGET_DIR/$OUT_DIR/scopegate
MINT=$TARGET_DIR/$OUT_DIR/examples/mint
HYPER_FLOOR=$TARGET_DIR/$OUT_DIR/examples/hyper_floor
if [ ! -x "$SCOPEGATE" ] || [ ! -x "$MINT" ] || [ ! -x "$HYPER_FLOOR" ]; then
    die "built binaries not found under $TARGET_DIR/$OUT_DIR"
fi

STARTED_AT=$(date +%s)
log "minting $TOKENS ES256 tokens into $WORK/keys"
"$MINT" --out "$WORK/keys" --count "$TOKENS" --issuer "$ISSUER" --audience "$AUDIENCE" \
    --scope "$SCOPE profile" >&2
TOKENS_FILE=$WORK/keys/tokens.txt
NEGATIVES_FILE=$WORK/keys/negatives.txt
[ -s "$NEGATIVES_FILE" ] || die "mint wrote no negatives.txt"
FIRST_TOKEN=$(head -n 1 "$TOKENS_FILE")
# Same header and claims, signature of another token: must be refused.
BAD_TOKEN="${FIRST_TOKEN%.*}.$(sed -n 2p "$TOKENS_FILE" | sed 's/.*\.//')"
# Not a compact JWS, so scopegate introspects it.
OPAQUE_TOKEN=opaque-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')

NGINX_USER=""
[ "$(id -u)" = 0 ] && NGINX_USER="user root;"
mkdir -p "$WORK"/nginx-{upstream,proxy}-tmp

# --- upstream ---------------------------------------------------------------
free_port UPSTREAM_PORT
render nginx-upstream.conf "$WORK/nginx-upstream.conf"
start nginx-upstream nginx -p "$WORK" -e "$WORK/nginx-upstream.error.log" -c "$WORK/nginx-upstream.conf"
UPSTREAM_PID=$STARTED
wait_http nginx-upstream "$UPSTREAM_PID" "http://127.0.0.1:$UPSTREAM_PORT/"
expect_status nginx-upstream "http://127.0.0.1:$UPSTREAM_PORT$REQUEST_PATH" 200

if [ "$INSTRUCTIONS" = 1 ]; then
    instructions_report
    exit 0
fi

# --- start the contenders ------------------------------------------------------
declare -A URL_OF PIDS_OF ADMIN_OF

# 1. direct: wrk -> upstream
URL_OF[direct]="http://127.0.0.1:$UPSTREAM_PORT$REQUEST_PATH"

# 2. nginx plain reverse proxy (CPU: its worker)
free_port PROXY_PORT
render nginx-proxy.conf "$WORK/nginx-proxy.conf"
start nginx-proxy nginx -p "$WORK" -e "$WORK/nginx-proxy.error.log" -c "$WORK/nginx-proxy.conf"
pid=$STARTED
wait_http nginx-proxy "$pid" "http://127.0.0.1:$PROXY_PORT/"
expect_status nginx-proxy "http://127.0.0.1:$PROXY_PORT$REQUEST_PATH" 200
URL_OF[nginx-proxy]="http://127.0.0.1:$PROXY_PORT$REQUEST_PATH"
PIDS_OF[nginx-proxy]=$(pgrep -P "$pid" | tr '\n' ' ')

# 2b. bare hyper proxy (the HTTP engine's floor)
free_port PROXY_PORT
start hyper-floor "$HYPER_FLOOR" "127.0.0.1:$PROXY_PORT" "127.0.0.1:$UPSTREAM_PORT"
pid=$STARTED
wait_http hyper-floor "$pid" "http://127.0.0.1:$PROXY_PORT/"
expect_status hyper-floor "http://127.0.0.1:$PROXY_PORT$REQUEST_PATH" 200
URL_OF[hyper-floor]="http://127.0.0.1:$PROXY_PORT$REQUEST_PATH"
PIDS_OF[hyper-floor]=$pid

# 3. HAProxy jwt_verify
free_port PROXY_PORT
render haproxy.cfg "$WORK/haproxy.cfg"
haproxy -c -q -f "$WORK/haproxy.cfg" >"$WORK/haproxy-check.log" 2>&1 || {
    cat "$WORK/haproxy-check.log" >&2
    die "haproxy rejected its configuration"
}
start haproxy haproxy -db -f "$WORK/haproxy.cfg"
pid=$STARTED
wait_http haproxy "$pid" "http://127.0.0.1:$PROXY_PORT/"
expect_status haproxy "http://127.0.0.1:$PROXY_PORT$REQUEST_PATH" 401
expect_status haproxy "http://127.0.0.1:$PROXY_PORT$REQUEST_PATH" 401 "$BAD_TOKEN"
expect_negatives haproxy "http://127.0.0.1:$PROXY_PORT$REQUEST_PATH"
expect_status haproxy "http://127.0.0.1:$PROXY_PORT$REQUEST_PATH" 200 "$FIRST_TOKEN"
URL_OF[haproxy-jwt]="http://127.0.0.1:$PROXY_PORT$REQUEST_PATH"
PIDS_OF[haproxy-jwt]=$pid

# 4.-6. scopegate: warm cache, every token new, cached introspection
printf 'bench-introspection-secret\n' >"$WORK/introspection-secret"
for name in scopegate-warm scopegate-cold scopegate-introspect; do
    case $name in
        scopegate-introspect) start_scopegate "$name" scopegate-introspect.yaml "$OPAQUE_TOKEN" ;;
        *) start_scopegate "$name" scopegate.yaml "$FIRST_TOKEN" "$BAD_TOKEN" ;;
    esac
    URL_OF[$name]="http://127.0.0.1:$PROXY_PORT$REQUEST_PATH"
    PIDS_OF[$name]=$SG_PID
    ADMIN_OF[$name]=$ADMIN_PORT
done
CONTENDER_PIDS=""

# --- rounds: every contender once per round, in turn --------------------------
export BENCH_TOKENS_FILE=$TOKENS_FILE BENCH_WRK_THREADS=$THREADS BENCH_TOKENS_START=0
COLD_NEXT=1 # token 0 was scopegate-cold's pre-flight request
for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    for name in direct nginx-proxy hyper-floor haproxy-jwt scopegate-warm scopegate-cold scopegate-introspect; do
        CONTENDER_PIDS=${PIDS_OF[$name]:-}
        case $name in
            haproxy-jwt)
                # HAProxy caches nothing: the same tokens every round.
                BENCH_TOKENS_START=0
                load "$name" "${URL_OF[$name]}" -s "$HERE/rotate.lua"
                ;;
            scopegate-cold)
                BENCH_TOKENS_START=$COLD_NEXT
                load "$name" "${URL_OF[$name]}" -s "$HERE/rotate.lua"
                # wrk's threads take alternate tokens and may not finish
                # level: leave a margin so that no round reuses a token.
                COLD_NEXT=$((COLD_NEXT + LAST_REQUESTS * 5 / 4 + 1000))
                ;;
            scopegate-introspect)
                load "$name" "${URL_OF[$name]}" -H "Authorization: Bearer $OPAQUE_TOKEN"
                ;;
            *)
                load "$name" "${URL_OF[$name]}" -H "Authorization: Bearer $FIRST_TOKEN"
                ;;
        esac
    done
done
for name in "${ORDER[@]}"; do
    RPS[$name]=$(median "${RPS_ROUNDS[$name]}")
    P50[$name]=$(median "${P50_ROUNDS[$name]}")
    P99[$name]=$(median "${P99_ROUNDS[$name]}")
    CPU_US[$name]=$(median "${CPU_ROUNDS[$name]}")
done
# Peak RSS of every contender that is a process of its own (nginx-proxy: its
# worker, as for CPU time; direct has none).
for name in "${ORDER[@]}"; do
    [ -n "${PIDS_OF[$name]:-}" ] || continue
    total_kb=0
    for pid in ${PIDS_OF[$name]}; do
        total_kb=$((total_kb + $(status_kb "$pid" VmHWM)))
    done
    HWM_KB[$name]=$total_kb
done

# The all-cold figures are only that if no token came round twice.
COLD_ADMIN=${ADMIN_OF[scopegate-cold]}
MISSES=$(cache_misses "$COLD_ADMIN")
COLD_RSS_KB=$(status_kb "${PIDS_OF[scopegate-cold]}" VmRSS)
log "scopegate-cold: $MISSES distinct tokens verified for ${REQS[scopegate-cold]} requests, VmRSS $(mb "$COLD_RSS_KB") MB"
[ "$MISSES" -ge "${REQS[scopegate-cold]}" ] ||
    die "scopegate-cold: only $MISSES of ${REQS[scopegate-cold]} requests were cache misses (too few tokens: raise BENCH_TOKENS)"

# Memory with FILL_TOKENS distinct cached tokens (full mode): keep sending
# fresh tokens until the cache has verified that many.
FILL_NOTE=""
if [ "$SMOKE" = 0 ] && [ "${MISSES:-0}" -lt "$FILL_TOKENS" ]; then
    if [ "$TOKENS" -lt $((COLD_NEXT + FILL_TOKENS - MISSES + 1000)) ]; then
        die "BENCH_TOKENS=$TOKENS is too few to fill the cache with $FILL_TOKENS tokens"
    fi
    next=$COLD_NEXT
    for _ in 1 2 3 4 5 6; do
        [ "$MISSES" -lt "$FILL_TOKENS" ] || break
        log "cache fill: $MISSES < $FILL_TOKENS distinct tokens, sending more from token $next"
        BENCH_TOKENS_START=$next timeout 60 wrk -t"$THREADS" -c"$CONNECTIONS" -d5s --timeout 5s \
            -s "$HERE/rotate.lua" "${URL_OF[scopegate-cold]}" >"$WORK/wrk-fill.txt" 2>&1 ||
            die "cache fill: wrk failed"
        check_wrk "cache fill" "$WORK/wrk-fill.txt"
        next=$((next + $(sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' "$WORK/wrk-fill.txt")))
        MISSES=$(cache_misses "$COLD_ADMIN")
    done
    [ "$MISSES" -ge "$FILL_TOKENS" ] || die "cache fill: only $MISSES distinct tokens verified"
    FILL_NOTE=" (cold rounds plus a top-up load)"
fi
FILLED_RSS_KB=$(status_kb "${PIDS_OF[scopegate-cold]}" VmRSS)
FILLED_HWM_KB=$(status_kb "${PIDS_OF[scopegate-cold]}" VmHWM)

INTROSPECTIONS=$(curl -s --max-time 5 "http://127.0.0.1:${ADMIN_OF[scopegate-introspect]}/metrics" |
    awk '/^scopegate_introspection_requests_total/ { n += $2 } END { print int(n) }')
log "scopegate-introspect: $INTROSPECTIONS introspection call(s) for ${REQS[scopegate-introspect]} requests"

ELAPSED=$(($(date +%s) - STARTED_AT))

# --------------------------------------------------------------------------
# Report

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }

TABLE=$(
    echo "| contender | requests/s | p50 (ms) | p99 (ms) | CPU µs/request | peak RSS (MB) |"
    echo "|---|---:|---:|---:|---:|---:|"
    for name in "${ORDER[@]}"; do
        peak="-"
        [ -n "${HWM_KB[$name]:-}" ] && peak=$(mb "${HWM_KB[$name]}")
        echo "| $name | ${RPS[$name]} | ${P50[$name]} | ${P99[$name]} | ${CPU_US[$name]} | $peak |"
    done
    echo
    echo "- scopegate-warm / nginx-proxy throughput: **$(ratio "${RPS[scopegate-warm]}" "${RPS[nginx-proxy]}")x**" \
        "(rounds $(round_ratios "${RPS_ROUNDS[scopegate-warm]}" "${RPS_ROUNDS[nginx-proxy]}")x);" \
        "p99 $(ratio "${P99[scopegate-warm]}" "${P99[nginx-proxy]}")x nginx-proxy's" \
        "(${P99[scopegate-warm]} vs ${P99[nginx-proxy]} ms; rounds $(round_ratios "${P99_ROUNDS[scopegate-warm]}" "${P99_ROUNDS[nginx-proxy]}")x)"
    echo "- hyper-floor / nginx-proxy throughput: $(ratio "${RPS[hyper-floor]}" "${RPS[nginx-proxy]}")x" \
        "(rounds $(round_ratios "${RPS_ROUNDS[hyper-floor]}" "${RPS_ROUNDS[nginx-proxy]}")x);" \
        "scopegate-warm / hyper-floor: $(ratio "${RPS[scopegate-warm]}" "${RPS[hyper-floor]}")x"
    echo "- scopegate-cold / haproxy-jwt throughput: **$(ratio "${RPS[scopegate-cold]}" "${RPS[haproxy-jwt]}")x**" \
        "(rounds $(round_ratios "${RPS_ROUNDS[scopegate-cold]}" "${RPS_ROUNDS[haproxy-jwt]}")x);" \
        "p99 ${P99[scopegate-cold]} vs ${P99[haproxy-jwt]} ms"
    echo "- scopegate-warm / haproxy-jwt throughput: $(ratio "${RPS[scopegate-warm]}" "${RPS[haproxy-jwt]}")x;" \
        "scopegate-introspect / nginx-proxy: $(ratio "${RPS[scopegate-introspect]}" "${RPS[nginx-proxy]}")x" \
        "($INTROSPECTIONS introspection call(s) for ${REQS[scopegate-introspect]} requests)"
    echo "- scopegate RSS: idle $(mb "${IDLE_KB[scopegate-warm]}") MB;" \
        "peak (VmHWM) warm $(mb "${HWM_KB[scopegate-warm]}") MB," \
        "cold $(mb "${HWM_KB[scopegate-cold]}") MB," \
        "introspection $(mb "${HWM_KB[scopegate-introspect]}") MB (after all rounds)"
    echo "- scopegate with $MISSES distinct verified tokens$FILL_NOTE (cache max_entries 100000):" \
        "VmRSS $(mb "$FILLED_RSS_KB") MB, VmHWM $(mb "$FILLED_HWM_KB") MB"
)

echo
echo "$TABLE"
echo
log "done in ${ELAPSED}s (after the build)"

[ "$SMOKE" = 1 ] && exit 0

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
SECTION=$(
    echo "## Latest run"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), \`benches/load/run.sh\`" \
        "(wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency per contender and round, $ROUNDS interleaved rounds, medians; $TOKENS pre-minted tokens;" \
        "scopegate RUST_LOG=$SCOPEGATE_LOG, profile $PROFILE; commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')" \
        "with local changes: $(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l | tr -d ' ') files)."
    echo
    echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r);" \
        "$(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v | head -1 | awk '{ print "HAProxy " $3 }')," \
        "$(wrk -v 2>&1 | head -1 | awk '{ print "wrk " $2 }'), $(rustc --version | awk '{ print $1 " " $2 }')."
    echo "wrk, the upstream, and the contender share the machine's CPUs. CPU µs/request is the"
    echo "contender's own user + system time (from /proc) divided by the requests it served."
    echo
    echo "$TABLE"
    echo
)
RESULTS=$ROOT/benches/RESULTS.md
if [ ! -f "$RESULTS" ]; then
    printf '# Benchmark results\n\n' >"$RESULTS"
fi
# Replace the "## Latest run" section (up to the next "## " heading), or
# append one.
SECTION_FILE=$WORK/section.md
printf '%s\n' "$SECTION" >"$SECTION_FILE"
awk -v section="$SECTION_FILE" '
    function emit() { while ((getline line < section) > 0) print line; done = 1 }
    /^## Latest run/ { emit(); skipping = 1; next }
    skipping && /^## / { skipping = 0 }
    !skipping { print }
    END { if (!done) { print ""; emit() } }
' "$RESULTS" >"$WORK/RESULTS.md"
cp "$WORK/RESULTS.md" "$RESULTS"
log "wrote $RESULTS"
