#!/bin/sh
# Runs every Check suite given as arguments, then the conformance runner over every fixture
# directory in $LDM_SHARED/fixtures. Prints one summary line and exits non-zero on any failure.
# Fixtures missing: said loudly, counted as skipped (CI always has them).
set -u
BUILD=${LDM_BUILD:-build}
SHARED=${LDM_SHARED:-../shared}
failed=0
passed=0
skipped=0
for t in "$@"; do
    echo "== $t"
    if "$t"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $t"; fi
done
if [ -d "$SHARED/fixtures" ]; then
    # Twice: results must not depend on the thread count beyond float rounding.
    for threads in 2 1; do
        echo "== conformance over $SHARED/fixtures with $threads thread(s)"
        if LDM_THREADS=$threads "$BUILD/tests/conformance" "$SHARED"/fixtures/*/; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: conformance ($threads threads)"; fi
    done
else
    echo "SKIPPED: conformance: fixtures not found at $SHARED/fixtures (set LDM_SHARED)"
    skipped=$((skipped + 1))
fi
echo "suites: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
