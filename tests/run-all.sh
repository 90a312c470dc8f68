#!/bin/sh
# Runs every Check suite given as arguments, then the conformance runner over every fixture
# directory in $LDM_SHARED/fixtures. Prints one summary line and exits non-zero on any failure.
# Fixtures missing: said loudly, counted as skipped (CI always has them).
# Cross builds (docs/arm64.md): LDM_RUN is the emulator command the target's binaries run under
# (e.g. "qemu-aarch64"); with it, Check's timeouts are stretched
# (CK_TIMEOUT_MULTIPLIER, default 20) and what needs a target interpreter is skipped (install,
# Python, Lua).
set -u
BUILD=${LDM_BUILD:-build}
SHARED=${LDM_SHARED:-../shared}
RUN=${LDM_RUN:-} # word-split on purpose: a command and its options
failed=0
passed=0
skipped=0
ldm_tool="$BUILD/ldm"
if [ -n "$RUN" ]; then
    echo "cross run: target binaries run through '$RUN'"
    export CK_TIMEOUT_MULTIPLIER="${CK_TIMEOUT_MULTIPLIER:-20}"
    # test_cli.sh runs the tool by path (also under script(1)): give it a wrapper that execs the
    # emulator, so signals (Ctrl-C test) reach the emulated process.
    wrapdir=$(mktemp -d)
    trap 'rm -rf "$wrapdir"' EXIT
    ldm_tool="$wrapdir/ldm"
    printf '#!/bin/sh\nexec %s "%s" "$@"\n' "$RUN" "$(cd "$BUILD" && pwd)/ldm" >"$ldm_tool"
    chmod +x "$ldm_tool"
fi
for t in "$@"; do
    echo "== $t"
    t0=$(date +%s)
    # shellcheck disable=SC2086
    if $RUN "$t"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $t"; fi
    [ -n "$RUN" ] && echo "   ($t: $(($(date +%s) - t0))s under emulation)"
done
# The `ldm` command-line tool end to end (prints its own "cli: N passed, N failed" line).
echo "== tests/test_cli.sh"
if LDM_SHARED="$SHARED" sh tests/test_cli.sh "$ldm_tool"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: cli"; fi
if [ -d "$SHARED/fixtures" ]; then
    # Twice: results must not depend on the thread count beyond float rounding.
    for threads in 2 1; do
        echo "== conformance over $SHARED/fixtures with $threads thread(s)"
        if LDM_THREADS=$threads $RUN "$BUILD/tests/conformance" "$SHARED"/fixtures/*/; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: conformance ($threads threads)"; fi
    done
    # The low-memory mode drops weight pages after every use and keeps no scratch: same results.
    echo "== conformance over $SHARED/fixtures in the low-memory mode (LDM_LOW_MEMORY=1)"
    if LDM_LOW_MEMORY=1 LDM_THREADS=2 $RUN "$BUILD/tests/conformance" "$SHARED"/fixtures/*/; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: conformance (low-memory mode)"; fi
else
    echo "SKIPPED: conformance: fixtures not found at $SHARED/fixtures (set LDM_SHARED)"
    skipped=$((skipped + 1))
fi
# The project's own fixtures (tests/fixtures: goldens of features beyond the shared set, made by the
# scripts in tests/reference from the official code of each feature): always present, never skipped.
own=$(ls -d tests/fixtures/*/ 2>/dev/null)
if [ -n "$own" ]; then
    for threads in 2 1; do
        echo "== conformance over tests/fixtures with $threads thread(s)"
        # shellcheck disable=SC2086
        if LDM_THREADS=$threads $RUN "$BUILD/tests/conformance" $own; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: own conformance ($threads threads)"; fi
    done
fi
# The installed package (pkg-config, examples), the Python and Lua bindings. For a sanitizer
# build the interpreters get the sanitizer runtimes preloaded (they must be loaded first), without
# leak checking (the interpreters' own exit-time memory, libldm's scratch cache once the Lua
# module is unloaded); the install test is skipped (the examples would need the sanitizer flags).
lib="$BUILD/libldm.so.0"
libdir=$(cd "$BUILD" && pwd)
preload=""
for rt in libasan libubsan; do
    if objdump -p "$lib" 2>/dev/null | grep -q "NEEDED.*$rt\.so"; then preload="$preload $(${CC:-cc} -print-file-name=$rt.so)"; fi
done
py=python3 # one with NumPy when there is one: its paths then run too (the no-NumPy ones always do)
for candidate in python3 /usr/bin/python3; do
    if "$candidate" -c 'import numpy' >/dev/null 2>&1; then py=$candidate; break; fi
done
for suite in install python lua; do
    echo "== $suite"
    if [ -n "$RUN" ]; then
        case $suite in
        install) why="builds and runs the examples against the installed package with the host's cc and pkg-config" ;;
        python) why="needs a target python3 to load $lib" ;;
        lua) why="needs a target lua5.4 to load the Lua module (none is built)" ;;
        esac
        echo "SKIPPED: $suite: cross build, $why (only target binaries run through '$RUN')"
        skipped=$((skipped + 1))
        continue
    fi
    case $suite in
    install) set -- sh tests/test_install.sh ;;
    python) set -- env LDM_LIBRARY="$libdir/libldm.so.0" "$py" bindings/python/tests/run.py ;;
    lua) set -- env LUA_CPATH="$libdir/?.so" lua5.4 bindings/lua/test.lua ;;
    esac
    if [ -n "$preload" ]; then
        [ "$suite" = install ] && { echo "SKIPPED: install: $lib is built with a sanitizer"; skipped=$((skipped + 1)); continue; }
        set -- env LD_PRELOAD="${preload# }" ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0" "$@"
    fi
    if LDM_BUILD="$BUILD" LDM_SHARED="$SHARED" "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $suite"; fi
done
# docs/api.md is generated from include/ldm.h and must cover every exported function.
echo "== docs/api.md"
if python3 docs/gen_api.py --check; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: api-doc"; fi
echo "suites: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
