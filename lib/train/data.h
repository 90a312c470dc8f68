/* data.h - the training data loader (issue #13): a folder of PNG images with optional class labels
 * or captions, delivered in deterministic shuffled batches. Formats and rules in full:
 * docs/training-data.md.
 *
 * Folder: every regular file whose name ends in ".png" (any case) and does not start with '.',
 * listed in byte order of the names (deterministic). Images may be of any size and any PNG colour
 * type (the library's PNG reader, lib/io/png.c: gray is replicated, alpha dropped).
 *
 * Labels (optional): `labels.csv` in the folder, or opts->labels_path. One line per image,
 * `file,label`; an optional header line (first field "file", "filename", "image" or "path");
 * blank lines and lines starting with '#' are skipped; fields may be quoted ("..." with "" for a
 * quote, needed for commas); spaces around unquoted fields are dropped. An unquoted label made of
 * decimal digits is a class index, anything else (and any quoted label) is a caption (UTF-8 text
 * conditioning). With a labels file every image must have exactly one line and every line must
 * name an image of the folder (a plain name, no '/'). Without one the set is unconditional
 * (labels -1, no captions). Optional `classes.txt` in the folder names the classes, line k =
 * class k.
 *
 * Errors name the file and line: LDM_ERR_IO (cannot read), LDM_ERR_NOT_FOUND (no such folder,
 * labels path), LDM_ERR_FORMAT (bad or duplicate lines, lines longer than 64 KiB, invalid UTF-8,
 * a class index >= n_classes, an image the labels file lacks or a line naming a missing image, a
 * file that is not a PNG).
 *
 * Output images are [batch,3,size,size] float32 NCHW in [-1,1], each sample byte v giving
 * v/127.5 - 1 (the reference's ldm/data convention); resized images are rounded back to bytes
 * first, as PIL does, so cached and uncached batches are identical.
 *
 * A dataset handle keeps the current epoch's permutation and the cache: use it from one thread
 * at a time. Results do not depend on the thread count (the loader runs on the calling thread). */
#ifndef LDM_TRAIN_DATA_H
#define LDM_TRAIN_DATA_H

#include "../core/common.h"

#include <stddef.h>
#include <stdint.h>

typedef enum { LTR_CROP_CENTER = 0, LTR_CROP_RANDOM = 1 } ltr_crop;

typedef struct {
    int size;                /* output height = width in pixels (1..4096); default 32 */
    int resize;              /* 1 (default): the smaller side is resized to `size` (antialiased
                              * bilinear: a triangle filter widened by the reduction factor, as PIL's
                              * BILINEAR resize), then cropped; 0: no resizing, images smaller than
                              * size x size are an error */
    ltr_crop crop;           /* where the size x size square is cut: centre (default) or random */
    float flip;              /* probability of a horizontal flip, 0 (default) .. 1 (0.5 is usual;
                              * the glyph set must not flip) */
    int64_t n_classes;       /* 0 (default): classes.txt's line count if present, else max label + 1;
                              * > 0: labels must be below it */
    size_t cache_bytes;      /* decoded images are kept when the whole set fits in this many bytes
                              * (size*size*3 bytes per image after resizing); 0 = no cache. Default
                              * 256 MiB (the 9052-image glyph set needs 28 MiB) */
    const char *labels_path; /* NULL (default): <dir>/labels.csv when it exists */
} ltr_data_opts;

typedef struct ltr_dataset ltr_dataset;

void ltr_data_opts_init(ltr_data_opts *o);

/* Lists the folder, reads the labels and classes files and checks every PNG's header (signature
 * and size); pixels are decoded later, when a batch needs them. o may be NULL (defaults). */
ldm_status ltr_dataset_open(const char *dir, const ltr_data_opts *o, ltr_dataset **out);
void ltr_dataset_free(ltr_dataset *d);

int64_t ltr_dataset_count(const ltr_dataset *d);
/* 0 when no image has a class label and no n_classes / classes.txt says otherwise. */
int64_t ltr_dataset_n_classes(const ltr_dataset *d);
/* classes.txt's name of class k, or NULL (no classes.txt, or k out of range). */
const char *ltr_dataset_class_name(const ltr_dataset *d, int64_t k);
/* The file name (within the folder) of image i in the sorted listing, NULL when out of range. */
const char *ltr_dataset_file(const ltr_dataset *d, int64_t i);
/* Image i's class (-1 when none) and caption (NULL when none). */
int64_t ltr_dataset_label(const ltr_dataset *d, int64_t i);
const char *ltr_dataset_caption(const ltr_dataset *d, int64_t i);

/* The image index at global draw position `pos` (pos = step * batch + b): epoch e = pos / count
 * uses a Fisher-Yates permutation of 0..count-1 drawn from Philox4x32-10 keyed by (seed, e), and
 * the image is perm_e[pos % count]. So every image appears exactly once per epoch, a run resumed
 * at step k sees exactly the batches it would have seen, and batches may straddle two epochs. */
int64_t ltr_dataset_index_at(ltr_dataset *d, uint64_t seed, int64_t pos);

/* Batch number `step` of `batch` images: item b is the image at position step*batch + b (see
 * ltr_dataset_index_at), random crop offsets and flips drawn from Philox keyed by (seed, epoch,
 * image index). images: [batch,3,size,size]; labels: [batch] (-1 when unlabeled; may be NULL);
 * captions: [batch] pointers into the dataset (NULL for an image without a caption; the array
 * may be NULL). step >= 0, batch >= 1. */
ldm_status ltr_dataset_batch(ltr_dataset *d, uint64_t seed, int64_t step, int batch, float *images, int64_t *labels,
                             const char **captions);

/* Image i alone, as a batch item would be with the given epoch (crop/flip draws), into
 * out[3*size*size]. */
ldm_status ltr_dataset_image(ltr_dataset *d, uint64_t seed, int64_t epoch, int64_t i, float *out);

#endif
