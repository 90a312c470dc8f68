#!/bin/sh
# Fails if the shared library exports any symbol that is not ldm_-prefixed (visibility hidden by
# default keeps internals private; this catches a missing `static` or a stray LDM_API).
set -eu
lib=${1:-build/libldm.so}
bad=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVW]$/ {print $3}' | grep -v '^ldm_' || true)
count=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVW]$/' | grep -c ' ldm_' || true)
if [ -n "$bad" ]; then
    echo "exports: non-ldm_ symbols exported from $lib:"; echo "$bad"
    echo "exports: 0 passed, 1 failed"
    exit 1
fi
soname=$(objdump -p "$lib" | awk '/SONAME/ {print $2}')
[ "$soname" = "libldm.so.0" ] || { echo "exports: soname is '$soname', expected libldm.so.0"; exit 1; }
echo "exports: $count ldm_ symbols, soname $soname"
echo "exports: 1 passed, 0 failed"
