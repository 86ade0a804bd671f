#!/usr/bin/env bash
# benches/proxy.sh: `palisade proxy` against haproxy and nginx, over the same
# upstream backends, all on 127.0.0.1. See benches/README.md, "Proxy
# overhead (benches/proxy.sh)".
#
# Variants: direct (wrk -> backend, the baseline), palisade, haproxy, nginx.
# Every repetition runs every variant once, in an order rotated per
# repetition; every figure printed is a median over the repetitions, and every
# ratio is taken per repetition against the baseline of the same repetition,
# then the median.
#
# Per variant and repetition:
#   1. wrk -t1 -c1 --latency for DURATION s: p50 (and the proxy's CPU per
#      request at one connection); then the same with every process pinned
#      to one CPU (PINNED=1);
#   2. wrk -t2 -c50 for DURATION s: requests/s, and the proxy's CPU per
#      request (utime+stime from /proc/PID/stat, summed over the proxy's
#      processes, before/after, divided by the requests wrk completed),
#      split into user and system time, and its context switches per
#      request (voluntary and involuntary, summed over every thread in
#      /proc/PID/task/*/status);
#   3. VmRSS of the proxy's process(es) right after run 2.
#
# Environment:
#   DURATION=5        seconds per wrk run
#   REPS=5            repetitions
#   WARMUP=2          seconds of wrk -c50 per variant before the repetitions
#   CONNS=50          connections of the throughput run
#   BASE_PORT=18080   ports BASE+1, BASE+2 (backends), +10/+11 (palisade,
#                     admin), +20 (haproxy), +30 (nginx)
#   ADDR=127.0.0.1    the only address accepted; anything else is refused
#   PINNED=1          also measure the 1-connection p50 with wrk, proxy and
#                     backends all pinned to one CPU (PIN_CPU, default the
#                     last allowed one); PINNED=0 skips it
#   PALISADE_BIN=...  use this binary instead of building one
#   PALISADE_DEFAULTS=1  run palisade on the minimal config (all defaults)
#   RESULTS=FILE      also copy the raw per-run figures (TSV) to FILE
#   KEEP_WORK=1       keep the temporary directory (configs, logs)
set -euo pipefail

DURATION=${DURATION:-5}
REPS=${REPS:-5}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
BASE_PORT=${BASE_PORT:-18080}
ADDR=${ADDR:-127.0.0.1}
PALISADE_DEFAULTS=${PALISADE_DEFAULTS:-0}
PINNED=${PINNED:-1}

die() {
    echo "proxy.sh: $*" >&2
    exit 1
}

# ---- arguments and safety checks -------------------------------------------

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi

[[ "$ADDR" == "127.0.0.1" ]] || die "refusing address '$ADDR': this benchmark only runs on 127.0.0.1"
for v in DURATION REPS WARMUP CONNS BASE_PORT; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((DURATION >= 1 && REPS >= 1 && CONNS >= 2)) || die "need DURATION >= 1, REPS >= 1, CONNS >= 2"
((BASE_PORT >= 1024 && BASE_PORT <= 65000)) || die "BASE_PORT must be in 1024..65000"

UP1=$((BASE_PORT + 1))
UP2=$((BASE_PORT + 2))
PAL_PORT=$((BASE_PORT + 10))
PAL_ADMIN=$((BASE_PORT + 11))
HAP_PORT=$((BASE_PORT + 20))
NGX_PORT=$((BASE_PORT + 30))
ALL_PORTS=("$UP1" "$UP2" "$PAL_PORT" "$PAL_ADMIN" "$HAP_PORT" "$NGX_PORT")

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ORIG_CPUS=$(taskset -p -c $$ | awk '{ print $NF }')
PIN_CPU=${PIN_CPU:-$(awk -F'[-,]' '{ print $NF }' <<<"$ORIG_CPUS")}
[[ "$PIN_CPU" =~ ^[0-9]+$ ]] || die "PIN_CPU must be one CPU number (got '$PIN_CPU')"

# ---- tools -------------------------------------------------------------------

missing=()
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]} > 0)); then
    [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}; run as root to apt-get install them"
    echo "installing ${missing[*]} from Debian" >&2
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2; then
        apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2
    fi
fi
PATH="$PATH:/usr/sbin:/sbin"
HAPROXY=$(command -v haproxy)
NGINX=$(command -v nginx)
WRK=$(command -v wrk)

if [[ -n "${PALISADE_BIN:-}" ]]; then
    PALISADE=$PALISADE_BIN
else
    echo "building palisade (release)" >&2
    (cd "$ROOT" && cargo build --release --bin palisade >&2)
    PALISADE=${CARGO_TARGET_DIR:-$ROOT/target}/release/palisade
fi
[[ -x "$PALISADE" ]] || die "no palisade binary at $PALISADE"

for port in "${ALL_PORTS[@]}"; do
    if ss -Htln "sport = :$port" | grep -q .; then
        die "port $port is already in use (set BASE_PORT)"
    fi
done

# ---- processes and cleanup ---------------------------------------------------

WORK=$(mktemp -d /tmp/palisade-proxy-bench.XXXXXX)
chmod 755 "$WORK" # nginx workers run as nobody
STARTED=()        # PIDs this script started, killed on exit

cleanup() {
    local pid
    local -a children=()
    for pid in "${STARTED[@]}"; do
        # nginx workers, so that none outlives a master that had to be killed.
        mapfile -t -O "${#children[@]}" children < <(pgrep -P "$pid" || true)
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        # Each is our own child: wait reaps it (bounded by the kill below).
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for pid in "${children[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ "${KEEP_WORK:-0}" == 1 ]]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until http://127.0.0.1:PORT/PATH answers 200 (bounded).
wait_http() {
    local port=$1 path=${2:-/}
    for _ in $(seq 100); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$ADDR:$port$path" || true) == 200 ]]; then
            return 0
        fi
        sleep 0.1
    done
    die "nothing answers 200 on $ADDR:$port$path (logs in $WORK; KEEP_WORK=1 keeps them)"
}

# ---- upstream backends: two nginx instances, 1 worker each, "ok" -----------

start_backend() {
    local port=$2 dir=$WORK/$1
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {
        listen $ADDR:$port;
        location = /nginx_status { stub_status; }
        location / { default_type text/plain; return 200 "ok\n"; }
    }
}
EOF
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/out.log" 2>&1 &
    STARTED+=("$!")
}

# Connections the backend at PORT has accepted so far (its own status request
# included).
accepts() {
    curl -s "http://$ADDR:$1/nginx_status" | awk 'NR == 3 { print $1 }'
}

# ---- the proxies ------------------------------------------------------------

start_palisade() {
    local dir=$WORK/palisade
    mkdir -p "$dir"
    {
        cat <<EOF
# Generated by benches/proxy.sh.
[[listeners]]
address = "$ADDR:$PAL_PORT"

[admin]
address = "$ADDR:$PAL_ADMIN"

[server]
grace_period = "1s"

[[services]]
name = "app"
endpoints = ["$ADDR:$UP1", "$ADDR:$UP2"]
EOF
        if [[ "$PALISADE_DEFAULTS" != 1 ]]; then
            cat <<EOF

# Neither haproxy nor nginx has a service-wide breaker; this only raises the
# volume threshold (the layer stays in the stack).
[services.breaker]
enabled = false

# Neither sends the remaining deadline upstream; palisade would add a header.
[services.deadline]
propagate = false

# Retries (3 attempts, budget) and ejection stay on: haproxy (retries 3,
# redispatch) and nginx (proxy_next_upstream, max_fails) retry and eject too,
# and nothing fails here.
EOF
        fi
        cat <<EOF

[[routes]]
service = "app"
EOF
    } >"$dir/palisade.toml"
    "$PALISADE" proxy --config "$dir/palisade.toml" >"$dir/out.log" 2>"$dir/err.log" &
    STARTED+=("$!")
    PALISADE_PID=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$dir/out.log" 2>/dev/null && break
        kill -0 "$PALISADE_PID" 2>/dev/null || die "palisade exited: $(cat "$dir/err.log")"
        sleep 0.1
    done
    grep -q "listening on $ADDR:$PAL_PORT " "$dir/out.log" || die "palisade did not start: $(cat "$dir/out.log" "$dir/err.log")"
}

start_haproxy() {
    local dir=$WORK/haproxy
    mkdir -p "$dir"
    cat >"$dir/haproxy.cfg" <<EOF
# Generated by benches/proxy.sh.
global
    nbthread 2
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    retries 3
    option redispatch
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend bench
    bind $ADDR:$HAP_PORT
    default_backend app

backend app
    balance leastconn
    server up1 $ADDR:$UP1
    server up2 $ADDR:$UP2
EOF
    "$HAPROXY" -c -q -f "$dir/haproxy.cfg" || die "haproxy rejects $dir/haproxy.cfg"
    "$HAPROXY" -db -f "$dir/haproxy.cfg" >"$dir/out.log" 2>&1 &
    STARTED+=("$!")
    HAPROXY_PID=$!
}

start_nginx_proxy() {
    local dir=$WORK/nginx
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
# Generated by benches/proxy.sh.
worker_processes 2;
daemon off;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream app {
        least_conn;
        server $ADDR:$UP1;
        server $ADDR:$UP2;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen $ADDR:$NGX_PORT;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
EOF
    "$NGINX" -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" || die "nginx rejects $dir/nginx.conf"
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/out.log" 2>&1 &
    STARTED+=("$!")
    NGINX_PID=$!
}

# The PIDs whose CPU and memory count for a variant: palisade's and haproxy's
# single process (all threads), nginx's master and workers.
proxy_pids() {
    case $1 in
        direct) ;;
        palisade) echo "$PALISADE_PID" ;;
        haproxy) echo "$HAPROXY_PID" ;;
        nginx)
            echo "$NGINX_PID"
            pgrep -P "$NGINX_PID" || true
            ;;
    esac
}

port_of() {
    case $1 in
        direct) echo "$UP1" ;;
        palisade) echo "$PAL_PORT" ;;
        haproxy) echo "$HAP_PORT" ;;
        nginx) echo "$NGX_PORT" ;;
    esac
}

# "USER SYS SWITCHES" over the given PIDs: utime and stime in clock ticks
# (the whole process's, exited threads included), and context switches,
# voluntary plus involuntary, summed over the threads alive now (a proxy's
# worker threads live as long as it does).
cpu_counters() {
    local user=0 sys=0 pid line
    local -a f
    for pid in "$@"; do
        read -r line <"/proc/$pid/stat"
        read -ra f <<<"${line##*) }" # fields from 3 (state) on; utime is 14, stime 15
        user=$((user + f[11]))
        sys=$((sys + f[12]))
    done
    local switches
    switches=$(for pid in "$@"; do cat /proc/"$pid"/task/*/status 2>/dev/null; done |
        awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { n += $2 } END { print n + 0 }')
    echo "$user $sys $switches"
}

# Sum of VmRSS (kB) over the given PIDs.
rss_kb() {
    local total=0 pid kb
    for pid in "$@"; do
        kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
        total=$((total + kb))
    done
    echo "$total"
}

# wrk's "123.45us" / "1.20ms" / "2.00s" as microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); print v + 0 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 }
        else { print "nan" } }'
}

CLK_TCK=$(getconf CLK_TCK)
RAW=$WORK/raw.tsv # rep, variant, metric, value
printf 'rep\tvariant\tmetric\tvalue\n' >"$RAW"

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RAW"; }

# One wrk run against VARIANT (THREADS CONNS SECONDS [CPU to pin wrk to]);
# sets WRK_OUT, REQS, CPU_US_REQ, USER_US_REQ, SYS_US_REQ, CSW_REQ and
# CPU_SHARE (empty for direct) and ERRS.
wrk_run() {
    local variant=$1 threads=$2 conns=$3 secs=$4 pin=${5:-} port before after
    local -a pids prefix=() c0 c1
    [[ -n "$pin" ]] && prefix=(taskset -c "$pin")
    port=$(port_of "$variant")
    mapfile -t pids < <(proxy_pids "$variant")
    read -ra c0 <<<"$( ((${#pids[@]})) && cpu_counters "${pids[@]}" || echo 0 0 0)"
    WRK_OUT=$("${prefix[@]}" "$WRK" -t"$threads" -c"$conns" -d"${secs}s" --latency "http://$ADDR:$port/")
    read -ra c1 <<<"$( ((${#pids[@]})) && cpu_counters "${pids[@]}" || echo 0 0 0)"
    before=$((c0[0] + c0[1]))
    after=$((c1[0] + c1[1]))
    REQS=$(awk '/ requests in / { print $1 }' <<<"$WRK_OUT")
    [[ "$REQS" =~ ^[0-9]+$ && "$REQS" -gt 0 ]] || die "wrk made no requests against $variant: $WRK_OUT"
    ERRS=$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$WRK_OUT")
    if ((${#pids[@]})); then
        CPU_US_REQ=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$REQS" 'BEGIN { printf "%.3f", t * 1e6 / hz / n }')
        CPU_SHARE=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v s="$secs" 'BEGIN { printf "%.1f", 100 * t / hz / s }')
        USER_US_REQ=$(awk -v t=$((c1[0] - c0[0])) -v hz="$CLK_TCK" -v n="$REQS" 'BEGIN { printf "%.3f", t * 1e6 / hz / n }')
        SYS_US_REQ=$(awk -v t=$((c1[1] - c0[1])) -v hz="$CLK_TCK" -v n="$REQS" 'BEGIN { printf "%.3f", t * 1e6 / hz / n }')
        CSW_REQ=$(awk -v t=$((c1[2] - c0[2])) -v n="$REQS" 'BEGIN { printf "%.4f", t / n }')
    else
        CPU_US_REQ=
        CPU_SHARE=
        USER_US_REQ=
        SYS_US_REQ=
        CSW_REQ=
    fi
}

# Sets the CPU affinity of every process this script started (all threads,
# and nginx's workers) to CPULIST.
set_affinity() {
    local pid p
    local -a procs
    for pid in "${STARTED[@]}"; do
        mapfile -t procs < <(echo "$pid"; pgrep -P "$pid" || true)
        for p in "${procs[@]}"; do
            taskset -a -p -c "$1" "$p" >/dev/null
        done
    done
}

measure() {
    local rep=$1 variant=$2 p50 p50p=- rps a1 a2 b1 b2
    local -a pids
    # (b) latency at one connection, scheduled as the kernel likes.
    wrk_run "$variant" 1 1 "$DURATION"
    p50=$(to_us "$(awk '$1 == "50%" { print $2 }' <<<"$WRK_OUT")")
    record "$rep" "$variant" p50_us "$p50"
    record "$rep" "$variant" errors_c1 "$ERRS"
    [[ -n "$CPU_US_REQ" ]] && record "$rep" "$variant" cpu_us_req_c1 "$CPU_US_REQ"
    # The same with wrk, proxy and backends all pinned to one CPU: no
    # cross-CPU wake-ups, whose cost on a VM varies from run to run.
    if [[ "$PINNED" == 1 ]]; then
        set_affinity "$PIN_CPU"
        wrk_run "$variant" 1 1 "$DURATION" "$PIN_CPU"
        set_affinity "$ORIG_CPUS"
        p50p=$(to_us "$(awk '$1 == "50%" { print $2 }' <<<"$WRK_OUT")")
        record "$rep" "$variant" p50_pinned_us "$p50p"
        record "$rep" "$variant" errors_c1 "$ERRS"
        [[ -n "$CPU_US_REQ" ]] && record "$rep" "$variant" cpu_us_req_c1_pinned "$CPU_US_REQ"
    fi
    # (a), (c): CPU per request and throughput at CONNS connections.
    a1=$(accepts "$UP1")
    a2=$(accepts "$UP2")
    wrk_run "$variant" 2 "$CONNS" "$DURATION"
    b1=$(accepts "$UP1")
    b2=$(accepts "$UP2")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$WRK_OUT")
    record "$rep" "$variant" rps "$rps"
    record "$rep" "$variant" errors "$ERRS"
    # New connections the backends accepted during the run (minus the status
    # request itself): keep-alive to the upstreams at work.
    record "$rep" "$variant" new_upstream_conns $((b1 - a1 - 1 + b2 - a2 - 1))
    if [[ -n "$CPU_US_REQ" ]]; then
        record "$rep" "$variant" cpu_us_req "$CPU_US_REQ"
        record "$rep" "$variant" cpu_pct "$CPU_SHARE"
        record "$rep" "$variant" user_us_req "$USER_US_REQ"
        record "$rep" "$variant" sys_us_req "$SYS_US_REQ"
        record "$rep" "$variant" csw_req "$CSW_REQ"
        # (d) memory right after the run.
        mapfile -t pids < <(proxy_pids "$variant")
        record "$rep" "$variant" rss_mb "$(awk -v k="$(rss_kb "${pids[@]}")" 'BEGIN { printf "%.1f", k / 1024 }')"
    fi
    printf '  rep %d %-9s p50 %6.1f us (pinned %6s)  %7.0f req/s  cpu %7s us/req  errors %s\n' \
        "$rep" "$variant" "$p50" "$p50p" "$rps" "${CPU_US_REQ:--}" "$ERRS" >&2
}

# ---- run ----------------------------------------------------------------------

start_backend up1 "$UP1"
start_backend up2 "$UP2"
start_palisade
start_haproxy
start_nginx_proxy
for port in "$UP1" "$UP2" "$PAL_PORT" "$HAP_PORT" "$NGX_PORT"; do
    wait_http "$port"
done

VARIANTS=(direct palisade haproxy nginx)
echo "warm-up: ${WARMUP}s at $CONNS connections per variant" >&2
if ((WARMUP > 0)); then
    for v in "${VARIANTS[@]}"; do
        "$WRK" -t2 -c"$CONNS" -d"${WARMUP}s" "http://$ADDR:$(port_of "$v")/" >/dev/null
    done
fi

echo "measuring: $REPS repetitions x ${#VARIANTS[@]} variants x 2 wrk runs of ${DURATION}s" >&2
for ((rep = 1; rep <= REPS; rep++)); do
    n=${#VARIANTS[@]}
    for ((i = 0; i < n; i++)); do
        measure "$rep" "${VARIANTS[$(((i + rep - 1) % n))]}"
    done
done

[[ -n "${RESULTS:-}" ]] && cp "$RAW" "$RESULTS"

# ---- report -------------------------------------------------------------------

# Per-repetition derived figures, then medians of everything.
awk -F'\t' -v OFS='\t' '
    NR > 1 { v[$1, $2, $3] = $4; reps[$1] = 1 }
    END {
        for (r in reps) {
            d50 = v[r, "direct", "p50_us"]; drps = v[r, "direct", "rps"]
            d50p = v[r, "direct", "p50_pinned_us"]
            split("palisade haproxy nginx", names, " ")
            for (i = 1; i <= 3; i++) {
                n = names[i]
                print r, n, "added_p50_us", v[r, n, "p50_us"] - d50
                if ((r, n, "p50_pinned_us") in v) print r, n, "added_p50_pinned_us", v[r, n, "p50_pinned_us"] - d50p
                if (drps > 0) print r, n, "rps_vs_direct", v[r, n, "rps"] / drps
            }
            for (i = 2; i <= 3; i++) {
                n = names[i]
                if (v[r, n, "cpu_us_req"] > 0)
                    print r, "palisade/" n, "cpu_ratio", v[r, "palisade", "cpu_us_req"] / v[r, n, "cpu_us_req"]
                if (v[r, n, "csw_req"] > 0)
                    print r, "palisade/" n, "csw_ratio", v[r, "palisade", "csw_req"] / v[r, n, "csw_req"]
                if (v[r, n, "cpu_us_req_c1"] > 0)
                    print r, "palisade/" n, "cpu_ratio_c1", v[r, "palisade", "cpu_us_req_c1"] / v[r, n, "cpu_us_req_c1"]
                a = v[r, n, "p50_us"] - d50
                if (a > 0) print r, "palisade/" n, "added_p50_ratio", (v[r, "palisade", "p50_us"] - d50) / a
                print r, "palisade-" n, "p50_diff_us", v[r, "palisade", "p50_us"] - v[r, n, "p50_us"]
                if ((r, n, "p50_pinned_us") in v) {
                    a = v[r, n, "p50_pinned_us"] - d50p
                    if (a > 0) print r, "palisade/" n, "added_p50_pinned_ratio", (v[r, "palisade", "p50_pinned_us"] - d50p) / a
                    print r, "palisade-" n, "p50_pinned_diff_us", v[r, "palisade", "p50_pinned_us"] - v[r, n, "p50_pinned_us"]
                }
            }
        }
    }' "$RAW" >"$WORK/derived.tsv"

# median VARIANT METRIC: over repetitions, "-" when absent.
median() {
    awk -F'\t' -v var="$1" -v m="$2" '$2 == var && $3 == m { print $4 }' "$RAW" "$WORK/derived.tsv" |
        sort -g | awk '{ a[NR] = $1 } END {
            if (NR == 0) print "-"
            else if (NR % 2) print a[(NR + 1) / 2]
            else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
range() {
    awk -F'\t' -v var="$1" -v m="$2" '$2 == var && $3 == m { print $4 }' "$RAW" "$WORK/derived.tsv" |
        sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR) printf "%.2f to %.2f", lo, hi; else print "-" }'
}
sum_of() {
    awk -F'\t' -v m="$1" 'NR > 1 && $3 == m { n += $4 } END { print n + 0 }' "$RAW"
}
fmt() { # fmt PRINTF-FORMAT VALUE: "-" stays "-"
    # shellcheck disable=SC2059 # the format is always one of this script's literals
    if [[ "$2" == "-" ]]; then printf '%s' "-"; else printf "$1" "$2"; fi
}

echo
echo "palisade proxy bench: $REPS reps x ${DURATION}s per wrk run, medians over reps"
echo "machine: $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo); $(uname -r)"
echo "versions: $("$PALISADE" --version 2>/dev/null || echo palisade), $("$HAPROXY" -v | awk 'NR == 1 { print "haproxy " $3 }'), $("$NGINX" -v 2>&1 | sed 's/.*: //'), $("$WRK" -v 2>&1 | awk 'NR == 1 { print $1, $2 }')"
echo "palisade config: $([[ "$PALISADE_DEFAULTS" == 1 ]] && echo "all defaults" || echo "breaker off, deadline propagation off, retries and ejection on")"
echo
errors_of() {
    awk -F'\t' -v var="$1" '$2 == var && ($3 == "errors" || $3 == "errors_c1") { n += $4 } END { print n + 0 }' "$RAW"
}
echo "(a, c, d) $CONNS connections, wrk -t2 -c$CONNS:"
printf '  %-9s %11s %8s %8s %9s %7s %10s %8s %8s %9s %7s\n' \
    variant "CPU us/req" "user" "sys" "csw/req" "CPU %" "req/s" "vs dir" "RSS MB" "new conn" errors
for v in "${VARIANTS[@]}"; do
    printf '  %-9s %11s %8s %8s %9s %7s %10s %8s %8s %9s %7s\n' "$v" \
        "$(fmt %.2f "$(median "$v" cpu_us_req)")" \
        "$(fmt %.2f "$(median "$v" user_us_req)")" \
        "$(fmt %.2f "$(median "$v" sys_us_req)")" \
        "$(fmt %.3f "$(median "$v" csw_req)")" \
        "$(fmt %.0f%% "$(median "$v" cpu_pct)")" \
        "$(fmt %.0f "$(median "$v" rps)")" \
        "$(if [[ $v == direct ]]; then echo 1.00; else fmt %.2f "$(median "$v" rps_vs_direct)"; fi)" \
        "$(fmt %.1f "$(median "$v" rss_mb)")" \
        "$(median "$v" new_upstream_conns)" \
        "$(errors_of "$v")"
done
echo "  CPU us/req: the proxy's utime+stime per request (user, sys: the split); csw/req: its context"
echo "  switches per request, voluntary + involuntary, over its threads; CPU %: of one core; RSS: VmRSS after the run"
echo "  (nginx: master + workers); new conn: connections the backends accepted during the run"
echo
echo "(b) 1 connection, wrk -t1 -c1 (p50 and added p50 in us; CPU in us per request):"
printf '  %-9s %9s %10s %12s %13s %9s %13s\n' variant "p50" "added" "p50 pinned" "added pinned" "CPU c1" "CPU c1 pinned"
for v in "${VARIANTS[@]}"; do
    if [[ $v == direct ]]; then
        added=-
        addedp=-
    else
        added=$(fmt %+.1f "$(median "$v" added_p50_us)")
        addedp=$(fmt %+.1f "$(median "$v" added_p50_pinned_us)")
    fi
    printf '  %-9s %9s %10s %12s %13s %9s %13s\n' "$v" \
        "$(fmt %.1f "$(median "$v" p50_us)")" "$added" \
        "$(fmt %.1f "$(median "$v" p50_pinned_us)")" "$addedp" \
        "$(fmt %.2f "$(median "$v" cpu_us_req_c1)")" \
        "$(fmt %.2f "$(median "$v" cpu_us_req_c1_pinned)")"
done
[[ "$PINNED" == 1 ]] && echo "  pinned: wrk, proxy and backends all on CPU $PIN_CPU (no cross-CPU wake-ups)"
echo "  added: p50 - direct's p50, per repetition"
echo

cpu_ratio=$(median palisade/haproxy cpu_ratio)
p50_ratio=$(median palisade/haproxy added_p50_ratio)
p50_diff=$(median palisade-haproxy p50_diff_us)
p50p_ratio=$(median palisade/haproxy added_p50_pinned_ratio)
p50p_diff=$(median palisade-haproxy p50_pinned_diff_us)
rss=$(median palisade rss_mb)
verdict() { if awk -v x="$1" -v y="$2" 'BEGIN { exit !(x != "-" && x + 0 <= y + 0) }'; then echo met; else echo MISSED; fi; }
csw_ratio=$(median palisade/haproxy csw_ratio)
echo "targets (issue 17), medians of per-repetition ratios:"
printf '  %-40s %7s   %-14s %s\n' "CPU per request, palisade / haproxy" "$(fmt %.2f "$cpu_ratio")" "target <= 1.00" \
    "$(verdict "$cpu_ratio" 1.0)  (range $(range palisade/haproxy cpu_ratio))"
printf '  %-40s %7s   %-14s %s\n' "context switches per request, pal / hap" "$(fmt %.2f "$csw_ratio")" "target <= 1.00" \
    "$(verdict "$csw_ratio" 1.0)  (range $(range palisade/haproxy csw_ratio))"
printf '  %-40s %7s   %-14s %s\n' "added p50, palisade / haproxy" "$(fmt %.2f "$p50_ratio")" "target <= 1.00" \
    "$(verdict "$p50_diff" 0)  (p50 palisade - haproxy: median $(fmt %+.1f "$p50_diff") us, range $(range palisade-haproxy p50_diff_us))"
if [[ "$PINNED" == 1 ]]; then
    printf '  %-40s %7s   %-14s %s\n' "added p50 pinned, palisade / haproxy" "$(fmt %.2f "$p50p_ratio")" "target <= 1.00" \
        "$(verdict "$p50p_diff" 0)  (p50 palisade - haproxy: median $(fmt %+.1f "$p50p_diff") us, range $(range palisade-haproxy p50_pinned_diff_us))"
fi
printf '  %-40s %7s   %-14s %s\n' "RSS of palisade, MB" "$(fmt %.1f "$rss")" "target <= 20" "$(verdict "$rss" 20)"
echo "for context:"
printf '  %-40s %7s\n' "CPU per request, palisade / nginx" "$(fmt %.2f "$(median palisade/nginx cpu_ratio)")"
printf '  %-40s %7s\n' "CPU per request c1, palisade / haproxy" "$(fmt %.2f "$(median palisade/haproxy cpu_ratio_c1)")"
printf '  %-40s %7s\n' "added p50, palisade / nginx" "$(fmt %.2f "$(median palisade/nginx added_p50_ratio)")"
total_errors=$(($(sum_of errors) + $(sum_of errors_c1)))
if ((total_errors > 0)); then
    echo "WARNING: $total_errors non-2xx responses or socket errors during the runs; see RESULTS" >&2
fi
