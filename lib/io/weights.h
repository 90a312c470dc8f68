/* weights.h - a loaded checkpoint as a flat table of named tensors, whatever the file format.
 *
 * Both loaders (safetensors.c, ckpt.c) produce an lw_store. Tensor bytes stay where the file
 * put them (memory-mapped, or inflated once for compressed zip entries) in their stored dtype;
 * models ask for float32 copies with lw_get_f32(), which converts F16/BF16 once and checks the
 * shape, so a wrong checkpoint gives "tensor X: expected [a,b], found [c,d]" rather than garbage. */
#ifndef LDM_IO_WEIGHTS_H
#define LDM_IO_WEIGHTS_H

#include "../core/common.h"

#include <stdio.h>

typedef enum { LW_F32, LW_F16, LW_BF16, LW_F64, LW_I64, LW_I32, LW_I16, LW_I8, LW_U8, LW_BOOL } lw_dtype;

typedef struct lw_tensor {
    char *name;
    lw_dtype dtype;
    int ndim;
    int64_t shape[LDM_MAX_DIMS];
    const void *data;   /* stored bytes (little-endian), never NULL when nbytes > 0 */
    size_t nbytes;      /* = numel * lw_dtype_size(dtype), validated by the loader */
} lw_tensor;

typedef struct lw_store lw_store;

/* The status for a failed ldm_malloc of `size` bytes: LDM_ERR_LIMIT when the allocation cap
 * refused it, LDM_ERR_OUT_OF_MEMORY otherwise (ldm_malloc has already set the message). */
static inline ldm_status lw_alloc_status(size_t size)
{
    size_t cap = ldm_alloc_get_cap();
    return (cap && size > cap) ? LDM_ERR_LIMIT : LDM_ERR_OUT_OF_MEMORY;
}

/* Opens a checkpoint, detecting the format from its first bytes (safetensors: u64 header length
 * + '{'; PyTorch zip: "PK\x03\x04"). `max_alloc` caps any single allocation (0 = none). */
ldm_status lw_open(const char *path, size_t max_alloc, lw_store **out);
void lw_close(lw_store *store);

/* Loader back ends (called by lw_open). */
ldm_status lw_open_safetensors(const char *path, lw_store **out);
ldm_status lw_open_ckpt(const char *path, lw_store **out);

/* Opens `path` for reading only if it is a regular file (open_regular.c): a FIFO, device or
 * directory is refused (LDM_ERR_IO) before any call that could block on it. Every file the library
 * reads (checkpoint, config, vocabulary, PNG) is opened through these. Messages read "<what>
 * <path>: ..." (`what` may be NULL); a missing file fails with `if_missing`, other errors with
 * LDM_ERR_IO. The descriptor is O_CLOEXEC and blocking. */
ldm_status lw_open_regular(const char *path, const char *what, ldm_status if_missing, int *fd);
ldm_status lw_fopen_regular(const char *path, const char *what, ldm_status if_missing, FILE **out);
/* "a directory", "a FIFO", ... for a st_mode, in messages. */
const char *lw_file_kind(unsigned mode);
/* 1 if path (may be NULL: 0) names a regular file / a directory (links followed), else 0. */
int lw_is_file(const char *path);
int lw_is_dir(const char *path);

/* Maps a whole regular file read-only (release with munmap). Files shorter than `min_size`
 * bytes fail with LDM_ERR_FORMAT naming `what_format`. */
ldm_status lw_map_file(const char *path, size_t min_size, const char *what_format, void **map, size_t *size);

/* Store construction, used by the loaders. lw_store_new takes the path for messages; `mapping`
 * /`mapping_size` (may be NULL/0) is munmap'ed on close; `owned` blocks are ldm_free'd on close. */
lw_store *lw_store_new(const char *path);
/* The same, returning the status (LDM_ERR_LIMIT when the allocation cap refused it). */
ldm_status lw_store_create(const char *path, lw_store **out);
void lw_store_set_mapping(lw_store *s, void *mapping, size_t size);
ldm_status lw_store_keep(lw_store *s, void *owned_block);
/* Adds a tensor (the name is copied; `data` is not). Duplicate names are rejected by
 * lw_store_seal. `data` may be unaligned: read it with memcpy. */
ldm_status lw_store_add(lw_store *s, const char *name, lw_dtype dtype, int ndim, const int64_t *shape,
                        const void *data, size_t nbytes);
/* Call once after the last add: sorts for binary search. */
void lw_store_finish(lw_store *s);
/* lw_store_finish, then rejects duplicate names (LDM_ERR_FORMAT naming the tensor). The loaders
 * call this instead of lw_store_finish. */
ldm_status lw_store_seal(lw_store *s);

/* Non-zero when [p, p + n) lies inside the store's read-only file mapping: such bytes may be
 * dropped from memory (ldm_pages_drop) and come back from the file when read again. Bytes in
 * owned blocks (inflated zip members, tests' buffers) never qualify. */
int lw_store_in_mapping(const lw_store *s, const void *p, size_t n);
/* Hands `child` to `s` (also on failure): tensors added to `s` may point into the child's bytes
 * (a diffusers folder's component files under translated names, lib/models/diffusers.c). The
 * child's mapping counts as the store's for lw_store_in_mapping / lw_store_release_pages, and
 * lw_close(s) closes it. */
ldm_status lw_store_adopt(lw_store *s, lw_store *child);
/* Drops every resident page of the store's file mapping from the process (nothing else: owned
 * blocks and copies stay). Safe at any time, also while another thread reads the weights, which
 * then fault them back in; used between the phases of a generation. */
void lw_store_release_pages(const lw_store *s);

/* ---- overriding a tensor's values (LoRA merges, lib/api/lora.c). lw_store_override makes tensor
 * `name` read as the float32 array `f32` (same element count; ldm_malloc_aligned; the caller owns
 * it and keeps it alive until lw_store_restore or lw_close): lw_find, lw_get_f32 and everything
 * built on them see F32 values that are not in the file mapping. The file's bytes are never
 * written, so lw_store_restore gives back exactly what the file holds. lw_find_stored is the
 * file's tensor whatever is in force; lw_tensor_to_f32 widens one (numel floats into out; NaN /
 * Inf refused naming the tensor). Not thread-safe: call while no network reads the store. */
ldm_status lw_store_override(lw_store *s, const char *name, const float *f32);
void lw_store_restore(lw_store *s, const char *name);
const lw_tensor *lw_find_stored(const lw_store *s, const char *name);
ldm_status lw_tensor_to_f32(const lw_store *s, const lw_tensor *t, float *out);

size_t lw_count(const lw_store *s);
const lw_tensor *lw_at(const lw_store *s, size_t i);        /* sorted by name */
const lw_tensor *lw_find(const lw_store *s, const char *name); /* NULL when absent */
const char *lw_path(const lw_store *s);
/* True if any tensor name starts with prefix. */
int lw_has_prefix(const lw_store *s, const char *prefix);

size_t lw_dtype_size(lw_dtype d);
const char *lw_dtype_name(lw_dtype d);

/* A float32 copy of tensor `name` (ldm_malloc_aligned; caller frees with ldm_free). `ndim` /
 * `shape` give the expected shape (ndim < 0: accept any); on mismatch or absence the error names
 * the file, the tensor, expected and found. Accepts F32/F16/BF16/F64 storage. A 0-dim scalar
 * and a [1] tensor match each other (a .ckpt stores model_ema.decay as 0-dim, converted
 * safetensors often as [1]). */
ldm_status lw_get_f32(const lw_store *s, const char *name, int ndim, const int64_t *shape, float **out);
/* LDM_ERR_NUMERIC naming the file, tensor and element when a floating tensor's stored values hold
 * NaN or Inf (F32/F16/BF16/F64, read in place: for weights used without widening, e.g. F16 kept
 * as stored; lw_get_f32 checks what it widens itself). Other dtypes pass. */
ldm_status lw_check_finite(const lw_store *s, const lw_tensor *t);
/* Same with the name built printf-style, e.g. lw_get_f32f(s, 2, (int64_t[]){64,32}, &w, "%s.weight", p). */
ldm_status lw_get_f32f(const lw_store *s, int ndim, const int64_t *shape, float **out, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* EMA name of a diffusion-model parameter: "model.diffusion_model.input_blocks.0.0.weight" ->
 * "model_ema.diffusion_modelinput_blocks00weight" (the part after "model." with every dot removed). */
void lw_ema_name(const char *param_name, char *out, size_t cap);

/* Synthetic stores (models built without a file): after lw_store_set_synthetic, lw_get_f32 of a
 * tensor the store does not hold, asked with a fully known shape, returns deterministic
 * pseudo-random values (lw_synth_fill) instead of failing. Tensors added explicitly still win. */
void lw_store_set_synthetic(lw_store *s, uint64_t seed);
void lw_synth_fill(const char *name, uint64_t seed, int ndim, const int64_t *shape, float *out);

/* IEEE half / bfloat16 to float. */
float lw_f16_to_f32(uint16_t h);
float lw_bf16_to_f32(uint16_t h);
uint16_t lw_f32_to_f16(float f);

/* ---- replacing a file atomically (atomic_file.c), for every file the library writes. The new
 * contents go to a temporary file created (O_EXCL) in the target's folder, which reaches the disk
 * (fsync) and is then renamed over the target, and the folder is fsynced; a failure at any step
 * removes that temporary file and nothing else: the target is never truncated or unlinked. Only a
 * regular file or a new path is replaced: a symbolic link is followed to the regular file it names
 * (the link stays); a dangling link, a directory, FIFO, device or socket is refused
 * (LDM_ERR_INVALID_ARGUMENT) before anything is opened. A new file gets 0666 less the umask, a
 * replaced one keeps its permissions (and, as root, its owner). Other failures are LDM_ERR_IO;
 * every message names the path. */
typedef struct lw_atomic_file lw_atomic_file;
/* Resolves and checks `path`, creates the temporary file. `what` ("a PNG", may be NULL) is for
 * messages; `path` must outlive *out. On failure nothing was created and *out is NULL. */
ldm_status lw_atomic_begin(const char *path, const char *what, lw_atomic_file **out);
/* The temporary file's descriptor, for write(); owned by `f` (do not close it). */
int lw_atomic_fd(const lw_atomic_file *f);
/* A stdio stream over the same file, for writers that need a FILE*; owned by `f` (do not fclose
 * it). Use either the stream or the descriptor. */
ldm_status lw_atomic_stream(lw_atomic_file *f, FILE **fp);
/* Flushes, fsyncs, closes and renames over the target, then fsyncs the folder. Frees `f` whatever
 * happens; on failure the temporary file is removed and the target is as it was. */
ldm_status lw_atomic_commit(lw_atomic_file *f);
/* Closes and removes the temporary file only, and frees `f` (NULL: nothing). */
void lw_atomic_abort(lw_atomic_file *f);

/* ---- writing safetensors (st_write.c). One tensor to write: `data` holds numel elements of
 * `dtype`, little-endian, as they go to the file; with from_f32 (dtype LW_F16 only) it holds
 * float32 values converted with lw_f32_to_f16 while writing. */
typedef struct lw_out_tensor {
    const char *name; /* UTF-8; not "__metadata__"; unique in the file */
    lw_dtype dtype;
    int ndim;
    int64_t shape[LDM_MAX_DIMS];
    const void *data; /* may be NULL when the tensor has no elements */
    int from_f32;
} lw_out_tensor;

/* Writes a safetensors file that lw_open reads back: the JSON header (names escaped, optional
 * "__metadata__" string map from n_meta key/value pairs) padded with spaces to a multiple of 8,
 * tensors laid out 8-byte dtypes first so each is aligned to its element size. The target is
 * replaced atomically with lw_atomic_begin/commit (above: a failure removes only the temporary
 * file; a directory, FIFO, device, socket or dangling link is refused). Bad names, shapes,
 * duplicates or metadata are LDM_ERR_INVALID_ARGUMENT before anything is created. */
ldm_status lw_write_safetensors(const char *path, const lw_out_tensor *tensors, size_t n_tensors,
                                const char *const *meta_keys, const char *const *meta_values, size_t n_meta);

#endif
