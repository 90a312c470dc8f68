/* qemu_icount.c - a TCG plugin for qemu-user (QEMU >= 4.2 with plugins, e.g. Debian 12's
 * qemu-user 7.2): counts the guest instructions executed and prints the total at exit as
 * "icount: N" (qemu_plugin_outs: to stderr when qemu runs with -d plugin). Used by bench/arm64-icount.sh.
 *
 * Every translated block gets an inline "add its instruction count to a 64-bit counter" op, the
 * cheapest instrumentation TCG offers. The counter is shared by all guest threads without
 * atomics, so run the guest single-threaded (LDM_THREADS=1, OPENBLAS_NUM_THREADS=1) for exact
 * counts. A block left early by a fault still counts whole (none happen in the benchmark).
 *
 * The few declarations needed are written out here instead of including QEMU's qemu-plugin.h
 * (not packaged by Debian; it needs glib); they are those of plugin API version 1 (QEMU 7.x),
 * which later versions still accept.
 *
 *   cc -shared -fPIC -O2 -o libicount.so bench/qemu_icount.c
 *   qemu-aarch64 -plugin ./libicount.so -d plugin ./program   (-d plugin shows the plugin's output) */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>

#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed through */
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

static uint64_t insns;

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, qemu_plugin_tb_n_insns(tb));
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    (void)id, (void)p;
    char line[64];
    snprintf(line, sizeof line, "icount: %" PRIu64 "\n", insns);
    qemu_plugin_outs(line);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info, (void)argc, (void)argv;
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
