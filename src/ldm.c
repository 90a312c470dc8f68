/* ldm.c - the `ldm` command-line tool: generate, img2img, inpaint, upscale, info, train. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

int main(int argc, char **argv)
{
    /* `ldm info --cpu`: the CPU features and the kernel family chosen (LDM_CPU), no model;
     * `ldm info --cpu FAMILY MODEL` loads MODEL with that family (the generic options path) */
    if (argc == 3 && !strcmp(argv[1], "info") && !strcmp(argv[2], "--cpu")) {
        printf("%s\n", ldm_cpu_info());
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "train")) return cli_train(argc - 2, argv + 2);
    cli_options o;
    int r = cli_parse(argc, argv, &o);
    if (r) return r;
    return cli_run(&o);
}
