#!/bin/sh
# Installs what the aarch64 cross build needs (docs/arm64.md), only what is missing: the cross
# compiler, qemu-user to run the aarch64 binaries, and the arm64 multiarch development packages
# libldm links (OpenBLAS, libpng, zlib, libyaml, Check). Used by .ci/run; safe to run repeatedly.
# `make CROSS=aarch64-linux-gnu- BUILD=build-arm64 check` runs it itself.
set -eu
ARCH=${LDM_CROSS_ARCH:-arm64}
PKGS="gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user libc6:$ARCH
      libopenblas-dev:$ARCH libpng-dev:$ARCH zlib1g-dev:$ARCH libyaml-dev:$ARCH check:$ARCH
      libsubunit-dev:$ARCH"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
foreign=$(dpkg --print-foreign-architectures)
case " $(echo $foreign) " in *" $ARCH "*) have_arch=yes ;; *) have_arch=no ;; esac
[ -z "$missing" ] && [ "$have_arch" = yes ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install-cross-deps: missing Debian packages:$missing (run as root, or install them)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if [ "$have_arch" = no ]; then
    echo "install-cross-deps: adding the $ARCH architecture to dpkg"
    dpkg --add-architecture "$ARCH"
fi
echo "install-cross-deps: installing$missing"
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
