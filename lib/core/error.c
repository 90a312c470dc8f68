/* error.c - thread-local last-error message and status names. */
#include "common.h"

#include <stdio.h>
#include <string.h>

#define LDM_ERROR_CAP 1024

static _Thread_local char last_error[LDM_ERROR_CAP];

ldm_status ldm_fail(ldm_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

ldm_status ldm_fail_context(ldm_status status, const char *fmt, ...)
{
    char prefix[LDM_ERROR_CAP];
    char old[LDM_ERROR_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, last_error, sizeof old);
    /* Truncation is fine: the message stays a prefix of the full text. */
    size_t n = strlen(prefix);
    if (n >= sizeof last_error) n = sizeof last_error - 1;
    memcpy(last_error, prefix, n);
    size_t rest = strnlen(old, sizeof old);
    if (rest > sizeof last_error - 1 - n) rest = sizeof last_error - 1 - n;
    memcpy(last_error + n, old, rest);
    last_error[n + rest] = '\0';
    return status;
}

const char *ldm_last_error(void) { return last_error; }

void ldm_clear_error(void) { last_error[0] = '\0'; }

const char *ldm_status_string(ldm_status status)
{
    switch (status) {
    case LDM_OK: return "ok";
    case LDM_ERR_INVALID_ARGUMENT: return "invalid argument";
    case LDM_ERR_IO: return "i/o error";
    case LDM_ERR_FORMAT: return "format error";
    case LDM_ERR_UNSUPPORTED: return "unsupported";
    case LDM_ERR_NOT_FOUND: return "not found";
    case LDM_ERR_OUT_OF_MEMORY: return "out of memory";
    case LDM_ERR_LIMIT: return "limit exceeded";
    case LDM_ERR_SECURITY: return "forbidden content";
    case LDM_ERR_NUMERIC: return "numeric fault (NaN or Inf)";
    case LDM_CANCELLED: return "cancelled";
    case LDM_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *ldm_version(void) { return LDM_VERSION_STRING; }

int ldm_version_number(void) { return LDM_VERSION_NUMBER; }
