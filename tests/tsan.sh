#!/bin/sh
# tsan.sh - builds the library and tests/test_concurrency.c with clang's ThreadSanitizer into
# $LDM_BUILD (default build-tsan) and runs it without forking, so any data race report fails.
# TSan needs a compatible address-space layout: if it aborts at startup ("unexpected memory
# mapping", seen on kernels with vm.mmap_rnd_bits = 32), the run is retried without ASLR
# (setarch -R), and skipped loudly if that is not possible either.
set -u
BUILD=${LDM_BUILD:-build-tsan}
command -v clang >/dev/null || { echo "SKIPPED: tsan: clang not installed"; exit 0; }
mkdir -p "$BUILD"
make --no-print-directory BUILD="$BUILD" CC=clang CFLAGS="-O1 -g -fsanitize=thread -fno-omit-frame-pointer" -j2 \
    "$BUILD/tests/test_concurrency" >"$BUILD/tsan-build.log" 2>&1 || { tail -40 "$BUILD/tsan-build.log"; exit 1; }
# OpenBLAS's own threads are not instrumented: keep GEMM on the calling thread.
export OPENBLAS_NUM_THREADS=1 CK_FORK=no TSAN_OPTIONS="halt_on_error=1 exitcode=66"
out=$BUILD/tsan.out
"$BUILD/tests/test_concurrency" >"$out" 2>&1
rc=$?
if [ $rc -ne 0 ] && grep -q "ThreadSanitizer: unexpected memory mapping\|FATAL: ThreadSanitizer" "$out"; then
    echo "tsan: startup failed (address-space layout); retrying with setarch -R"
    setarch "$(uname -m)" -R "$BUILD/tests/test_concurrency" >"$out" 2>&1
    rc=$?
    if [ $rc -ne 0 ] && grep -q "FATAL: ThreadSanitizer" "$out"; then
        echo "SKIPPED: tsan: ThreadSanitizer cannot start on this machine"
        exit 0
    fi
fi
cat "$out"
if grep -q "WARNING: ThreadSanitizer" "$out"; then echo "FAILED: tsan: data race reported"; exit 1; fi
exit $rc
