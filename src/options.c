/* options.c - command-line parsing for `ldm`. Numbers are parsed strictly: a value out of range,
 * an overflowing one, a sign where none is allowed or any character that is not part of the
 * number is an error naming the option and its range, never clamped or wrapped. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const struct {
    const char *name;
    int kind;
} sampler_kinds[] = {{"ddim", LDM_SAMPLER_DDIM},
                     {"plms", LDM_SAMPLER_PLMS},
                     {"ddpm", LDM_SAMPLER_DDPM},
                     {"euler", LDM_SAMPLER_EULER},
                     {"euler_a", LDM_SAMPLER_EULER_ANCESTRAL},
                     {"heun", LDM_SAMPLER_HEUN},
                     {"dpmpp_2m", LDM_SAMPLER_DPMPP_2M},
                     {"dpmpp_2m_karras", LDM_SAMPLER_DPMPP_2M_KARRAS},
                     {"lcm", LDM_SAMPLER_LCM}};

int cli_sampler_kind(const char *name)
{
    for (size_t i = 0; i < sizeof sampler_kinds / sizeof sampler_kinds[0]; i++)
        if (strcmp(sampler_kinds[i].name, name) == 0) return sampler_kinds[i].kind;
    return -1;
}

const char *cli_sampler_name(int kind)
{
    for (size_t i = 0; i < sizeof sampler_kinds / sizeof sampler_kinds[0]; i++)
        if (sampler_kinds[i].kind == kind) return sampler_kinds[i].name;
    return "?";
}

/* strtol/strtoull/strtof skip leading blanks and accept a sign; the tool accepts neither blanks
 * nor '+', and a '-' only where negative values are valid. */
static int starts_number(const char *v, int allow_minus)
{
    if (allow_minus && *v == '-') v++;
    return isdigit((unsigned char)*v);
}

static int parse_int(const char *opt, const char *v, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long x = starts_number(v, lo < 0) ? strtol(v, &end, 10) : 0;
    if (!starts_number(v, lo < 0) || errno == ERANGE || *end != '\0' || x < lo || x > hi) {
        fprintf(stderr, "ldm: %s expects a whole number from %d to %d, got '%s'\n", opt, lo, hi, v);
        return 2;
    }
    *out = (int)x;
    return 0;
}

static int parse_float(const char *opt, const char *v, float lo, float hi, float *out)
{
    char *end;
    errno = 0;
    float x = starts_number(v, lo < 0) || *v == '.' ? strtof(v, &end) : NAN;
    /* !(x >= lo && x <= hi) also rejects nan and inf; ERANGE an underflow to 0 or denormal */
    if (x != x || errno == ERANGE || *end != '\0' || !(x >= lo && x <= hi)) {
        fprintf(stderr, "ldm: %s expects a number from %g to %g, got '%s'\n", opt, lo, hi, v);
        return 2;
    }
    *out = x;
    return 0;
}

static int parse_seed(const char *v, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long x = starts_number(v, 0) ? strtoull(v, &end, 10) : 0;
    if (!starts_number(v, 0) || errno == ERANGE || *end != '\0') {
        fprintf(stderr, "ldm: --seed expects a whole number from 0 to %llu, got '%s'\n",
                (unsigned long long)UINT64_MAX, v);
        return 2;
    }
    *out = (uint64_t)x;
    return 0;
}

/* SIZE = bytes, or a number with K, M or G (powers of 1024), optionally followed by B or iB. */
static int parse_size(const char *opt, const char *v, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long x = starts_number(v, 0) ? strtoull(v, &end, 10) : 0;
    int ok = starts_number(v, 0) && errno != ERANGE;
    unsigned shift = 0;
    if (ok && *end) {
        const char *units = "KMG", *u = strchr(units, toupper((unsigned char)*end));
        shift = u ? 10u * (unsigned)(u - units + 1) : 0;
        ok = shift && (!strcmp(end + 1, "") || !strcmp(end + 1, "B") || !strcmp(end + 1, "iB"));
    }
    if (!ok || x > (SIZE_MAX >> shift)) {
        fprintf(stderr, "ldm: %s expects bytes or a size with K, M or G, up to %zu bytes (e.g. 4G), got '%s'\n",
                opt, (size_t)SIZE_MAX, v);
        return 2;
    }
    *out = (size_t)(x << shift);
    return 0;
}

/* --uncond-class N | none | auto */
static int parse_uncond(const char *v, int *out)
{
    if (!strcmp(v, "auto")) {
        *out = LDM_UNCOND_CLASS_AUTO;
        return 0;
    }
    if (!strcmp(v, "none")) {
        *out = LDM_UNCOND_CLASS_NONE;
        return 0;
    }
    if (starts_number(v, 0)) return parse_int("--uncond-class", v, 0, INT_MAX, out);
    fprintf(stderr, "ldm: --uncond-class expects a class from 0 to %d, 'none' or 'auto', got '%s'\n", INT_MAX, v);
    return 2;
}

/* --class N or a comma-separated list N,M,... (at most 64): one image per class. */
static int parse_class_list(const char *v, cli_options *o)
{
    char item[32];
    o->n_classes = 0;
    for (const char *s = v;;) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        if (len == 0 || len >= sizeof item) {
            fprintf(stderr, "ldm: --class expects N or a list N,M,... of classes, got '%s'\n", v);
            return 2;
        }
        if (o->n_classes == (int)(sizeof o->classes / sizeof o->classes[0])) {
            fprintf(stderr, "ldm: --class: at most %d classes\n", (int)(sizeof o->classes / sizeof o->classes[0]));
            return 2;
        }
        memcpy(item, s, len);
        item[len] = 0;
        int r = parse_int("--class", item, 0, INT_MAX, &o->classes[o->n_classes]);
        if (r) return r;
        o->n_classes++;
        if (!comma) break;
        s = comma + 1;
    }
    o->class_label = o->classes[0];
    return 0;
}

static void defaults(cli_options *o)
{
    memset(o, 0, sizeof *o);
    o->class_label = -1;
    o->uncond_class = LDM_UNCOND_CLASS_AUTO;
    o->steps = 0; /* the sampler's default: 4 for lcm, 1 with --turbo, else 50 */
    o->batch = 1;
    o->cfg_scale = 0.0f; /* the model's default, see ldm_generate_params.guidance_scale */
    o->strength = 0.75f;
    o->sampler_name = NULL; /* ddim, euler_a with --turbo */
    o->spacing_name = NULL; /* default, trailing with --turbo */
    o->weights = "auto";
    o->compute = "f32";
    o->output = "out.png";
    o->layout_classes = 300;
    o->preview_every = 1;
    o->refiner_start = 0.8f;
}

static const struct {
    const char *name;
    size_t offset;
} string_options[] = {
    {"--model", offsetof(cli_options, model)},
    {"--config", offsetof(cli_options, config)},
    {"--vocab", offsetof(cli_options, vocab)},
    {"--output", offsetof(cli_options, output)},
    {"-o", offsetof(cli_options, output)},
    {"--prompt", offsetof(cli_options, prompt)},
    {"--negative-prompt", offsetof(cli_options, negative_prompt)},
    {"--init", offsetof(cli_options, init)},
    {"--image", offsetof(cli_options, init)},
    {"--mask", offsetof(cli_options, mask)},
    {"--seg", offsetof(cli_options, seg)},
    {"--layout", offsetof(cli_options, layout)},
    {"--sampler", offsetof(cli_options, sampler_name)},
    {"--spacing", offsetof(cli_options, spacing_name)},
    {"--weights", offsetof(cli_options, weights)},
    {"--taesd", offsetof(cli_options, taesd)},
    {"--taesd-encoder", offsetof(cli_options, taesd_encoder)},
    {"--vae", offsetof(cli_options, vae)},
    {"--preview", offsetof(cli_options, preview)},
    {"--refiner", offsetof(cli_options, refiner)},
    {"--refiner-config", offsetof(cli_options, refiner_config)},
    {"--cpu", offsetof(cli_options, cpu_kernels)},
    {"--compute", offsetof(cli_options, compute)},
};

static const char *const parsed_options[] = {
    "--class",     "--uncond-class", "--steps", "--width",    "--height", "--batch",     "--threads", "--vae-tile",
    "--layout-classes", "--cfg-scale", "--eta", "--strength", "--seed",   "--max-memory", "--lcm-original-steps",
    "--lora", "--preview-every", "--refiner-start"};

/* The options whose value is a number (or a keyword); returns 0 handled, 1 not one of them,
 * 2 a bad value. */
static int parsed_option(cli_options *o, const char *opt, const char *v)
{
    if (!strcmp(opt, "--class")) return parse_class_list(v, o);
    if (!strcmp(opt, "--lora")) {
        if (o->n_loras == (int)(sizeof o->loras / sizeof o->loras[0])) {
            fprintf(stderr, "ldm: at most %d --lora options\n", o->n_loras);
            return 2;
        }
        o->loras[o->n_loras++] = v;
        return 0;
    }
    if (!strcmp(opt, "--uncond-class")) return parse_uncond(v, &o->uncond_class);
    if (!strcmp(opt, "--steps")) return parse_int(opt, v, 1, 10000, &o->steps);
    if (!strcmp(opt, "--width")) return parse_int(opt, v, 8, 16384, &o->width);
    if (!strcmp(opt, "--height")) return parse_int(opt, v, 8, 16384, &o->height);
    if (!strcmp(opt, "--batch")) return parse_int(opt, v, 1, 64, &o->batch);
    if (!strcmp(opt, "--threads")) return parse_int(opt, v, 0, 1024, &o->threads);
    if (!strcmp(opt, "--vae-tile")) return parse_int(opt, v, -1, 4096, &o->vae_tile);
    if (!strcmp(opt, "--preview-every")) return parse_int(opt, v, 1, 10000, &o->preview_every);
    if (!strcmp(opt, "--layout-classes")) return parse_int(opt, v, 1, 8192, &o->layout_classes);
    if (!strcmp(opt, "--cfg-scale")) return parse_float(opt, v, 0.0f, 100.0f, &o->cfg_scale);
    if (!strcmp(opt, "--eta")) return parse_float(opt, v, 0.0f, 10.0f, &o->eta);
    if (!strcmp(opt, "--max-memory")) return parse_size(opt, v, &o->max_memory);
    if (!strcmp(opt, "--lcm-original-steps")) return parse_int(opt, v, 1, 10000, &o->lcm_original_steps);
    if (!strcmp(opt, "--refiner-start")) return parse_float(opt, v, 0.0f, 1.0f, &o->refiner_start);
    if (!strcmp(opt, "--strength")) {
        o->strength_given = 1;
        return parse_float(opt, v, 0.001f, 1.0f, &o->strength);
    }
    if (!strcmp(opt, "--seed")) {
        o->seed_given = 1;
        return parse_seed(v, &o->seed);
    }
    return 1;
}

/* One option with a value; returns 0 handled, 1 not an option of this kind, 2 error, 3 a known
 * option given without its value (v NULL). */
static int value_option(cli_options *o, const char *opt, const char *v)
{
    for (size_t i = 0; i < sizeof string_options / sizeof string_options[0]; i++)
        if (strcmp(opt, string_options[i].name) == 0) {
            if (!v) return 3;
            *(const char **)((char *)o + string_options[i].offset) = v;
            return 0;
        }
    if (!v) {
        for (size_t i = 0; i < sizeof parsed_options / sizeof parsed_options[0]; i++)
            if (strcmp(opt, parsed_options[i]) == 0) return 3;
        return 1;
    }
    return parsed_option(o, opt, v);
}

/* Options without a value; returns 1 when `a` was one. */
static int flag_option(cli_options *o, const char *a)
{
    if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
        o->quiet = 1;
        return 1;
    }
    if (!strcmp(a, "--turbo")) {
        o->turbo = 1;
        return 1;
    }
    if (!strcmp(a, "--plain-prompt")) {
        o->plain_prompt = 1;
        return 1;
    }
    if (!strcmp(a, "--low-memory")) {
        /* The library reads the mode from the environment (docs/performance.md). */
        setenv("LDM_LOW_MEMORY", "1", 1);
        return 1;
    }
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
        if (cli_command_usage(stdout, o->command) < 0) cli_usage(stdout);
        exit(0);
    }
    return 0;
}

static int is_help(const char *a) { return !strcmp(a, "help") || !strcmp(a, "--help") || !strcmp(a, "-h"); }

/* `ldm help [COMMAND]`, `ldm --help [COMMAND]`: exits. */
static void help_command(int argc, char **argv)
{
    if (argc > 2 && cli_command_usage(stdout, argv[2]) < 0) {
        fprintf(stderr, "ldm: no help for '%s': not a command\n\n", argv[2]);
        cli_usage(stderr);
        exit(2);
    }
    if (argc <= 2) cli_usage(stdout);
    exit(0);
}

/* --turbo: how the SD-Turbo / SDXL-Turbo model cards sample (docs/few-step.md): Euler ancestral
 * over trailing timesteps, 1 step, guidance off; each of these only where not given explicitly. */
static void apply_presets(cli_options *o)
{
    if (!o->sampler_name) o->sampler_name = o->turbo ? "euler_a" : "ddim";
    if (!o->spacing_name) o->spacing_name = o->turbo ? "trailing" : "default";
    if (o->turbo && o->steps == 0) o->steps = 1;
    if (o->turbo && o->cfg_scale == 0.0f) o->cfg_scale = 1.0f;
}

static int check_names(cli_options *o)
{
    apply_presets(o);
    if (cli_sampler_kind(o->sampler_name) < 0) {
        fprintf(stderr,
                "ldm: unknown sampler '%s' (ddim, plms, ddpm, euler, euler_a, heun, dpmpp_2m, dpmpp_2m_karras, lcm)\n",
                o->sampler_name);
        return 2;
    }
    if (strcmp(o->spacing_name, "default") && strcmp(o->spacing_name, "trailing")) {
        fprintf(stderr, "ldm: --spacing must be default or trailing, got '%s'\n", o->spacing_name);
        return 2;
    }
    if (strcmp(o->weights, "auto") && strcmp(o->weights, "ema") && strcmp(o->weights, "raw")) {
        fprintf(stderr, "ldm: --weights must be auto, ema or raw, got '%s'\n", o->weights);
        return 2;
    }
    if (o->vae && strcmp(o->vae, "full") && strcmp(o->vae, "tiny")) {
        fprintf(stderr, "ldm: --vae must be full or tiny, got '%s'\n", o->vae);
        return 2;
    }
    if (o->vae && !strcmp(o->vae, "tiny") && !o->taesd && !o->taesd_encoder) {
        fprintf(stderr, "ldm: --vae tiny needs --taesd FILE\n");
        return 2;
    }
    if (strcmp(o->compute, "f32") && strcmp(o->compute, "bf16")) {
        fprintf(stderr, "ldm: --compute must be f32 or bf16, got '%s'\n", o->compute);
        return 2;
    }
    return 0;
}

int cli_parse(int argc, char **argv, cli_options *o)
{
    defaults(o);
    if (argc < 2) {
        cli_usage(stderr);
        return 2;
    }
    o->command = argv[1];
    if (is_help(o->command)) help_command(argc, argv);
    if (!cli_is_command(o->command) && strcmp(o->command, "version") && strcmp(o->command, "--version")) {
        fprintf(stderr, "ldm: unknown command '%s'\n\n", o->command);
        cli_usage(stderr);
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (flag_option(o, a)) continue;
        if (a[0] != '-') {
            if (o->model) {
                fprintf(stderr, "ldm: unexpected argument '%s'\n", a);
                return 2;
            }
            o->model = a; /* `ldm info MODEL` */
            continue;
        }
        int r = value_option(o, a, i + 1 < argc ? argv[i + 1] : NULL);
        if (r == 3) {
            fprintf(stderr, "ldm: option %s needs a value\n", a);
            return 2;
        }
        if (r == 1) {
            fprintf(stderr, "ldm: unknown option '%s'\n\n", a);
            if (cli_command_usage(stderr, o->command) < 0) cli_usage(stderr);
            return 2;
        }
        if (r) return r;
        i++;
    }
    return check_names(o);
}
