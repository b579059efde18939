#!/usr/bin/env bash
# Load benchmark: schoolgate against unbound and dnsmasq, same machine, same run, same list,
# same upstream. See the "Performance" section of README.md.
#
#   benches/load.sh            full run: 1,000,000 listed names, 10 s per measurement,
#                              writes benches/RESULTS.md
#   benches/load.sh --quick    20,000 names, 1 s per measurement: proves the harness works
#
# Options: --names N  --seconds S  --servers "schoolgate schoolgate-xdp unbound dnsmasq"
#          --same-qps Q (the rate every server is also measured at; 75,000, or 5,000 quick)
#          --keep (keep the work dir)
#          --out FILE (markdown results; default benches/RESULTS.md for a full run)
#
# Everything runs on loopback. The upstream is knot, authoritative for a generated zone; no
# public resolver is ever asked. Each server is pinned to the last CPU and the load (dnsperf or
# the batching client, and knot) to the others. Processes started here are stopped by PID.
# schoolgate runs twice: through its sockets, and as `schoolgate-xdp` with the XDP fast path on
# loopback (root only; the two loopback sysctls it needs are set for the run and put back).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

QUICK=0
NAMES=1000000
SECONDS_PER=10
SERVERS="schoolgate schoolgate-xdp unbound dnsmasq"
[ "$(id -u)" = 0 ] || SERVERS="schoolgate unbound dnsmasq"
KEEP=0
OUT=""
SAME_QPS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1; NAMES=20000; SECONDS_PER=1 ;;
        --same-qps) SAME_QPS=$2; shift ;;
        --names) NAMES=$2; shift ;;
        --seconds) SECONDS_PER=$2; shift ;;
        --servers) SERVERS=$2; shift ;;
        --keep) KEEP=1 ;;
        --out) OUT=$2; shift ;;
        *) echo "unknown option $1 (see the top of $0)" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$OUT" ] && [ "$QUICK" = 0 ]; then OUT="$ROOT/benches/RESULTS.md"; fi
# Half of peak is a different load for each server; latency is also compared at one rate, about
# the peers' half of peak here.
if [ -z "$SAME_QPS" ]; then if [ "$QUICK" = 1 ]; then SAME_QPS=5000; else SAME_QPS=75000; fi; fi

# --- tools -----------------------------------------------------------------------------------
need=()
command -v dnsperf >/dev/null || need+=(dnsperf)
command -v unbound >/dev/null || need+=(unbound)
command -v dnsmasq >/dev/null || need+=(dnsmasq)
command -v knotd >/dev/null || need+=(knot)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} from Debian" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --quiet --bin schoolgate --example loadgen
# The commit that was built: edits made while the benchmark runs do not change what it measures.
BUILT="$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
SG="$ROOT/target/release/schoolgate"
LOADGEN="$ROOT/target/release/examples/loadgen"

NCPU=$(nproc)
SERVER_CPU=$((NCPU - 1))
LOAD_CPUS="0-$((NCPU > 1 ? NCPU - 2 : 0))"
TICK=$(getconf CLK_TCK)
# Other jobs on a shared machine disturb the measurement less when the measured processes run
# at a higher priority (root only; otherwise they run as they are).
PRIO=()
if [ "$(id -u)" = 0 ]; then PRIO=(nice -n -10); fi
pin_load() { "${PRIO[@]}" taskset -c "$LOAD_CPUS" "$@"; }
# The upstream stands in for a server on another machine, but here it shares the load CPU: at a
# real-time priority its answers do not wait behind the load client's time slice, which would
# count against whichever server forwarded the query.
UPSTREAM_PRIO=("${PRIO[@]}")
if chrt -f 10 true 2>/dev/null; then UPSTREAM_PRIO=(chrt -f 10); fi
# Client ports of the "many clients" runs (the batching client's default is 4).
MANY_PORTS=256
# Latency at half of peak is measured this many times (the summary takes the median): one
# multi-millisecond stall from other work on a shared machine can decide a single run's p99.
HALF_RUNS=3

WORK=$(mktemp -d /tmp/schoolgate-load.XXXXXX)
PIDS=()
# Kernel threads free to run on any CPU are moved to the load CPUs for the run and put back
# after (root only), so the server CPU runs the servers and the kernel's work for their packets.
# The one that matters here is kdamond, the memory monitor this VM's host runs to page out cold
# memory: every 0.5 s it ran up to 3.25 ms on the server CPU, and a kernel built without
# preemption lets nothing interrupt it, whatever the priority (see "Results" in the README).
KTHREADS_WAS=()
move_kthreads() {
    local p was
    [ "$(id -u)" = 0 ] && [ "$NCPU" -gt 1 ] || return 0
    for p in $(ps -e -o pid=,ppid= | awk '$2 == 2 {print $1}'); do
        was=$(awk '/^Cpus_allowed_list:/ {print $2}' "/proc/$p/status" 2>/dev/null) || continue
        [ "$was" = "0-$((NCPU - 1))" ] || continue
        taskset -pc "$LOAD_CPUS" "$p" >/dev/null 2>&1 && KTHREADS_WAS+=("$p:$was")
    done
    return 0
}
cleanup() {
    for kv in "${KTHREADS_WAS[@]}"; do taskset -pc "${kv#*:}" "${kv%%:*}" >/dev/null 2>&1 || true; done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "${STALL_CG:-}" ]; then throttle off 2>/dev/null || true; rmdir "$STALL_CG" 2>/dev/null || true; fi
    if [ "$KEEP" = 0 ]; then rm -rf "$WORK"; else echo "work dir kept: $WORK" >&2; fi
}
trap cleanup EXIT

# The fast path's replies on loopback are dropped as martians without these (see src/server/xdp.rs).
LO_SYSCTLS=(net.ipv4.conf.lo.route_localnet net.ipv4.conf.lo.accept_local)
LO_WAS=()
if [[ " $SERVERS " == *" schoolgate-xdp "* ]]; then
    trap 'cleanup; for kv in "${LO_WAS[@]}"; do sysctl -qw "$kv" || true; done' EXIT
    for k in "${LO_SYSCTLS[@]}"; do
        was=$(sysctl -n "$k" 2>/dev/null) || was=""
        if [ -z "$was" ] || ! sysctl -qw "$k=1" 2>/dev/null; then
            echo "cannot set $k here: schoolgate-xdp left out of this run" >&2
            SERVERS=$(tr ' ' '\n' <<< "$SERVERS" | grep -vx schoolgate-xdp | tr '\n' ' ')
            break
        fi
        LO_WAS+=("$k=$was")
    done
fi

# Ports chosen per run so a leftover process from another run cannot answer for us.
BASE=$((20000 + $$ % 20000))
KNOT_PORT=$BASE; SG_PORT=$((BASE + 1)); UB_PORT=$((BASE + 2)); DM_PORT=$((BASE + 3)); SGX_PORT=$((BASE + 4))
if [ "$QUICK" = 1 ]; then MIXED=$((SECONDS_PER * 300000)); SAMPLE=20000; else MIXED=$((SECONDS_PER * 300000)); SAMPLE=100000; fi

echo "generating $NAMES listed names in $WORK" >&2
python3 "$ROOT/benches/load/gen.py" --dir "$WORK" --names "$NAMES" --mixed-lines "$MIXED" \
    --blocked-sample "$SAMPLE" --knot-port "$KNOT_PORT" --schoolgate-port "$SG_PORT" \
    --schoolgate-xdp-port "$SGX_PORT" \
    --unbound-port "$UB_PORT" --dnsmasq-port "$DM_PORT"
PROBE=$(cat "$WORK/probe-name")
# Logs and results go below the config's directory, not in it: schoolgate watches that directory
# and would take every line written there for an edit to reload.
OUTD="$WORK/out"
mkdir -p "$OUTD"
RESULTS="$OUTD/results.tsv"
echo "machine loadavg_start=$(cut -d' ' -f1 /proc/loadavg)" > "$RESULTS"
move_kthreads
echo "machine kthreads_moved=${#KTHREADS_WAS[@]}" >> "$RESULTS"

# --- helpers ---------------------------------------------------------------------------------
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
now_ns() { date +%s%N; }
record() { printf '%s\n' "$*" >> "$RESULTS"; }
field() { tr ' ' '\n' <<< "$1" | awk -F= -v k="$2" '$1 == k {print $2}'; }

declare -A SPIDS
start_server() { # name -> sets SPID (and SPIDS[name]), STARTUP_MS
    local name=$1 t0
    t0=$(now_ns)
    case $name in
        schoolgate) "${PRIO[@]}" taskset -c "$SERVER_CPU" "$SG" --config "$WORK/schoolgate.toml" serve >"$OUTD/schoolgate.log" 2>&1 & ;;
        schoolgate-xdp) "${PRIO[@]}" taskset -c "$SERVER_CPU" "$SG" --config "$WORK/xdp/schoolgate.toml" serve >"$OUTD/schoolgate-xdp.log" 2>&1 & ;;
        unbound) "${PRIO[@]}" taskset -c "$SERVER_CPU" unbound -d -c "$WORK/unbound.conf" >"$OUTD/unbound.log" 2>&1 & ;;
        dnsmasq) "${PRIO[@]}" taskset -c "$SERVER_CPU" dnsmasq -k -C "$WORK/dnsmasq.conf" >"$OUTD/dnsmasq.log" 2>&1 & ;;
    esac
    SPID=$!
    SPIDS[$name]=$SPID
    PIDS+=("$SPID")
    local out
    out=$(pin_load "$LOADGEN" --server "127.0.0.1:$(port_of "$name")" --probe "$PROBE" --since-ns "$t0") \
        || { echo "$name did not answer; its log:" >&2; tail -20 "$OUTD/$name.log" >&2; exit 1; }
    STARTUP_MS=$(field "$out" startup_ms)
}

stop_server() {
    kill "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$SPID" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

port_of() { case $1 in schoolgate) echo "$SG_PORT" ;; schoolgate-xdp) echo "$SGX_PORT" ;; unbound) echo "$UB_PORT" ;; dnsmasq) echo "$DM_PORT" ;; esac; }

# One dnsperf run: prints "qps= avg_us= lost= answered= cpu_qps=".
run_dnsperf() { # name file
    local c0 c1 out
    c0=$(cpu_ticks "$SPID")
    out=$(pin_load dnsperf -s 127.0.0.1 -p "$(port_of "$1")" -d "$2" -l "$SECONDS_PER" -T 1 -c 4 -q 256 -t 1 2>&1)
    c1=$(cpu_ticks "$SPID")
    awk -v c="$((c1 - c0))" -v tick="$TICK" '
        /Queries completed:/ {done = $3}
        /Queries lost:/ {lost = $3}
        /Queries per second:/ {qps = $4}
        /Average Latency/ {avg = $4 * 1e6}
        END {cpu = c / tick; printf "qps=%.0f avg_us=%.1f p99_us=- lost=%d answered=%d cpu_s=%.2f cpu_qps=%.0f\n", qps, avg, lost, done, cpu, (cpu > 0 ? done / cpu : 0)}' <<< "$out"
}

# One batching-client run; extra arguments go to loadgen.
run_loadgen() { # name file [args]
    local name=$1 file=$2 c0 c1 out
    shift 2
    c0=$(cpu_ticks "$SPID")
    out=$(pin_load "$LOADGEN" --server "127.0.0.1:$(port_of "$name")" --queries "$file" --seconds "$SECONDS_PER" "$@")
    c1=$(cpu_ticks "$SPID")
    local answered cpu
    answered=$(field "$out" answered)
    cpu=$(awk -v c="$((c1 - c0))" -v t="$TICK" 'BEGIN {printf "%.2f", c / t}')
    echo "$out cpu_s=$cpu cpu_qps=$(awk -v a="$answered" -v c="$cpu" 'BEGIN {printf "%.0f", (c > 0 ? a / c : 0)}')"
}

# The log writer's counters from a schoolgate's /metrics: "name log_access_dropped= ...".
log_stats() { # name
    local admin
    admin=$(grep -o 'admin endpoint on http://[0-9.:]*' "$OUTD/$1.log" | head -1 | sed 's|.*http://||') || return 1
    python3 - "$admin" "$1" <<'PY'
import re, sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
def value(series):
    m = re.search("^" + re.escape(series) + r" (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0
dropped = int(value('schoolgate_log_records_total{log="access",result="dropped"}'))
lost = int(value('schoolgate_log_records_total{log="breach",result="lost"}'))
pauses = int(value("schoolgate_log_pauses_total"))
longest_ms = value("schoolgate_log_write_longest_seconds") * 1000
print(f"{sys.argv[2]} log_access_dropped={dropped} log_breach_lost={lost} log_pauses={pauses}"
      f" log_write_longest_ms={longest_ms:.1f}")
PY
}

# --- the upstream ----------------------------------------------------------------------------
"${UPSTREAM_PRIO[@]}" taskset -c "$LOAD_CPUS" knotd -c "$WORK/knot.conf" >"$OUTD/knot.log" 2>&1 &
KNOT_PID=$!
PIDS+=("$KNOT_PID")
for _ in $(seq 100); do
    if dig +short +time=1 +tries=1 -p "$KNOT_PORT" @127.0.0.1 ns.schoolbench.net A 2>/dev/null | grep -q 127.0.0.1; then break; fi
    sleep 0.1
done

# --- the servers -----------------------------------------------------------------------------
# All three run at once, each pinned to the server CPU, and every measurement of a mix is taken for
# each server in turn: the machine is shared, and measuring one server after another for ten
# minutes let background load land on one of them (ratios moved by a fifth between runs).
fill_cache() { # name: the "cached" mix assumes the allowed names are cached
    pin_load "$LOADGEN" --server "127.0.0.1:$(port_of "$1")" --queries "$WORK/q-cached.txt" --once --qps 20000 >/dev/null
}
for name in $SERVERS; do
    echo "== $name" >&2
    if [ "$name" = schoolgate ]; then
        # First start compiles the lists and takes the change-control log's first snapshots (a
        # one-time pass over every list); the start-up target is for compiled lists.
        start_server schoolgate
        record "$name startup_compile_ms=$STARTUP_MS"
        for _ in $(seq 300); do
            grep -q 'change-control log checked' "$OUTD/schoolgate.log" && break
            sleep 0.1
        done
        stop_server
    fi
    start_server "$name"
    record "$name startup_ms=$STARTUP_MS rss_start_kib=$(rss_kib "$SPID")"
    echo "   start-up to first answer: $STARTUP_MS ms" >&2
    if [ "$name" = schoolgate-xdp ]; then
        if grep -q 'XDP fast path on lo' "$OUTD/$name.log"; then
            record "$name fastpath=1"
        else
            echo "   the fast path did not attach; this server answers through its sockets:" >&2
            grep 'XDP fast path' "$OUTD/$name.log" >&2 || true
            record "$name fastpath=0"
        fi
    fi
done

for mix in blocked cached mixed; do
    for name in $SERVERS; do
        SPID=${SPIDS[$name]}
        [ "$mix" = cached ] && fill_cache "$name"
        f="$WORK/q-$mix.txt"
        [ "$mix" = mixed ] && f="$WORK/q-mixed-dnsperf.txt"
        r=$(run_dnsperf "$name" "$f")
        record "$name mix=$mix tool=dnsperf $r"
        echo "   $name $mix dnsperf:  $r" >&2
        [ "$mix" = mixed ] && f="$WORK/q-mixed-load.txt"
        r=$(run_loadgen "$name" "$f" --inflight 256)
        record "$name mix=$mix tool=loadgen $r"
        echo "   $name $mix loadgen:  $r" >&2
        # The same load from many client ports, as from a building of devices rather than a
        # few forwarders: schoolgate joins little into segmented sends then.
        many=$(run_loadgen "$name" "$f" --inflight 256 --sockets "$MANY_PORTS")
        record "$name mix=$mix tool=many $many"
        echo "   $name $mix loadgen, $MANY_PORTS ports:  $many" >&2
        half=$(( $(field "$r" qps | cut -d. -f1) / 2 ))
        [ "$mix" = mixed ] && f="$WORK/q-mixed-paced.txt"
        # Each paced run starts where the last stopped, so the mix's never-seen names are.
        skip=0
        for run in $(seq "$HALF_RUNS"); do
            r=$(run_loadgen "$name" "$f" --qps "$half" --inflight 4096 --skip "$skip")
            skip=$((skip + $(field "$r" sent)))
            record "$name mix=$mix tool=half run=$run $r"
            echo "   $name $mix at half, run $run:  $r" >&2
        done
        r=$(run_loadgen "$name" "$f" --qps "$SAME_QPS" --inflight 4096 --skip "$skip")
        record "$name mix=$mix tool=same $r"
        echo "   $name $mix at $SAME_QPS qps:  $r" >&2
        record "$name rss_after_${mix}_kib=$(rss_kib "$SPID") hwm_after_${mix}_kib=$(hwm_kib "$SPID")"
        # The writer's counters so far, so a drop or a long write can be placed in its mix.
        if [[ $name == schoolgate* ]]; then
            log_stats "$name" | sed "s/ log_/ after_${mix}_log_/g" >> "$RESULTS" || true
        fi
    done
done
for name in $SERVERS; do
    if ! kill -0 "${SPIDS[$name]}" 2>/dev/null; then
        echo "$name exited during the run; the end of its log:" >&2
        tail -20 "$OUTD/$name.log" >&2
        exit 1
    fi
    record "$name rss_kib=$(hwm_kib "${SPIDS[$name]}")"
    # How far the log writer fell behind: access records it dropped (past `logs.queue` waiting)
    # and the times the query path paused for it (breach records are never dropped); and its
    # longest write, which says whether the disk held it.
    log_stats "$name" >> "$RESULTS" || true
done

if [ -n "${SPIDS[schoolgate]:-}" ]; then
    # Reload the whole list under load: touching every list file changes its fingerprint, so
    # all of it is recompiled and the index rebuilt while queries keep arriving.
    SPID=${SPIDS[schoolgate]}
    rate=$(awk '$1 == "schoolgate" && / mix=blocked tool=loadgen / {for (i = 1; i <= NF; i++) if ($i ~ /^qps=/) {split($i, a, "="); print int(a[2] / 2)}}' "$RESULTS")
    before=$(grep -c 'reloaded' "$OUTD/schoolgate.log" || true)
    reload_secs=$((QUICK == 1 ? 4 : 20))
    "${PRIO[@]}" taskset -c "$LOAD_CPUS" "$LOADGEN" --server "127.0.0.1:$SG_PORT" --queries "$WORK/q-blocked.txt" \
        --seconds "$reload_secs" --qps "$rate" --inflight 4096 > "$OUTD/reload.out" &
    LG=$!
    sleep 1
    touch "$WORK"/lists/*.txt
    wait "$LG"
    # A reload slowed by other work may finish after the load: wait for it a while longer. The
    # touches may reach the server as more than one reload; the time is the one that compiled
    # (a reload that finds everything compiled says `recompiled=[]`).
    took=""
    for _ in $(seq 600); do
        took=$(grep 'reloaded' "$OUTD/schoolgate.log" | tail -n +"$((before + 1))" | grep -v 'recompiled=\[\]' | grep -o 'took_ms=[0-9]*' | tail -1 | cut -d= -f2 || true)
        [ -n "$took" ] && break
        sleep 0.1
    done
    reloads=$(($(grep -c 'reloaded' "$OUTD/schoolgate.log" || true) - before))
    record "schoolgate reload took_ms=${took:-none} reloads=$reloads qps_offered=$rate $(cat "$OUTD/reload.out") rss_after_reload_kib=$(hwm_kib "$SPID")"
    echo "   reload under load: ${took:-none} ms; $(cat "$OUTD/reload.out")" >&2
fi
# A disk that stalls: each schoolgate's disk writes are throttled to a trickle (64 KB/s) for
# 0.6 s every 2 s under saturating blocked names (two log lines a query, the breach never
# dropped), through a blkio (cgroup v1) or io (v2) cgroup. Its log writer should ride the stalls
# out in the page cache: no access record dropped, no growth holding breaches. Root only, and the
# logs must be on a block device; otherwise the report says it was not measured.
STALL_CG=""
stall_setup() { # -> STALL_CG, STALL_DEV, STALL_V; fails where it cannot be done
    local mm
    [ "$(id -u)" = 0 ] || return 1
    mm=$(findmnt -no MAJ:MIN -T "$OUTD" 2>/dev/null | tr -d " ") || return 1
    [ -e "/sys/dev/block/$mm" ] || return 1
    # Throttling is set per disk, not per partition.
    if [ -e "/sys/dev/block/$mm/partition" ]; then mm=$(cat "/sys/dev/block/$mm/../dev"); fi
    STALL_DEV=$mm
    if [ -d /sys/fs/cgroup/blkio ]; then
        STALL_V=1 STALL_CG=/sys/fs/cgroup/blkio/schoolgate-load-$$
    elif grep -qw io /sys/fs/cgroup/cgroup.controllers 2>/dev/null \
        && echo +io > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
        STALL_V=2 STALL_CG=/sys/fs/cgroup/schoolgate-load-$$
    else
        return 1
    fi
    mkdir -p "$STALL_CG"
}
throttle() { # on|off
    if [ "$STALL_V" = 1 ]; then
        echo "$STALL_DEV $([ "$1" = on ] && echo 65536 || echo 0)" > "$STALL_CG/blkio.throttle.write_bps_device"
    else
        echo "$STALL_DEV wbps=$([ "$1" = on ] && echo 65536 || echo max)" > "$STALL_CG/io.max"
    fi
}
if stall_setup 2>/dev/null; then
    for name in $SERVERS; do
        [[ $name == schoolgate* ]] || continue
        SPID=${SPIDS[$name]}
        if ! echo "$SPID" 2>/dev/null > "$STALL_CG/cgroup.procs"; then
            echo "   $name with a stalling disk: not measured (cannot move it into $STALL_CG)" >&2
            record "$name stalls=none"
            continue
        fi
        before=$(log_stats "$name") || before=""
        stall_secs=$((QUICK == 1 ? 4 : 10))
        pin_load "$LOADGEN" --server "127.0.0.1:$(port_of "$name")" --queries "$WORK/q-blocked.txt" \
            --seconds "$stall_secs" --inflight 256 > "$OUTD/stall.out" &
        LG=$!
        stalls=0
        while sleep 1.4 && kill -0 "$LG" 2>/dev/null; do
            throttle on 2>/dev/null || break
            sleep 0.6
            throttle off
            stalls=$((stalls + 1))
        done
        wait "$LG"
        after=$(log_stats "$name") || after=""
        out=$(cat "$OUTD/stall.out")
        d0=$(field "$before" log_access_dropped) d1=$(field "$after" log_access_dropped)
        l0=$(field "$before" log_breach_lost) l1=$(field "$after" log_breach_lost)
        dropped=$(( ${d1:-0} - ${d0:-0} )) lost=$(( ${l1:-0} - ${l0:-0} ))
        record "$name stalls=$stalls stall_ms=600 stall_every_ms=2000 throttle_bps=65536" \
            "stall_qps=$(field "$out" qps) stall_queries_lost=$(field "$out" lost)" \
            "stall_access_dropped=$dropped stall_breach_lost=$lost" \
            "stall_longest_before_ms=$(field "$before" log_write_longest_ms)" \
            "stall_longest_ms=$(field "$after" log_write_longest_ms) stall_hwm_kib=$(hwm_kib "$SPID")"
        echo "   $name with a stalling disk: $stalls stalls, $dropped access records dropped, longest write $(field "$after" log_write_longest_ms) ms" >&2
    done
else
    echo "   a stalling disk: not measured (needs root, a blkio or io cgroup, and the logs on a block device)" >&2
    record "schoolgate stalls=none"
fi
for name in $SERVERS; do
    SPID=${SPIDS[$name]}
    stop_server
done

record "machine loadavg_end=$(cut -d' ' -f1 /proc/loadavg)"

# --- report ----------------------------------------------------------------------------------
MACHINE="$(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r)"
VERSIONS="schoolgate $BUILT; $(unbound -V | head -1 | sed 's/Version/unbound/'); $(dnsmasq -v | head -1 | awk '{print "dnsmasq", $3}'); $(dnsperf -h 2>&1 | awk '/^Version/ {print "dnsperf", $2}'); knot $(knotd -V | awk '{print $NF}')"
python3 "$ROOT/benches/load/report.py" --results "$RESULTS" --names "$NAMES" --seconds "$SECONDS_PER" \
    --same-qps "$SAME_QPS" \
    --machine "$MACHINE" --versions "$VERSIONS" ${OUT:+--out "$OUT"}
