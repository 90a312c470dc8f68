/* cli.h - pieces of the `ldm` command-line tool. */
#ifndef LDM_CLI_H
#define LDM_CLI_H

#include "ldm.h"

#include <stdint.h>

typedef struct cli_options {
    const char *command;
    const char *model, *config, *vocab, *output;
    const char *prompt, *negative_prompt;
    const char *init, *mask, *seg, *layout;
    const char *sampler_name, *weights;
    int class_label, steps, width, height, batch, threads, vae_tile, layout_classes;
    float cfg_scale, eta, strength;
    uint64_t seed;
    int seed_given, strength_given, quiet;
} cli_options;

/* Parses argv after the subcommand. Returns 0, or prints the problem and returns 2. */
int cli_parse(int argc, char **argv, cli_options *o);
void cli_usage(FILE *f);
/* "ddim" -> LDM_SAMPLER_DDIM ...; -1 for an unknown name. */
int cli_sampler_kind(const char *name);

/* Terminal progress bar (quiet when stderr is not a terminal). */
typedef struct cli_progress {
    int enabled;
    double start;
    const char *label;
} cli_progress;
void cli_progress_init(cli_progress *p, const char *label, int quiet);
int cli_progress_callback(int step, int total, void *user_data);
void cli_progress_done(cli_progress *p);

int cli_run(const cli_options *o);

#endif
