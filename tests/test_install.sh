#!/bin/sh
# The installed package as a user meets it: `make install PREFIX=<tmp>`, then examples/minimal.c
# built with `pkg-config --cflags --libs ldm` (shared library, run with LD_LIBRARY_PATH) and with
# `pkg-config --static` (libldm.a plus every private dependency the .pc lists), both run on the
# built-in demo model. Also: the .pc and soname against the installed header, DESTDIR staging,
# uninstall, the Lua module (installed in <prefix>/lib/lua/5.4, loaded by lua5.4 with nothing but
# package.cpath set; skipped without Lua 5.4's headers, as `make install` then skips it), and
# `pip install bindings/python` (when a Python with pip, setuptools and wheel is there: the install
# runs offline, without build isolation).
# Ends with "install: N passed, N failed[, N skipped]"; exits non-zero on any failure.
#   LDM_BUILD=build sh tests/test_install.sh
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${LDM_BUILD:-build}
CC=${CC:-cc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
prefix=$tmp/prefix
passed=0
failed=0
skipped=0

ok() { passed=$((passed + 1)); echo "ok      $1"; }
bad() { failed=$((failed + 1)); echo "FAILED  $1"; }
skip() { skipped=$((skipped + 1)); echo "SKIPPED: $1"; }
# check NAME COMMAND...: one test, its output shown only when it fails
check() {
    name=$1
    shift
    if "$@" >"$tmp/log" 2>&1; then ok "$name"; else bad "$name"; sed 's/^/    /' "$tmp/log"; fi
}

# A clean sub-make: the parent's jobserver descriptors are not passed down to this script.
submake() { env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make --no-print-directory -s -C "$root" BUILD="$BUILD" "$@"; }

header_version=$(sed -n 's/^#define LDM_VERSION_STRING "\(.*\)"$/\1/p' "$root/include/ldm.h")
header_major=$(sed -n 's/^#define LDM_VERSION_MAJOR \([0-9]*\)$/\1/p' "$root/include/ldm.h")
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"

installed() {
    submake PREFIX="$prefix" install >"$tmp/install.out" 2>&1
    rc=$?
    cat "$tmp/install.out"
    [ "$rc" -eq 0 ] &&
        for f in include/ldm.h lib/libldm.a "lib/libldm.so.$header_major" lib/libldm.so lib/pkgconfig/ldm.pc bin/ldm \
            share/libldm/glyphs.safetensors share/libldm/glyphs.yaml; do
            [ -e "$prefix/$f" ] || { echo "missing $prefix/$f"; return 1; }
        done
}

pc_matches_header() {
    [ "$(pkg-config --modversion ldm)" = "$header_version" ] || { echo "ldm.pc version $(pkg-config --modversion ldm), header $header_version"; return 1; }
    [ "$(pkg-config --variable=prefix ldm)" = "$prefix" ] || { echo "prefix $(pkg-config --variable=prefix ldm)"; return 1; }
    soname=$(objdump -p "$prefix/lib/libldm.so" | awk '/SONAME/ {print $2}')
    [ "$soname" = "libldm.so.$header_major" ] || { echo "soname $soname, expected libldm.so.$header_major"; return 1; }
    # the installed header and library agree (a stale copy of either would not)
    cat >"$tmp/version.c" <<'EOF'
#include <ldm.h>
#include <stdio.h>
#include <string.h>
int main(void)
{
    if (strcmp(ldm_version(), LDM_VERSION_STRING) || ldm_version_number() != LDM_VERSION_NUMBER) {
        printf("library %s (%d), header %s (%d)\n", ldm_version(), ldm_version_number(), LDM_VERSION_STRING,
               LDM_VERSION_NUMBER);
        return 1;
    }
    return 0;
}
EOF
    # shellcheck disable=SC2046
    $CC -std=c11 -Wall -Wextra -Werror "$tmp/version.c" $(pkg-config --cflags --libs ldm) -o "$tmp/version" &&
        LD_LIBRARY_PATH="$prefix/lib" "$tmp/version"
}

minimal_shared() {
    # shellcheck disable=SC2046
    $CC -std=c11 -Wall -Wextra -Werror "$root/examples/minimal.c" $(pkg-config --cflags --libs ldm) -o "$tmp/minimal-shared" || return 1
    LD_LIBRARY_PATH="$prefix/lib" ldd "$tmp/minimal-shared" | grep -q "libldm.so.$header_major => $prefix/lib/" ||
        { echo "not linked against the installed libldm.so.$header_major:"; LD_LIBRARY_PATH="$prefix/lib" ldd "$tmp/minimal-shared"; return 1; }
    (cd "$tmp" && LD_LIBRARY_PATH="$prefix/lib" ./minimal-shared demo "" shared.png) && [ -s "$tmp/shared.png" ]
}

minimal_static() {
    # --static's promise is the private dependency list: with the archive in place of -lldm (which
    # the linker would resolve to the .so), every symbol libldm.a needs must come from it.
    libs=$(pkg-config --static --libs ldm) || return 1
    libs=$(echo " $libs " | sed "s| -lldm | $prefix/lib/libldm.a |")
    echo "static link flags:$libs"
    # shellcheck disable=SC2046,SC2086
    $CC -std=c11 -Wall -Wextra -Werror "$root/examples/minimal.c" $(pkg-config --static --cflags ldm) $libs -o "$tmp/minimal-static" || return 1
    if ldd "$tmp/minimal-static" | grep -q libldm; then echo "still needs the shared libldm"; return 1; fi
    (cd "$tmp" && ./minimal-static demo "" static.png) && cmp "$tmp/shared.png" "$tmp/static.png"
}

# The trained built-in model is found where make install put it, with no environment: by the
# installed tool (statically linked: <bin>/../share/libldm) and through the shared library
# (<lib>/../share/libldm), from a folder far from the source tree.
glyph_model_found() {
    (cd "$tmp" && env -u LDM_MODEL -u LDM_DATA_DIR "$prefix/bin/ldm" generate -q --class 6 --steps 2 --seed 1 \
        -o "$tmp/g-tool.png") && [ -s "$tmp/g-tool.png" ] || return 1
    cat >"$tmp/glyphs.c" <<'EOF'
#include <ldm.h>
#include <stdio.h>
int main(void)
{
    ldm_model *m = NULL;
    if (ldm_model_load_builtin("glyphs", 0, NULL, &m) != LDM_OK) {
        printf("%s\n", ldm_last_error());
        return 1;
    }
    ldm_model_free(m);
    return 0;
}
EOF
    # shellcheck disable=SC2046
    $CC -std=c11 -Wall -Wextra -Werror "$tmp/glyphs.c" $(pkg-config --cflags --libs ldm) -o "$tmp/glyphs" &&
        (cd "$tmp" && env -u LDM_DATA_DIR LD_LIBRARY_PATH="$prefix/lib" ./glyphs)
}

destdir_staging() {
    submake DESTDIR="$tmp/stage" PREFIX=/opt/ldm LUA_CMODDIR=/opt/lua-modules install || return 1
    [ -e "$tmp/stage/opt/ldm/lib/libldm.so.$header_major" ] || { echo "no library under DESTDIR"; return 1; }
    grep -qx 'prefix=/opt/ldm' "$tmp/stage/opt/ldm/lib/pkgconfig/ldm.pc" || { echo "ldm.pc prefix is not /opt/ldm"; return 1; }
    if [ -e "$prefix/lib/lua/5.4/ldm.so" ]; then
        [ -e "$tmp/stage/opt/lua-modules/ldm.so" ] || { echo "no Lua module in DESTDIR + LUA_CMODDIR"; return 1; }
    fi
}

# The installed Lua module, as `require "ldm"` meets it: only package.cpath points at the prefix
# (no LD_LIBRARY_PATH); the module must find the installed libldm (runpath $ORIGIN/../..), which
# /proc/self/maps confirms. Then examples/minimal.lua: the same call as minimal.c, the same PNG.
lua_module() {
    [ -f "$prefix/lib/lua/5.4/ldm.so" ] || { echo "missing $prefix/lib/lua/5.4/ldm.so"; return 1; }
    libdir=$(cd "$prefix/lib" && pwd -P)/
    env -u LD_LIBRARY_PATH -u LUA_CPATH -u LUA_CPATH_5_4 lua5.4 -e "
        package.cpath = [[$prefix/lib/lua/5.4/?.so]]
        local ldm = require 'ldm'
        assert(ldm.version() == [[$header_version]], 'module version ' .. ldm.version())
        local want, seen = [[$libdir]], nil
        for line in io.lines('/proc/self/maps') do
            local path = line:match('(/%S*libldm%.so[.%d]*)$')
            if path then
                assert(path:sub(1, #want) == want, 'loaded ' .. path .. ', not the installed library')
                seen = path
            end
        end
        assert(seen, 'no libldm in /proc/self/maps')
        print('loaded ' .. seen)" || return 1
    (cd "$tmp" && env -u LD_LIBRARY_PATH LUA_CPATH="$prefix/lib/lua/5.4/?.so" lua5.4 "$root/examples/minimal.lua" demo "" lua.png) &&
        cmp "$tmp/shared.png" "$tmp/lua.png"
}

# Without Lua 5.4's headers (none on the compiler's path at all here) `make install` installs the
# rest, says why the module is missing, and succeeds.
install_without_lua() {
    submake PREFIX="$tmp/nolua" LUA_CFLAGS="-nostdinc -I$tmp/no-such-dir" install >"$tmp/nolua.out" 2>&1
    rc=$?
    cat "$tmp/nolua.out"
    [ "$rc" -eq 0 ] || return 1
    grep -q "Lua module is not installed" "$tmp/nolua.out" || { echo "no message about the Lua module"; return 1; }
    [ -e "$tmp/nolua/lib/libldm.so.$header_major" ] || { echo "the library was not installed"; return 1; }
    if find "$tmp/nolua" -name ldm.so | grep -q .; then echo "a Lua module was installed"; return 1; fi
}

uninstalled() {
    submake PREFIX="$prefix" uninstall || return 1
    left=$(find "$prefix" -type f -o -type l)
    [ -z "$left" ] || { echo "left behind: $left"; return 1; }
}

# pip install of the pure-Python package, offline (no index, no build isolation), then the Python
# example against the installed library: the same call as minimal.c, so the same PNG bytes.
python_package() {
    cp -r "$root/bindings/python" "$tmp/pysrc" && rm -rf "$tmp/pysrc/build" "$tmp/pysrc"/*.egg-info &&
        "$py" -m pip install --quiet --disable-pip-version-check --no-index --no-build-isolation --no-deps \
            --target "$tmp/site" "$tmp/pysrc" || return 1
    [ -f "$tmp/site/libldm/__init__.py" ] || { echo "libldm not installed in $tmp/site"; return 1; }
    (cd "$tmp" && PYTHONPATH="$tmp/site" LDM_LIBRARY="$prefix/lib/libldm.so.$header_major" \
        "$py" "$root/examples/minimal.py" demo "" python.png) && cmp "$tmp/shared.png" "$tmp/python.png"
}

check "make install PREFIX=<tmp>" installed
check "ldm.pc, soname and the installed header agree" pc_matches_header
check "examples/minimal.c with pkg-config (shared), run" minimal_shared
check "examples/minimal.c with pkg-config --static, run" minimal_static
check "the installed tool and library find the installed glyph model" glyph_model_found
check "make install DESTDIR=<tmp> PREFIX=/opt/ldm LUA_CMODDIR=/opt/lua-modules" destdir_staging
check "make install without Lua 5.4 headers: the rest installed, a message" install_without_lua
if grep -q "Lua module is not installed" "$tmp/install.out"; then
    skip "Lua module: make install found no Lua 5.4 headers (Debian: liblua5.4-dev)"
elif ! command -v lua5.4 >/dev/null 2>&1; then
    skip "Lua module: no lua5.4 interpreter (Debian: lua5.4)"
else
    check "Lua module in <prefix>/lib/lua/5.4, require 'ldm' loads the installed library, examples/minimal.lua" lua_module
fi

py=""
for candidate in python3 /usr/bin/python3; do
    if "$candidate" -c 'import setuptools, wheel' >/dev/null 2>&1 && "$candidate" -m pip --version >/dev/null 2>&1; then
        py=$candidate
        break
    fi
done
if [ -n "$py" ]; then
    check "pip install bindings/python ($py), examples/minimal.py" python_package
else
    skip "pip install bindings/python: no python3 with pip, setuptools and wheel (Debian: python3-pip python3-setuptools python3-wheel)"
fi
check "make uninstall" uninstalled

if [ "$skipped" -gt 0 ]; then echo "install: $passed passed, $failed failed, $skipped skipped"
else echo "install: $passed passed, $failed failed"; fi
[ "$failed" -eq 0 ]
