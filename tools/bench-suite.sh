#!/usr/bin/env bash
# Runs the BENCHMARKS.md cases against a separate weir-broker process, so the broker's
# own CPU time and peak heap (RssAnon) can be reported apart from the load generator's.
#
# Usage: tools/bench-suite.sh [CASE ...]       (default: A B C D E)
#   A  produce 1 KiB x batch 1000, 1 producer, 1 shard, acks=leader, 1 GB
#   B  produce 100 B x batch 1000, 8 producers, 8 shards, 3 M messages
#   C  consume 100 B, 8 consumers, 8 shards, 4 M messages (preloaded first, not timed)
#   D  e2e 1 KiB, open loop 100,000 msgs/s, 10 s after a 2 s warm-up
#   E  produce acks=durable, 16 producers, 16 shards, 1 KiB x batch 1000, 20 s
#   F  consume 1 KiB, 8 consumers, 8 shards, 1 M messages (1 GB; preloaded, not timed)
# Environment:
#   WEIR_* broker settings, passed to the broker (e.g. WEIR_RUNTIME=thread_per_core)
#   BENCH_ARGS  extra weir-bench flags for every case (e.g. "--linger-ms 0")
#   TMPDIR      where the broker's data directory goes (default /tmp)
# Needs release builds: cargo build --release -p weir-broker -p weir-tools
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BROKER=${BROKER:-$ROOT/target/release/weir-broker}
BENCH=${BENCH:-$ROOT/target/release/weir-bench}
CASES=("$@")
[ ${#CASES[@]} -eq 0 ] && CASES=(A B C D E)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/weir-suite.XXXXXX")
BROKER_PID=
SAMPLER_PID=
cleanup() {
    [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null || true
    [ -n "$BROKER_PID" ] && kill -INT "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BROKER" --listen 127.0.0.1:0 --http 127.0.0.1:0 --data-dir "$WORK/data" >"$WORK/broker.out" 2>"$WORK/broker.err" &
BROKER_PID=$!
for _ in $(seq 100); do
    grep -q listening "$WORK/broker.out" 2>/dev/null && break
    sleep 0.1
done
ADDR=$(awk '/listening on/ {print $4}' "$WORK/broker.out")
[ -n "$ADDR" ] || { echo "broker did not start:"; cat "$WORK/broker.err"; exit 1; }
( while kill -0 "$BROKER_PID" 2>/dev/null; do
      awk '/RssAnon/ {print $2}' "/proc/$BROKER_PID/status" 2>/dev/null || true
      sleep 0.2
  done >"$WORK/rss" ) &
SAMPLER_PID=$!

cpu_ticks() { awk '{print $14 + $15}' "/proc/$BROKER_PID/stat"; }
TICK=$(getconf CLK_TCK)
echo "# weir bench suite, $(date -u '+%Y-%m-%d %H:%M UTC'), broker $ADDR, runtime=${WEIR_RUNTIME:-multi_thread}, $(nproc) CPUs"
for c in "${CASES[@]}"; do
    # shellcheck disable=SC2086
    case $c in
        A) args="produce --size 1024 --batch 1000 --producers 1 --shards 1 --acks leader --messages 1000000" ;;
        B) args="produce --size 100 --batch 1000 --producers 8 --shards 8 --messages 3000000" ;;
        C) args="consume --size 100 --batch 1000 --producers 8 --consumers 8 --shards 8 --messages 4000000" ;;
        D) args="e2e --size 1024 --rate 100000 --duration 10 --warmup 2 --linger-ms 0" ;;
        E) args="produce --size 1024 --batch 1000 --producers 16 --shards 16 --acks durable --duration 20" ;;
        F) args="consume --size 1024 --batch 1000 --producers 8 --consumers 8 --shards 8 --messages 1000000" ;;
        *) echo "unknown case $c"; exit 2 ;;
    esac
    echo "== case $c: weir-bench $args ${BENCH_ARGS:-}   (load average $(cut -d' ' -f1 /proc/loadavg))"
    t0=$(cpu_ticks)
    # shellcheck disable=SC2086
    "$BENCH" $args ${BENCH_ARGS:-} --broker "$ADDR" --topic "case-$c-$RANDOM" 2>&1 |
        grep -E 'throughput|  (all|p[0-3]) |errors' || true
    t1=$(cpu_ticks)
    echo "   broker CPU $(( (t1 - t0) * 1000 / TICK )) ms"
done
echo "# broker peak RssAnon $(( $(sort -n "$WORK/rss" | tail -1) / 1024 )) MiB"
