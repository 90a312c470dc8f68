/* run.c - what each `ldm` subcommand does, on top of the public API only. */
#include <ctype.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

static ldm_model *volatile running_model;
/* Set by Ctrl-C: the model's flag is cleared when its next call starts, so a Ctrl-C between two
 * images of a batch is remembered here. */
static volatile sig_atomic_t interrupted;

/* Ctrl-C: ask the library to stop; it returns LDM_CANCELLED at the next check. A second Ctrl-C
 * kills the process as usual. */
static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
    if (running_model) ldm_model_interrupt(running_model);
    signal(SIGINT, SIG_DFL);
}

/* The library's messages name ldm_generate_params fields; a tool user knows them as options. */
static const struct {
    const char *api, *cli;
} option_names[] = {{"guidance_scale", "--cfg-scale"},
                    {"uncond_class", "--uncond-class"},
                    {"class_label", "--class"},
                    {"LDM_UNCOND_CLASS_NONE", "none"},
                    {"LDM_UNCOND_CLASS_AUTO", "auto"}};

static int identifier_char(char c) { return c == '_' || isalnum((unsigned char)c); }

/* msg with whole-word field names replaced by the options that set them, into out. */
static void cli_words(const char *msg, char *out, size_t cap)
{
    size_t n = 0;
    for (const char *s = msg; *s && n + 1 < cap;) {
        const char *with = NULL;
        size_t len = 0;
        for (size_t i = 0; i < sizeof option_names / sizeof option_names[0] && !with; i++) {
            len = strlen(option_names[i].api);
            if (!strncmp(s, option_names[i].api, len) && (s == msg || !identifier_char(s[-1])) &&
                !identifier_char(s[len]))
                with = option_names[i].cli;
        }
        if (!with) {
            out[n++] = *s++;
            continue;
        }
        n += (size_t)snprintf(out + n, cap - n, "%s", with);
        if (n >= cap) n = cap - 1;
        s += len;
    }
    out[n] = '\0';
}

/* Prints the library's message, prefixed with `what` unless it already names it. */
static int fail(const char *what)
{
    char msg[4096];
    cli_words(ldm_last_error(), msg, sizeof msg);
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

/* Everything but errors and the requested output goes through here, so -q silences it. */
static void note(const cli_options *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(const cli_options *o, const char *fmt, ...)
{
    if (o->quiet) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

/* --model, else $LDM_MODEL, else the trained built-in glyph model; "builtin:NAME" names a
 * built-in model (ldm_model_load_builtin: glyphs, demo, sd15, sd21-v, cin256-v2). */
static const char *model_name(const cli_options *o)
{
    if (o->model) return o->model;
    const char *env = getenv("LDM_MODEL");
    return env && *env ? env : "builtin:glyphs";
}

/* --lora FILE[:WEIGHT]: the weight is what follows the last ':' when that reads as a number
 * (else the whole argument is the file, weight 1). */
static ldm_status add_loras(const cli_options *o, ldm_model *m)
{
    for (int i = 0; i < o->n_loras; i++) {
        char path[4096];
        double weight = 1.0;
        snprintf(path, sizeof path, "%s", o->loras[i]);
        char *colon = strrchr(path, ':'), *end = NULL;
        if (colon && colon[1]) {
            double w = strtod(colon + 1, &end);
            if (end && *end == 0) {
                weight = w;
                *colon = 0;
            }
        }
        ldm_status st = ldm_model_lora_add(m, path, weight, 0, NULL);
        if (st != LDM_OK) return st;
        note(o, "ldm: LoRA %s merged with weight %g\n", path, weight);
    }
    return LDM_OK;
}

static ldm_status load_model_only(const cli_options *o, ldm_model **m);

static ldm_status load_model(const cli_options *o, ldm_model **m)
{
    ldm_status st = load_model_only(o, m);
    if (st == LDM_OK && (st = add_loras(o, *m)) != LDM_OK) {
        ldm_model_free(*m);
        *m = NULL;
    }
    return st;
}

static ldm_status load_model_only(const cli_options *o, ldm_model **m)
{
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.config_path = o->config;
    mp.vocab_path = o->vocab;
    mp.n_threads = o->threads;
    mp.max_alloc_bytes = o->max_memory;
    mp.cpu_kernels = o->cpu_kernels;
    mp.compute = !strcmp(o->compute, "bf16") ? LDM_COMPUTE_BF16 : LDM_COMPUTE_F32;
    mp.weights = !strcmp(o->weights, "ema")   ? LDM_WEIGHTS_EMA
                 : !strcmp(o->weights, "raw") ? LDM_WEIGHTS_RAW
                                              : LDM_WEIGHTS_AUTO;
    mp.log_callback = o->quiet ? NULL : log_to_stderr;
    const char *name = model_name(o);
    if (strncmp(name, "builtin:", 8) != 0) return ldm_model_load(name, &mp, m);
    if (!o->model) {
        if (!strcmp(name, "builtin:glyphs"))
            note(o, "ldm: no --model given: using the built-in glyph model, trained by libldm itself\n"
                    "     (examples/glyphs/README.md): 62 classes, --class 0-25 = A-Z, 26-51 = a-z, 52-61 = 0-9,\n"
                    "     32x32 pixels. For other images point --model at a checkpoint, e.g.\n"
                    "       ldm generate --model v1-5-pruned-emaonly.safetensors --prompt \"a red fox\" -o fox.png\n");
        else
            note(o, "ldm: no --model given: using %s ($LDM_MODEL)\n", name);
    }
    if (!strcmp(name, "builtin:demo"))
        note(o, "ldm: the built-in demo model is UNTRAINED (seeded random weights), so its output is\n"
                "     noise-like; it shows the tool works without a download.\n");
    return ldm_model_load_builtin(name + 8, 0, &mp, m);
}

/* The library finds a config beside the checkpoint by itself; say which one it took, since a
 * stale YAML next to the weights would otherwise be used silently. */
static void report_config(const cli_options *o, ldm_model *m, FILE *f, const char *prefix)
{
    if (o->quiet || !o->model) return;
    const char *config = ldm_model_config_path(m);
    if (config)
        fprintf(f, "%sconfig: %s\n", prefix, config);
    else
        fprintf(f, "%sconfig: none, architecture detected from tensor names\n", prefix);
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

/* --preview FILE.png: the library's preview image, written (atomically) as it comes. */
static int write_preview(int step, int total, const ldm_tensor *image, void *user_data)
{
    (void)step;
    (void)total;
    if (ldm_image_write_png(user_data, image, NULL, NULL, 0) != LDM_OK)
        fprintf(stderr, "\nldm: preview: %s\n", ldm_last_error()); /* not a reason to stop */
    return 0;
}

/* One image's request: batches run as separate calls of one image each (see run_images). */
static void fill_params(const cli_options *o, ldm_generate_params *p, cli_progress *bar)
{
    ldm_generate_params_init(p);
    p->prompt = o->prompt;
    p->negative_prompt = o->negative_prompt;
    p->plain_prompts = o->plain_prompt;
    p->class_label = o->class_label;
    p->uncond_class = o->uncond_class;
    p->width = o->width;
    p->height = o->height;
    p->batch = 1;
    p->sampler = (ldm_sampler_kind)cli_sampler_kind(o->sampler_name);
    p->steps = o->steps; /* 0: the sampler's default */
    p->timestep_spacing = !strcmp(o->spacing_name, "trailing") ? LDM_SPACING_TRAILING : LDM_SPACING_DEFAULT;
    p->lcm_original_steps = o->lcm_original_steps;
    p->eta = o->eta;
    p->guidance_scale = o->cfg_scale;
    /* inpainting regenerates the hole from pure noise unless --strength says otherwise */
    p->strength = !strcmp(o->command, "inpaint") && !o->strength_given ? 1.0f : o->strength;
    p->vae_tile = o->vae_tile;
    p->vae = o->vae ? (strcmp(o->vae, "tiny") ? LDM_VAE_FULL : LDM_VAE_TINY) : o->taesd ? LDM_VAE_TINY : LDM_VAE_FULL;
    if (o->preview) {
        p->preview = write_preview;
        p->preview_user_data = (void *)o->preview;
        p->preview_every = o->preview_every;
    }
    p->progress = cli_progress_callback;
    p->progress_user_data = bar;
}

/* snprintf at buf + *n, keeping *n within cap (output past it is cut). */
static void append(char *buf, size_t cap, size_t *n, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void append(char *buf, size_t cap, size_t *n, const char *fmt, ...)
{
    if (*n >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf + *n, cap - *n, fmt, ap);
    va_end(ap);
    if (k > 0) *n += (size_t)k < cap - *n ? (size_t)k : cap - *n;
}

/* The generation settings as other Stable Diffusion tools store them (PNG tEXt "parameters"),
 * taken from the resolved params that ran, so model-dependent defaults are written out. */
static void describe_params(const cli_options *o, const ldm_generate_params *r, const ldm_tensor *image, char *buf,
                            size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    append(buf, cap, &n, "%s", o->prompt ? o->prompt : "");
    if (o->negative_prompt) append(buf, cap, &n, "\nNegative prompt: %s", o->negative_prompt);
    append(buf, cap, &n, "\nSteps: %d, Sampler: %s, CFG scale: %g, Seed: %llu, Size: %lldx%lld", r->steps,
           cli_sampler_name(r->sampler), r->guidance_scale, (unsigned long long)r->seed,
           (long long)ldm_tensor_dim(image, 3), (long long)ldm_tensor_dim(image, 2));
    if (r->class_label >= 0) append(buf, cap, &n, ", Class: %d", r->class_label);
    if (r->uncond_class >= 0)
        append(buf, cap, &n, ", Uncond class: %d", r->uncond_class);
    else if (r->class_label >= 0 && r->uncond_class == LDM_UNCOND_CLASS_NONE)
        append(buf, cap, &n, ", Uncond class: none");
    if (r->eta != 0.0f) append(buf, cap, &n, ", Eta: %g", r->eta);
    if (r->timestep_spacing == LDM_SPACING_TRAILING) append(buf, cap, &n, ", Schedule: trailing");
    if (o->init && strcmp(o->command, "upscale")) append(buf, cap, &n, ", Denoising strength: %g", r->strength);
    append(buf, cap, &n, ", Model: %s", model_name(o));
    if (r->vae == LDM_VAE_TINY) append(buf, cap, &n, ", VAE: %s", o->taesd ? o->taesd : o->taesd_encoder);
}

/* Image k of a batch: FILE.png, FILE-1.png, ... */
static void output_path(const cli_options *o, int k, char *path, size_t cap)
{
    if (k == 0) {
        snprintf(path, cap, "%s", o->output);
        return;
    }
    const char *dot = strrchr(o->output, '.'), *slash = strrchr(o->output, '/');
    if (dot && slash && dot < slash) dot = NULL; /* a dot in a folder name */
    int stem = dot ? (int)(dot - o->output) : (int)strlen(o->output);
    snprintf(path, cap, "%.*s-%d%s", stem, o->output, k, dot ? dot : ".png");
}

static int write_image(const cli_options *o, const ldm_generate_params *r, const ldm_tensor *image, int k)
{
    char params[2048], path[4096];
    const char *keys[] = {"parameters", "Software"};
    const char *values[] = {params, "libldm " LDM_VERSION_STRING};
    describe_params(o, r, image, params, sizeof params);
    output_path(o, k, path, sizeof path);
    if (ldm_image_write_png(path, image, keys, values, 2) != LDM_OK) return fail(path);
    if (!o->quiet) printf("wrote %s\n", path);
    return 0;
}

/* Image k of the batch, alone with seed + k: the library draws a batch's noise as one tensor, so
 * image k of a batched call could not be re-made by itself; one call per image can. The params
 * that ran go to *r (recorded in the PNG). */
static int generate_image(const cli_options *o, ldm_model *m, ldm_generate_params *p, int k, int n,
                          ldm_generate_params *r, ldm_tensor **image)
{
    cli_progress *bar = p->progress_user_data;
    char label[64];
    *image = NULL;
    p->seed = o->seed + (uint64_t)k; /* wraps past 2^64-1 like any uint64_t */
    /* resolve first: the PNG records what runs, with the model's defaults made explicit */
    if (ldm_generate_params_resolve(m, p, r) != LDM_OK) return fail(o->command);
    if (n > 1)
        snprintf(label, sizeof label, "%s %d/%d", o->command, k + 1, n);
    else
        snprintf(label, sizeof label, "%s", o->command);
    cli_progress_init(bar, label, o->quiet);
    ldm_status st = interrupted ? LDM_CANCELLED : ldm_generate(m, r, image);
    cli_progress_done(bar);
    if (st == LDM_CANCELLED) fprintf(stderr, "ldm: cancelled\n");
    return st == LDM_OK ? 0 : st == LDM_CANCELLED ? 130 : fail(o->command);
}

static int generate_one(const cli_options *o, ldm_model *m, ldm_generate_params *p, int k)
{
    ldm_generate_params r;
    ldm_tensor *image = NULL;
    int rc = generate_image(o, m, p, k, o->batch, &r, &image);
    if (rc == 0) rc = write_image(o, &r, image, k);
    ldm_tensor_free(image);
    return rc;
}

/* --class A,B,C: image k is class k with seed + k, the images side by side in one PNG whose
 * parameters list the classes. */
static int generate_class_strip(const cli_options *o, ldm_model *m, ldm_generate_params *p)
{
    ldm_tensor *images[64] = {0}, *strip = NULL;
    ldm_generate_params r, first;
    int rc = 0, n = o->n_classes;
    for (int k = 0; k < n && rc == 0; k++) {
        p->class_label = o->classes[k];
        rc = generate_image(o, m, p, k, n, &r, &images[k]);
        if (k == 0) first = r;
    }
    int64_t shape[4] = {1, 3, 0, 0};
    if (rc == 0) {
        shape[2] = ldm_tensor_dim(images[0], 2);
        shape[3] = n * ldm_tensor_dim(images[0], 3);
        if (ldm_tensor_create(LDM_F32, 4, shape, &strip) != LDM_OK) rc = fail(o->command);
    }
    for (int k = 0; k < n && rc == 0; k++) { /* row y of image k goes to columns [k*w, (k+1)*w) */
        int64_t h = shape[2], w = shape[3] / n;
        const float *src = ldm_tensor_data(images[k]);
        float *dst = ldm_tensor_data(strip);
        for (int64_t c = 0; c < 3; c++)
            for (int64_t y = 0; y < h; y++)
                memcpy(dst + (c * h + y) * shape[3] + k * w, src + (c * h + y) * w, (size_t)w * sizeof(float));
    }
    if (rc == 0) {
        char params[2048], path[4096], list[64 * 12] = "";
        size_t len = 0;
        for (int k = 0; k < n; k++) append(list, sizeof list, &len, "%s%d", k ? "," : "", o->classes[k]);
        describe_params(o, &first, strip, params, sizeof params);
        len = strlen(params);
        append(params, sizeof params, &len, ", Classes: %s (image k: class k of the list, seed %llu + k)", list,
               (unsigned long long)o->seed);
        const char *keys[] = {"parameters", "Software"};
        const char *values[] = {params, "libldm " LDM_VERSION_STRING};
        output_path(o, 0, path, sizeof path);
        if (ldm_image_write_png(path, strip, keys, values, 2) != LDM_OK)
            rc = fail(path);
        else if (!o->quiet)
            printf("wrote %s\n", path);
    }
    for (int k = 0; k < n; k++) ldm_tensor_free(images[k]);
    ldm_tensor_free(strip);
    return rc;
}

static int run_images(const cli_options *o, ldm_model *m, ldm_generate_params *p)
{
    int rc = 0;
    running_model = m;
    signal(SIGINT, on_sigint);
    if (o->batch > 1 || o->n_classes > 1)
        note(o, "ldm: seed %llu (image k: seed %llu + k)\n", (unsigned long long)o->seed, (unsigned long long)o->seed);
    else
        note(o, "ldm: seed %llu\n", (unsigned long long)o->seed);
    if (o->n_classes > 1)
        rc = generate_class_strip(o, m, p);
    else
        for (int k = 0; k < o->batch && rc == 0; k++) rc = generate_one(o, m, p, k);
    running_model = NULL;
    signal(SIGINT, SIG_DFL);
    return rc;
}

/* --refiner: the SDXL refiner, loaded like the model (its own config). */
static ldm_status load_refiner(const cli_options *o, ldm_model **r)
{
    cli_options ro = *o;
    ro.model = o->refiner;
    ro.config = o->refiner_config;
    return load_model(&ro, r);
}

/* --turbo on an SDXL model: SDXL-Turbo's 512 x 512 (its model card; the weights cannot tell it from
 * SDXL base, whose default is 1024) where no size was given. */
static void sdxl_turbo_size(const cli_options *o, ldm_model *m, ldm_generate_params *p)
{
    ldm_conditioner *c = NULL;
    if (!o->turbo || ldm_model_conditioner(m, &c) != LDM_OK || ldm_conditioner_get_kind(c) != LDM_COND_SDXL) return;
    if (p->width == 0) p->width = 512;
    if (p->height == 0) p->height = 512;
}

static int run_generate(cli_options *o)
{
    ldm_model *m = NULL, *refiner = NULL;
    ldm_tensor *owned[4] = {0};
    ldm_generate_params p;
    cli_progress bar;
    int rc = 1;
    if (!o->seed_given) o->seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    fill_params(o, &p, &bar);
    /* inputs first: a bad image is reported before a checkpoint of gigabytes is mapped */
    if (load_inputs(o, &p, owned) == 0) {
        if (load_model(o, &m) != LDM_OK)
            fail(model_name(o));
        else if ((o->taesd && ldm_model_set_tiny_autoencoder(m, o->taesd) != LDM_OK) ||
                 (o->taesd_encoder && ldm_model_set_tiny_autoencoder(m, o->taesd_encoder) != LDM_OK))
            fail(o->taesd_encoder ? o->taesd_encoder : o->taesd);
        else if (o->refiner && load_refiner(o, &refiner) != LDM_OK)
            fail(o->refiner);
        else {
            report_config(o, m, stderr, "ldm: ");
            sdxl_turbo_size(o, m, &p);
            p.refiner = refiner;
            char dec[32]; /* the decimal the user wrote, not the float nearest to it */
            snprintf(dec, sizeof dec, "%.6g", (double)o->refiner_start);
            p.refiner_start = strtod(dec, NULL);
            rc = run_images(o, m, &p);
        }
    }
    for (int i = 0; i < 4; i++) ldm_tensor_free(owned[i]);
    ldm_model_free(refiner);
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
    report_config(o, m, stdout, "");
    printf("%s\n", ldm_model_describe(m));
    if (o->cpu_kernels) printf("%s\n", ldm_cpu_info()); /* what --cpu FAMILY gave this model */
    ldm_model_free(m);
    return 0;
}

/* The inputs each command needs; 0 when present, else 2 after saying which. */
static int check_inputs(const cli_options *o)
{
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
    return 0;
}

int cli_run(const cli_options *o)
{
    cli_options copy = *o;
    if (o->n_classes > 1 && o->batch > 1) {
        fprintf(stderr, "ldm: --class with a list makes one image per class; --batch cannot be combined with it\n");
        return 2;
    }
    if (!strcmp(o->command, "--version") || !strcmp(o->command, "version")) {
        printf("ldm %s\n", ldm_version());
        return 0;
    }
    /* the model's calls get the cap through max_alloc_bytes; this covers reading input images */
    ldm_set_thread_max_alloc(o->max_memory);
    if (!strcmp(o->command, "info")) return run_info(o);
    int rc = check_inputs(o);
    return rc ? rc : run_generate(&copy);
}
