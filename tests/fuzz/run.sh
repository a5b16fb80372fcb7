#!/bin/sh
# run.sh - run the fuzz harnesses one after the other (make fuzz).
#   tests/fuzz/run.sh [-b BUILD] [-t SECONDS] [-n RUNS] [SURFACE...]
# Each BUILD/fuzz/fuzz_SURFACE runs for SECONDS (or until RUNS executions,
# whichever comes first: for long runs split to reach a count) on one worker with the
# dictionary tests/fuzz/dict/SURFACE.dict (when there is one) and its corpus:
# BUILD/corpus/SURFACE (where new inputs go, kept between runs), then the
# seeds tests/fuzz/corpus/SURFACE and the regress inputs
# tests/fuzz/regress/SURFACE. A crash, leak, timeout or out-of-memory input
# is written to BUILD/crashes/SURFACE/; the log is BUILD/logs/SURFACE.log.
# Prints one line per harness and a table; exits 1 if any harness failed.
set -u
BUILD=build-fuzz
SECONDS_EACH=60
RUNS=""
while [ $# -gt 0 ]; do
    case "$1" in
    -b) BUILD=$2; shift 2 ;;
    -t) SECONDS_EACH=$2; shift 2 ;;
    -n) RUNS="-runs=$2"; shift 2 ;;
    *) break ;;
    esac
done
HERE=$(dirname "$0")
if [ $# -eq 0 ]; then
    set -- $(ls "$HERE"/fuzz_*.c | sed 's|.*/fuzz_\(.*\)\.c|\1|')
fi
# per-surface options (input size: prompts and graphs may be long)
opts_for() {
    case "$1" in
    prompt) echo "-max_len=16384" ;;
    promptfile) echo "-max_len=16384" ;;
    dsl) echo "-max_len=16384" ;;
    safetensors) echo "-max_len=8192" ;;
    ckpt) echo "-max_len=8192" ;;
    png) echo "-max_len=16384" ;;
    http) echo "-max_len=16384" ;;
    *) echo "" ;;
    esac
}
fail=0
table=""
for s in "$@"; do
    bin=$BUILD/fuzz/fuzz_$s
    [ -x "$bin" ] || { echo "run.sh: no $bin (make FUZZ=1 fuzz-build)" >&2; exit 2; }
    mkdir -p "$BUILD/corpus/$s" "$BUILD/crashes/$s" "$BUILD/logs"
    log=$BUILD/logs/$s.log
    dict=""
    [ -f "$HERE/dict/$s.dict" ] && dict="-dict=$HERE/dict/$s.dict"
    dirs="$BUILD/corpus/$s"
    for d in "$HERE/corpus/$s" "$HERE/regress/$s"; do [ -d "$d" ] && dirs="$dirs $d"; done
    before=$(ls "$BUILD/crashes/$s" | wc -l)
    # shellcheck disable=SC2086
    "$bin" -max_total_time="$SECONDS_EACH" $RUNS -print_final_stats=1 -timeout=25 -rss_limit_mb=4096 \
        -artifact_prefix="$BUILD/crashes/$s/" $dict $(opts_for "$s") $dirs >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | sed 's/cov: //')
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | sed 's/ft: //')
    corp=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | sed 's/corp: //')
    crashes=$(( $(ls "$BUILD/crashes/$s" | wc -l) - before ))
    [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ] && crashes=1
    line=$(printf '%-12s %12s %10s %8s %8s %8s %8s' "$s" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes")
    echo "fuzz: $line"
    table="$table
$line"
    if [ "$rc" -ne 0 ]; then
        fail=1
        echo "fuzz: $s FAILED (exit $rc); the log: $log; inputs: $BUILD/crashes/$s/" >&2
        grep -E '^==[0-9]+==ERROR|SUMMARY|runtime error' "$log" | head -5 >&2
    fi
done
printf '\n%-12s %12s %10s %8s %8s %8s %8s' surface executions exec/s cov ft corpus crashes
echo "$table"
exit $fail
