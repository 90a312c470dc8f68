/* test_glyphs_model.c - the pictures are the verdict: the shipped glyph model
 * (ldm_model_load_builtin("glyphs"), examples/glyphs/) draws characters that the project's own
 * judge (tests/support/glyph_judge.c, nearest template over faces the model never saw as
 * templates) recognises, through the whole public pipeline: class conditioning, the default
 * guidance (3, with the extra unconditional class 62), DDIM sampling, the float16 weights, the
 * KL-f4 decoder. A broken pipeline stage (guidance silently off, a wrong scale_factor, a decoder
 * fault) drops the recognition rate below the bar and fails the suite.
 *
 * The bar: measured when the model was trained (examples/glyphs/README.md) and set below it with
 * a margin; a run of 62 classes takes a few seconds. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ldm.h"
#include "support/ck_run.h"
#include "support/glyph_judge.h"

/* Characters of 62 (one image each, seeds 1000+k) the judge must recognise; see the header. */
#define GLYPHS_MIN_RECOGNISED 54

/* <dir of this file>/<rel>: the tests find the source tree from their own path (as test_train_data). */
static const char *source_path(const char *rel)
{
    static char path[1024];
    const char *slash = strrchr(__FILE__, '/');
    int dirlen = slash ? (int)(slash - __FILE__) : 0;
    snprintf(path, sizeof path, "%.*s%s%s", dirlen, __FILE__, slash ? "/" : "", rel);
    return path;
}

static ldm_model *load_glyphs(void)
{
    /* the source tree's copy, unless the caller points elsewhere (an installed library) */
    if (!getenv("LDM_DATA_DIR")) setenv("LDM_DATA_DIR", source_path("../examples/glyphs"), 1);
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.n_threads = 2;
    ldm_model *m = NULL;
    ck_assert_msg(ldm_model_load_builtin("glyphs", 0, &mp, &m) == LDM_OK, "%s", ldm_last_error());
    return m;
}

static glyph_judge *load_judge(void)
{
    glyph_judge *j = NULL;
    ck_assert_msg(glyph_judge_load(source_path("data/glyphs/templates.png"), &j) == LDM_OK, "%s",
                  ldm_last_error());
    return j;
}

/* Generates class k with the given guidance and seed; returns the judge's class. */
static int draw_and_judge(ldm_model *m, const glyph_judge *j, int cls, float guidance, uint64_t seed,
                          glyph_judge_result *r)
{
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    p.class_label = cls;
    p.guidance_scale = guidance;
    p.steps = 25;
    p.seed = seed;
    ldm_tensor *img = NULL;
    ck_assert_msg(ldm_generate(m, &p, &img) == LDM_OK, "class %d: %s", cls, ldm_last_error());
    ck_assert_int_eq(ldm_tensor_dim(img, 2), 32);
    ck_assert_int_eq(ldm_tensor_dim(img, 3), 32);
    glyph_judge_classify(j, ldm_tensor_data(img), r);
    ldm_tensor_free(img);
    return r->cls;
}

START_TEST(model_draws_recognisable_characters)
{
    ldm_model *m = load_glyphs();
    glyph_judge *j = load_judge();
    int right = 0;
    char wrong[512] = "";
    size_t n = 0;
    for (int k = 0; k < GLYPH_JUDGE_N_CLASSES; k++) {
        glyph_judge_result r;
        if (draw_and_judge(m, j, k, 0.0f /* the model's default: 3 */, 1000 + (uint64_t)k, &r) == k)
            right++;
        else if (n + 8 < sizeof wrong)
            n += (size_t)snprintf(wrong + n, sizeof wrong - n, " %c->%c", GLYPH_JUDGE_CLASSES[k],
                                  r.cls >= 0 ? GLYPH_JUDGE_CLASSES[r.cls] : '?');
    }
    printf("glyph model: %d of %d characters recognised by the judge (misses:%s)\n", right, GLYPH_JUDGE_N_CLASSES,
           n ? wrong : " none");
    ck_assert_msg(right >= GLYPHS_MIN_RECOGNISED, "only %d of 62 generated characters recognised (misses:%s)", right,
                  wrong);
    glyph_judge_free(j);
    ldm_model_free(m);
}
END_TEST

/* Guidance is on by default and changes the pictures (the defect of issue 12): the resolved
 * scale is the class-model default 3 with the extra class 62 as "no class", the same seed draws a
 * different image without guidance, and over the 62 classes guidance does not lower the judge's
 * recognition rate (both rates are printed: the trained-model end-to-end check of issue 12). */
START_TEST(default_guidance_is_applied)
{
    ldm_model *m = load_glyphs();
    glyph_judge *j = load_judge();
    ldm_generate_params p, r;
    ldm_generate_params_init(&p);
    p.class_label = 4;
    ck_assert_int_eq(ldm_generate_params_resolve(m, &p, &r), LDM_OK);
    ck_assert_float_eq(r.guidance_scale, 3.0f);
    ck_assert_int_eq(r.uncond_class, 62);
    int right[2] = {0, 0};
    const float scales[2] = {0.0f, 1.0f};
    for (int k = 0; k < GLYPH_JUDGE_N_CLASSES; k++)
        for (int g = 0; g < 2; g++) {
            glyph_judge_result res;
            right[g] += draw_and_judge(m, j, k, scales[g], 2000 + (uint64_t)k, &res) == k;
        }
    printf("glyph model: recognised %d of 62 with the default guidance (3), %d without (1)\n", right[0], right[1]);
    ck_assert_msg(right[0] >= right[1], "guidance lowered recognition: %d with, %d without", right[0], right[1]);
    /* one seed, with and without guidance: different pictures */
    ldm_tensor *a = NULL, *b = NULL;
    p.steps = 10, p.seed = 7;
    ck_assert_int_eq(ldm_generate(m, &p, &a), LDM_OK);
    p.guidance_scale = 1.0f;
    ck_assert_int_eq(ldm_generate(m, &p, &b), LDM_OK);
    ck_assert(memcmp(ldm_tensor_data(a), ldm_tensor_data(b), 3 * 32 * 32 * sizeof(float)) != 0);
    ldm_tensor_free(a), ldm_tensor_free(b);
    glyph_judge_free(j);
    ldm_model_free(m);
}
END_TEST

static Suite *glyphs_suite(void)
{
    Suite *s = suite_create("glyphs_model");
    TCase *tc = tcase_create("judge");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, model_draws_recognisable_characters);
    tcase_add_test(tc, default_guidance_is_applied);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_suite(glyphs_suite());
}
