#!/bin/sh
# ABI gate (docs/abi.md): compares the built shared library with the committed baseline
# .ci/abi/libldm.abi (an `abidw` dump of the public interface, libabigail) using `abidiff`.
# Allowed: new functions and variables, new enumerators, fields APPENDED to a public struct (the
# struct_size parameter structs). Everything else fails: a removed function, a changed parameter
# or return type, a moved, retyped or removed field, a changed enumerator value, another soname.
#
#   sh .ci/abi-check.sh [LIB]            check LIB (default build/libldm.so)
#   sh .ci/abi-check.sh --update [LIB]   record LIB's ABI as the new baseline (at a release; refused
#                                        for an incompatible change unless the soname changed)
#   sh .ci/abi-check.sh --update --force [LIB]   record it anyway: only for an ABI never released
#
# The policy (which abidiff findings pass) is checked first on a small generated library, so a
# libabigail whose report reads differently cannot silently let a break through. Without abidiff
# (Debian: abigail-tools) only the baseline's exported symbol names are checked, and it says so.
# Ends with "abi: N passed, N failed".
set -u
cd "$(dirname "$0")/.." || exit 1
baseline=.ci/abi/libldm.abi
update=0
force=0
[ "${1:-}" = "--update" ] && { update=1; shift; }
[ "$update" = 1 ] && [ "${1:-}" = "--force" ] && { force=1; shift; }
lib=${1:-build/libldm.so}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok      $1"; }
fail() { failed=$((failed + 1)); echo "FAILED  $1"; }
finish() { echo "abi: $passed passed, $failed failed"; [ "$failed" -eq 0 ]; exit; }

dump() { abidw --headers-dir "$2" --drop-private-types --no-corpus-path --no-comp-dir-path \
    --type-id-style hash "$1"; }

# The findings of `abidiff -l` (leaf changes) that the policy allows, one extended regex a line
# (matched after the indentation is stripped). Anything else in a report is a break.
cat >"$tmp/allowed" <<'EOF'
^$
^Leaf changes summary: 
^Changed leaf types summary: 
^Removed/Changed/Added functions summary: 0 Removed, 0 Changed, 
^Removed/Changed/Added variables summary: 0 Removed, 0 Changed, 
^[0-9]+ Added (function|variable)s?:$
^\[A\] 
^'(struct|enum) [^']*' changed:$
^type size changed from [0-9]+ to [0-9]+ \(in bits\)$
^type size hasn't changed$
^[0-9]+ data member insertions?:$
^'[^']*', at offset [0-9]+ \(in bits\)$
^[0-9]+ enumerator insertions?:$
^'[^']*' value '[^']*'$
EOF

# compare BASELINE LIB HEADERS: 0 when the differences are allowed; prints the report otherwise.
compare() {
    : >"$tmp/violations"
    abidiff -l --no-show-locs --drop-private-types --headers-dir2 "$3" "$1" "$2" >"$tmp/report" 2>&1
    rc=$?
    # exit bits: 1 error, 2 usage error, 4 ABI change, 8 incompatible change (a removed symbol)
    if [ $((rc & 11)) -ne 0 ] ||
        sed 's/^[[:space:]]*//' "$tmp/report" | grep -Evf "$tmp/allowed" >"$tmp/violations"; then
        [ -s "$tmp/violations" ] && { echo "not allowed:"; sed 's/^/    /' "$tmp/violations"; }
        echo "abidiff exit status $rc, report:"
        sed 's/^/    /' "$tmp/report"
        return 1
    fi
    return 0
}

# The policy on a tiny library: version 1, then variants that must pass and ones that must fail.
selftest() {
    d=$tmp/self
    mkdir -p "$d"
    cat >"$d/api.in" <<'EOF'
#include <stddef.h>
#define API __attribute__((visibility("default")))
typedef struct p { size_t struct_size; int a; float b; MORE } p;
typedef enum e { E0 = 0, E1 = 1 ENUMS } e;
typedef struct opaque opaque;
API void f_init(p *x);
API RET f_use(const p *x, KIND k);
API int f_old(opaque *o);
EOF
    cat >"$d/lib.in" <<'EOF'
#include "api.h"
struct opaque { PRIVATE };
void f_init(p *x) { x->struct_size = sizeof *x; }
RET f_use(const p *x, KIND k) { return x->a + (int)k; }
OLD
NEW
EOF
    # variant NAME EXPECT(pass|fail) SED-SCRIPT: builds lib version NAME, checks it against v1
    variant() {
        mkdir -p "$d/$1/include"
        base='s/MORE//; s/ENUMS//; s/RET/int/g; s/KIND/e/g; s/PRIVATE/int z;/; s/OLD/int f_old(opaque *o) { return o->z; }/; s/NEW//'
        sed "$3; $base" "$d/api.in" >"$d/$1/include/api.h"
        sed "$3; $base" "$d/lib.in" >"$d/$1/lib.c"
        ${CC:-cc} -g -O2 -shared -fPIC -fvisibility=hidden -I"$d/$1/include" -o "$d/$1/lib.so" "$d/$1/lib.c" || return 1
        [ "$1" = v1 ] && { dump "$d/v1/lib.so" "$d/v1/include" >"$d/v1.abi"; return; }
        if compare "$d/v1.abi" "$d/$1/lib.so" "$d/$1/include" >"$d/$1.log"; then got=pass; else got=fail; fi
        [ "$got" = "$2" ] || { echo "policy self-test: '$1' should $2, did $got:"; cat "$d/$1.log"; return 1; }
    }
    variant v1 pass 's/x/x/' &&
        variant additions pass 's/MORE/int c;/; s/ENUMS/, E2 = 2/; s/NEW/API int f_new(void); int f_new(void) { return 1; }/' &&
        variant private-change pass 's/PRIVATE/long q; int z;/' &&
        variant removed-function fail 's/OLD//' &&
        variant reordered-fields fail 's/int a; float b;/float b; int a;/' &&
        variant inserted-field fail 's/int a; float b;/int a; int z; float b;/' &&
        variant parameter-type fail 's/KIND/long/g' &&
        variant return-type fail 's/RET/long/g' &&
        variant enum-value fail 's/E1 = 1/E1 = 3/'
}

if ! command -v abidiff >/dev/null 2>&1 || ! command -v abidw >/dev/null 2>&1; then
    echo "abi: abidiff/abidw not found (Debian: abigail-tools): checking exported symbol names only"
    nm -D --defined-only "$lib" | awk '{print $3}' | sort -u >"$tmp/exported"
    missing=$(sed -n "s/.*<elf-symbol name='\([^']*\)'.*/\1/p" "$baseline" | sort -u | comm -23 - "$tmp/exported")
    if [ -z "$missing" ]; then pass "baseline symbols still exported by $lib"; else fail "symbols removed from $lib: $missing"; fi
    finish
fi

# --update: a release records its ABI so later removals of what it added are caught too. Refused
# when the library breaks the recorded ABI under the same soname: that needs a MAJOR bump first.
if [ "$update" = 1 ]; then
    if [ -f "$baseline" ]; then
        old=$(sed -n "s/.*soname='\([^']*\)'.*/\1/p" "$baseline" | head -n 1)
        new=$(objdump -p "$lib" | awk '/SONAME/ {print $2}')
        if [ "$force" = 0 ] && [ "$old" = "$new" ] && ! compare "$baseline" "$lib" include; then
            echo "abi: not updating: $lib breaks the ABI of $old; bump LDM_VERSION_MAJOR (and the soname) first"
            exit 1
        fi
    fi
    mkdir -p "$(dirname "$baseline")"
    dump "$lib" include >"$baseline" && echo "abi: wrote $baseline from $lib" && exit 0
    echo "abi: abidw failed on $lib"
    exit 1
fi

if selftest >"$tmp/selftest.log" 2>&1; then pass "policy self-test (allowed and forbidden changes on a small library)"
else fail "policy self-test"; cat "$tmp/selftest.log"; fi
if compare "$baseline" "$lib" include; then pass "$lib against $baseline"
else fail "$lib against $baseline (incompatible ABI change: see docs/abi.md)"; fi
finish
