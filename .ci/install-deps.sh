#!/bin/sh
# Installs the Debian packages libldm needs to build and test, only those that are missing.
# Called by `make`-wrapping commands in the README and by .ci/run; safe to run repeatedly.
# With arguments, installs those packages instead (.ci/install-glyph-deps.sh).
set -eu
PKGS=${*:-"build-essential pkg-config libopenblas-dev zlib1g-dev libpng-dev libyaml-dev check meson ninja-build
      python3 lua5.4 liblua5.4-dev
      abigail-tools python3-numpy python3-pip python3-setuptools python3-wheel
      clang libclang-rt-dev valgrind"}
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing Debian packages:$missing (run as root, or install them)" >&2
    exit 1
fi
echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
