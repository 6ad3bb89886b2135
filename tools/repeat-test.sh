#!/usr/bin/env bash
# Runs one test of a built test binary many times, a few at a time, each under a
# timeout, and counts the runs that hung and those that failed: the way a flake that
# shows once in hundreds of runs is measured before and after a fix (BENCHMARKS.md
# "Session 15", the note of session 16).
#
# Usage: tools/repeat-test.sh BINARY TEST [RUNS] [PARALLEL] [TIMEOUT_SECS]
#   BINARY   a test binary, e.g. target/debug/deps/contract-<hash>
#            (`cargo test -p weir-tests --test contract --no-run` prints its path)
#   TEST     the exact test name, e.g.
#            the_sdk_follows_its_own_epoch_bump_on_every_lane::in_process
#   RUNS     default 200; PARALLEL default 4; TIMEOUT_SECS default 20
#
# Output of every run that did not pass is kept in a directory it names. A hang that
# needs load to show may need some beside it, e.g.
#   dd if=/dev/zero of=/tmp/load bs=1M count=3000 conv=fdatasync
# in a loop (session 16: 1 hang in 400 runs that way, against 0 in 800 without).
set -euo pipefail

BIN=${1:?usage: tools/repeat-test.sh BINARY TEST [RUNS] [PARALLEL] [TIMEOUT_SECS]}
TEST=${2:?usage: tools/repeat-test.sh BINARY TEST [RUNS] [PARALLEL] [TIMEOUT_SECS]}
RUNS=${3:-200}
PARALLEL=${4:-4}
LIMIT=${5:-20}
[ -x "$BIN" ] || { echo "not an executable: $BIN" >&2; exit 2; }
"$BIN" --list --exact "$TEST" 2>/dev/null | grep -qx "$TEST: test" ||
    { echo "$BIN has no test named exactly $TEST" >&2; exit 2; }
OUT=$(mktemp -d "${TMPDIR:-/tmp}/weir-repeat.XXXXXX")

run_one() {
    local i=$1 rc=0
    timeout "$LIMIT" "$BIN" "$TEST" --exact --nocapture >"$OUT/$i.out" 2>&1 || rc=$?
    echo "$rc" >"$OUT/$i.rc"
    [ "$rc" = 0 ] && rm -f "$OUT/$i.out"
    return 0
}
export -f run_one
export BIN TEST LIMIT OUT

seq 1 "$RUNS" | xargs -P "$PARALLEL" -I{} bash -c 'run_one {}'

hung=$( (grep -lx 124 "$OUT"/*.rc || true) | wc -l)
failed=$( (grep -Lx -e 0 -e 124 "$OUT"/*.rc || true) | wc -l)
echo "$TEST: $RUNS runs, $hung hung (over ${LIMIT}s), $failed failed; output of those in $OUT"
[ "$hung" = 0 ] && [ "$failed" = 0 ]
