/* progress.c - a one-line progress bar with step rate and time left, on terminals only. */
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void cli_progress_init(cli_progress *p, const char *label, int quiet)
{
    p->enabled = !quiet && isatty(STDERR_FILENO);
    p->start = now();
    snprintf(p->label, sizeof p->label, "%s", label);
}

int cli_progress_callback(int step, int total, void *user_data)
{
    cli_progress *p = user_data;
    if (!p->enabled || total <= 0) return 0;
    double elapsed = now() - p->start, rate = elapsed > 0 ? step / elapsed : 0;
    double left = rate > 0 ? (total - step) / rate : 0;
    int width = 30, fill = step * width / total;
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    if (rate >= 1.0)
        fprintf(stderr, "\r%s [%s] %d/%d  %.2f steps/s  %.0fs left ", p->label, bar, step, total, rate, left);
    else
        fprintf(stderr, "\r%s [%s] %d/%d  %.1f s/step  %.0fs left ", p->label, bar, step, total,
                rate > 0 ? 1.0 / rate : 0.0, left);
    fflush(stderr);
    return 0;
}

void cli_progress_done(cli_progress *p)
{
    if (p->enabled) fprintf(stderr, "\n");
}
