#!/bin/sh
# sdxl_bench.sh - the full-size SDXL base UNet against the official sgm code (issue #14): the
# numerical check (a conformance fixture made on demand) and the 1024x1024 guided step, PyTorch
# next to libldm's default and low-memory modes, in one sitting, one process at a time. A timing
# tool: it prints numbers and never fails on them (the check's verdict is the conformance runner's).
#
#   bench/sdxl_bench.sh                 # THREADS=2 SIZE=1024
#
# 1. builds libldm (`make all bench build/tests/conformance`, unless NO_BUILD=1);
# 2. writes the random-weight SDXL base checkpoint once (bench/sdxl_compare.py write: 6.9 GB of
#    float16, sgm layout, with the official sd_xl_base.yaml beside it) into OUT/unet_sdxl_base_full;
# 3. the check: sdxl_compare.py reference (the official UNetModel's forward in float32 and float64,
#    batch 2 at 32x32 latents: io.safetensors + case.json), then build/tests/conformance on that
#    folder, in the default and the low-memory mode (peak RSS of each);
# 4. the guided step at SIZE x SIZE (UNet at batch 2): sdxl_compare.py torch-step (float32, 10.3 GB
#    of weights: it waits until TORCH_GB of memory are available), then libldm-step in the default
#    and the low-memory mode, each under /usr/bin/time -v in its own process; the step's counted
#    GFLOP (sdxl_compare.py flops) for GFLOP per CPU-second;
# 5. `ldm generate` at SIZE x SIZE with GEN_STEPS steps (euler, guidance 5: SDXL's defaults) in
#    both modes (GENERATE=0 skips it): peak RSS, wall and CPU seconds, and the seconds of the last
#    step from the CLI's progress line (run under script(1) so that it has a terminal);
# 6. prints the CPU, the load average at start and end, the FMA peak (build/bench/peak) and a table.
#
# Environment (defaults in brackets):
#   THREADS [2]  SIZE [1024]  GEN_STEPS [2]  GENERATE [1]  BUILD [build]  OUT [/tmp/ldm-sdxl]
#   GM [/tmp/gm] a Stability-AI/generative-models checkout (commit 0ad7de9 here; never committed)
#   PY [/tmp/ldvenv/bin/python] a Python with Debian's torch 1.13, numpy, safetensors, einops, PyYAML
#   LDM_VOCAB [/work/shared/vocab]  TORCH_GB [14]  NO_TORCH [0]  NO_BUILD [0]  KEEP [0] keep WORK's logs
#   REFERENCE [auto] 1: remake the check's expected output even when OUT has one
# Delete OUT afterwards (rm -rf /tmp/ldm-sdxl): 7 GB; the script remakes it.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"
THREADS=${THREADS:-2}
SIZE=${SIZE:-1024}
GEN_STEPS=${GEN_STEPS:-2}
GENERATE=${GENERATE:-1}
BUILD=${BUILD:-build}
OUT=${OUT:-/tmp/ldm-sdxl}
GM=${GM:-/tmp/gm}
PY=${PY:-/tmp/ldvenv/bin/python}
VOCAB=${LDM_VOCAB:-/work/shared/vocab}
TORCH_GB=${TORCH_GB:-14}
NO_TORCH=${NO_TORCH:-0}
NO_BUILD=${NO_BUILD:-0}
KEEP=${KEEP:-0}
REFERENCE=${REFERENCE:-auto}
FIX=$OUT/unet_sdxl_base_full
CKPT=$FIX/model.safetensors

die() { echo "sdxl_bench.sh: $*" >&2; exit 1; }
[ -x "$PY" ] || die "no Python at $PY (PY=...)"
[ -f "$GM/configs/inference/sd_xl_base.yaml" ] || die "no generative-models checkout at $GM (GM=...)"
if [ "$NO_BUILD" != 1 ]; then
    make -s -j2 BUILD="$BUILD" all bench "$BUILD/tests/conformance" >/dev/null || die "make failed"
fi
WORK=$(mktemp -d /tmp/sdxl-bench.XXXXXX)
[ "$KEEP" = 1 ] || trap 'rm -rf "$WORK"' EXIT
# PyTorch finds its own BLAS; this environment's OpenBLAS pinning is for libldm's builds only
torch_env() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$@"; }
avail_gb() { awk '/^MemAvailable:/ { printf "%d", $2 / 1048576 }' /proc/meminfo; }
wait_memory() { # GB: the machine is shared; wait up to 30 min for that much to be available
    i=0
    while [ "$(avail_gb)" -lt "$1" ]; do
        [ $i -ge 180 ] && die "less than $1 GB available for 30 minutes"
        [ $i = 0 ] && echo "waiting for $1 GB of available memory ($(avail_gb) GB now) ..." >&2
        sleep 10
        i=$((i + 1))
    done
}
tv() { sed -n "s/^[[:space:]]*$1: *//p" "$2" | head -n 1; }
secs() { echo "$1" | awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.1f", s }'; }
gb() { awk -v k="$1" 'BEGIN { printf "%.2f", k * 1024 / 1e9 }'; }
cpu_of() { awk -v u="$(tv 'User time (seconds)' "$1")" -v s="$(tv 'System time (seconds)' "$1")" 'BEGIN { printf "%.1f", u + s }'; }
field() { sed -n 's/^RESULT //p' "$1" | sed -n -E "s/(^|.* )$2=([0-9.e+-]+).*/\2/p"; }

if [ ! -f "$CKPT" ]; then
    echo "writing the random-weight SDXL base checkpoint to $FIX (once, 6.9 GB) ..."
    wait_memory 4
    torch_env "$PY" bench/sdxl_compare.py write --gm "$GM" --out "$OUT" || die "writing the checkpoint failed"
fi

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== SDXL base, full size (2.57G-parameter UNet, float16 file): libldm vs the official sgm UNetModel, $THREADS threads"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "machine: $(lscpu 2>/dev/null | sed -n "s/^Model name: *//p" | head -n 1) (family $(lscpu 2>/dev/null | sed -n "s/^CPU family: *//p" | head -n 1) model $(lscpu 2>/dev/null | sed -n "s/^Model: *//p" | head -n 1)), $(nproc) CPUs online, $(awk '/^MemTotal:/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo) GiB"
echo "load:    $load_start (1/5/15 min) at the start; memory available $(avail_gb) GiB"
echo "libldm:  $(git rev-parse --short HEAD 2>/dev/null || echo '?') $BUILD; float16 weights in place, float32 compute"
echo "PyTorch: $(torch_env "$PY" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null); float32; sgm $(sed -n 's/^REF_COMMIT = "\(.*\)"/\1/p' tests/reference/make_sdxl_goldens.py)"
if [ -x "$BUILD/bench/peak" ]; then
    "$BUILD/bench/peak" --seconds 0.5 --threads "$THREADS" | sed 's/^/peak:    /'
fi

# ---- (a) the check
if [ "$REFERENCE" = 1 ] || [ ! -f "$FIX/case.json" ]; then
    wait_memory 8
    torch_env /usr/bin/time -v -o "$WORK/ref.time" "$PY" bench/sdxl_compare.py reference --gm "$GM" --out "$OUT" \
        --threads "$THREADS" >"$WORK/ref.out" 2>"$WORK/ref.err" || { cat "$WORK/ref.out" "$WORK/ref.err" >&2; die "the reference failed"; }
    sed 's/^/reference: /' "$WORK/ref.out"
fi
for mode in 0 1; do
    LDM_LOW_MEMORY=$mode LDM_VOCAB=$VOCAB LDM_THREADS=$THREADS /usr/bin/time -v -o "$WORK/conf$mode.time" \
        "$BUILD/tests/conformance" "$FIX" >"$WORK/conf$mode.out" || true
    echo "check (LDM_LOW_MEMORY=$mode, peak RSS $(gb "$(tv 'Maximum resident set size (kbytes)' "$WORK/conf$mode.time")") GB, $(secs "$(tv 'Elapsed (wall clock) time (h:mm:ss or m:ss)' "$WORK/conf$mode.time")") s):"
    sed 's/^/    /' "$WORK/conf$mode.out"
done

# ---- (b) the guided step
rows=""
step_row() { # NAME LOG TIME
    rows="$rows
$1|$(field "$2" wall)|$(field "$2" cpu)|$(gb "$(tv 'Maximum resident set size (kbytes)' "$3")")|$(field "$2" max_abs_diff)"
}
if [ "$NO_TORCH" != 1 ]; then
    wait_memory "$TORCH_GB"
    torch_env /usr/bin/time -v -o "$WORK/torch.time" "$PY" bench/sdxl_compare.py torch-step --gm "$GM" --out "$OUT" \
        --size "$SIZE" --threads "$THREADS" >"$WORK/torch.out" 2>"$WORK/torch.err" || { cat "$WORK/torch.out" "$WORK/torch.err" >&2; die "torch-step failed"; }
    step_row "PyTorch 1.13, official UNetModel, float32" "$WORK/torch.out" "$WORK/torch.time"
fi
gflop=""
if [ "$NO_TORCH" != 1 ]; then # the counted work of the step, for GFLOP per CPU-second
    wait_memory 8
    torch_env "$PY" bench/sdxl_compare.py flops --gm "$GM" --out "$OUT" --size "$SIZE" --threads "$THREADS" \
        >"$WORK/flops.out" 2>"$WORK/flops.err" || { cat "$WORK/flops.out" "$WORK/flops.err" >&2; die "flops failed"; }
    gflop=$(field "$WORK/flops.out" gflop)
fi
for mode in 0 1; do
    wait_memory 7
    LDM_LOW_MEMORY=$mode /usr/bin/time -v -o "$WORK/ldm$mode.time" /usr/bin/python3 bench/sdxl_compare.py libldm-step \
        --out "$OUT" --size "$SIZE" --threads "$THREADS" --lib "$BUILD/libldm.so.0" >"$WORK/ldm$mode.out" ||
        { cat "$WORK/ldm$mode.out" >&2; die "libldm-step failed"; }
    name="libldm, default mode"
    [ $mode = 1 ] && name="libldm, low-memory mode"
    step_row "$name" "$WORK/ldm$mode.out" "$WORK/ldm$mode.time"
done

# ---- ldm generate end to end
gen_rows=""
if [ "$GENERATE" = 1 ]; then
    for mode in 0 1; do
        wait_memory 7
        flag=""
        [ $mode = 1 ] && flag="--low-memory"
        script -qfec "/usr/bin/time -v -o $WORK/gen$mode.time $BUILD/ldm generate --model $CKPT --vocab $VOCAB \
            --prompt 'a photo of a cat' --width $SIZE --height $SIZE --steps $GEN_STEPS --threads $THREADS --seed 1 \
            -o $WORK/gen$mode.png $flag" "$WORK/gen$mode.tty" >/dev/null || die "ldm generate failed: $(tail -c 400 "$WORK/gen$mode.tty")"
        # progress: "k/N  X s/step" = (text encoding + k steps) / k; the last step alone is N*X_N - (N-1)*X_(N-1)
        last=$(tr '\r' '\n' <"$WORK/gen$mode.tty" | sed -n -E 's|.* ([0-9]+)/([0-9]+) +([0-9.]+) s/step.*|\1 \3|p' |
            awk '{ r[$1] = $2; n = $1 } END { if (n > 1) printf "%.1f", n * r[n] - (n - 1) * r[n - 1]; else printf "?" }')
        name="ldm generate, default mode"
        [ $mode = 1 ] && name="ldm generate --low-memory"
        gen_rows="$gen_rows
$name|$(secs "$(tv 'Elapsed (wall clock) time (h:mm:ss or m:ss)' "$WORK/gen$mode.time")")|$(cpu_of "$WORK/gen$mode.time")|$last|$(gb "$(tv 'Maximum resident set size (kbytes)' "$WORK/gen$mode.time")")"
    done
fi

echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) at the end (1/5/15 min; other jobs slow every engine)"
echo
echo "guided step at ${SIZE}x${SIZE} (UNet at batch 2, latent $((SIZE / 8))x$((SIZE / 8)); process peak RSS):"
echo
[ -n "$gflop" ] && echo "counted work: $(sed -n 's/^RESULT //p' "$WORK/flops.out") (GFLOP; sdxl_compare.py flops)"
echo
echo "| engine | wall s/step | CPU s/step | GFLOP per CPU-s | peak RSS GB | max abs diff to PyTorch |"
echo "|---|---|---|---|---|---|"
echo "$rows" | sed '/^$/d' | awk -F'|' -v g="$gflop" '{ r = (g != "" && $3 > 0) ? sprintf("%.1f", g / $3) : "-";
    printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, r, $4, ($5 == "" ? "-" : $5) }'
if [ -n "$gen_rows" ]; then
    echo
    echo "ldm generate ${SIZE}x${SIZE}, $GEN_STEPS steps euler, guidance 5, full VAE decode (the whole process):"
    echo
    echo "| run | wall s | CPU s | last step wall s | peak RSS GB |"
    echo "|---|---|---|---|---|"
    echo "$gen_rows" | sed '/^$/d' | awk -F'|' '{ printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5 }'
fi
