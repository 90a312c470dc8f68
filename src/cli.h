/* cli.h - pieces of the `ldm` command-line tool. */
#ifndef LDM_CLI_H
#define LDM_CLI_H

#include "ldm.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct cli_options {
    const char *command;
    const char *model, *config, *vocab, *output;
    const char *prompt, *negative_prompt;
    const char *init, *mask, *seg, *layout;
    const char *sampler_name, *weights;
    const char *spacing_name;   /* --spacing: default | trailing */
    int turbo, lcm_original_steps; /* --turbo preset (SD-Turbo / SDXL-Turbo); --lcm-original-steps */
    const char *taesd, *taesd_encoder, *vae, *preview; /* tiny autoencoder files, --vae, --preview PNG */
    int preview_every;
    int classes[64], n_classes; /* --class LIST: one image per class, side by side in one PNG */
    int class_label, uncond_class, steps, width, height, batch, threads, vae_tile, layout_classes;
    float cfg_scale, eta, strength; /* cfg_scale 0: the model's default */
    uint64_t seed;                  /* image k of a batch uses seed + k */
    size_t max_memory;              /* bytes; 0: no cap */
    int seed_given, strength_given, quiet;
    const char *loras[16];          /* --lora FILE[:WEIGHT], merged in this order */
    int n_loras;
    int plain_prompt; /* --plain-prompt: no webui syntax, 75 tokens (docs/prompts.md) */
    const char *refiner, *refiner_config; /* SDXL refiner checkpoint and its config */
    float refiner_start;                  /* fraction of the steps the base runs (default 0.8) */
    const char *cpu_kernels, *compute; /* --cpu FAMILY, --compute f32|bf16 (ldm_model_params) */
} cli_options;

/* Parses argv after the subcommand. Returns 0, or prints the problem and returns 2; --help
 * prints the subcommand's options and exits. */
int cli_parse(int argc, char **argv, cli_options *o);
/* "ddim" -> LDM_SAMPLER_DDIM ...; -1 for an unknown name. And back ("?" when unknown). */
int cli_sampler_kind(const char *name);
const char *cli_sampler_name(int kind);

/* help.c: the commands and every option with its default; one command's options. */
void cli_usage(FILE *f);
/* 1 for a command of the tool (generate, img2img, inpaint, upscale, info), else 0. */
int cli_is_command(const char *command);
/* Prints `ldm COMMAND --help`; -1 (nothing printed) for an unknown command. */
int cli_command_usage(FILE *f, const char *command);

/* Terminal progress bar (quiet when stderr is not a terminal). */
typedef struct cli_progress {
    int enabled;
    double start;
    char label[64];
} cli_progress;
void cli_progress_init(cli_progress *p, const char *label, int quiet);
int cli_progress_callback(int step, int total, void *user_data);
void cli_progress_done(cli_progress *p);

int cli_run(const cli_options *o);
/* train.c: `ldm train` with the arguments after the command. */
int cli_train(int argc, char **argv);

#endif
