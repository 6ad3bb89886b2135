#!/usr/bin/env bash
# Measures this machine's limits that weir-bench figures are compared with in
# BENCHMARKS.md:
#   - loopback TCP, one stream (iperf3 on 127.0.0.1, 10 s)
#   - sequential write, 1 MiB and 4 KiB blocks, buffered (no sync; what the page cache
#     takes) and with fdatasync after every block (fio --fdatasync=1), and 16 such
#     1 MiB writers at once
#   - memory copy bandwidth (dd /dev/zero → /dev/null, and a 256 MiB memcpy in python3)
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
