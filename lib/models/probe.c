/* probe.c - tensor-name and shape queries on a checkpoint store. */
#include "probe.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>

#define PROBE_NAME_MAX 512

static int vformat(char *buf, const char *fmt, va_list ap)
{
    int len = vsnprintf(buf, PROBE_NAME_MAX, fmt, ap);
    return len > 0 && len < PROBE_NAME_MAX;
}

const lw_tensor *ld_probe(const lw_store *s, const char *fmt, ...)
{
    char name[PROBE_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    int ok = vformat(name, fmt, ap);
    va_end(ap);
    return ok ? lw_find(s, name) : NULL;
}

int ld_probe_prefix(const lw_store *s, const char *fmt, ...)
{
    char name[PROBE_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    int ok = vformat(name, fmt, ap);
    va_end(ap);
    return ok && lw_has_prefix(s, name);
}

int ld_probe_count(const lw_store *s, int limit, const char *fmt, ...)
{
    char prefix[PROBE_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    int ok = vformat(prefix, fmt, ap);
    va_end(ap);
    if (!ok) return 0;
    int n = 0;
    while (n < limit && ld_probe_prefix(s, "%s%d.", prefix, n)) n++;
    return n;
}

int ld_probe_dim(const lw_tensor *t, int i)
{
    if (!t || i < 0 || i >= t->ndim) return -1;
    int64_t v = t->shape[i];
    return (v >= 1 && v <= INT_MAX) ? (int)v : -1;
}

void ld_probe_shape(const lw_tensor *t, char *buf, size_t cap)
{
    if (!t) {
        snprintf(buf, cap, "(absent)");
        return;
    }
    size_t o = 0;
    int len = snprintf(buf, cap, "[");
    o = len > 0 ? (size_t)len : 0;
    for (int i = 0; i < t->ndim && o < cap; i++) {
        len = snprintf(buf + o, cap - o, "%s%lld", i ? "," : "", (long long)t->shape[i]);
        if (len < 0) break;
        o += (size_t)len;
    }
    if (o < cap) snprintf(buf + o, cap - o, "]");
}
