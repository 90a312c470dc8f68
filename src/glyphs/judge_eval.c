/* judge_eval.c - `ldm-glyph-judge TEMPLATES.png SAMPLES.png...`: the accuracy of the test judge
 * (tests/support/glyph_judge.c) on sample grids made by `ldm-glyphs --grid` (62 columns =
 * classes, any number of rows), with the most frequent confusions. docs/training-data.md states
 * the result for the committed templates. No FreeType. */
#include "support/glyph_judge.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S  GLYPH_JUDGE_SIZE
#define NC GLYPH_JUDGE_N_CLASSES

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: ldm-glyph-judge TEMPLATES.png SAMPLES.png...\n");
        return 2;
    }
    glyph_judge *j;
    if (glyph_judge_load(argv[1], &j) != LDM_OK) {
        fprintf(stderr, "ldm-glyph-judge: cannot load %s: %s\n", argv[1], ldm_last_error());
        return 1;
    }
    static long confusion[NC][NC];
    long total = 0, right = 0, low_conf = 0;
    double conf_right = 0, conf_wrong = 0;
    for (int a = 2; a < argc; a++) {
        ldm_tensor *img;
        if (ldm_image_read_png(argv[a], &img) != LDM_OK) {
            fprintf(stderr, "ldm-glyph-judge: cannot read %s: %s\n", argv[a], ldm_last_error());
            return 1;
        }
        int64_t h = ldm_tensor_dim(img, 2), w = ldm_tensor_dim(img, 3);
        if (w != (int64_t)NC * S || h % S) {
            fprintf(stderr, "ldm-glyph-judge: %s is not a %d-column grid of %dx%d glyphs\n", argv[a], NC, S, S);
            return 1;
        }
        const float *px = ldm_tensor_data(img);
        float buf[3 * S * S];
        for (int64_t row = 0; row < h / S; row++)
            for (int k = 0; k < NC; k++) {
                for (int c = 0; c < 3; c++)
                    for (int y = 0; y < S; y++)
                        memcpy(buf + (c * S + y) * S, px + (c * h + row * S + y) * w + k * S, S * sizeof(float));
                glyph_judge_result r;
                glyph_judge_classify(j, buf, &r);
                total++;
                if (r.cls == k)
                    right++, conf_right += r.confidence;
                else
                    conf_wrong += r.confidence;
                if (r.confidence < 0.5f) low_conf++;
                if (r.cls >= 0) confusion[k][r.cls]++;
            }
        ldm_tensor_free(img);
    }
    printf("templates: %d faces; samples: %ld; correct: %ld (%.2f %%); mean confidence right %.3f, wrong %.3f; "
           "confidence < 0.5: %ld\n",
           glyph_judge_faces(j), total, right, 100.0 * right / (double)(total ? total : 1),
           conf_right / (double)(right ? right : 1), conf_wrong / (double)(total - right ? total - right : 1),
           low_conf);
    printf("most frequent confusions (true -> judged: count):\n");
    for (int shown = 0; shown < 15; shown++) {
        long best = 0;
        int bi = -1, bj = -1;
        for (int a = 0; a < NC; a++)
            for (int b = 0; b < NC; b++)
                if (a != b && confusion[a][b] > best) best = confusion[a][b], bi = a, bj = b;
        if (bi < 0) break;
        printf("  %c -> %c: %ld\n", GLYPH_JUDGE_CLASSES[bi], GLYPH_JUDGE_CLASSES[bj], best);
        confusion[bi][bj] = 0;
    }
    glyph_judge_free(j);
    return 0;
}
