#!/bin/sh
# Installs what `make glyphs-data` needs (docs/training-data.md): FreeType for the glyph renderer
# (src/glyphs/, the only user of FreeType: the library and its tests do not need it) and the Debian
# font packages named in src/glyphs/fonts.txt. Only missing packages; safe to run repeatedly.
set -eu
PKGS="libfreetype-dev pkg-config $(grep -v '^#' src/glyphs/fonts.txt | awk 'NF { print $1 }' | sort -u | tr '\n' ' ')"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install-glyph-deps: missing Debian packages:$missing (run as root, or install them)" >&2
    exit 1
fi
echo "install-glyph-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
