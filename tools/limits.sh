#!/usr/bin/env bash
# Measures this machine's limits that weir-bench figures are compared with in
# BENCHMARKS.md:
#   - loopback TCP, one stream (iperf3 on 127.0.0.1, 10 s)
#   - sequential write, 1 MiB and 4 KiB blocks, buffered (no sync; what the page cache
#     takes) and with fdatasync after every block (fio --fdatasync=1), and 16 such
#     1 MiB writers at once
#   - sequential 1 MiB writes with O_DIRECT (no page cache: the device's own speed)
#   - memory copy bandwidth (dd /dev/zero → /dev/null, and a 256 MiB memcpy in python3)
#   - the rate at which the machine hands out memory never touched before: 2 GiB of
#     anonymous pages touched one by one, kept (on a VM that returns free memory to
#     its host, this, not the disk, bounds sustained buffered writes: every new
#     page-cache page is such a page)
#   - the cost of waking a sleeping thread: two threads pass a turn back and forth
#     through a mutex and condition variable (each asleep until its turn, as the
#     broker's threads are between messages), and by spinning (needs a C compiler)
#   - what one 10 µs nanosleep costs in CPU and in time (an open-loop load generator
#     sleeps until each message is due; needs a C compiler)
#
# Usage: tools/limits.sh [DIR]   (DIR: where fio writes; default $TMPDIR or /tmp —
# the same file system weir-bench --embedded uses for its data directory)
# Installs iperf3 and fio with apt-get when they are missing.
set -euo pipefail

DIR=${1:-${TMPDIR:-/tmp}}
SECS=${LIMITS_SECS:-10}
WORK=$(mktemp -d "$DIR/weir-limits.XXXXXX")
trap 'rm -rf "$WORK"; [ -n "${IPERF_PID:-}" ] && kill "$IPERF_PID" 2>/dev/null || true' EXIT

need=()
command -v iperf3 >/dev/null || need+=(iperf3)
command -v fio >/dev/null || need+=(fio)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} …" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "# machine limits, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -r)"
echo "# fio directory: $DIR ($(df -h "$DIR" | awk 'NR==2 {print $1}'))"

# --- loopback TCP, single stream -------------------------------------------------
PORT=5299
iperf3 -s -p $PORT -1 >/dev/null 2>&1 &
IPERF_PID=$!
sleep 0.5
iperf3 -c 127.0.0.1 -p $PORT -t "$SECS" -J >"$WORK/iperf.json"
wait "$IPERF_PID" 2>/dev/null || true
IPERF_PID=
python3 - "$WORK/iperf.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
bps = j["end"]["sum_received"]["bits_per_second"]
print(f"loopback_tcp_1_stream      {bps/8/1e6:10.0f} MB/s   ({bps/1e9:.1f} Gbit/s)")
EOF

# --- sequential write ----------------------------------------------------------
fio_run() { # name bs size extra...
    local name=$1 bs=$2 size=$3
    shift 3
    fio --name="$name" --directory="$WORK" --rw=write --bs="$bs" --size="$size" \
        --ioengine=psync --runtime="$SECS" --time_based=0 --unlink=1 \
        --output-format=json "$@" >"$WORK/$name.json"
    python3 - "$WORK/$name.json" "$name" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
w = j["jobs"][0]["write"]
mbs = w["bw_bytes"] / 1e6
lat = w.get("clat_ns", {}).get("percentile", {})
p99 = lat.get("99.000000")
extra = f"   write p99 {p99/1000:.0f} µs" if p99 else ""
sync = j["jobs"][0].get("sync", {}).get("lat_ns", {})
if sync.get("mean"):
    extra += f"   fdatasync mean {sync['mean']/1000:.0f} µs"
print(f"{sys.argv[2]:<26} {mbs:10.0f} MB/s   ({w['io_bytes']/1e6:.0f} MB written){extra}")
EOF
}
# Buffered: the page cache's speed (about 1 GB, below the ~2.4 GB dirty threshold).
fio_run fio_write_1m_buffered 1M 1G
sync
fio_run fio_write_4k_buffered 4k 1G
sync
# fdatasync after every block: the disk's durable speed.
fio_run fio_write_1m_fdatasync 1M 2G --fdatasync=1
fio_run fio_write_4k_fdatasync 4k 256M --fdatasync=1
# 16 writers, each to its own file with fdatasync after every 1 MiB: the shape of
# weir-bench's durable case (16 producers on 16 shards, each shard one file).
fio_run fio_write_1m_fdatasync_16 1M 256M --fdatasync=1 --numjobs=16 --group_reporting
# Around the page cache: what the device takes when no new page-cache pages are made.
fio_run fio_write_1m_direct 1M 1G --direct=1

# --- memory copy -----------------------------------------------------------------
dd if=/dev/zero of=/dev/null bs=1M count=20000 2>&1 | awk -F', ' '/copied/ {
    printf "memcopy_dd_1MiB_blocks     %s   (dd /dev/zero → /dev/null, 20000 × 1 MiB)\n", $NF }'
python3 - <<'EOF'
import time
n = 256 << 20
a = bytearray(b"\x5a") * n
b = bytearray(n)
b[:] = a  # fault the pages in
t = time.perf_counter()
rounds = 8
for _ in range(rounds):
    b[:] = a
dt = time.perf_counter() - t
print(f"memcpy_256MiB              {rounds*n/dt/1e6:10.0f} MB/s   (python3 bytearray copy, {rounds} rounds)")
EOF

# --- fresh memory ------------------------------------------------------------------
# Touches 2 GiB of new anonymous memory a page at a time and keeps it: the first
# quarter may come from memory the guest still holds, the rest shows the steady rate.
python3 - <<'EOF'
import mmap, time
step = 256 << 20
rates, keep = [], []
for _ in range(8):
    m = mmap.mmap(-1, step)
    t = time.perf_counter()
    for i in range(0, step, 4096):
        m[i] = 1
    rates.append(step / (time.perf_counter() - t) / 1e6)
    keep.append(m)
tail = rates[2:]
print(f"fresh_memory_first_touch   {sum(tail)/len(tail):10.0f} MB/s   (2 GiB of new pages, last 1.5 GiB; first 512 MiB {rates[0]:.0f} and {rates[1]:.0f} MB/s)")
EOF

# --- thread wake-up ----------------------------------------------------------------
# Every cross-thread hand-off on an idle path (a runtime worker waking the shard
# writer, the writer waking a waiting fetch) pays one wake-up of a sleeping thread:
# the floor under weir-bench's e2e latency.
if command -v cc >/dev/null; then
    cat >"$WORK/wakeup.c" <<'EOF'
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define ROUNDS 20000
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t to_b = PTHREAD_COND_INITIALIZER, to_a = PTHREAD_COND_INITIALIZER;
static int turn_b, spinning;
static atomic_int flag;
static double us(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e6 + t.tv_nsec / 1e3; }
static void *partner(void *unused) {
    (void)unused;
    for (int i = 0; i < ROUNDS; i++) {
        if (spinning) { while (atomic_load(&flag) != 1) {} atomic_store(&flag, 0); continue; }
        pthread_mutex_lock(&lock);
        while (!turn_b) pthread_cond_wait(&to_b, &lock);
        turn_b = 0;
        pthread_cond_signal(&to_a);
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}
static int by_value(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }
int main(int argc, char **argv) {
    static double rtt[ROUNDS];
    pthread_t t;
    (void)argv;
    spinning = argc > 1;
    pthread_create(&t, NULL, partner, NULL);
    for (int i = 0; i < ROUNDS; i++) {
        double t0 = us();
        if (spinning) { atomic_store(&flag, 1); while (atomic_load(&flag) != 0) {} }
        else {
            pthread_mutex_lock(&lock);
            turn_b = 1;
            pthread_cond_signal(&to_b);
            while (turn_b) pthread_cond_wait(&to_a, &lock);
            pthread_mutex_unlock(&lock);
            struct timespec pause = {0, 20000}; /* both threads fall asleep between rounds */
            nanosleep(&pause, NULL);
        }
        rtt[i] = us() - t0;
    }
    pthread_join(t, NULL);
    qsort(rtt, ROUNDS, sizeof rtt[0], by_value);
    printf("%-32s p50 %6.1f µs   p90 %6.1f µs   p99 %6.1f µs   (two hand-offs, %d rounds)\n",
           spinning ? "thread_round_trip_spin" : "thread_round_trip_condvar",
           rtt[ROUNDS / 2], rtt[ROUNDS * 9 / 10], rtt[ROUNDS * 99 / 100], ROUNDS);
    return 0;
}
EOF
    cc -O2 -pthread "$WORK/wakeup.c" -o "$WORK/wakeup"
    "$WORK/wakeup"
    "$WORK/wakeup" spin
    # An open-loop load generator sleeps until each message is due: what one short
    # sleep costs (its CPU, and how late it ends) bounds how finely it can pace.
    cat >"$WORK/sleep.c" <<'EOF'
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#define CALLS 20000
static double us(struct timeval t) { return t.tv_sec * 1e6 + t.tv_usec; }
int main(void) {
    struct timespec pause = {0, 10000}, a, b;
    struct rusage r0, r1;
    prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL); /* as weir-bench's producers */
    clock_gettime(CLOCK_MONOTONIC, &a);
    getrusage(RUSAGE_SELF, &r0);
    for (int i = 0; i < CALLS; i++) nanosleep(&pause, NULL);
    getrusage(RUSAGE_SELF, &r1);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double wall = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / CALLS;
    double cpu = (us(r1.ru_utime) - us(r0.ru_utime) + us(r1.ru_stime) - us(r0.ru_stime)) / CALLS;
    printf("%-32s %6.1f µs CPU per call, %6.1f µs per call   (nanosleep 10 µs, %d calls)\n",
           "sleep_10us", cpu, wall, CALLS);
    return 0;
}
EOF
    cc -O2 "$WORK/sleep.c" -o "$WORK/sleep"
    "$WORK/sleep"
else
    echo "thread wake-up: no C compiler (cc); skipped"
fi
