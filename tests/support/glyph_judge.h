/* glyph_judge.h - a small classifier of 32x32 glyph images (the glyph data set of
 * docs/training-data.md: classes A-Z a-z 0-9), used to check that a trained model draws
 * recognisable letters. Nearest template: the image becomes an ink map (darker than the paper =
 * ink, so any dark-on-light colour pair works), is blurred slightly and compared by cosine
 * similarity with every template at integer shifts of up to +-2 pixels; the class of the best
 * template wins. Templates are clean renders of several faces (tests/data/glyphs/templates.png,
 * a grayscale grid: 62 columns = classes, one row per face; how it was made: docs/training-data.md).
 * No FreeType needed. Measured accuracy on faces not in the templates: docs/training-data.md. */
#ifndef LDM_TESTS_GLYPH_JUDGE_H
#define LDM_TESTS_GLYPH_JUDGE_H

#include "ldm.h"

#define GLYPH_JUDGE_CLASSES   "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
#define GLYPH_JUDGE_N_CLASSES 62
#define GLYPH_JUDGE_SIZE      32

typedef struct glyph_judge glyph_judge;

typedef struct {
    int cls;          /* 0..61 (index in GLYPH_JUDGE_CLASSES); -1 for a blank image (no ink) */
    float score;      /* cosine similarity with the best template, 0..1 */
    float margin;     /* score minus the best score of any other class */
    float confidence; /* softmax of the per-class best scores (temperature 0.02), 0..1 */
    int second;       /* the runner-up class */
} glyph_judge_result;

/* Reads the template grid (any PNG the library reads; luminance is used): width 62*32, height a
 * multiple of 32. LDM_ERR_FORMAT for another shape. */
ldm_status glyph_judge_load(const char *templates_png, glyph_judge **out);
void glyph_judge_free(glyph_judge *j);
/* Classifies one image: [3,32,32] floats in [-1,1] (one element of a [B,3,32,32] batch, the
 * data loader's and the decoder's layout). */
void glyph_judge_classify(const glyph_judge *j, const float *image, glyph_judge_result *r);
/* Same for an 8-bit gray image [32*32] (0 = black). */
void glyph_judge_classify_gray(const glyph_judge *j, const unsigned char *gray, glyph_judge_result *r);
/* Number of template faces (rows of the grid). */
int glyph_judge_faces(const glyph_judge *j);

#endif
