/* ck_child.h - running a piece of a test in a forked child: with a time limit (alarm), so a call
 * that blocks forever (a FIFO opened for reading) fails the test instead of hanging it, and with
 * resource limits (RLIMIT_AS, RLIMIT_FSIZE) that must not leak into the rest of the suite. Also
 * the peak resident memory of the process (VmHWM), to show a call did not allocate gigabytes.
 * Header-only like ck_fixture.h. The child must not use ck_assert (its failure would be reported
 * as the parent's); it prints what went wrong to stderr and returns non-zero. */
#ifndef LDM_TESTS_CK_CHILD_H
#define LDM_TESTS_CK_CHILD_H

#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* AddressSanitizer reserves terabytes of address space: RLIMIT_AS cannot be used under it. */
#if defined(__SANITIZE_ADDRESS__)
#define CK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CK_ASAN 1
#endif
#endif
#ifndef CK_ASAN
#define CK_ASAN 0
#endif

/* Runs fn(arg) in a child that SIGALRM kills after `seconds`. Returns the child's exit status,
 * or 128 + the signal that ended it (128 + SIGALRM = 142: it hung). */
static inline int ck_child_run(int (*fn)(void *), void *arg, unsigned seconds)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        signal(SIGALRM, SIG_DFL);
        alarm(seconds);
        _exit(fn(arg));
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) ck_assert_int_eq(errno, EINTR);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* A "Name:   123 kB" line of /proc/self/status in kB; -1 when absent. */
static inline long ck_proc_status_kb(const char *name)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long kb = -1;
    size_t n = strlen(name);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, name, n) == 0 && line[n] == ':') kb = strtol(line + n + 1, NULL, 10);
    fclose(f);
    return kb;
}

/* Resets VmHWM to the current resident size (Linux >= 4.0); 0 on success. After a fork the
 * child starts with its parent's peak, which would hide what the child itself used. */
static inline int ck_reset_peak_rss(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return -1;
    int ok = fputs("5", f) >= 0;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

#endif
