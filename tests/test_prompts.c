/* test_prompts.c - prompts as users write them (docs/prompts.md): every rule of webui's emphasis
 * parser (lib/text/prompt_parse.c), the chunking of long prompts with a stand-in tokenizer
 * (prompt_chunk.c), and the conditioner path on the shared fixtures' CLIP, OpenCLIP and BERT
 * towers: prompts without syntax within one chunk give exactly today's result (memcmp), longer
 * ones are today's first chunk followed by the next, the emphasis arithmetic equals a naive
 * float64 computation from the tower's raw output, and ldm_generate's default path equals the
 * plain one for plain prompts. (The goldens from webui's own code: tests/fixtures/prompt_*.) */
#include <check.h>

#include "core/tensor.h"
#include "support/ck_fixture.h"
#include "support/ck_run.h"
#include "text/prompt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------- parser */

typedef struct want_run {
    const char *text;
    double weight;
} want_run;

static void expect_runs(const char *prompt, const want_run *want, int n)
{
    ldm_prompt_runs *r = NULL;
    ck_assert_msg(ldm_prompt_parse(prompt, 0, &r) == LDM_OK, "%s: %s", prompt, ldm_last_error());
    ck_assert_msg(ldm_prompt_runs_count(r) == n, "%s: %d runs, want %d", prompt, ldm_prompt_runs_count(r), n);
    for (int i = 0; i < n; i++) {
        ck_assert_msg(strcmp(ldm_prompt_runs_text(r, i), want[i].text) == 0, "%s: run %d is \"%s\", want \"%s\"",
                      prompt, i, ldm_prompt_runs_text(r, i), want[i].text);
        ck_assert_msg(ldm_prompt_runs_weight(r, i) == want[i].weight, "%s: run %d weight %.17g, want %.17g", prompt, i,
                      ldm_prompt_runs_weight(r, i), want[i].weight);
    }
    ldm_prompt_runs_free(r);
}

#define EXPECT(prompt, ...)                                                                                            \
    do {                                                                                                               \
        const want_run w_[] = {__VA_ARGS__};                                                                           \
        expect_runs(prompt, w_, (int)(sizeof w_ / sizeof w_[0]));                                                      \
    } while (0)

START_TEST(test_parse_brackets)
{
    const double up = 1.1, down = 1 / 1.1;
    EXPECT("normal text", {"normal text", 1.0});
    EXPECT("an (important) word", {"an ", 1.0}, {"important", up}, {" word", 1.0});
    EXPECT("a [less] b", {"a ", 1.0}, {"less", down}, {" b", 1.0});
    EXPECT("(word:1.3)", {"word", 1.3});
    EXPECT("((a))", {"a", 1.0 * up * up});
    EXPECT("[[a]]", {"a", 1.0 * down * down});
    /* webui's doctest: inner brackets multiply first */
    EXPECT("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", {"a ", 1.0}, {"house", 1.0 * 1.3 * up * up},
           {" ", 1.0 * up}, {"on", 1.0 * down * up}, {" a ", 1.0 * up}, {"hill", 1.0 * 0.5 * up}, {", sun, ", 1.0 * up},
           {"sky", 1.0 * up * up * up * up}, {".", 1.0 * up});
    /* (a (b:2) c): the weighted close pops the innermost "(" */
    EXPECT("(a (b:2) c)", {"a ", up}, {"b", 2.0 * up}, {" c", up});
    /* mixing: [x (y]) closes "]" against "[" and ")" against "(" */
    EXPECT("[x (y] z)", {"x ", down}, {"y", 1.0 * down * up}, {" z", up});
}
END_TEST

START_TEST(test_parse_unbalanced)
{
    const double up = 1.1, down = 1 / 1.1;
    EXPECT("(unbalanced", {"unbalanced", up});
    /* still open at the end: the round ones multiply first, then the square ones */
    EXPECT("[x (y", {"x ", down}, {"y", 1.0 * up * down});
    EXPECT("a) b] c", {"a) b] c", 1.0});
    EXPECT("(a))", {"a", up}, {")", 1.0});
    EXPECT("((a)", {"a", up * up});
}
END_TEST

START_TEST(test_parse_escapes)
{
    EXPECT("\\(literal\\]", {"(literal]", 1.0});
    EXPECT("a \\\\ b", {"a \\ b", 1.0});
    EXPECT("\\[x\\)", {"[x)", 1.0});
    /* a lone backslash is dropped (webui's text[1:] of "\\") */
    EXPECT("a\\b", {"ab", 1.0});
    EXPECT("end\\", {"end", 1.0});
    EXPECT("(\\(x\\))", {"(x)", 1.1});
}
END_TEST

START_TEST(test_parse_weights)
{
    EXPECT("( spaced : 0.8 )", {" spaced ", 0.8}); /* the space before ":" is text */
    EXPECT("(a:-0.5)", {"a", -0.5});
    EXPECT("(a:+2)", {"a", 2.0});
    EXPECT("(a:.5)", {"a", 0.5});
    EXPECT("(a:2.)", {"a", 2.0});
    EXPECT("(a:1)", {"a", 1.0});
    /* an exponent is not part of the number: ":" and "1.2e3" are text, ")" closes with 1.1 */
    EXPECT("(a:1.2e3)", {"a:1.2e3", 1.1});
    /* a weight without an open "(" is text */
    EXPECT(":1.5) x", {":1.5) x", 1.0});
    EXPECT("a: b", {"a: b", 1.0});
    /* a number webui's float() refuses */
    const char *bad[] = {"(a:1.2.3)", "(a:.)", "(a:..5)", "(a:+.)"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ldm_prompt_runs *r = (ldm_prompt_runs *)1;
        ck_assert_int_eq(ldm_prompt_parse(bad[i], 0, &r), LDM_ERR_INVALID_ARGUMENT);
        ck_assert_ptr_null(r);
        ck_assert_msg(strstr(ldm_last_error(), "not a number") != NULL, "%s", ldm_last_error());
    }
    /* the same text without an open "(" is fine */
    EXPECT("a:1.2.3)", {"a:1.2.3)", 1.0});
}
END_TEST

START_TEST(test_parse_break)
{
    ldm_prompt_runs *r = NULL;
    EXPECT("first BREAK second", {"first", 1.0}, {"BREAK", -1.0}, {"second", 1.0});
    ck_assert_int_eq(ldm_prompt_parse("first BREAK second", 0, &r), LDM_OK);
    ck_assert(ldm_prompt_runs_is_break(r, 1) && !ldm_prompt_runs_is_break(r, 0));
    ldm_prompt_runs_free(r);
    EXPECT("BREAK", {"", 1.0}, {"BREAK", -1.0}, {"", 1.0});
    EXPECT("a BREAK BREAK b", {"a", 1.0}, {"BREAK", -1.0}, {"", 1.0}, {"BREAK", -1.0}, {"b", 1.0});
    /* word boundaries */
    EXPECT("aBREAK BREAKfast _BREAK BREAK_ break", {"aBREAK BREAKfast _BREAK BREAK_ break", 1.0});
    EXPECT("x,BREAK.y", {"x,", 1.0}, {"BREAK", -1.0}, {".y", 1.0});
    /* Unicode whitespace (str.isspace) around it is eaten */
    EXPECT("a\xc2\xa0"
           "BREAK\xe3\x80\x80"
           "b",
           {"a", 1.0}, {"BREAK", -1.0}, {"b", 1.0});
    /* inside brackets the marker's -1 is multiplied: then it is the plain word */
    EXPECT("(a BREAK b)", {"a", 1.1}, {"BREAK", -1.1}, {"b", 1.1});
    ck_assert_int_eq(ldm_prompt_parse("(a BREAK b)", 0, &r), LDM_OK);
    ck_assert(!ldm_prompt_runs_is_break(r, 1));
    ldm_prompt_runs_free(r);
    /* weight 0: 0 and -0 are equal, so everything merges (as in Python) */
    EXPECT("(a BREAK b:0)", {"aBREAKb", 0.0});
}
END_TEST

START_TEST(test_parse_merge_and_empty)
{
    EXPECT("(unnecessary)(parens)", {"unnecessaryparens", 1.1});
    EXPECT("", {"", 1.0});
    EXPECT("()", {"", 1.0});
    EXPECT("(a:1)b", {"ab", 1.0});
    EXPECT("caf\xc3\xa9 (cr\xc3\xa8me:1.2)", {"caf\xc3\xa9 ", 1.0}, {"cr\xc3\xa8me", 1.2});
    /* flags: NO_EMPHASIS keeps the text as it is */
    ldm_prompt_runs *r = NULL;
    ck_assert_int_eq(ldm_prompt_parse("(a:2) BREAK [b]", LDM_PROMPT_NO_EMPHASIS, &r), LDM_OK);
    ck_assert_int_eq(ldm_prompt_runs_count(r), 1);
    ck_assert_str_eq(ldm_prompt_runs_text(r, 0), "(a:2) BREAK [b]");
    ck_assert(ldm_prompt_runs_weight(r, 0) == 1.0);
    ck_assert_ptr_null(ldm_prompt_runs_text(r, 1));
    ck_assert_ptr_null(ldm_prompt_runs_text(r, -1));
    ldm_prompt_runs_free(r);
    /* invalid UTF-8 and NULLs */
    ck_assert_int_eq(ldm_prompt_parse("bad \xff", 0, &r), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_prompt_parse(NULL, 0, &r), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_prompt_parse("x", 0, NULL), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_prompt_runs_count(NULL), 0);
    ldm_prompt_runs_free(NULL);
}
END_TEST

START_TEST(test_parse_allocation_failures)
{
    const char *p = "a (((house:1.3)) [on] BREAK (hill:0.5), \\( sun";
    for (long k = 1; k < 200; k++) {
        ldm_prompt_runs *r = NULL;
        ldm_alloc_fail_after(k);
        ldm_status st = ldm_prompt_parse(p, 0, &r);
        ldm_alloc_fail_after(0);
        if (st == LDM_OK) {
            ck_assert_int_eq(ldm_prompt_runs_count(r), 9);
            ldm_prompt_runs_free(r);
            return;
        }
        ck_assert_int_eq(st, LDM_ERR_OUT_OF_MEMORY);
        ck_assert_ptr_null(r);
    }
    ck_abort_msg("never succeeded");
}
END_TEST

/* ---------------------------------------------------------------- chunks (stand-in tokenizer) */

/* Words separated by spaces: "," is id 9, "w<N>" is id N, anything else id 7. */
static ldm_status fake_tokenize(void *user, const char *text, int64_t **ids, size_t *n)
{
    (void)user;
    size_t cap = strlen(text) + 1;
    *ids = ldm_malloc(cap * sizeof **ids);
    *n = 0;
    char *copy = strdup(text), *save = NULL;
    for (char *w = strtok_r(copy, " ", &save); w; w = strtok_r(NULL, " ", &save))
        (*ids)[(*n)++] = !strcmp(w, ",") ? 9 : w[0] == 'w' ? atoi(w + 1) : 7;
    free(copy);
    return LDM_OK;
}

static lpr_chunk_cfg fake_cfg(int backtrack)
{
    lpr_chunk_cfg c = {
        .chunk_length = 75, .id_start = 1, .id_end = 2, .id_pad = 2, .id_comma = 9, .comma_backtrack = backtrack};
    return c;
}

/* n words "w100 w101 ...", the word at comma_at replaced by "," (-1: none). */
static char *words(int n, int comma_at)
{
    char *s = malloc((size_t)n * 8 + 8), *p = s;
    for (int i = 0; i < n; i++)
        p += i == comma_at ? sprintf(p, "%s,", i ? " " : "") : sprintf(p, "%sw%d", i ? " " : "", 100 + i);
    return s;
}

static lpr_chunks chunk_text(const char *text, lpr_chunk_cfg cfg, int plain)
{
    lpr_runs runs = {0};
    lpr_chunks ch = {0};
    ck_assert_int_eq(plain ? lpr_parse_plain(text, &runs) : lpr_parse(text, &runs), LDM_OK);
    ck_assert_msg(lpr_chunk(&runs, &cfg, fake_tokenize, NULL, &ch) == LDM_OK, "%s", ldm_last_error());
    lpr_runs_free(&runs);
    ck_assert_int_eq(ch.row, 77);
    for (int c = 0; c < ch.n_chunks; c++) {
        ck_assert_int_eq(ch.ids[c * 77], 1);
        ck_assert(ch.weights[c * 77] == 1.0f && ch.weights[c * 77 + 76] == 1.0f);
    }
    return ch;
}

START_TEST(test_chunk_lengths)
{
    char *s;
    lpr_chunks ch;
    /* 75 tokens: one chunk, no padding; the ids follow the start id */
    ch = chunk_text(s = words(75, -1), fake_cfg(20), 0);
    ck_assert_int_eq(ch.n_chunks, 1);
    for (int i = 0; i < 75; i++) ck_assert_int_eq(ch.ids[1 + i], 100 + i);
    ck_assert_int_eq(ch.ids[76], 2);
    lpr_chunks_free(&ch);
    free(s);
    /* 76: two, the second holds one token then end + padding */
    ch = chunk_text(s = words(76, -1), fake_cfg(20), 0);
    ck_assert_int_eq(ch.n_chunks, 2);
    ck_assert_int_eq(ch.ids[77 + 1], 175);
    for (int i = 2; i < 77; i++) ck_assert_int_eq(ch.ids[77 + i], 2);
    lpr_chunks_free(&ch);
    free(s);
    /* exactly 150: two chunks, no empty third */
    ch = chunk_text(s = words(150, -1), fake_cfg(20), 0);
    ck_assert_int_eq(ch.n_chunks, 2);
    lpr_chunks_free(&ch);
    free(s);
    /* empty prompt: one chunk of padding */
    ch = chunk_text("", fake_cfg(20), 0);
    ck_assert_int_eq(ch.n_chunks, 1);
    ck_assert_int_eq(ch.ids[1], 2);
    lpr_chunks_free(&ch);
}
END_TEST

START_TEST(test_chunk_comma_backtrack)
{
    char *s;
    lpr_chunks ch;
    /* comma at token 60 (15 back when the chunk fills): the 14 tokens after it move on */
    ch = chunk_text(s = words(80, 60), fake_cfg(20), 0);
    ck_assert_int_eq(ch.n_chunks, 2);
    ck_assert_int_eq(ch.ids[61], 9);   /* the comma ends chunk 0 ... */
    ck_assert_int_eq(ch.ids[62], 2);   /* ... which is padded */
    ck_assert_int_eq(ch.ids[78], 161); /* chunk 1 starts with the token after the comma */
    ck_assert_int_eq(ch.ids[77 + 1 + 19 - 1], 179);
    lpr_chunks_free(&ch);
    /* the same without backtracking: cut at 75 */
    ch = chunk_text(s, fake_cfg(0), 0);
    ck_assert_int_eq(ch.ids[76 - 1], 174);
    ck_assert_int_eq(ch.ids[78], 175);
    lpr_chunks_free(&ch);
    free(s);
    /* comma 25 tokens back: more than 20, no backtracking */
    ch = chunk_text(s = words(80, 50), fake_cfg(20), 0);
    ck_assert_int_eq(ch.ids[75], 174);
    ck_assert_int_eq(ch.ids[78], 175);
    lpr_chunks_free(&ch);
    free(s);
    /* exactly 20 back: still moves (webui's <=) */
    ch = chunk_text(s = words(80, 55), fake_cfg(20), 0);
    ck_assert_int_eq(ch.ids[56], 9);
    ck_assert_int_eq(ch.ids[57], 2);
    ck_assert_int_eq(ch.ids[78], 156);
    lpr_chunks_free(&ch);
    free(s);
    /* a comma as the 76th token: the chunk closes before it, and it opens the next chunk */
    ch = chunk_text(s = words(80, 75), fake_cfg(20), 0);
    ck_assert_int_eq(ch.ids[75], 174);
    ck_assert_int_eq(ch.ids[78], 9);
    lpr_chunks_free(&ch);
    free(s);
}
END_TEST

START_TEST(test_chunk_break_weights_padding)
{
    lpr_chunks ch;
    /* BREAK closes the chunk; a leading BREAK gives an empty first chunk */
    ch = chunk_text("w5 w6 BREAK w7", fake_cfg(20), 0);
    ck_assert_int_eq(ch.n_chunks, 2);
    ck_assert_int_eq(ch.ids[1], 5);
    ck_assert_int_eq(ch.ids[3], 2);
    ck_assert_int_eq(ch.ids[78], 7);
    lpr_chunks_free(&ch);
    ch = chunk_text("BREAK w7", fake_cfg(20), 0);
    ck_assert_int_eq(ch.n_chunks, 2);
    ck_assert_int_eq(ch.ids[1], 2);
    lpr_chunks_free(&ch);
    /* trailing BREAK: the empty rest is not a chunk */
    ch = chunk_text("w7 BREAK", fake_cfg(20), 0);
    ck_assert_int_eq(ch.n_chunks, 1);
    lpr_chunks_free(&ch);
    /* with NO_EMPHASIS (plain runs) BREAK is a word */
    ch = chunk_text("w7 BREAK w8", fake_cfg(20), 1);
    ck_assert_int_eq(ch.n_chunks, 1);
    ck_assert_int_eq(ch.ids[2], 7);
    lpr_chunks_free(&ch);
    /* weights follow their tokens (float of the double product), padding has 1 */
    ch = chunk_text("w5 (w6 [w7]) (w8:0.25)", fake_cfg(20), 0);
    ck_assert(ch.weights[1] == 1.0f);
    ck_assert(ch.weights[2] == (float)1.1);
    ck_assert(ch.weights[3] == (float)(1.0 / 1.1 * 1.1));
    ck_assert(ch.weights[4] == 0.25f);
    ck_assert(ch.weights[5] == 1.0f);
    lpr_chunks_free(&ch);
    /* id_pad != id_end: everything after the first end id is padding */
    lpr_chunk_cfg cfg = fake_cfg(20);
    cfg.id_pad = 0;
    ch = chunk_text("w5", cfg, 0);
    ck_assert_int_eq(ch.ids[2], 2);
    ck_assert_int_eq(ch.ids[3], 0);
    ck_assert_int_eq(ch.ids[76], 0);
    int64_t ids[77];
    float w[77];
    lpr_empty_chunk(&cfg, ids, w);
    ck_assert(ids[0] == 1 && ids[1] == 2 && ids[2] == 0 && ids[76] == 0 && w[5] == 1.0f);
    lpr_chunks_free(&ch);
}
END_TEST

/* A vocabulary without ",": the comma rule must not take [UNK] (what "," becomes) for a comma. */
START_TEST(test_chunk_vocab_without_comma)
{
    char dir[] = "/tmp/ldm-prompt-XXXXXX", path[64];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb\n", f);
    fclose(f);
    ldm_tokenizer *tok = NULL;
    ck_assert_int_eq(ldm_tokenizer_load(LDM_TOKENIZER_BERT, path, &tok), LDM_OK);
    ldm_tensor *ids = NULL, *w = NULL;
    /* context 8: chunks of 6; "x" is [UNK] at position 1, five tokens before the chunk fills */
    ck_assert_int_eq(ldm_tokenizer_encode_prompt(tok, "a x b b b b b", 8, 0, &ids, &w), LDM_OK);
    const int64_t *v = ldm_tensor_data(ids);
    ck_assert_int_eq(ldm_tensor_dim(ids, 0), 2);
    const int64_t want[16] = {2, 5, 1, 6, 6, 6, 6, 3, 2, 6, 3, 0, 0, 0, 0, 0};
    for (int i = 0; i < 16; i++) ck_assert_int_eq(v[i], want[i]);
    ldm_tensor_free(ids);
    ldm_tensor_free(w);
    ldm_tokenizer_free(tok);
    remove(path);
    rmdir(dir);
}
END_TEST

/* ---------------------------------------------------------------- conditioners (shared fixtures) */

typedef struct model_fx {
    ldm_model *model;
    ldm_conditioner *cond;
} model_fx;

static int open_model(const char *name, model_fx *f)
{
    char dir[1024], weights[1200], config[1200], vocab[1100];
    memset(f, 0, sizeof *f);
    if (!fixture_dir(name, dir, sizeof dir)) return 0;
    snprintf(weights, sizeof weights, "%s/model.safetensors", dir);
    snprintf(config, sizeof config, "%s/config.yaml", dir);
    snprintf(vocab, sizeof vocab, "%s/vocab", fx_shared_dir());
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.config_path = config;
    mp.vocab_path = vocab;
    mp.n_threads = fx_threads();
    ck_assert_msg(ldm_model_load(weights, &mp, &f->model) == LDM_OK, "%s: %s", weights, ldm_last_error());
    ck_assert_int_eq(ldm_model_conditioner(f->model, &f->cond), LDM_OK);
    return 1;
}

static ldm_tensor *encode_prompt(model_fx *f, const char *const *p, int n, unsigned flags)
{
    ldm_tensor *t = NULL;
    ck_assert_msg(ldm_conditioner_encode_prompt(f->cond, p, n, flags, &t) == LDM_OK, "%s", ldm_last_error());
    return t;
}

static ldm_tensor *encode_text(model_fx *f, const char *const *p, int n)
{
    ldm_tensor *t = NULL;
    ck_assert_msg(ldm_conditioner_encode_text(f->cond, p, n, &t) == LDM_OK, "%s", ldm_last_error());
    return t;
}

static int same_bytes(const ldm_tensor *a, size_t a_off, const ldm_tensor *b, size_t b_off, size_t n)
{
    return memcmp((const float *)ldm_tensor_data((ldm_tensor *)a) + a_off,
                  (const float *)ldm_tensor_data((ldm_tensor *)b) + b_off, n * sizeof(float)) == 0;
}

static char *long_prompt(int words_n)
{
    static const char *const vocab[] = {"red", "green", "blue", "cat", "dog", "house", "tree", "river", "sky"};
    char *s = malloc((size_t)words_n * 8 + 1), *p = s;
    for (int i = 0; i < words_n; i++) p += sprintf(p, "%s%s", i ? " " : "", vocab[i % 9]);
    return s;
}

/* Within one chunk and without syntax: byte for byte today's result (several prompts at once). */
static void check_plain_identity(model_fx *f)
{
    const char *p[] = {"a photo of a cat", "", "red green blue, sky"};
    ldm_tensor *a = encode_text(f, p, 3), *b = encode_prompt(f, p, 3, 0);
    ck_assert_int_eq(ldm_tensor_numel(a), ldm_tensor_numel(b));
    ck_assert(same_bytes(a, 0, b, 0, (size_t)ldm_tensor_numel(a)));
    ldm_tensor_free(a);
    ldm_tensor_free(b);
}

/* A long prompt without commas: chunk 0 is today's (truncated) result, chunk 1 the tower's output
 * on the remaining tokens; the shorter prompt of the batch gets the empty prompt's chunk. */
static void check_long(model_fx *f, int row)
{
    char *lp = long_prompt(row + 20);
    const char *p[] = {lp, "cat"}, *empty[] = {""};
    ldm_tensor *c = encode_prompt(f, p, 2, 0), *trunc = encode_text(f, p, 2), *e = encode_text(f, empty, 1);
    int64_t d = ldm_tensor_dim(c, 2);
    ck_assert_int_eq(ldm_tensor_dim(c, 1), 2 * row);
    size_t chunk = (size_t)row * (size_t)d;
    ck_assert(same_bytes(c, 0, trunc, 0, chunk));             /* prompt 0, chunk 0 */
    ck_assert(!same_bytes(c, chunk, trunc, 0, chunk));        /* chunk 1 is something else */
    ck_assert(same_bytes(c, 2 * chunk, trunc, chunk, chunk)); /* prompt 1, chunk 0 */
    ck_assert(same_bytes(c, 3 * chunk, e, 0, chunk));         /* prompt 1, chunk 1 = "" */
    ldm_tensor_free(c);
    ldm_tensor_free(trunc);
    ldm_tensor_free(e);
    free(lp);
}

/* The emphasis arithmetic against a float64 computation from the tower's raw output on the same
 * ids: z*w, then the mean restored (per prompt and chunk). */
static void check_emphasis(model_fx *f, const char *vocab_file, ldm_tokenizer_kind kind, int row)
{
    const char *p[] = {"a (red:1.5) cat on a [blue] tree", "((sky)) river"};
    char vocab[1200];
    snprintf(vocab, sizeof vocab, "%s/vocab/%s", fx_shared_dir(), vocab_file);
    ldm_tokenizer *tok = NULL;
    ck_assert_int_eq(ldm_tokenizer_load(kind, vocab, &tok), LDM_OK);
    ldm_tensor *c = encode_prompt(f, p, 2, 0), *raw_nonorm = encode_prompt(f, p, 2, LDM_PROMPT_NO_NORMALIZE);
    int64_t d = ldm_tensor_dim(c, 2);
    for (int i = 0; i < 2; i++) {
        ldm_tensor *ids = NULL, *w = NULL, *z = NULL;
        ck_assert_int_eq(ldm_tokenizer_encode_prompt(tok, p[i], row, 0, &ids, &w), LDM_OK);
        ck_assert_int_eq(ldm_tensor_dim(ids, 0), 1);
        ck_assert_int_eq(ldm_conditioner_encode_tokens(f->cond, ids, &z), LDM_OK);
        const float *zr = ldm_tensor_data(z), *wr = ldm_tensor_data(w);
        const float *got = (const float *)ldm_tensor_data(c) + (size_t)i * (size_t)row * (size_t)d;
        const float *got_nn = (const float *)ldm_tensor_data(raw_nonorm) + (size_t)i * (size_t)row * (size_t)d;
        double m0 = 0, m1 = 0;
        for (int t = 0; t < row; t++)
            for (int k = 0; k < d; k++) {
                m0 += zr[t * d + k];
                m1 += (double)zr[t * d + k] * wr[t];
            }
        int weighted = 0;
        for (int t = 0; t < row; t++) weighted |= wr[t] != 1.0f;
        ck_assert(weighted);
        for (int t = 0; t < row; t++)
            for (int k = 0; k < d; k++) {
                double zw = (double)zr[t * d + k] * wr[t], want = zw * (m0 / m1);
                ck_assert_msg(fabs(got[t * d + k] - want) <= 1e-5 * (1 + fabs(want)), "prompt %d [%d,%d]: %g vs %g", i,
                              t, k, got[t * d + k], want);
                ck_assert(fabs(got_nn[t * d + k] - zw) <= 1e-6 * (1 + fabs(zw)));
            }
        ldm_tensor_free(ids);
        ldm_tensor_free(w);
        ldm_tensor_free(z);
    }
    ldm_tensor_free(c);
    ldm_tensor_free(raw_nonorm);
    ldm_tokenizer_free(tok);
}

/* The rules on a CLIP-tokenized fixture model (chunks of 75 tokens + start and end). */
static void check_clip_model(const char *fixture, ldm_tokenizer_kind kind)
{
    model_fx f;
    if (!open_model(fixture, &f)) return;
    check_plain_identity(&f);
    check_long(&f, 77);
    check_emphasis(&f, "bpe_simple_vocab_16e6.txt.gz", kind, 77);
    ldm_model_free(f.model);
}

START_TEST(test_cond_clip)
{
    check_clip_model("cond_clip_sd1", LDM_TOKENIZER_CLIP);
}
END_TEST

START_TEST(test_cond_openclip)
{
    check_clip_model("cond_openclip_sd2", LDM_TOKENIZER_OPENCLIP);
}
END_TEST

/* BERT (LDM text2img): the same rules with chunks of max_seq_len - 2 tokens. The layout fixture's
 * BERTEmbedder (vocab 8192, max_seq_len 92) takes the ids of common English words. */
START_TEST(test_cond_bert)
{
    model_fx f;
    if (!open_model("cond_layout", &f)) return;
    ck_assert_int_eq(ldm_conditioner_get_kind(f.cond), LDM_COND_BERT);
    check_plain_identity(&f);
    check_long(&f, 92);
    check_emphasis(&f, "bert-base-uncased-vocab.txt", LDM_TOKENIZER_BERT, 92);
    ldm_model_free(f.model);
}
END_TEST

START_TEST(test_cond_errors)
{
    model_fx f;
    if (!open_model("cond_clip_sd1", &f)) return;
    ldm_tensor *t = (ldm_tensor *)1;
    const char *bad[] = {"(a:1.2.3)"}, *null_prompt[] = {NULL};
    ck_assert_int_eq(ldm_conditioner_encode_prompt(f.cond, bad, 1, 0, &t), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(ldm_last_error(), "prompt 0") != NULL, "%s", ldm_last_error());
    ck_assert_int_eq(ldm_conditioner_encode_prompt(f.cond, null_prompt, 1, 0, &t), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_conditioner_encode_prompt(f.cond, bad, 0, 0, &t), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_conditioner_encode_prompt(NULL, bad, 1, 0, &t), LDM_ERR_INVALID_ARGUMENT);
    /* a weight beyond float's range makes the embedding infinite: an error, not NaN output */
    char huge[400];
    snprintf(huge, sizeof huge, "(cat:1%0300d)", 0);
    const char *h[] = {huge};
    ck_assert_int_eq(ldm_conditioner_encode_prompt(f.cond, h, 1, 0, &t), LDM_ERR_NUMERIC);
    ck_assert_ptr_null(t);
    ldm_model_free(f.model);
}
END_TEST

/* ldm_generate: the default (webui syntax) equals plain_prompts for a plain prompt, byte for
 * byte; emphasis changes the image; a long prompt with a short negative one runs (both padded to
 * the same number of chunks). */
static ldm_tensor *generate(ldm_model *m, const char *prompt, const char *negative, int plain)
{
    ldm_generate_params p;
    ldm_generate_params_init(&p);
    p.prompt = prompt;
    p.negative_prompt = negative;
    p.steps = 2;
    p.seed = 7;
    p.plain_prompts = plain;
    ldm_tensor *img = NULL;
    ck_assert_msg(ldm_generate(m, &p, &img) == LDM_OK, "%s", ldm_last_error());
    return img;
}

START_TEST(test_generate)
{
    model_fx f;
    if (!open_model("ldm_sd1_txt2img", &f)) return;
    ldm_tensor *a = generate(f.model, "a red house", "blurry", 0), *b = generate(f.model, "a red house", "blurry", 1);
    size_t n = (size_t)ldm_tensor_numel(a);
    ck_assert(same_bytes(a, 0, b, 0, n));
    ldm_tensor *c = generate(f.model, "a (red:1.6) house", "blurry", 0);
    ck_assert(!same_bytes(a, 0, c, 0, n));
    ldm_tensor *d = generate(f.model, "a (red:1.6) house", "blurry", 1); /* literal brackets */
    ck_assert(!same_bytes(c, 0, d, 0, n));
    char *lp = long_prompt(120);
    ldm_tensor *e = generate(f.model, lp, "", 0), *g = generate(f.model, "", lp, 0);
    ck_assert(!same_bytes(e, 0, g, 0, n));
    free(lp);
    ldm_tensor_free(a);
    ldm_tensor_free(b);
    ldm_tensor_free(c);
    ldm_tensor_free(d);
    ldm_tensor_free(e);
    ldm_tensor_free(g);
    ldm_model_free(f.model);
}
END_TEST

static Suite *prompt_suite(void)
{
    Suite *s = suite_create("prompts");
    TCase *parse = tcase_create("parse");
    tcase_add_test(parse, test_parse_brackets);
    tcase_add_test(parse, test_parse_unbalanced);
    tcase_add_test(parse, test_parse_escapes);
    tcase_add_test(parse, test_parse_weights);
    tcase_add_test(parse, test_parse_break);
    tcase_add_test(parse, test_parse_merge_and_empty);
    tcase_add_test(parse, test_parse_allocation_failures);
    suite_add_tcase(s, parse);
    TCase *chunk = tcase_create("chunks");
    tcase_add_test(chunk, test_chunk_lengths);
    tcase_add_test(chunk, test_chunk_comma_backtrack);
    tcase_add_test(chunk, test_chunk_break_weights_padding);
    tcase_add_test(chunk, test_chunk_vocab_without_comma);
    suite_add_tcase(s, chunk);
    TCase *cond = tcase_create("conditioners");
    tcase_set_timeout(cond, 300);
    tcase_add_test(cond, test_cond_clip);
    tcase_add_test(cond, test_cond_openclip);
    tcase_add_test(cond, test_cond_bert);
    tcase_add_test(cond, test_cond_errors);
    tcase_add_test(cond, test_generate);
    suite_add_tcase(s, cond);
    return s;
}

int main(void)
{
    return ck_run_suite(prompt_suite());
}
