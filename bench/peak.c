/* peak.c - measures this machine's single-precision FMA peak, the yardstick the performance docs
 * state results against (a share of the machine's own peak, not a bare time).
 *
 *   build/bench/peak [--seconds S] [--threads N] [--isa avx512|fma|avx|generic]
 *
 * prints GFLOP/s with 1 thread and with N threads (default: every online CPU); a share of the peak
 * should be taken against the peak at the thread count the measured run used. A last line gives
 * the rate per CPU-second of a thread (FLOPs over the thread's own CPU time, best 1-thread run):
 * what a core does while it runs, which other jobs competing for the cores do not lower (they
 * lower the wall-clock rates above).
 *
 * Each thread runs independent chains of 16-wide FMAs (AVX-512 F, when the CPU has it: the peak
 * of libldm's "avx512" kernel family), 8-wide FMAs (AVX2+FMA, when the CPU has them), 8-wide
 * multiplies and adds (AVX without FMA: the peak of an AVX2-only CPU, which libldm's "avx2"
 * kernel family targets) or 4-wide multiply-adds (any other CPU), enough chains to hide the
 * latency, and counts 2 FLOPs per lane and multiply-add. --isa picks one of those the CPU has
 * (default: the first). The result is what the core can issue, not what memory can feed. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PEAK_X86 1
#endif

enum { CHAINS = 12, INNER = 1000 };

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#ifdef PEAK_X86
/* 12 independent accumulators: two FMA pipes x latency 4-5 need at least 8-10 in flight. */
__attribute__((target("avx2,fma"))) static double fma_chains_avx2(long rounds, float *sink)
{
    __m256 acc[CHAINS];
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_set1_ps(0.001f * (float)c);
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (long r = 0; r < rounds; r++)
        for (int i = 0; i < INNER; i++) {
            /* unrolled by hand so the accumulators stay in registers at any -O level */
#pragma GCC unroll 12
            for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
        }
    __m256 s = acc[0];
    for (int c = 1; c < CHAINS; c++) s = _mm256_add_ps(s, acc[c]);
    float out[8];
    _mm256_storeu_ps(out, s);
    *sink = out[0];
    return (double)rounds * INNER * CHAINS * 8 * 2;
}

/* 16-wide FMAs on zmm registers (AVX-512 F; 32 registers, so 12 chains still fit). Never run on
 * the machine this was written on (no AVX-512): it measures the AVX-512 peak where it exists. */
__attribute__((target("avx512f"))) static double fma_chains_avx512(long rounds, float *sink)
{
    __m512 acc[CHAINS];
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_ps(0.001f * (float)c);
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (long r = 0; r < rounds; r++)
        for (int i = 0; i < INNER; i++) {
#pragma GCC unroll 12
            for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
        }
    __m512 s = acc[0];
    for (int c = 1; c < CHAINS; c++) s = _mm512_add_ps(s, acc[c]);
    float out[16];
    _mm512_storeu_ps(out, s);
    *sink = out[0];
    return (double)rounds * INNER * CHAINS * 16 * 2;
}

/* The same with a separate multiply and add (no FMA): two instructions, 2 FLOPs per lane. */
__attribute__((target("avx"))) static double muladd_chains_avx(long rounds, float *sink)
{
    __m256 acc[CHAINS];
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_set1_ps(0.001f * (float)c);
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (long r = 0; r < rounds; r++)
        for (int i = 0; i < INNER; i++) {
#pragma GCC unroll 12
            for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_add_ps(_mm256_mul_ps(acc[c], a), b);
        }
    __m256 s = acc[0];
    for (int c = 1; c < CHAINS; c++) s = _mm256_add_ps(s, acc[c]);
    float out[8];
    _mm256_storeu_ps(out, s);
    *sink = out[0];
    return (double)rounds * INNER * CHAINS * 8 * 2;
}
#endif

static double madd_chains_generic(long rounds, float *sink)
{
    float acc[CHAINS][4];
    for (int c = 0; c < CHAINS; c++)
        for (int l = 0; l < 4; l++) acc[c][l] = 0.001f * (float)(c + l);
    for (long r = 0; r < rounds; r++)
        for (int i = 0; i < INNER; i++) {
#pragma GCC unroll 12
            for (int c = 0; c < CHAINS; c++)
#pragma GCC unroll 4
                for (int l = 0; l < 4; l++) acc[c][l] = acc[c][l] * 0.999999f + 1e-7f;
        }
    float s = 0;
    for (int c = 0; c < CHAINS; c++)
        for (int l = 0; l < 4; l++) s += acc[c][l];
    *sink = s;
    return (double)rounds * INNER * CHAINS * 4 * 2;
}

enum { ISA_GENERIC, ISA_AVX, ISA_FMA, ISA_AVX512, N_ISA };
static const char *const isa_names[] = {"generic", "avx", "fma", "avx512"};
static int isa = -1; /* chosen in main */

/* The best the CPU has: AVX-512 F (with the OS saving its registers, which the builtin checks),
 * AVX2+FMA, AVX, or the generic code. */
static int best_isa(void)
{
#ifdef PEAK_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) return ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return ISA_FMA;
    if (__builtin_cpu_supports("avx")) return ISA_AVX;
#endif
    return ISA_GENERIC;
}

typedef struct {
    double seconds, flops, elapsed, cpu;
    float sink;
} worker;

static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *run_worker(void *arg)
{
    worker *w = arg;
    long rounds = 64;
    double t0 = now(), c0 = thread_cpu(), flops = 0;
    do {
#ifdef PEAK_X86
        flops += isa == ISA_AVX512 ? fma_chains_avx512(rounds, &w->sink)
                 : isa == ISA_FMA  ? fma_chains_avx2(rounds, &w->sink)
                 : isa == ISA_AVX ? muladd_chains_avx(rounds, &w->sink)
                                  : madd_chains_generic(rounds, &w->sink);
#else
        flops += madd_chains_generic(rounds, &w->sink);
#endif
    } while (now() - t0 < w->seconds);
    w->flops = flops;
    w->elapsed = now() - t0;
    w->cpu = thread_cpu() - c0;
    return NULL;
}

/* GFLOP/s of n threads running at once (the sum of each thread's own rate); *per_cpu: the best
 * thread's GFLOP per second of its own CPU time. */
static double measure(int n, double seconds, double *per_cpu)
{
    pthread_t tid[256];
    worker w[256];
    double total = 0;
    for (int i = 0; i < n; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].seconds = seconds;
        if (pthread_create(&tid[i], NULL, run_worker, &w[i]) != 0) {
            fprintf(stderr, "peak: cannot start thread %d\n", i + 1);
            exit(1);
        }
    }
    for (int i = 0; i < n; i++) {
        pthread_join(tid[i], NULL);
        total += w[i].flops / w[i].elapsed;
        if (w[i].cpu > 0 && w[i].flops / w[i].cpu * 1e-9 > *per_cpu) *per_cpu = w[i].flops / w[i].cpu * 1e-9;
    }
    return total * 1e-9;
}

int main(int argc, char **argv)
{
    double seconds = 1.0;
    int n = 0;
    const char *want = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
            seconds = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            n = atoi(argv[++i]);
            if (n < 1 || n > 256) {
                fprintf(stderr, "peak: --threads must be in 1 .. 256\n");
                return 2;
            }
        } else if (!strcmp(argv[i], "--isa") && i + 1 < argc) {
            want = argv[++i];
        } else {
            fprintf(stderr, "usage: peak [--seconds S] [--threads N] [--isa avx512|fma|avx|generic]\n");
            return 2;
        }
    }
    isa = best_isa();
    if (want) {
        int w = -1;
        for (int k = 0; k < N_ISA; k++)
            if (!strcmp(want, isa_names[k])) w = k;
        if (w < 0 || w > isa) {
            fprintf(stderr, "peak: --isa %s: %s\n", want, w < 0 ? "expected avx512, fma, avx or generic" : "this CPU lacks it");
            return 2;
        }
        isa = w;
    }
    if (!(seconds > 0 && seconds <= 60)) {
        fprintf(stderr, "peak: --seconds must be in (0, 60]\n");
        return 2;
    }
    if (n == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n = cpus < 1 ? 1 : cpus > 256 ? 256 : (int)cpus;
    }
    static const char *const isa_text[] = {"generic C, 4 lanes", "AVX multiply + add, no FMA, 8 lanes",
                                           "AVX2+FMA, 8 lanes", "AVX-512 FMA, 16 lanes"};
    printf("FMA peak (%s, single precision, best of 3 runs of %.1f s)\n", isa_text[isa], seconds);
    int counts[2] = {1, n};
    double per_cpu = 0;
    for (int k = 0; k < (n > 1 ? 2 : 1); k++) {
        double best = 0, ignored = 0;
        for (int r = 0; r < 3; r++) {
            double g = measure(counts[k], seconds, k == 0 ? &per_cpu : &ignored);
            if (g > best) best = g;
        }
        printf("  %d thread%s: %8.1f GFLOP/s\n", counts[k], counts[k] > 1 ? "s" : " ", best);
    }
    printf("  per CPU-second of a thread: %8.1f GFLOP/s\n", per_cpu);
    return 0;
}
