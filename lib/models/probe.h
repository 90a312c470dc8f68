/* probe.h - looking at a checkpoint's tensor names and shapes without loading data; shared by
 * architecture detection (detect.c) and config completion (complete.c). */
#ifndef LDM_MODELS_PROBE_H
#define LDM_MODELS_PROBE_H

#include "../io/weights.h"

/* The tensor named printf-style, or NULL (also NULL when the name does not fit). */
const lw_tensor *ld_probe(const lw_store *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* True if any tensor name starts with the printf-built prefix. */
int ld_probe_prefix(const lw_store *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Number of consecutive children "<prefix>0.", "<prefix>1.", ... present (prefix printf-built,
 * ending in '.'), at most `limit`. */
int ld_probe_count(const lw_store *s, int limit, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Dimension i of t as an int, or -1 when t is NULL, i out of range or the value is not in
 * [1, INT_MAX]. */
int ld_probe_dim(const lw_tensor *t, int i);
/* Shape as "[a,b,c]" for messages. */
void ld_probe_shape(const lw_tensor *t, char *buf, size_t cap);

#endif
