/* cpu.c - which vector instructions the running CPU has, and which kernel family the kernels'
 * run-time dispatch (simd.h) runs.
 *
 * A kernel family is a row of `families` below: a name, the CPU features it needs and the
 * features its kernels may use (what lk_cpu_has_*() then answer). The rows are in order of
 * preference; adding a family (say avx512) is one row, one feature bit and the kernels that test
 * for it. The family is chosen once, on first use, from the environment variable LDM_CPU:
 *
 *   unset, "" or "auto"   the first row whose needs the CPU meets (generic always qualifies);
 *   a family's name       that family when this build has it and the CPU meets its needs;
 *   anything else         (a family of another architecture, one the CPU lacks, or an unknown
 *                         name) the generic kernels. Nothing is printed: lk_cpu_kernels() and
 *                         `ldm info --cpu` (ldm_cpu_info) report what runs and why.
 *
 * Racing first calls compute the same answer. lk_cpu_reselect() reads LDM_CPU again (tests). */
#include "simd.h"

#include "kernels.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef LK_DISPATCH
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

/* Feature bits, detected (features()) or granted to a family's kernels (lk_cpu_has_*). */
enum {
    F_AVX2 = 1 << 0,
    F_FMA = 1 << 1,
    F_F16C = 1 << 2, /* F16C with AVX enabled by the OS */
    F_NEON = 1 << 3, /* AdvSIMD with fused multiply-add and half conversion: every aarch64 CPU */
};

typedef struct lk_family {
    const char *name;
    unsigned needs;  /* features the CPU must have */
    unsigned grants; /* features its kernels may use (F16C: only when detected too) */
} lk_family;

/* In order of preference; the last row (generic) is the fallback and must stay last. */
static const lk_family families[] = {
#ifdef LK_DISPATCH
    {"avx2+fma", F_AVX2 | F_FMA, F_AVX2 | F_FMA | F_F16C},
    {"avx2", F_AVX2, F_AVX2 | F_F16C},
#endif
#ifdef LK_NEON
    {"neon", F_NEON, F_NEON},
#endif
    {"generic", 0, 0},
};
#define N_FAMILIES (sizeof families / sizeof families[0])

/* Names LDM_CPU may give that belong to other architectures' builds (reported as such). */
static const char *const foreign[] = {"avx2+fma", "avx2", "neon"};

static unsigned detect(void)
{
    unsigned f = 0;
#ifdef LK_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) f |= F_AVX2;
    if (__builtin_cpu_supports("fma")) f |= F_FMA;
    /* F16C read from cpuid leaf 1 directly: clang 14's __builtin_cpu_supports does not know
     * "f16c". OSXSAVE says the OS saves the AVX registers. */
    unsigned a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) && (c & bit_AVX) && (c & bit_OSXSAVE)) f |= F_F16C;
#endif
#ifdef LK_NEON
    f |= F_NEON; /* AdvSIMD is part of the aarch64 base architecture (and of its Linux ABI) */
#endif
    return f;
}

static unsigned features(void)
{
    static atomic_int known = -1;
    int v = atomic_load_explicit(&known, memory_order_relaxed);
    if (v < 0) {
        v = (int)detect();
        atomic_store_explicit(&known, v, memory_order_relaxed);
    }
    return (unsigned)v;
}

/* Why the family was chosen, for ldm_cpu_info. */
enum { WHY_AUTO, WHY_FORCED, WHY_UNSUPPORTED, WHY_FOREIGN, WHY_UNKNOWN };

/* The chosen row (low 8 bits) and the reason (next bits); -1 until chosen. */
static atomic_int chosen = -1;

static int choose(void)
{
    const char *req = getenv("LDM_CPU");
    unsigned have = features();
    size_t auto_row = N_FAMILIES - 1;
    for (size_t i = 0; i < N_FAMILIES; i++)
        if ((families[i].needs & have) == families[i].needs) {
            auto_row = i;
            break;
        }
    if (!req || !*req || !strcmp(req, "auto")) return (int)auto_row | WHY_AUTO << 8;
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (!strcmp(req, families[i].name))
            return (families[i].needs & have) == families[i].needs ? (int)i | WHY_FORCED << 8
                                                                    : (int)(N_FAMILIES - 1) | WHY_UNSUPPORTED << 8;
    for (size_t i = 0; i < sizeof foreign / sizeof foreign[0]; i++)
        if (!strcmp(req, foreign[i])) return (int)(N_FAMILIES - 1) | WHY_FOREIGN << 8;
    return (int)(N_FAMILIES - 1) | WHY_UNKNOWN << 8;
}

static int choice(void)
{
    int v = atomic_load_explicit(&chosen, memory_order_relaxed);
    if (v < 0) {
        v = choose();
        atomic_store_explicit(&chosen, v, memory_order_relaxed);
    }
    return v;
}

static const lk_family *family(void) { return &families[choice() & 0xff]; }

const char *lk_cpu_kernels(void) { return family()->name; }

void lk_cpu_reselect(void) { atomic_store_explicit(&chosen, choose(), memory_order_relaxed); }

static int granted(unsigned f) { return (family()->grants & features() & f) == f; }

#ifdef LK_DISPATCH
int lk_cpu_has_avx2(void) { return granted(F_AVX2); }
int lk_cpu_has_avx2_fma(void) { return granted(F_AVX2 | F_FMA); }
int lk_cpu_has_f16c(void) { return granted(F_F16C); }
#endif
#ifdef LK_NEON
int lk_cpu_has_neon(void) { return granted(F_NEON); }
#endif

int lk_cpu_family_supported(const char *name)
{
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (!strcmp(name, families[i].name)) return (families[i].needs & features()) == families[i].needs;
    return 0;
}

/* "avx2 fma f16c", "neon (asimd fp16 ...)" or "none": what detect() found, plus on aarch64
 * Linux the hardware capabilities the kernel reports that matter to float kernels. */
static void describe_features(char *buf, size_t size)
{
    unsigned f = features();
    size_t n = 0;
    buf[0] = '\0';
#define ADD(...) (n += (size_t)snprintf(buf + n, n < size ? size - n : 0, __VA_ARGS__))
    if (f & F_AVX2) ADD("%savx2", n ? " " : "");
    if (f & F_FMA) ADD("%sfma", n ? " " : "");
    if (f & F_F16C) ADD("%sf16c", n ? " " : "");
    if (f & F_NEON) ADD("%sneon", n ? " " : "");
#if defined(__aarch64__) && defined(__linux__)
    unsigned long hw = getauxval(AT_HWCAP);
    static const struct {
        unsigned long bit;
        const char *name;
    } caps[] = {{1UL << 1, "asimd"}, {1UL << 9, "fphp"}, {1UL << 10, "asimdhp"},
                {1UL << 20, "asimddp"}, {1UL << 22, "sve"}};
    const char *sep = " (hwcap:";
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++)
        if (hw & caps[i].bit) ADD("%s %s", sep, caps[i].name), sep = "";
    if (!*sep) ADD(")");
#endif
    if (!n) ADD("none");
#undef ADD
}

const char *ldm_cpu_info(void)
{
    static _Thread_local char text[1024]; /* rebuilt on each call: LDM_CPU may be read again */
    char feat[160], fams[160] = "";
    describe_features(feat, sizeof feat);
    size_t n = 0;
    for (size_t i = 0; i < N_FAMILIES && n < sizeof fams; i++)
        if ((families[i].needs & features()) == families[i].needs)
            n += (size_t)snprintf(fams + n, sizeof fams - n, "%s%s", n ? " " : "", families[i].name);
    int v = choice();
    const char *req = getenv("LDM_CPU");
    char why[200];
    switch (v >> 8) {
    case WHY_AUTO: snprintf(why, sizeof why, "auto"); break;
    case WHY_FORCED: snprintf(why, sizeof why, "LDM_CPU=%s", req); break;
    case WHY_UNSUPPORTED: snprintf(why, sizeof why, "LDM_CPU=%.64s: this CPU lacks it, generic runs", req); break;
    case WHY_FOREIGN:
        snprintf(why, sizeof why, "LDM_CPU=%.64s: not built for this architecture, generic runs", req);
        break;
    default: snprintf(why, sizeof why, "LDM_CPU=%.64s: unknown family, generic runs", req); break;
    }
    snprintf(text, sizeof text,
             "cpu features: %s\nkernel families available: %s\nkernels: %s (%s)", feat, fams,
             families[v & 0xff].name, why);
    return text;
}
