/* ldm.c - the `ldm` command-line tool: generate, img2img, inpaint, upscale, info. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

int main(int argc, char **argv)
{
    cli_options o;
    int r = cli_parse(argc, argv, &o);
    if (r) return r;
    return cli_run(&o);
}
