#!/bin/sh
# run-fuzz.sh SECONDS [HARNESS...] - runs the libFuzzer harnesses built by `make fuzz`, each for
# SECONDS, on seed corpora generated from the fixtures (tests/fuzz/make-seeds.py). Without
# harness names, runs every $BUILD/fuzz/fuzz_* one after the other. Prints one line per harness
# (executions, final coverage, seconds) and exits non-zero if any harness found a crash, a leak,
# a timeout or an out-of-memory; the reproducer is left in $BUILD/fuzz/artifacts/.
# Environment: LDM_BUILD (default build), LDM_SHARED (default ../shared), FUZZ_JOBS (default 1:
# harnesses run in parallel), FUZZ_CORPUS (kept corpora; default $BUILD/fuzz/corpus).
set -u
secs=${1:?usage: run-fuzz.sh SECONDS [HARNESS...]}
shift
BUILD=${LDM_BUILD:-build}
SHARED=${LDM_SHARED:-../shared}
export LDM_SHARED="$SHARED"
here=$(cd "$(dirname "$0")" && pwd)
corpus=${FUZZ_CORPUS:-$BUILD/fuzz/corpus}
seeds=$BUILD/fuzz/seeds
artifacts=$BUILD/fuzz/artifacts
logs=$BUILD/fuzz/logs
jobs=${FUZZ_JOBS:-1}
mkdir -p "$corpus" "$artifacts" "$logs"

if [ ! -d "$SHARED/fixtures" ]; then
    echo "SKIPPED: fuzzing: fixtures not found at $SHARED/fixtures (set LDM_SHARED)"
    exit 0
fi
rm -rf "$seeds"
python3 "$here/make-seeds.py" "$SHARED" "$seeds" || exit 1

if [ $# -eq 0 ]; then
    set -- $(cd "$BUILD/fuzz" && ls fuzz_* 2>/dev/null)
    [ $# -gt 0 ] || { echo "no harnesses in $BUILD/fuzz: run make fuzz first"; exit 1; }
fi

run_one() {
    h=$1
    mkdir -p "$corpus/$h" "$seeds/$h"
    start=$(date +%s)
    # -rss_limit_mb: the library's own caps (256 MB per allocation in the harnesses) must hold;
    # -timeout: a single input taking seconds is a finding (unbounded work on hostile input).
    "$BUILD/fuzz/$h" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/$h-" "$corpus/$h" "$seeds/$h" >"$logs/$h.log" 2>&1
    rc=$?
    end=$(date +%s)
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$h.log" | grep -o '[0-9]*$')
    cov=$(grep -o 'cov: [0-9]*' "$logs/$h.log" | tail -1 | grep -o '[0-9]*')
    if [ $rc -eq 0 ]; then
        echo "ok   $h: ${execs:-?} executions in $((end - start)) s, coverage ${cov:-?} edges"
    else
        echo "FAIL $h (exit $rc): see $logs/$h.log and $artifacts/"
        grep -m3 -E 'ERROR|SUMMARY|Test unit written' "$logs/$h.log"
    fi
    return $rc
}

failed=0
running=0
for h in "$@"; do
    if [ "$jobs" -le 1 ]; then
        run_one "$h" || failed=1
    else
        (run_one "$h") &
        running=$((running + 1))
        if [ "$running" -ge "$jobs" ]; then
            wait
            running=0
        fi
    fi
done
wait
# In parallel mode the exit codes are lost in the subshells: look for reproducers instead.
if [ "$jobs" -gt 1 ] && ls "$artifacts" 2>/dev/null | grep -q .; then failed=1; fi
[ $failed -eq 0 ]
