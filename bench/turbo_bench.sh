#!/bin/sh
# turbo_bench.sh - SD-Turbo-sized pictures (SD 2.1-base architecture, 512x512, 1 step, Euler
# ancestral with trailing spacing, no guidance) with libldm and with the reference diffusers
# pipeline, decoded by the full VAE and by TAESD, in one sitting at the same thread count
# (issue #14). A timing tool: it prints numbers and never fails on them.
#
#   bench/turbo_bench.sh                      # THREADS=2 PICTURES=3
#
# 1. builds libldm (`make all bench`, unless NO_BUILD=1);
# 2. writes the random-weight checkpoints once (bench/turbo_torch.py write, into OUT): a float16
#    SD 2.1-base single file in the CompVis layout (2.6 GB) and a float16 TAESD in diffusers'
#    AutoencoderTiny layout (5 MB);
# 3. libldm: `ldm generate --turbo` on that file, without and with `--taesd`, under
#    /usr/bin/time -v for one picture (cold: the whole process, mapping and checking the weights,
#    text encoder, 1 UNet step, decode, PNG; and its peak RSS), then PICTURES pictures in one
#    process through the Python binding (bench/turbo_torch.py libldm: ldm_generate with the same
#    settings), whose median over pictures 2..PICTURES is the warm time;
# 4. PyTorch: bench/turbo_torch.py run (diffusers StableDiffusionPipeline with
#    EulerAncestralDiscreteScheduler, timestep_spacing trailing, 1 step, guidance_scale 0, on the
#    same weights converted by diffusers' own CompVis->diffusers functions; AutoencoderKL or
#    AutoencoderTiny; float32), PICTURES pictures in one process, summarised the same way;
# 5. prints a table, with the CPU, the load average and the FMA peak of $BUILD/bench/peak.
#
# What each side computes in: libldm keeps the float16 weights in the file (widened block by
# block, products and activations in float32); PyTorch 1.13 widens them to float32 at load (it
# has no fast float16 on a CPU). Both use 2 threads (torch.set_num_threads / --threads).
#
# Environment (defaults in brackets):
#   THREADS [2]  PICTURES [3] pictures per process for the warm time (>= 2)
#   BUILD [build]  OUT [/tmp/ldm-turbo] where the checkpoints are written (and kept)
#   PY [/tmp/ldvenv/bin/python] a Python with torch 1.13, diffusers 0.30.3, transformers
#   LDM_VOCAB [/work/shared/vocab] the folder with bpe_simple_vocab_16e6.txt.gz
#   NO_TORCH [0] 1: libldm only   NO_BUILD [0]   KEEP [0] 1: keep the logs in WORK
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"
THREADS=${THREADS:-2}
PICTURES=${PICTURES:-3}
BUILD=${BUILD:-build}
OUT=${OUT:-/tmp/ldm-turbo}
PY=${PY:-/tmp/ldvenv/bin/python}
VOCAB=${LDM_VOCAB:-/work/shared/vocab}
NO_TORCH=${NO_TORCH:-0}
NO_BUILD=${NO_BUILD:-0}
KEEP=${KEEP:-0}
CKPT=$OUT/sd21base-f16.safetensors
TAESD=$OUT/taesd-f16.safetensors

die() { echo "turbo_bench.sh: $*" >&2; exit 1; }
[ "$PICTURES" -ge 2 ] || die "PICTURES must be at least 2"
[ -x "$PY" ] || die "no Python at $PY (PY=...; bench/README.md)"
[ -f "$VOCAB/bpe_simple_vocab_16e6.txt.gz" ] || die "no $VOCAB/bpe_simple_vocab_16e6.txt.gz (LDM_VOCAB=...)"
if [ "$NO_BUILD" != 1 ]; then
    make -s -j2 BUILD="$BUILD" all bench >/dev/null || die "make failed"
fi
[ -x "$BUILD/ldm" ] || die "no $BUILD/ldm"
WORK=$(mktemp -d /tmp/turbo-bench.XXXXXX)
[ "$KEEP" = 1 ] || trap 'rm -rf "$WORK"' EXIT
# PyTorch finds its own BLAS; this environment's OpenBLAS pinning is for libldm's builds only
torch_env() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$@"; }

if [ ! -f "$CKPT" ] || [ ! -f "$TAESD" ] || [ ! -f "$OUT/tokenizer/merges.txt" ]; then
    echo "writing the random-weight checkpoints to $OUT (once) ..."
    LDM_VOCAB=$VOCAB torch_env "$PY" bench/turbo_torch.py write --out "$OUT" || die "writing the checkpoints failed"
fi

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== SD-Turbo-sized pictures (SD 2.1-base, 512x512, 1 step euler_a trailing, no guidance): libldm vs diffusers, $THREADS threads"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "machine: $(lscpu 2>/dev/null | sed -n "s/^Model name: *//p" | head -n 1) (family $(lscpu 2>/dev/null | sed -n "s/^CPU family: *//p" | head -n 1) model $(lscpu 2>/dev/null | sed -n "s/^Model: *//p" | head -n 1)), $(nproc) CPUs online"
echo "libldm:  $(git rev-parse --short HEAD 2>/dev/null || echo '?') $BUILD/ldm; float16 weights in place, float32 compute"
echo "PyTorch: $(torch_env "$PY" -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)' 2>/dev/null); float32"
if [ -x "$BUILD/bench/peak" ]; then
    "$BUILD/bench/peak" --seconds 0.5 | sed 's/^/peak:    /'
fi

# field NAME of a /usr/bin/time -v log
tv() { sed -n "s/^[[:space:]]*$1: *//p" "$2" | head -n 1; }
# wall seconds of "h:mm:ss" or "m:ss.ss"
secs() { echo "$1" | awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.2f", s }'; }
gb() { awk -v k="$1" 'BEGIN { printf "%.2f", k * 1024 / 1e9 }'; }

ldm_run() { # LOG PICTURES EXTRA...
    log=$1 n=$2
    shift 2
    /usr/bin/time -v "$BUILD/ldm" generate --model "$CKPT" --vocab "$VOCAB" --turbo --threads "$THREADS" \
        --prompt "a photo of a cat" --seed 1 --batch "$n" -q -o "$WORK/ldm.png" "$@" 2>"$log" ||
        { cat "$log" >&2; die "ldm generate failed"; }
}

# one summary of a turbo_torch.py log: warm wall, warm cpu, load, first
result() { sed -n 's/^RESULT //p' "$1"; }
field() { echo "$1" | sed -n -E "s/(^|.* )$2=([0-9.]+).*/\2/p"; } # "median" is not "cpu_median"

rows=""
for vae in full tiny; do
    extra=""
    [ "$vae" = tiny ] && extra="--taesd $TAESD"
    # cold: the CLI, one picture, the whole process
    # shellcheck disable=SC2086
    /usr/bin/time -v "$BUILD/ldm" generate --model "$CKPT" --vocab "$VOCAB" --turbo --threads "$THREADS" \
        --prompt "a photo of a cat" --seed 1 -q -o "$WORK/ldm-$vae.png" $extra 2>"$WORK/ldm-$vae.log" ||
        { cat "$WORK/ldm-$vae.log" >&2; die "ldm generate failed"; }
    cold=$(secs "$(tv 'Elapsed (wall clock) time (h:mm:ss or m:ss)' "$WORK/ldm-$vae.log")")
    cold_cpu=$(awk -v u="$(tv 'User time (seconds)' "$WORK/ldm-$vae.log")" -v s="$(tv 'System time (seconds)' "$WORK/ldm-$vae.log")" 'BEGIN { printf "%.1f", u + s }')
    # warm: PICTURES pictures in one process through the Python binding
    /usr/bin/time -v /usr/bin/python3 bench/turbo_torch.py libldm --out "$OUT" --vae "$vae" --threads "$THREADS" \
        --pictures "$PICTURES" --lib "$BUILD/libldm.so.0" --vocab "$VOCAB" >"$WORK/ldmpy-$vae.out" 2>"$WORK/ldmpy-$vae.log" ||
        { cat "$WORK/ldmpy-$vae.out" "$WORK/ldmpy-$vae.log" >&2; die "turbo_torch.py libldm failed"; }
    r=$(result "$WORK/ldmpy-$vae.out")
    rss=$(tv 'Maximum resident set size (kbytes)' "$WORK/ldm-$vae.log")
    rows="$rows
libldm, $vae VAE|$(field "$r" median)|$(field "$r" cpu_median)|$cold ($cold_cpu CPU s)|$(gb "$rss")"
    if [ "$NO_TORCH" != 1 ]; then
        torch_env /usr/bin/time -v "$PY" bench/turbo_torch.py run --out "$OUT" --vae "$vae" --threads "$THREADS" \
            --pictures "$PICTURES" >"$WORK/torch-$vae.out" 2>"$WORK/torch-$vae.log" ||
            { cat "$WORK/torch-$vae.out" "$WORK/torch-$vae.log" >&2; die "turbo_torch.py failed"; }
        r=$(result "$WORK/torch-$vae.out")
        cold=$(awk -v a="$(field "$r" load)" -v b="$(field "$r" first)" 'BEGIN { printf "%.2f", a + b }')
        trss=$(tv 'Maximum resident set size (kbytes)' "$WORK/torch-$vae.log")
        rows="$rows
PyTorch, $vae VAE|$(field "$r" median)|$(field "$r" cpu_median)|$cold|$(gb "$trss")"
    fi
done

echo "load:    $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end (1/5/15 min; other jobs slow both engines)"
echo
echo "| engine, decoder | s/picture (wall, warm) | CPU s/picture (warm) | first picture, cold (s) | peak RSS GB |"
echo "|---|---|---|---|---|"
echo "$rows" | sed '/^$/d' | awk -F'|' '{ printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5 }'
echo
echo "warm: median over pictures 2..$PICTURES made in one process (text encoder, 1 UNet step, decode):"
echo "      libldm through its Python binding (ldm_generate), PyTorch the diffusers pipeline; CPU s:"
echo "      process CPU time of every thread (less disturbed by other jobs than the wall time)."
echo "cold: libldm the whole 'ldm generate' process for one picture (start, map + check the weights,"
echo "      generate, write the PNG); PyTorch building the modules, converting and loading the"
echo "      weights, and the first picture (Python start-up and imports not included)."
echo "peak RSS: /usr/bin/time -v of the 'ldm generate' process and of the PyTorch process."
