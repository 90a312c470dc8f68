/* options.c - command-line parsing for `ldm`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

void cli_usage(FILE *f)
{
    fputs("usage: ldm COMMAND [options]\n"
          "\n"
          "commands:\n"
          "  generate   text/class/unconditional generation; --seg labels.png for semantic synthesis,\n"
          "             --layout boxes.json for layout-to-image\n"
          "  img2img    --init image.png --strength 0.75\n"
          "  inpaint    --init image.png --mask mask.png (white = repaint)\n"
          "  upscale    --init low-res.png (LDM-BSR 4x super-resolution: output = input size x 4)\n"
          "  info       MODEL: architecture, parameter counts and dtypes\n"
          "\n"
          "options:\n"
          "  --model FILE            .safetensors or .ckpt (default: the built-in untrained demo model)\n"
          "  --config FILE           the model's original YAML config (default: detect from the weights)\n"
          "  --vocab PATH            tokenizer vocabulary file or folder (default: $LDM_VOCAB, next to the model)\n"
          "  --prompt TEXT           --negative-prompt TEXT\n"
          "  --class N               class label for class-conditional models (default: unconditional\n"
          "                          samples with cin256-style models' extra class)\n"
          "  --steps N (50)          --sampler ddim|plms|ddpm|euler|euler_a|heun|dpmpp_2m|dpmpp_2m_karras\n"
          "  --cfg-scale F (7.5)     --eta F (0)           --seed N (random, printed)\n"
          "  --width N --height N    output size (default: the model's training size)\n"
          "  --batch N (1)           --strength F (0.75)   --threads N (all cores)\n"
          "  --weights auto|ema|raw  EMA or trained weights (default auto = EMA when present)\n"
          "  --vae-tile N            decode in tiles of N latent pixels (0: automatic, -1: never)\n"
          "  --low-memory            keep little resident: weights dropped after each layer, no scratch\n"
          "                          cache (slower; same as LDM_LOW_MEMORY=1, docs/performance.md)\n"
          "  --layout-classes N      object classes of the layout model's token builder (300)\n"
          "  -o, --output FILE.png   (default out.png; with --batch N also FILE-1.png ... FILE-<N-1>.png)\n"
          "  -q, --quiet             no progress bar\n",
          f);
}

int cli_sampler_kind(const char *name)
{
    static const struct {
        const char *name;
        int kind;
    } kinds[] = {{"ddim", LDM_SAMPLER_DDIM},
                 {"plms", LDM_SAMPLER_PLMS},
                 {"ddpm", LDM_SAMPLER_DDPM},
                 {"euler", LDM_SAMPLER_EULER},
                 {"euler_a", LDM_SAMPLER_EULER_ANCESTRAL},
                 {"heun", LDM_SAMPLER_HEUN},
                 {"dpmpp_2m", LDM_SAMPLER_DPMPP_2M},
                 {"dpmpp_2m_karras", LDM_SAMPLER_DPMPP_2M_KARRAS}};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(kinds[i].name, name) == 0) return kinds[i].kind;
    return -1;
}

static int parse_int(const char *opt, const char *v, int lo, int hi, int *out)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || x < lo || x > hi) {
        fprintf(stderr, "ldm: %s expects a whole number from %d to %d, got '%s'\n", opt, lo, hi, v);
        return 2;
    }
    *out = (int)x;
    return 0;
}

static int parse_float(const char *opt, const char *v, float lo, float hi, float *out)
{
    char *end;
    float x = strtof(v, &end);
    if (*v == '\0' || *end != '\0' || !(x >= lo && x <= hi)) {
        fprintf(stderr, "ldm: %s expects a number from %g to %g, got '%s'\n", opt, lo, hi, v);
        return 2;
    }
    *out = x;
    return 0;
}

static int parse_seed(const char *v, uint64_t *out)
{
    char *end;
    unsigned long long x = strtoull(v, &end, 10);
    if (*v == '\0' || *end != '\0' || *v == '-') {
        fprintf(stderr, "ldm: --seed expects a non-negative whole number, got '%s'\n", v);
        return 2;
    }
    *out = x;
    return 0;
}

static void defaults(cli_options *o)
{
    memset(o, 0, sizeof *o);
    o->class_label = -1;
    o->steps = 50;
    o->batch = 1;
    o->cfg_scale = 7.5f;
    o->strength = 0.75f;
    o->sampler_name = "ddim";
    o->weights = "auto";
    o->output = "out.png";
    o->layout_classes = 300;
}

/* One option with a value; returns 0 handled, 1 not an option of this kind, 2 error, 3 a known
 * option given without its value (v NULL). */
static int value_option(cli_options *o, const char *opt, const char *v)
{
    static const char *const numeric[] = {"--class",     "--steps",   "--width",    "--height",
                                          "--batch",     "--threads", "--vae-tile", "--layout-classes",
                                          "--cfg-scale", "--eta",     "--strength", "--seed"};
    static const struct {
        const char *name;
        size_t offset;
    } strings[] = {
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
        {"--weights", offsetof(cli_options, weights)},
    };
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++)
        if (strcmp(opt, strings[i].name) == 0) {
            if (!v) return 3;
            *(const char **)((char *)o + strings[i].offset) = v;
            return 0;
        }
    if (!v) {
        for (size_t i = 0; i < sizeof numeric / sizeof numeric[0]; i++)
            if (strcmp(opt, numeric[i]) == 0) return 3;
        return 1;
    }
    if (!strcmp(opt, "--class")) return parse_int(opt, v, 0, 1 << 30, &o->class_label);
    if (!strcmp(opt, "--steps")) return parse_int(opt, v, 1, 10000, &o->steps);
    if (!strcmp(opt, "--width")) return parse_int(opt, v, 8, 16384, &o->width);
    if (!strcmp(opt, "--height")) return parse_int(opt, v, 8, 16384, &o->height);
    if (!strcmp(opt, "--batch")) return parse_int(opt, v, 1, 64, &o->batch);
    if (!strcmp(opt, "--threads")) return parse_int(opt, v, 0, 1024, &o->threads);
    if (!strcmp(opt, "--vae-tile")) return parse_int(opt, v, -1, 4096, &o->vae_tile);
    if (!strcmp(opt, "--layout-classes")) return parse_int(opt, v, 1, 8192, &o->layout_classes);
    if (!strcmp(opt, "--cfg-scale")) return parse_float(opt, v, 0.0f, 100.0f, &o->cfg_scale);
    if (!strcmp(opt, "--eta")) return parse_float(opt, v, 0.0f, 10.0f, &o->eta);
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

int cli_parse(int argc, char **argv, cli_options *o)
{
    defaults(o);
    if (argc < 2) {
        cli_usage(stderr);
        return 2;
    }
    o->command = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            o->quiet = 1;
            continue;
        }
        if (!strcmp(a, "--low-memory")) {
            /* The library reads the mode from the environment (docs/performance.md). */
            setenv("LDM_LOW_MEMORY", "1", 1);
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            cli_usage(stdout);
            exit(0);
        }
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
            cli_usage(stderr);
            return 2;
        }
        if (r) return r;
        i++;
    }
    if (cli_sampler_kind(o->sampler_name) < 0) {
        fprintf(stderr,
                "ldm: unknown sampler '%s' (ddim, plms, ddpm, euler, euler_a, heun, dpmpp_2m, dpmpp_2m_karras)\n",
                o->sampler_name);
        return 2;
    }
    if (strcmp(o->weights, "auto") && strcmp(o->weights, "ema") && strcmp(o->weights, "raw")) {
        fprintf(stderr, "ldm: --weights must be auto, ema or raw\n");
        return 2;
    }
    return 0;
}
