#!/bin/sh
# valgrind.sh - valgrind memcheck over load/generate/free of fixtures and the built-in demo
# model (not part of `make check`: memcheck is 20-50x slower). Every run must report no errors
# and no definite or indirect leak. Build first (`make BUILD=... all tests`), then:
#     LDM_BUILD=build LDM_SHARED=../shared sh tests/valgrind.sh [FIXTURE...]
# Without fixture names a small set covering every loader and pipeline kind is used.
set -u
BUILD=${LDM_BUILD:-build}
SHARED=${LDM_SHARED:-../shared}
export LDM_SHARED="$SHARED"
# OpenBLAS's own threads only add noise (their buffers live until exit by design).
export OPENBLAS_NUM_THREADS=1
command -v valgrind >/dev/null || { echo "SKIPPED: valgrind not installed"; exit 0; }
[ -d "$SHARED/fixtures" ] || { echo "SKIPPED: fixtures not found at $SHARED/fixtures"; exit 0; }
log=$BUILD/valgrind
mkdir -p "$log"
VG="valgrind --tool=memcheck --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect --track-origins=yes --num-callers=30"

if [ $# -eq 0 ]; then
    set -- ae_kl_f8 ae_vq_f4 ldm_uncond_plms ldm_cin_ddim ldm_sd1_txt2img cond_bert cond_layout tok_clip_sd1 tok_bert
fi
failed=0
run() {
    name=$1
    shift
    start=$(date +%s)
    if $VG --log-file="$log/$name.log" "$@" >"$log/$name.out" 2>&1; then
        echo "ok   $name ($(( $(date +%s) - start )) s): $(grep -o 'ERROR SUMMARY: [0-9]* errors' "$log/$name.log")"
    else
        echo "FAIL $name: see $log/$name.log"
        grep -E 'ERROR SUMMARY|definitely lost|indirectly lost' "$log/$name.log"
        failed=1
    fi
}
# fixtures: load, run every op of case.json (sampling loops included), free; one process each
for f in "$@"; do
    run "conformance-$f" "$BUILD/tests/conformance" "$SHARED/fixtures/$f/"
done
# the pipeline end to end: built-in demo model, generate, PNG write
run "ldm-generate-demo" "$BUILD/ldm" generate --steps 4 --seed 1 --threads 2 -q -o "$log/demo.png"
# error paths: poked NaN weights, NaN inputs, overflowing steps; hostile files (no fork, so
# the children's leaks are seen)
CK_FORK=no run "test_numeric" "$BUILD/tests/test_numeric"
exit $failed
