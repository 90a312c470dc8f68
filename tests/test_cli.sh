#!/bin/sh
# test_cli.sh - the `ldm` tool end to end: generate (demo model) with PNG metadata and seed
# reproducibility, --batch, info, error messages and exit codes, img2img / inpaint / upscale /
# semantic synthesis / layout / text on the fixture models, the progress bar only on a terminal,
# and Ctrl-C (exit 130, "cancelled").
# Usage: sh tests/test_cli.sh path/to/ldm   (fixtures from $LDM_SHARED, default ../shared)
# Prints "cli: N passed, N failed" and exits non-zero on any failure.
set -u
LDM=${1:-build/ldm}
SHARED=${LDM_SHARED:-../shared}
FX=$SHARED/fixtures
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT INT TERM
passed=0
failed=0
skipped=0

ok() { passed=$((passed + 1)); echo "ok: $1"; }
bad() { failed=$((failed + 1)); echo "FAILED: $1"; [ -f "$T/err" ] && sed 's/^/    /' "$T/err" | tail -5; }
skip() { skipped=$((skipped + 1)); echo "SKIPPED: $1"; }
# run NAME EXPECTED_RC CMD...: runs with stdout/stderr in $T/out, $T/err and checks the exit code
run() {
    name=$1 want=$2
    shift 2
    "$@" >"$T/out" 2>"$T/err" </dev/null
    rc=$?
    if [ "$rc" -eq "$want" ]; then return 0; fi
    echo "    exit code $rc, expected $want: $*"
    return 1
}
has() { grep -q -- "$2" "$1"; }

# PNG helpers (python3 is a build dependency, see .ci/install-deps.sh)
png_size() { python3 -c 'import struct,sys; b=open(sys.argv[1],"rb").read(); print("%dx%d" % struct.unpack(">II", b[16:24]))' "$1"; }
png_text() {
    python3 - "$1" "$2" <<'EOF'
import struct, sys
b = open(sys.argv[1], "rb").read()
assert b[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
i = 8
while i < len(b):
    n, = struct.unpack(">I", b[i:i + 4])
    kind, data = b[i + 4:i + 8], b[i + 8:i + 8 + n]
    if kind == b"tEXt" and data.split(b"\0", 1)[0] == sys.argv[2].encode():
        print(data.split(b"\0", 1)[1].decode("latin-1"))
    i += 12 + n
EOF
}
# make_png PATH W H KIND: an 8-bit PNG; KIND rgb (smooth colours), mask (white rectangle in the
# middle, gray), labels (gray values 0..181 for semantic maps)
make_png() {
    python3 - "$@" <<'EOF'
import math, struct, sys, zlib
path, w, h, kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def px(x, y):
    if kind == "rgb":
        return bytes(int(127.5 + 120 * math.sin(0.3 * x + 0.2 * y + c)) for c in range(3))
    if kind == "mask":
        return bytes([255 if w // 4 <= x < 3 * w // 4 and h // 4 <= y < 3 * h // 4 else 0])
    return bytes([(7 * x + 13 * y) % 182])
raw = b"".join(b"\0" + b"".join(px(x, y) for x in range(w)) for y in range(h))
ctype = 2 if kind == "rgb" else 0
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0))
                       + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
EOF
}

if [ ! -x "$LDM" ]; then
    echo "FAILED: $LDM not found or not executable"
    echo "cli: 0 passed, 1 failed"
    exit 1
fi

# ---------------------------------------------------------------- generate (demo model)
if run generate 0 "$LDM" generate --steps 4 --seed 42 --class 3 -o "$T/a.png" && [ -s "$T/a.png" ] &&
    [ "$(png_size "$T/a.png")" = 64x64 ] && has "$T/out" "wrote $T/a.png"; then
    ok "generate writes a 64x64 PNG with the demo model"
else bad "generate writes a 64x64 PNG with the demo model"; fi

png_text "$T/a.png" parameters >"$T/params" 2>&1
if has "$T/params" "Steps: 4" && has "$T/params" "Sampler: ddim" && has "$T/params" "Seed: 42" &&
    has "$T/params" "Class: 3" && has "$T/params" "Size: 64x64"; then
    ok "tEXt parameters holds the settings"
else bad "tEXt parameters holds the settings: $(cat "$T/params")"; fi

if run seed 0 "$LDM" generate --steps 4 --seed 42 --class 3 -o "$T/b.png" && cmp -s "$T/a.png" "$T/b.png"; then
    ok "the same --seed gives the same bytes"
else bad "the same --seed gives the same bytes"; fi

if run seed2 0 "$LDM" generate --steps 4 --seed 43 --class 3 -o "$T/c.png" && ! cmp -s "$T/a.png" "$T/c.png"; then
    ok "another --seed gives another image"
else bad "another --seed gives another image"; fi

if run noseed 0 "$LDM" generate --steps 2 --class 3 -o "$T/r.png" && has "$T/err" "seed [0-9]"; then
    ok "without --seed the chosen seed is printed"
else bad "without --seed the chosen seed is printed"; fi

if run batch 0 "$LDM" generate --steps 4 --seed 7 --batch 2 -o "$T/batch.png" && [ -s "$T/batch.png" ] &&
    [ -s "$T/batch-1.png" ] && ! cmp -s "$T/batch.png" "$T/batch-1.png"; then
    ok "--batch 2 writes two different files"
else bad "--batch 2 writes two different files"; fi

if run uncond 0 "$LDM" generate --steps 2 --seed 1 --sampler dpmpp_2m_karras --width 32 --height 48 -o "$T/u.png" &&
    [ "$(png_size "$T/u.png")" = 32x48 ]; then
    ok "no class: unconditional sample; --width/--height; a k-sampler"
else bad "no class: unconditional sample; --width/--height; a k-sampler"; fi

# ---------------------------------------------------------------- progress bar
if run notty 0 "$LDM" generate --steps 4 --seed 1 -o "$T/p.png" && ! has "$T/err" "4/4" &&
    ! grep -q "$(printf '\r')" "$T/err"; then
    ok "no progress bar when stderr is not a terminal"
else bad "no progress bar when stderr is not a terminal"; fi

if command -v script >/dev/null 2>&1; then
    script -qc "'$LDM' generate --steps 4 --seed 1 -o '$T/tty.png'" /dev/null >"$T/tty" 2>&1 </dev/null
    if tr '\r' '\n' <"$T/tty" | grep -q "4/4"; then ok "progress bar on a terminal"
    else bad "progress bar on a terminal: $(tr '\r' '\n' <"$T/tty" | tail -3)"; fi
    script -qc "'$LDM' generate -q --steps 4 --seed 1 -o '$T/tty.png'" /dev/null >"$T/tty" 2>&1 </dev/null
    if [ -s "$T/tty.png" ] && ! grep -q "4/4" "$T/tty"; then ok "-q hides the progress bar"; else bad "-q hides the progress bar"; fi
else
    skip "progress bar on a terminal (no script(1))"
fi

# ---------------------------------------------------------------- errors and exit codes
if run missing 1 "$LDM" info "$T/missing.safetensors" && has "$T/err" "$T/missing.safetensors"; then
    ok "a missing checkpoint is named, exit 1"
else bad "a missing checkpoint is named, exit 1"; fi

if run missing_init 1 "$LDM" img2img --init "$T/nothere.png" --steps 2 -o "$T/x.png" && has "$T/err" "nothere.png"; then
    ok "a missing input image is named, exit 1"
else bad "a missing input image is named, exit 1"; fi

if run badopt 2 "$LDM" generate --bogus && has "$T/err" "unknown option '--bogus'" && has "$T/err" "usage:"; then
    ok "an unknown option prints the usage, exit 2"
else bad "an unknown option prints the usage, exit 2"; fi

if run novalue 2 "$LDM" generate --steps && has "$T/err" "needs a value"; then
    ok "an option without its value, exit 2"
else bad "an option without its value, exit 2"; fi

if run badnum 2 "$LDM" generate --steps many && has "$T/err" "steps"; then
    ok "a bad number, exit 2"
else bad "a bad number, exit 2"; fi

if run badcmd 2 "$LDM" paint && has "$T/err" "unknown command"; then
    ok "an unknown command, exit 2"
else bad "an unknown command, exit 2"; fi

if run noinit 2 "$LDM" img2img --steps 2 && has "$T/err" "--init"; then
    ok "img2img without --init, exit 2"
else bad "img2img without --init, exit 2"; fi

if run badsize 1 "$LDM" generate --steps 2 --width 60 -o "$T/x.png" && has "$T/err" "multiples of 8"; then
    ok "a size the model cannot make is explained, exit 1"
else bad "a size the model cannot make is explained, exit 1"; fi

if run help 0 "$LDM" --help && has "$T/out" "usage:"; then ok "--help"; else bad "--help"; fi

# ---------------------------------------------------------------- image inputs with the demo model
make_png "$T/init64.png" 64 64 rgb
make_png "$T/mask64.png" 64 64 mask
if run img2img 0 "$LDM" img2img --init "$T/init64.png" --strength 0.5 --steps 4 --seed 3 --class 2 -o "$T/i2i.png" &&
    [ "$(png_size "$T/i2i.png")" = 64x64 ] && png_text "$T/i2i.png" parameters >"$T/params" &&
    has "$T/params" "Denoising strength: 0.5"; then
    ok "img2img with the demo model"
else bad "img2img with the demo model"; fi

if run blend 0 "$LDM" inpaint --init "$T/init64.png" --mask "$T/mask64.png" --steps 4 --seed 3 --class 2 -o "$T/blend.png" &&
    [ "$(png_size "$T/blend.png")" = 64x64 ]; then
    ok "inpaint (mask blending) with the demo model"
else bad "inpaint (mask blending) with the demo model"; fi

# ---------------------------------------------------------------- fixture models
fixture() { [ -f "$FX/$1/model.safetensors" ]; }
if fixture ldm_cin_ddim && fixture ae_kl_f8; then
    if run info 0 "$LDM" info "$FX/ldm_cin_ddim/model.safetensors" --config "$FX/ldm_cin_ddim/config.yaml" &&
        has "$T/out" "ClassEmbedder" && has "$T/out" "VQ"; then
        ok "info on a fixture LDM with its config"
    else bad "info on a fixture LDM with its config: $(head -3 "$T/out")"; fi
    if run info_ckpt 0 "$LDM" info "$FX/ae_kl_f8/model.ckpt" && has "$T/out" "AutoencoderKL"; then
        ok "info on a .ckpt autoencoder without config"
    else bad "info on a .ckpt autoencoder without config"; fi
    if run info_needs_config 1 "$LDM" info "$FX/ldm_cin_ddim/model.safetensors" && has "$T/err" "config"; then
        ok "info tells when the config is needed, exit 1"
    else bad "info tells when the config is needed, exit 1"; fi
    if run class 0 "$LDM" generate --model "$FX/ldm_cin_ddim/model.safetensors" --config "$FX/ldm_cin_ddim/config.yaml" \
        --class 3 --cfg-scale 3 --steps 8 --seed 1 -o "$T/cin.png" && [ "$(png_size "$T/cin.png")" = 16x16 ]; then
        ok "class-conditional generation with CFG on ldm_cin_ddim"
    else bad "class-conditional generation with CFG on ldm_cin_ddim"; fi
else
    skip "fixture checkpoints (set LDM_SHARED)"
fi

if fixture ldm_inpaint; then
    make_png "$T/img16.png" 16 16 rgb
    make_png "$T/mask16.png" 16 16 mask
    if run inpaint 0 "$LDM" inpaint --model "$FX/ldm_inpaint/model.safetensors" --config "$FX/ldm_inpaint/config.yaml" \
        --init "$T/img16.png" --mask "$T/mask16.png" --steps 6 --seed 2 -o "$T/inp.png" &&
        [ "$(png_size "$T/inp.png")" = 16x16 ]; then
        ok "inpaint with the LDM inpainting model"
    else bad "inpaint with the LDM inpainting model"; fi
fi

if fixture ldm_sr_concat; then
    make_png "$T/lr.png" 8 8 rgb
    if run upscale 0 "$LDM" upscale --model "$FX/ldm_sr_concat/model.safetensors" --config "$FX/ldm_sr_concat/config.yaml" \
        --init "$T/lr.png" --steps 6 --seed 2 -o "$T/sr.png" && [ "$(png_size "$T/sr.png")" = 8x8 ]; then
        ok "upscale with the LDM-BSR model (first stage f1: output = input size)"
    else bad "upscale with the LDM-BSR model"; fi
fi

if fixture cond_spatial_rescaler; then
    make_png "$T/labels.png" 38 22 labels
    if run seg 0 "$LDM" generate --model "$FX/cond_spatial_rescaler/model.safetensors" \
        --config "$FX/cond_spatial_rescaler/config.yaml" --seg "$T/labels.png" --steps 4 --seed 2 -o "$T/seg.png" &&
        [ "$(png_size "$T/seg.png")" = 9x5 ]; then
        ok "semantic synthesis from a label PNG (38x22 -> 9x5)"
    else bad "semantic synthesis from a label PNG: $(png_size "$T/seg.png" 2>/dev/null)"; fi
fi

if fixture cond_layout; then
    printf '{"objects": [[12, 0.25, 0.25, 0.25, 0.5, 1], [42, 0.7, 0.05, 0.2, 0.9, 4]]}' >"$T/layout.json"
    if run layout 0 "$LDM" generate --model "$FX/cond_layout/model.safetensors" --config "$FX/cond_layout/config.yaml" \
        --layout "$T/layout.json" --steps 4 --seed 2 -o "$T/layout.png" && [ "$(png_size "$T/layout.png")" = 16x16 ]; then
        ok "layout-to-image from a JSON file"
    else bad "layout-to-image from a JSON file"; fi
fi

if fixture ldm_sd1_txt2img && [ -f "$SHARED/vocab/bpe_simple_vocab_16e6.txt.gz" ]; then
    if run text 0 "$LDM" generate --model "$FX/ldm_sd1_txt2img/model.safetensors" \
        --config "$FX/ldm_sd1_txt2img/config.yaml" --vocab "$SHARED/vocab" --prompt "a red fox" \
        --negative-prompt "blurry" --steps 6 --seed 5 -o "$T/text.png" && png_text "$T/text.png" parameters >"$T/params" &&
        has "$T/params" "^a red fox" && has "$T/params" "Negative prompt: blurry"; then
        ok "text-to-image (SD1 fixture) with prompt and negative prompt"
    else bad "text-to-image (SD1 fixture) with prompt and negative prompt"; fi
    # the low-memory mode drops weight pages after every layer: the same image, byte for byte
    if run lowmem 0 "$LDM" generate --low-memory --model "$FX/ldm_sd1_txt2img/model.safetensors" \
        --config "$FX/ldm_sd1_txt2img/config.yaml" --vocab "$SHARED/vocab" --prompt "a red fox" \
        --negative-prompt "blurry" --steps 6 --seed 5 -o "$T/text-low.png" && cmp -s "$T/text.png" "$T/text-low.png"; then
        ok "--low-memory gives the same image"
    else bad "--low-memory gives the same image"; fi
    if run novocab 1 env -u LDM_VOCAB "$LDM" generate --model "$FX/ldm_sd1_txt2img/model.safetensors" \
        --config "$FX/ldm_sd1_txt2img/config.yaml" --prompt "a red fox" --steps 2 -o "$T/x.png" && has "$T/err" "vocab"; then
        ok "a missing vocabulary is explained, exit 1"
    else bad "a missing vocabulary is explained, exit 1"; fi
fi

# ---------------------------------------------------------------- Ctrl-C
"$LDM" generate --sampler ddpm --steps 1000 --seed 1 -o "$T/long.png" >"$T/long.out" 2>"$T/long.err" </dev/null &
pid=$!
n=0
while ! grep -q "seed" "$T/long.err" 2>/dev/null && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
sleep 0.5
kill -INT "$pid" 2>/dev/null
wait "$pid"
rc=$?
if [ "$rc" -eq 130 ] && grep -q "cancelled" "$T/long.err" && [ ! -e "$T/long.png" ]; then
    ok "Ctrl-C stops a generation: exit 130, 'cancelled', no file"
else
    cp "$T/long.err" "$T/err"
    bad "Ctrl-C stops a generation (exit $rc)"
fi

echo "cli: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
