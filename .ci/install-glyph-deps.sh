#!/bin/sh
# Installs what `make glyphs-data` needs (docs/training-data.md): FreeType for the glyph renderer
# (src/glyphs/, the only user of FreeType: the library and its tests do not need it) and the Debian
# font packages named in src/glyphs/fonts.txt. Only missing packages; safe to run repeatedly.
set -eu
PKGS="libfreetype-dev pkg-config $(grep -v '^#' src/glyphs/fonts.txt | awk 'NF { print $1 }' | sort -u | tr '\n' ' ')"
# shellcheck disable=SC2086
exec sh "$(dirname "$0")/install-deps.sh" $PKGS
