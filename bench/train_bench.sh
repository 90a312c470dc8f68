#!/bin/sh
# train_bench.sh - training throughput on the glyph model, libldm (`ldm train`) side by side with
# PyTorch running the official latent-diffusion code (bench/train_torch.py), in one sitting, at the
# same thread count (issue #13). A timing tool: it prints numbers and never fails on them.
#
#   bench/train_bench.sh                      # defaults: 2 threads, 2 rounds of 3 + 30 steps each
#   STEPS=10 ROUNDS=1 THREADS=1 bench/train_bench.sh
#
# Per round and model (autoencoder, then LDM) it runs the engines one after the other, alternating
# the order between rounds (libldm first in odd rounds) so that a drift of the machine's load hits
# both: `ldm train CONFIG --steps WARMUP+STEPS --threads T --log-every 1` (the step times of its
# progress lines after the first WARMUP steps) and `train_torch.py --steps STEPS --warmup WARMUP
# --threads T`. The PyTorch autoencoder runs twice: as main.py trains it (both of Lightning's
# optimiser passes per batch, the discriminator's included) and with the generator pass only
# (--disc-pass 0), the nearest to what libldm computes. Every timed step of every round goes into
# one pool per engine and model; the table gives the pool's median s/step, images/s = batch /
# median, the ratio, the peak RSS of the process (the largest over the rounds), and the time that
# many steps would take for the glyph recipe's step counts (the Makefile's GLYPHS_AE_STEPS /
# GLYPHS_LDM_STEPS, else the config's max_steps): the time to the shipped model at that speed.
#
# Environment (defaults in brackets):
#   THREADS [2]  STEPS [30] timed steps per run  WARMUP [3] untimed steps first  ROUNDS [2]
#   BUILD [build] (needs $BUILD/ldm: `make`; $BUILD/bench/peak from `make bench` is optional)
#   DATA [$BUILD/glyphs-data] (`make glyphs-data`)
#   PY [/tmp/ldvenv/bin/python] a Python with torch 1.13, numpy, PIL, PyYAML, einops
#   LDM_REF [/tmp/ld-ref], TAMING_REF [/tmp/taming-ref]: the official code (bench/README.md)
#   FIRST_STAGE [the autoencoder libldm trains in round 1]: the LDM's frozen autoencoder for both
#       engines; the speed does not depend on its weights
#   AE_DISC0 [1]: 0 leaves out the PyTorch autoencoder's --disc-pass 0 run
#   WORK [a new directory under /tmp, removed at the end unless KEEP=1]
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"
THREADS=${THREADS:-2}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-3}
ROUNDS=${ROUNDS:-2}
BUILD=${BUILD:-build}
DATA=${DATA:-$BUILD/glyphs-data}
PY=${PY:-/tmp/ldvenv/bin/python}
LDM_REF=${LDM_REF:-/tmp/ld-ref}
TAMING_REF=${TAMING_REF:-/tmp/taming-ref}
AE_DISC0=${AE_DISC0:-1}
KEEP=${KEEP:-0}
FIRST_STAGE=${FIRST_STAGE:-}
AE_CFG=examples/glyphs/autoencoder.yaml
LDM_CFG=examples/glyphs/ldm.yaml

die() { echo "train_bench.sh: $*" >&2; exit 1; }
[ -x "$BUILD/ldm" ] || die "no $BUILD/ldm: run make (BUILD=$BUILD)"
[ -f "$DATA/labels.csv" ] || die "no $DATA/labels.csv: run make glyphs-data"
[ -x "$PY" ] || die "no Python at $PY (PY=...; bench/README.md)"
[ -d "$LDM_REF/ldm" ] || die "no $LDM_REF/ldm: the official code (LDM_REF=...; bench/README.md)"
[ -d "$TAMING_REF/taming" ] || die "no $TAMING_REF/taming (TAMING_REF=...; bench/README.md)"
[ -z "$FIRST_STAGE" ] || [ -f "$FIRST_STAGE" ] || die "FIRST_STAGE=$FIRST_STAGE: no such file"
WORK=${WORK:-$(mktemp -d /tmp/train-bench.XXXXXX)}
mkdir -p "$WORK"
[ "$KEEP" = 1 ] || trap 'rm -rf "$WORK"' EXIT

# The recipe's step counts: the Makefile's, else the config's max_steps.
recipe_steps() { # VAR CONFIG
    n=$(sed -n "s/^$1 *?*= *\([0-9][0-9]*\).*/\1/p" Makefile | head -n 1)
    [ -n "$n" ] || n=$(sed -n 's/^ *max_steps: *\([0-9][0-9]*\).*/\1/p' "$2" | head -n 1)
    echo "${n:-0}"
}
AE_RECIPE=$(recipe_steps GLYPHS_AE_STEPS "$AE_CFG")
LDM_RECIPE=$(recipe_steps GLYPHS_LDM_STEPS "$LDM_CFG")

echo "== training throughput, glyph model: libldm vs PyTorch (official latent-diffusion), $THREADS threads"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "machine: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) CPUs online"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null) (1/5/15 min; other jobs on the cores slow both engines)"
echo "libldm:  $(git rev-parse --short HEAD 2>/dev/null || echo '?') $BUILD/ldm"
echo "PyTorch: $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null) ($PY), latent-diffusion $LDM_REF"
if [ -x "$BUILD/bench/peak" ]; then
    "$BUILD/bench/peak" --seconds 0.5 | sed 's/^/peak:    /'
else
    echo "peak:    ($BUILD/bench/peak not built: make bench)"
fi
echo "runs:    $ROUNDS round(s), each run $WARMUP untimed + $STEPS timed steps; data $DATA"
echo

# libldm: ENGINE_KEY WHICH CONFIG OUT [extra args]
run_libldm() {
    key=$1 cfg=$2 out=$3
    shift 3
    log="$WORK/$key.r$r.log"
    echo "-- round $r: libldm $key" >&2
    "$BUILD/ldm" train "$cfg" --data "$DATA" --out "$out" --steps $((WARMUP + STEPS)) --threads "$THREADS" \
        --log-every 1 --seed 1 "$@" </dev/null >"$log" 2>&1 || { cat "$log" >&2; die "ldm train failed"; }
    awk -v w="$WARMUP" '$2 == "step" { split($3, s, "/"); if (s[1] + 0 > w) for (i = 4; i < NF; i++)
        if ($(i + 1) == "ms/step") print $i }' "$log" >>"$WORK/$key.times"
    sed -n 's/.* batch \([0-9][0-9]*\),.*/\1/p' "$log" | head -n 1 >"$WORK/$key.batch"
    sed -n 's/.*peak memory \([0-9][0-9]*\) MiB.*/\1/p' "$log" >>"$WORK/$key.peak"
}

# PyTorch: KEY WHICH [extra args]
run_torch() {
    key=$1 which=$2
    shift 2
    log="$WORK/$key.r$r.log"
    echo "-- round $r: PyTorch $key" >&2
    "$PY" "$here/train_torch.py" --which "$which" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" \
        --data "$DATA" --ref "$LDM_REF" --taming "$TAMING_REF" "$@" </dev/null >"$log" 2>&1 ||
        { cat "$log" >&2; die "train_torch.py failed"; }
    awk '$1 == "step" && !/warm-up/ { print $(NF - 1) }' "$log" >>"$WORK/$key.times"
    sed -n 's/^RESULT .* batch=\([0-9]*\) .*/\1/p' "$log" >"$WORK/$key.batch"
    sed -n 's/^RESULT .* peak_mib=\([0-9]*\).*/\1/p' "$log" >>"$WORK/$key.peak"
}

ae_round() {
    if [ $((r % 2)) = 1 ]; then
        run_libldm ae.libldm "$AE_CFG" "$WORK/ae-libldm"
        run_torch ae.torch ae
        [ "$AE_DISC0" != 1 ] || run_torch ae.torch0 ae --disc-pass 0
    else
        [ "$AE_DISC0" != 1 ] || run_torch ae.torch0 ae --disc-pass 0
        run_torch ae.torch ae
        run_libldm ae.libldm "$AE_CFG" "$WORK/ae-libldm"
    fi
}

ldm_round() {
    fs=${FIRST_STAGE:-$WORK/ae-first-stage.safetensors}
    if [ $((r % 2)) = 1 ]; then
        run_libldm ldm.libldm "$LDM_CFG" "$WORK/ldm-libldm" --first-stage "$fs"
        run_torch ldm.torch ldm --first-stage "$fs"
    else
        run_torch ldm.torch ldm --first-stage "$fs"
        run_libldm ldm.libldm "$LDM_CFG" "$WORK/ldm-libldm" --first-stage "$fs"
    fi
}

start=$(date +%s)
r=1
while [ "$r" -le "$ROUNDS" ]; do
    ae_round
    [ -n "$FIRST_STAGE" ] || [ -f "$WORK/ae-first-stage.safetensors" ] ||
        cp "$WORK/ae-libldm/last.safetensors" "$WORK/ae-first-stage.safetensors"
    ldm_round
    r=$((r + 1))
done

median() { sort -n "$1" | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2];
                                  else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
maxof() { sort -n "$1" | tail -n 1; }

# row LABEL KEY RECIPE_STEPS: "median_s img_s peak recipe_min"
stats() {
    key=$1 recipe=$2
    awk -v m="$(median "$WORK/$key.times")" -v b="$(cat "$WORK/$key.batch")" -v p="$(maxof "$WORK/$key.peak")" \
        -v n="$(wc -l <"$WORK/$key.times")" -v rs="$recipe" \
        'BEGIN { s = m / 1000; printf("%.4f %.2f %s %.1f %d\n", s, (s > 0 ? b / s : 0), p, rs * s / 60, n) }'
}

echo
echo "== results ($THREADS threads; median over every timed step of every round; peak = largest RSS)"
printf '%-12s %-30s %6s %9s %9s %9s  %s\n' model engine steps "s/step" "images/s" "peak MiB" "recipe steps -> time"
row() { # MODEL ENGINE KEY RECIPE
    set -- "$1" "$2" "$3" "$4" $(stats "$3" "$4")
    printf '%-12s %-30s %6s %9s %9s %9s  %s steps: %s min\n' "$1" "$2" "$9" "$5" "$6" "$7" "$4" "$8"
}
row autoencoder "libldm" ae.libldm "$AE_RECIPE"
row autoencoder "PyTorch (main.py: 2 passes)" ae.torch "$AE_RECIPE"
[ "$AE_DISC0" != 1 ] || row autoencoder "PyTorch (generator pass only)" ae.torch0 "$AE_RECIPE"
row ldm "libldm" ldm.libldm "$LDM_RECIPE"
row ldm "PyTorch (main.py)" ldm.torch "$LDM_RECIPE"
ratio() { # A B: img/s of A over img/s of B
    awk -v a="$(stats "$1" 0 | cut -d' ' -f2)" -v b="$(stats "$2" 0 | cut -d' ' -f2)" \
        'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'
}
echo
echo "images/s, libldm / PyTorch: autoencoder $(ratio ae.libldm ae.torch) (main.py's step)$(
    [ "$AE_DISC0" != 1 ] || echo ", $(ratio ae.libldm ae.torch0) (generator pass only)"), LDM $(ratio ldm.libldm ldm.torch)"
echo "wall time of the benchmark: $(( $(date +%s) - start )) s; logs in $WORK$([ "$KEEP" = 1 ] || echo ' (removed; KEEP=1 keeps them)')"
