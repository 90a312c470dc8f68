/* run.c - what each `ldm` subcommand does, on top of the public API only. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

static ldm_model *volatile running_model;

/* Ctrl-C: ask the library to stop; it returns LDM_CANCELLED at the next check. A second Ctrl-C
 * kills the process as usual. */
static void on_sigint(int sig)
{
    (void)sig;
    if (running_model) ldm_model_interrupt(running_model);
    signal(SIGINT, SIG_DFL);
}

/* Prints the library's message, prefixed with `what` unless it already names it. */
static int fail(const char *what)
{
    const char *msg = ldm_last_error();
    if (strstr(msg, what))
        fprintf(stderr, "ldm: %s\n", msg);
    else
        fprintf(stderr, "ldm: %s: %s\n", what, msg);
    return 1;
}

/* Warnings only: errors come back as status codes and are printed once by fail(). */
static void log_to_stderr(ldm_log_level level, const char *message, void *user)
{
    (void)user;
    if (level == LDM_LOG_WARN) fprintf(stderr, "ldm: warning: %s\n", message);
}

static ldm_status load_model(const cli_options *o, ldm_model **m)
{
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.config_path = o->config;
    mp.vocab_path = o->vocab;
    mp.n_threads = o->threads;
    mp.weights = !strcmp(o->weights, "ema")   ? LDM_WEIGHTS_EMA
                 : !strcmp(o->weights, "raw") ? LDM_WEIGHTS_RAW
                                              : LDM_WEIGHTS_AUTO;
    mp.log_callback = log_to_stderr;
    if (o->model) return ldm_model_load(o->model, &mp, m);
    fprintf(stderr, "ldm: no --model given: using the built-in demo model. It is UNTRAINED (seeded random\n"
                    "     weights), so its output is noise-like; it shows the tool works without a download.\n"
                    "     For real images point --model at a checkpoint, e.g.\n"
                    "       ldm generate --model v1-5-pruned-emaonly.safetensors --prompt \"a red fox\" -o fox.png\n");
    return ldm_model_load_builtin("demo", 0, &mp, m);
}

static char *read_text_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && n < (1 << 24) && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1))) {
            *len = fread(buf, 1, (size_t)n, f);
            buf[*len] = '\0';
        }
    }
    fclose(f);
    return buf;
}

/* Images and maps named on the command line. Returns non-zero after printing the problem. */
static int load_inputs(const cli_options *o, ldm_generate_params *p, ldm_tensor **owned)
{
    int upscale = !strcmp(o->command, "upscale");
    if (o->init) {
        ldm_tensor *img = NULL;
        if (ldm_image_read_png(o->init, &img) != LDM_OK) return fail(o->init);
        owned[0] = img;
        if (upscale)
            p->cond_image = img;
        else
            p->init_image = img;
    }
    if (o->mask) {
        if (ldm_image_read_png_gray(o->mask, 1, &owned[1]) != LDM_OK) return fail(o->mask);
        p->mask = owned[1];
    }
    if (o->seg) {
        if (ldm_image_read_png_gray(o->seg, 0, &owned[2]) != LDM_OK) return fail(o->seg);
        p->cond_image = owned[2];
    }
    if (o->layout) {
        size_t len = 0;
        char *text = read_text_file(o->layout, &len);
        if (!text) {
            fprintf(stderr, "ldm: %s: cannot read the layout file\n", o->layout);
            return 1;
        }
        ldm_status st = ldm_layout_tokens_from_json(text, len, o->layout_classes, &owned[3]);
        free(text);
        if (st != LDM_OK) return fail(o->layout);
        p->layout_tokens = owned[3];
    }
    return 0;
}

static void fill_params(const cli_options *o, ldm_generate_params *p, cli_progress *bar)
{
    ldm_generate_params_init(p);
    p->prompt = o->prompt;
    p->negative_prompt = o->negative_prompt;
    p->class_label = o->class_label;
    p->width = o->width;
    p->height = o->height;
    p->batch = o->batch;
    p->sampler = (ldm_sampler_kind)cli_sampler_kind(o->sampler_name);
    p->steps = o->steps;
    p->eta = o->eta;
    p->guidance_scale = o->cfg_scale;
    p->seed = o->seed;
    /* inpainting regenerates the hole from pure noise unless --strength says otherwise */
    p->strength = !strcmp(o->command, "inpaint") && !o->strength_given ? 1.0f : o->strength;
    p->vae_tile = o->vae_tile;
    p->progress = cli_progress_callback;
    p->progress_user_data = bar;
}

/* The generation settings as other Stable Diffusion tools store them (PNG tEXt "parameters"). */
static void describe_params(const cli_options *o, const ldm_tensor *image, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "%s", o->prompt ? o->prompt : "");
    if (o->negative_prompt && n >= 0 && (size_t)n < cap)
        n += snprintf(buf + n, cap - (size_t)n, "\nNegative prompt: %s", o->negative_prompt);
    if (n >= 0 && (size_t)n < cap)
        n += snprintf(buf + n, cap - (size_t)n, "\nSteps: %d, Sampler: %s, CFG scale: %g, Seed: %llu, Size: %lldx%lld",
                      o->steps, o->sampler_name, o->cfg_scale, (unsigned long long)o->seed,
                      (long long)ldm_tensor_dim(image, 3), (long long)ldm_tensor_dim(image, 2));
    if (o->class_label >= 0 && n >= 0 && (size_t)n < cap)
        n += snprintf(buf + n, cap - (size_t)n, ", Class: %d", o->class_label);
    if (o->eta != 0.0f && n >= 0 && (size_t)n < cap) n += snprintf(buf + n, cap - (size_t)n, ", Eta: %g", o->eta);
    if (o->init && strcmp(o->command, "upscale") && n >= 0 && (size_t)n < cap)
        n += snprintf(buf + n, cap - (size_t)n, ", Denoising strength: %g", o->strength);
    if (n >= 0 && (size_t)n < cap)
        snprintf(buf + n, cap - (size_t)n, ", Model: %s", o->model ? o->model : "built-in demo (untrained)");
}

static int write_images(const cli_options *o, ldm_tensor *image)
{
    char params[2048], path[4096];
    const char *keys[] = {"parameters", "Software"};
    const char *values[] = {params, "libldm " LDM_VERSION_STRING};
    describe_params(o, image, params, sizeof params);
    int64_t B = ldm_tensor_dim(image, 0), C = ldm_tensor_dim(image, 1), H = ldm_tensor_dim(image, 2),
            W = ldm_tensor_dim(image, 3);
    for (int64_t b = 0; b < B; b++) {
        int64_t shape[4] = {1, C, H, W};
        ldm_tensor *one = NULL;
        if (b == 0)
            snprintf(path, sizeof path, "%s", o->output);
        else {
            const char *dot = strrchr(o->output, '.');
            int stem = dot ? (int)(dot - o->output) : (int)strlen(o->output);
            snprintf(path, sizeof path, "%.*s-%lld%s", stem, o->output, (long long)b, dot ? dot : ".png");
        }
        if (ldm_tensor_wrap(LDM_F32, 4, shape, (float *)ldm_tensor_data(image) + b * C * H * W, &one) != LDM_OK ||
            ldm_image_write_png(path, one, keys, values, 2) != LDM_OK) {
            ldm_tensor_free(one);
            return fail(path);
        }
        ldm_tensor_free(one);
        printf("wrote %s\n", path);
    }
    return 0;
}

static int run_generate(cli_options *o)
{
    ldm_model *m = NULL;
    ldm_tensor *owned[4] = {0}, *image = NULL;
    ldm_generate_params p;
    cli_progress bar;
    int rc = 1;
    if (!o->seed_given) o->seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    cli_progress_init(&bar, o->command, o->quiet);
    fill_params(o, &p, &bar);
    if (load_model(o, &m) != LDM_OK) return fail(o->model ? o->model : "demo model");
    if (load_inputs(o, &p, owned)) goto done;
    running_model = m;
    signal(SIGINT, on_sigint);
    fprintf(stderr, "ldm: seed %llu\n", (unsigned long long)o->seed);
    ldm_status st = ldm_generate(m, &p, &image);
    running_model = NULL;
    signal(SIGINT, SIG_DFL);
    cli_progress_done(&bar);
    if (st == LDM_CANCELLED) {
        fprintf(stderr, "ldm: cancelled\n");
        rc = 130;
        goto done;
    }
    if (st != LDM_OK) {
        fail(o->command);
        goto done;
    }
    rc = write_images(o, image);
done:
    for (int i = 0; i < 4; i++) ldm_tensor_free(owned[i]);
    ldm_tensor_free(image);
    ldm_model_free(m);
    return rc;
}

static int run_info(const cli_options *o)
{
    ldm_model *m = NULL;
    if (!o->model) {
        fprintf(stderr, "ldm: info needs a checkpoint: ldm info MODEL [--config FILE]\n");
        return 2;
    }
    if (load_model(o, &m) != LDM_OK) return fail(o->model);
    printf("%s\n", ldm_model_describe(m));
    ldm_model_free(m);
    return 0;
}

int cli_run(const cli_options *o)
{
    cli_options copy = *o;
    if (!strcmp(o->command, "info")) return run_info(o);
    if (!strcmp(o->command, "generate") || !strcmp(o->command, "img2img") || !strcmp(o->command, "inpaint") ||
        !strcmp(o->command, "upscale")) {
        if (!strcmp(o->command, "img2img") && !o->init) {
            fprintf(stderr, "ldm: img2img needs --init IMAGE.png\n");
            return 2;
        }
        if (!strcmp(o->command, "inpaint") && (!o->init || !o->mask)) {
            fprintf(stderr, "ldm: inpaint needs --init IMAGE.png and --mask MASK.png\n");
            return 2;
        }
        if (!strcmp(o->command, "upscale") && !o->init) {
            fprintf(stderr, "ldm: upscale needs --init LOW_RES.png\n");
            return 2;
        }
        return run_generate(&copy);
    }
    if (!strcmp(o->command, "--version") || !strcmp(o->command, "version")) {
        printf("ldm %s\n", ldm_version());
        return 0;
    }
    if (!strcmp(o->command, "help") || !strcmp(o->command, "--help") || !strcmp(o->command, "-h")) {
        cli_usage(stdout);
        return 0;
    }
    fprintf(stderr, "ldm: unknown command '%s'\n", o->command);
    cli_usage(stderr);
    return 2;
}
