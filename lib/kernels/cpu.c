/* cpu.c - which vector instructions the running CPU has, and which kernel family the kernels'
 * run-time dispatch (simd.h) runs.
 *
 * A kernel family is a row of `families` below: a name, the CPU features it needs and the
 * features its kernels may use (what lk_cpu_has_*() then answer). The rows are in order of
 * preference; adding a family is one row, its feature bits and the kernels that test for it
 * (avx512: the row, the AVX-512 F/BW/VL/DQ bits, and the 16-lane kernels of simd16.h). The family is chosen once, on first use, from the environment variable LDM_CPU:
 *
 *   unset, "" or "auto"   the first row whose needs the CPU meets (generic always qualifies);
 *   a family's name       that family when this build has it and the CPU meets its needs;
 *   anything else         (a family of another architecture, one the CPU lacks, or an unknown
 *                         name) the generic kernels. Nothing is printed: lk_cpu_kernels() and
 *                         `ldm info --cpu` (ldm_cpu_info) report what runs and why.
 *
 * Racing first calls compute the same answer. lk_cpu_reselect() reads LDM_CPU again (tests).
 *
 * A model may ask for a family by name (ldm_model_params.cpu_kernels, lk_cpu_hold). The family is
 * still process-wide (every kernel asks lk_cpu_has_*() at its call, so switching it under a
 * running call would mix families): every live model and trainer holds the family it was created
 * with, a request may switch it only while nothing holds it, and then wins over LDM_CPU until the
 * last holder is gone (the next use chooses from LDM_CPU again). A request the build or the CPU
 * cannot honour, or one that differs from the family live models hold, is an error, not a
 * fallback: the caller asked for those kernels by name. */
#include "simd.h"
#include "simd16.h"

#include "kernels.h"

#include <pthread.h>
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
    F_AVX512F = 1 << 4,    /* with the OS saving the opmask and ZMM state */
    F_AVX512BF16 = 1 << 5, /* avx512_bf16 (VDPBF16PS), on top of F_AVX512F: detected, used by no family */
    F_AVX512BW = 1 << 6,   /* the BW, VL and DQ extensions, on top of F_AVX512F */
    F_AVX512VL = 1 << 7,
    F_AVX512DQ = 1 << 8,
    F_AVX512 = F_AVX512F | F_AVX512BW | F_AVX512VL | F_AVX512DQ, /* what the avx512 family needs */
};

typedef struct lk_family {
    const char *name;
    unsigned needs;  /* features the CPU must have */
    unsigned grants; /* features its kernels may use (F16C: only when detected too) */
} lk_family;

/* In order of preference; the last row (generic) is the fallback and must stay last. */
static const lk_family families[] = {
#ifdef LK_AVX512_KERNELS
    /* the 16-lane kernels (simd16.h; compiled with f16c too, which every AVX-512 CPU has); the
     * AVX2+FMA features are granted so that kernels without a 16-lane version run their AVX2 ones */
    {"avx512", F_AVX512 | F_AVX2 | F_FMA | F_F16C, F_AVX512 | F_AVX2 | F_FMA | F_F16C},
#endif
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
static const char *const foreign[] = {"avx512", "avx2+fma", "avx2", "neon"};
/* Families that are planned but whose kernels are not written (issue #15); avx512 also on x86-64
 * builds by compilers without what its kernels are written with (simd16.h). */
#if defined(LK_DISPATCH) && !defined(LK_AVX512_KERNELS)
static const char *const unwritten[] = {"avx512_bf16", "avx512"};
#else
static const char *const unwritten[] = {"avx512_bf16"};
#endif

static int in_list(const char *name, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(name, list[i])) return 1;
    return 0;
}

#ifdef LK_DISPATCH
/* The OS state-save mask (XCR0); only valid when CPUID says OSXSAVE. */
static unsigned long long xcr0(void)
{
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (unsigned long long)hi << 32 | lo;
}

/* AVX-512 Foundation, BW, VL, DQ and avx512_bf16, each only with the OS saving the XMM, YMM,
 * opmask and both halves of the ZMM registers (XCR0 bits 1, 2, 5, 6, 7). CPUID leaf 7 EBX: F bit
 * 16, DQ 17, BW 30, VL 31. */
static unsigned detect_avx512(void)
{
    unsigned a, b, c, d, f = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE) || (xcr0() & 0xe6) != 0xe6) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b & bit_AVX512F)) return 0;
    f |= F_AVX512F;
    if (b & (1u << 17)) f |= F_AVX512DQ;
    if (b & (1u << 30)) f |= F_AVX512BW;
    if (b & (1u << 31)) f |= F_AVX512VL;
    if (a >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5))) f |= F_AVX512BF16;
    return f;
}
#endif

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
    f |= detect_avx512();
#endif
#ifdef LK_NEON
    f |= F_NEON; /* AdvSIMD is part of the aarch64 base architecture (and of its Linux ABI) */
#endif
    return f;
}

/* Detected features; lk_cpu_pretend_bf16 (tests) adds the avx512_bf16 bits, which no kernel uses. */
static atomic_int known = -1;

static unsigned features(void)
{
    int v = atomic_load_explicit(&known, memory_order_relaxed);
    if (v < 0) {
        v = (int)detect();
        atomic_store_explicit(&known, v, memory_order_relaxed);
    }
    return (unsigned)v;
}

void lk_cpu_pretend_bf16(int on)
{
    unsigned f = detect();
    atomic_store_explicit(&known, (int)(on ? f | F_AVX512F | F_AVX512BF16 : f), memory_order_relaxed);
}

/* Why the family was chosen, for ldm_cpu_info. */
enum { WHY_AUTO, WHY_FORCED, WHY_UNSUPPORTED, WHY_FOREIGN, WHY_UNKNOWN, WHY_UNWRITTEN, WHY_MODEL };

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
    if (in_list(req, foreign, sizeof foreign / sizeof foreign[0])) return (int)(N_FAMILIES - 1) | WHY_FOREIGN << 8;
    if (in_list(req, unwritten, sizeof unwritten / sizeof unwritten[0]))
        return (int)(N_FAMILIES - 1) | WHY_UNWRITTEN << 8;
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

/* ---- holds: live models and trainers, and the family a model asked for */

static pthread_mutex_t hold_lock = PTHREAD_MUTEX_INITIALIZER;
static int holders;        /* live models and trainers */
static char requested[32]; /* the family a live model asked for by name, "" when none */

static int family_row(const char *name)
{
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (!strcmp(name, families[i].name)) return (int)i;
    return -1;
}

static void list_families(char *buf, size_t size, int runnable_only)
{
    size_t n = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < N_FAMILIES && n < size; i++)
        if (!runnable_only || (families[i].needs & features()) == families[i].needs)
            n += (size_t)snprintf(buf + n, size - n, "%s%s", n ? " " : "", families[i].name);
}

static void describe_features(char *buf, size_t size);
static void describe_bits(unsigned f, char *buf, size_t size);

/* Why `name` cannot run here, as an error; LDM_OK when it can (row in *row). */
static ldm_status check_request(const char *name, int *row)
{
    char built[160], feat[160];
    list_families(built, sizeof built, 0);
    *row = family_row(name);
    if (*row >= 0) {
        unsigned missing = families[*row].needs & ~features();
        if (!missing) return LDM_OK;
        char lacks[160];
        describe_features(feat, sizeof feat);
        describe_bits(missing, lacks, sizeof lacks);
        return ldm_fail(LDM_ERR_UNSUPPORTED, "ldm_model_params.cpu_kernels \"%s\": this CPU lacks %s (it has: %s)", name,
                        lacks, feat);
    }
    if (in_list(name, unwritten, sizeof unwritten / sizeof unwritten[0])) {
        describe_features(feat, sizeof feat);
        return ldm_fail(LDM_ERR_UNSUPPORTED,
                        "ldm_model_params.cpu_kernels \"%s\": no %s kernels are written yet (this build has: %s; "
                        "this CPU has: %s)", name, name, built, feat);
    }
    if (in_list(name, foreign, sizeof foreign / sizeof foreign[0]))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "ldm_model_params.cpu_kernels \"%s\": not built for this architecture "
                                             "(this build has: %s)", name, built);
    return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_params.cpu_kernels \"%s\": unknown kernel family (this build "
                                              "has: %s, or \"auto\")", name, built);
}

ldm_status lk_cpu_hold(const char *request)
{
    int auto_req = !request || !*request || !strcmp(request, "auto"), row = -1;
    if (!auto_req) LDM_TRY(check_request(request, &row));
    pthread_mutex_lock(&hold_lock);
    ldm_status st = LDM_OK;
    if (!auto_req) {
        int current = choice() & 0xff;
        if (holders == 0) {
            atomic_store_explicit(&chosen, row | WHY_MODEL << 8, memory_order_relaxed);
            snprintf(requested, sizeof requested, "%s", request);
        } else if (current != row) {
            st = ldm_fail(LDM_ERR_UNSUPPORTED,
                          "ldm_model_params.cpu_kernels \"%s\": the kernel family is process-wide and %d live "
                          "model(s) or trainer(s) use \"%s\"; free them first, or ask for \"%s\" or \"auto\"",
                          request, holders, families[current].name, families[current].name);
        } else if (!requested[0]) {
            snprintf(requested, sizeof requested, "%s", request);
            atomic_store_explicit(&chosen, row | WHY_MODEL << 8, memory_order_relaxed);
        }
    }
    if (st == LDM_OK) holders++;
    pthread_mutex_unlock(&hold_lock);
    return st;
}

void lk_cpu_release(void)
{
    pthread_mutex_lock(&hold_lock);
    if (holders > 0 && --holders == 0 && requested[0]) {
        requested[0] = '\0';
        atomic_store_explicit(&chosen, -1, memory_order_relaxed); /* LDM_CPU decides again on next use */
    }
    pthread_mutex_unlock(&hold_lock);
}

ldm_status lk_cpu_check_bf16(void)
{
    char feat[160];
    describe_features(feat, sizeof feat);
    if (!(features() & F_AVX512BF16))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "ldm_model_params.compute = LDM_COMPUTE_BF16 needs a CPU with avx512_bf16 "
                                             "(AVX-512 BF16); this CPU has: %s", feat);
    return ldm_fail(LDM_ERR_UNSUPPORTED, "ldm_model_params.compute = LDM_COMPUTE_BF16: this CPU has avx512_bf16, but "
                                         "libldm's bf16 kernels are not written yet (issue #15); use LDM_COMPUTE_F32");
}

static int granted(unsigned f) { return (family()->grants & features() & f) == f; }

#ifdef LK_DISPATCH
int lk_cpu_has_avx2(void) { return granted(F_AVX2); }
int lk_cpu_has_avx2_fma(void) { return granted(F_AVX2 | F_FMA); }
int lk_cpu_has_f16c(void) { return granted(F_F16C); }
#endif
#ifdef LK_NEON
int lk_cpu_has_neon(void) { return granted(F_NEON); }
#endif

/* ---- the 16-lane kernels' instances (simd16.h) */

static atomic_int avx512_test; /* tests asked for the AVX2-compiled test instances */
static atomic_long avx512_test_calls;

void lk_cpu_avx512_test_instances(int on) { atomic_store_explicit(&avx512_test, on, memory_order_relaxed); }

long lk_cpu_avx512_test_calls(void) { return atomic_load_explicit(&avx512_test_calls, memory_order_relaxed); }

#ifdef LK_AVX512_KERNELS
int lk_cpu_avx512_mode(void)
{
    if (granted(F_AVX512 | F_AVX2 | F_FMA | F_F16C)) return 1;
    if (atomic_load_explicit(&avx512_test, memory_order_relaxed) && granted(F_AVX2 | F_FMA | F_F16C)) return 2;
    return 0;
}

void lk_cpu_avx512_test_ran(void) { atomic_fetch_add_explicit(&avx512_test_calls, 1, memory_order_relaxed); }
#endif

int lk_cpu_family_supported(const char *name)
{
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (!strcmp(name, families[i].name)) return (families[i].needs & features()) == families[i].needs;
    return 0;
}

/* "avx2 fma f16c", "neon (asimd fp16 ...)" or "none": what detect() found, plus on aarch64
 * Linux the hardware capabilities the kernel reports that matter to float kernels. */
static const struct {
    unsigned bit;
    const char *name;
} feature_names[] = {/* avx512_bf16 right after avx512f: the order ldm_cpu_info has always printed them in */
                     {F_AVX2, "avx2"},         {F_FMA, "fma"},           {F_F16C, "f16c"},
                     {F_NEON, "neon"},         {F_AVX512F, "avx512f"},   {F_AVX512BF16, "avx512_bf16"},
                     {F_AVX512BW, "avx512bw"}, {F_AVX512VL, "avx512vl"}, {F_AVX512DQ, "avx512dq"}};

/* The names of the feature bits f, space-separated ("" when none). */
static void describe_bits(unsigned f, char *buf, size_t size)
{
    size_t n = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof feature_names / sizeof feature_names[0]; i++)
        if (f & feature_names[i].bit)
            n += (size_t)snprintf(buf + n, n < size ? size - n : 0, "%s%s", n ? " " : "", feature_names[i].name);
}

static void describe_features(char *buf, size_t size)
{
    describe_bits(features(), buf, size);
    size_t n = strlen(buf);
#define ADD(...) (n += (size_t)snprintf(buf + n, n < size ? size - n : 0, __VA_ARGS__))
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
    char feat[160], fams[160];
    describe_features(feat, sizeof feat);
    list_families(fams, sizeof fams, 1);
    pthread_mutex_lock(&hold_lock); /* `requested` */
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
    case WHY_UNWRITTEN:
        snprintf(why, sizeof why, "LDM_CPU=%.64s: no %.64s kernels are written yet, generic runs", req, req);
        break;
    case WHY_MODEL:
        snprintf(why, sizeof why, "ldm_model_params.cpu_kernels=%s of a live model, held until no model or trainer is live",
                 requested);
        break;
    default: snprintf(why, sizeof why, "LDM_CPU=%.64s: unknown family, generic runs", req); break;
    }
    pthread_mutex_unlock(&hold_lock);
    snprintf(text, sizeof text,
             "cpu features: %s\nkernel families available: %s\nkernels: %s (%s)", feat, fams,
             families[v & 0xff].name, why);
    return text;
}
