#!/bin/sh
# arm64-icount.sh - executed aarch64 instructions per kernel call, NEON family vs generic, counted
# under qemu-user with a TCG plugin (bench/qemu_icount.c). docs/performance.md, "ARM64
# instruction counts", has the method and the results.
#
#   sh bench/arm64-icount.sh [KERNEL ...]     (default: attention attention-causal winograd
#                                              winograd2 groupnorm layernorm gelu silu softmax half)
#
# Environment: BUILD (default build-arm64; its libldm.a is built with CROSS=aarch64-linux-gnu- if
# missing), REPS (counted calls per run, default 3), QEMU (default qemu-aarch64; needs plugin
# support: Debian 12's qemu-user has it). Each kernel runs four times, {generic, neon} x {0, REPS}
# calls after one warm-up call; per call = (count(REPS) - count(0)) / REPS. Single-threaded
# (LDM_THREADS=1, OPENBLAS_NUM_THREADS=1) so the plugin's counter is exact.
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-arm64}
REPS=${REPS:-3}
QEMU=${QEMU:-qemu-aarch64}
CROSS_CC=${CROSS_CC:-aarch64-linux-gnu-gcc}
[ $# -gt 0 ] || set -- attention attention-causal winograd winograd2 groupnorm layernorm gelu silu softmax half

[ -f "$BUILD/libldm.a" ] || make CROSS=aarch64-linux-gnu- BUILD="$BUILD" "$BUILD/libldm.a" >/dev/null
mkdir -p "$BUILD/bench"
cc -shared -fPIC -O2 -o "$BUILD/bench/libicount.so" bench/qemu_icount.c
pc() { PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig pkg-config "$@"; }
# shellcheck disable=SC2046
$CROSS_CC -std=c11 -D_GNU_SOURCE -O2 -Iinclude -Ilib -o "$BUILD/bench/kcount" bench/kcount.c "$BUILD/libldm.a" \
    $(pc --libs openblas libpng zlib yaml-0.1) -lm -pthread

count() { # family kernel calls -> instructions of the whole run
    LDM_CPU=$1 LDM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$QEMU" -plugin "$BUILD/bench/libicount.so" -d plugin \
        "$BUILD/bench/kcount" "$2" "$3" 2>&1 >/dev/null | sed -n 's/^icount: //p'
}

printf '%-17s %15s %15s %7s\n' kernel generic/call neon/call ratio
for k in "$@"; do
    g0=$(count generic "$k" 0) g1=$(count generic "$k" "$REPS")
    n0=$(count neon "$k" 0) n1=$(count neon "$k" "$REPS")
    g=$(((g1 - g0) / REPS)) n=$(((n1 - n0) / REPS))
    printf '%-17s %15d %15d %7s\n' "$k" "$g" "$n" "$(awk -v g="$g" -v n="$n" 'BEGIN { printf "%.2f", g / n }')"
    case $k in attention | winograd) eval "neon_$k=$n" ;; esac
done
# For scale: the naive references (lk_ref_*, scalar loops accumulating in double) on the same
# shapes, one counted call, against the NEON kernel.
for k in attention winograd; do
    eval "n=\${neon_$k:-}"
    [ -n "$n" ] || continue
    r=$(($(count generic "$k-ref" 1) - $(count generic "$k-ref" 0)))
    printf '%-17s %15d %15s %7s   (naive reference vs neon)\n' "$k-ref" "$r" "" \
        "$(awk -v g="$r" -v n="$n" 'BEGIN { printf "%.2f", g / n }')"
done
