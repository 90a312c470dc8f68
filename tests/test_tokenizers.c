/* test_tokenizers.c - CLIP / OpenCLIP BPE, BERT WordPiece and layout tokens against the shared
 * fixtures (tok_clip_sd1, tok_openclip_sd2, tok_bert, cond_layout: exact equality), plus the text
 * clean-up pieces (html.unescape, str.lower, NFD) on cases checked with Python, and failure
 * handling (missing / corrupt vocabularies, invalid UTF-8, bad arguments, allocation failures). */
#include <check.h>

#include "core/json.h"
#include "core/tensor.h"
#include "io/weights.h"
#include "text/html.h"
#include "text/layout.h"
#include "text/text.h"
#include "text/unicode.h"
#include "support/ck_run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- fixture access */

static const char *shared_dir(void)
{
    const char *s = getenv("LDM_SHARED");
    return s && *s ? s : "../shared";
}

/* The fixture directory, or 0 after printing why it is skipped. */
static int fixture_dir(const char *name, char *dir, size_t cap)
{
    struct stat st;
    snprintf(dir, cap, "%s/fixtures/%s", shared_dir(), name);
    if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) return 1;
    printf("SKIPPED: fixture %s not found at %s (set LDM_SHARED)\n", name, dir);
    return 0;
}

static int vocab_path(const char *file, char *path, size_t cap)
{
    snprintf(path, cap, "%s/vocab/%s", shared_dir(), file);
    if (access(path, R_OK) == 0) return 1;
    printf("SKIPPED: vocabulary %s not found (set LDM_SHARED)\n", path);
    return 0;
}

static char *read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    ck_assert(buf != NULL);
    ck_assert_int_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

/* case.json of a fixture. The JSON reader refuses embedded NULs, and tok_bert has a prompt with
 * "\u0000": it is dropped here, which changes nothing because BERT's clean-up deletes U+0000 (and
 * a C string could not carry it anyway). */
static lj_value *load_case(const char *dir)
{
    char path[4096];
    size_t len;
    snprintf(path, sizeof path, "%s/case.json", dir);
    char *text = read_whole(path, &len);
    size_t w = 0;
    for (size_t r = 0; r < len;) {
        if (len - r >= 6 && memcmp(text + r, "\\u0000", 6) == 0 && (r == 0 || text[r - 1] != '\\')) {
            r += 6;
            continue;
        }
        text[w++] = text[r++];
    }
    lj_value *v = lj_parse(text, w);
    ck_assert_msg(v != NULL, "%s: %s", path, ldm_last_error());
    free(text);
    return v;
}

static const lj_value *first_call_params(const lj_value *cas, const char *op)
{
    const lj_value *calls = lj_get(cas, "calls");
    ck_assert(calls && calls->type == LJ_ARRAY && calls->count >= 1);
    ck_assert_str_eq(lj_string(lj_get(calls->items[0], "op"), ""), op);
    const lj_value *params = lj_get(calls->items[0], "params");
    ck_assert(params != NULL);
    return params;
}

/* Expected I64 [rows, cols] tensor `name` of the fixture's io.safetensors. */
static const int64_t *expected_ids(const char *dir, lw_store **store, const char *name, int64_t rows, int64_t cols)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/io.safetensors", dir);
    ldm_status st = lw_open(path, 0, store);
    ck_assert_msg(st == LDM_OK, "lw_open %s: %s", path, ldm_last_error());
    const lw_tensor *t = lw_find(*store, name);
    ck_assert_msg(t != NULL, "%s: no tensor %s", path, name);
    ck_assert_msg(t->dtype == LW_I64 && t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols,
                  "%s: %s is not I64 [%lld,%lld]", path, name, (long long)rows, (long long)cols);
    return (const int64_t *)t->data;
}

/* ---------------------------------------------------------------- tokenizer fixtures */

static void run_tokenizer_fixture(const char *name, const char *op, ldm_tokenizer_kind kind)
{
    char dir[4096], path[8192];
    if (!fixture_dir(name, dir, sizeof dir)) return;
    lj_value *cas = load_case(dir);
    const lj_value *params = first_call_params(cas, op);
    const lj_value *prompts = lj_get(params, "prompts");
    ck_assert(prompts && prompts->type == LJ_ARRAY && prompts->count > 0);
    int ctx = (int)lj_number(lj_get(params, "max_length"), 77);
    snprintf(path, sizeof path, "%s/%s", dir, lj_string(lj_get(params, "vocab"), ""));

    int n = (int)prompts->count;
    const char **texts = calloc((size_t)n, sizeof *texts);
    for (int i = 0; i < n; i++) texts[i] = prompts->items[i]->string;

    ldm_tokenizer *tok = NULL;
    ldm_status st = ldm_tokenizer_load(kind, path, &tok);
    ck_assert_msg(st == LDM_OK, "load %s: %s", path, ldm_last_error());
    ldm_tensor *ids = NULL;
    st = ldm_tokenizer_encode(tok, texts, n, ctx, &ids);
    ck_assert_msg(st == LDM_OK, "%s encode: %s", name, ldm_last_error());
    ck_assert_int_eq(ldm_tensor_ndim(ids), 2);
    ck_assert_int_eq(ldm_tensor_dim(ids, 0), n);
    ck_assert_int_eq(ldm_tensor_dim(ids, 1), ctx);

    lw_store *io = NULL;
    const int64_t *want = expected_ids(dir, &io, "tokens", n, ctx);
    const int64_t *got = ldm_tensor_data(ids);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < ctx; j++)
            ck_assert_msg(got[i * ctx + j] == want[i * ctx + j],
                          "%s: prompt %d \"%.60s\": position %d: got %lld, expected %lld", name, i, texts[i], j,
                          (long long)got[i * ctx + j], (long long)want[i * ctx + j]);
    printf("%s: %d prompts exact\n", name, n);
    lw_close(io);
    ldm_tensor_free(ids);
    ldm_tokenizer_free(tok);
    free(texts);
    lj_free(cas);
}

START_TEST(test_fixture_clip_sd1) { run_tokenizer_fixture("tok_clip_sd1", "tokenizer.clip_sd1", LDM_TOKENIZER_CLIP); }
END_TEST

START_TEST(test_fixture_openclip_sd2)
{
    run_tokenizer_fixture("tok_openclip_sd2", "tokenizer.openclip_sd2", LDM_TOKENIZER_OPENCLIP);
}
END_TEST

START_TEST(test_fixture_bert) { run_tokenizer_fixture("tok_bert", "tokenizer.bert", LDM_TOKENIZER_BERT); }
END_TEST

/* ---------------------------------------------------------------- layout fixture */

static int param_int(const lj_value *params, const char *key)
{
    const lj_value *v = lj_get(params, key);
    ck_assert_msg(v != NULL, "cond_layout params: no %s", key);
    if (v->type == LJ_BOOL) return v->boolean;
    int64_t x;
    ck_assert_msg(lj_int64(v, &x) == 0, "cond_layout params: %s is not an integer", key);
    return (int)x;
}

START_TEST(test_fixture_layout)
{
    char dir[4096];
    if (!fixture_dir("cond_layout", dir, sizeof dir)) return;
    lj_value *cas = load_case(dir);
    const lj_value *params = first_call_params(cas, "cond.layout_tokens");
    ll_layout_builder b = {
        .no_tokens = param_int(params, "no_tokens"),
        .no_object_classes = param_int(params, "no_object_classes"),
        .no_max_objects = param_int(params, "no_max_objects"),
        .encode_crop = param_int(params, "encode_crop"),
        .use_group_parameter = param_int(params, "use_group_parameter"),
        .use_additional_parameters = param_int(params, "use_additional_parameters"),
    };
    const lj_value *layouts = lj_get(params, "layouts");
    ck_assert(layouts && layouts->type == LJ_ARRAY && layouts->count > 0);
    int len = ll_layout_length(&b), n = (int)layouts->count;
    lw_store *io = NULL;
    const int64_t *want = expected_ids(dir, &io, "tokens", n, len);
    int64_t *got = calloc((size_t)len, sizeof *got);
    for (int i = 0; i < n; i++) {
        ll_layout layout;
        ldm_status st = ll_layout_parse_json(layouts->items[i], &layout);
        ck_assert_msg(st == LDM_OK, "layout %d: %s", i, ldm_last_error());
        st = ll_layout_build(&b, &layout, got, len);
        ck_assert_msg(st == LDM_OK, "layout %d: %s", i, ldm_last_error());
        for (int j = 0; j < len; j++)
            ck_assert_msg(got[j] == want[i * len + j], "cond_layout: layout %d: position %d: got %lld, expected %lld",
                          i, j, (long long)got[j], (long long)want[i * len + j]);
        ll_layout_free(&layout);
    }
    printf("cond_layout: %d layouts exact\n", n);

    /* The public entry point, one layout and a list, against rows 0 (empty) and 5 (crop + flip). */
    const char *one = "{\"objects\": [], \"crop\": null, \"flip\": false}";
    const char *list = "[{\"objects\": []}, {\"objects\": [[10, 0.05, 0.1, 0.3, 0.3, 0], [11, 0.5, 0.5, 0.4, 0.3, 1],"
                       " [12, 0.75, 0.0, 0.2, 0.15]], \"crop\": [0.1, 0.2, 0.6, 0.5], \"flip\": true}]";
    ldm_tensor *t = NULL;
    ck_assert_msg(ldm_layout_tokens_from_json(one, strlen(one), b.no_object_classes, &t) == LDM_OK, "%s",
                  ldm_last_error());
    ck_assert_int_eq(ldm_tensor_dim(t, 0), 1);
    ck_assert_int_eq(ldm_tensor_dim(t, 1), len);
    ck_assert_mem_eq(ldm_tensor_data(t), want, (size_t)len * sizeof(int64_t));
    ldm_tensor_free(t);
    ck_assert_msg(ldm_layout_tokens_from_json(list, strlen(list), b.no_object_classes, &t) == LDM_OK, "%s",
                  ldm_last_error());
    ck_assert_int_eq(ldm_tensor_dim(t, 0), 2);
    ck_assert_mem_eq(ldm_tensor_data(t), want, (size_t)len * sizeof(int64_t));
    ck_assert_mem_eq((int64_t *)ldm_tensor_data(t) + len, want + 5 * len, (size_t)len * sizeof(int64_t));
    ldm_tensor_free(t);

    lw_close(io);
    free(got);
    lj_free(cas);
}
END_TEST

START_TEST(test_layout_errors)
{
    ldm_tensor *t = (ldm_tensor *)1;
    static const char *const bad[] = {
        "{\"objects\": [[1, 0.1, 0.1, 0.2, 0.2, 16]]}",             /* flags beyond 4 bits */
        "{\"objects\": [[-1, 0.1, 0.1, 0.2, 0.2]]}",                /* negative category */
        "{\"objects\": [[1, 0.1, 0.1, 0.2]]}",                      /* short object */
        "{\"objects\": [], \"crop\": [0.5, 0.5, 1.0, 1.0]}",        /* crop reaching out: id >= 8192 */
        "{\"objects\": [[500, 0.1, 0.1, 0.2, 0.2, 15]]}",           /* with 600 classes: 500 + 600*15 >= 8192 */
        "{\"crop\": null}",                                         /* no objects */
        "[]",
        "{\"objects\": [}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int classes = i == 4 ? 600 : 300;
        ldm_status st = ldm_layout_tokens_from_json(bad[i], strlen(bad[i]), classes, &t);
        ck_assert_msg(st == LDM_ERR_INVALID_ARGUMENT, "case %zu (%s): status %d", i, bad[i], st);
        ck_assert_ptr_null(t);
        ck_assert(strlen(ldm_last_error()) > 0);
    }
    /* A box entirely outside the image is dropped, not an error. */
    const char *outside = "{\"objects\": [[7, 1.2, 0.5, 0.1, 0.1, 0]]}";
    ck_assert_int_eq(ldm_layout_tokens_from_json(outside, strlen(outside), 300, &t), LDM_OK);
    ck_assert_int_eq(lt_i64(t)[0], 8191);
    ldm_tensor_free(t);
}
END_TEST

/* ---------------------------------------------------------------- unit tests */

static ldm_tokenizer *load_or_skip(ldm_tokenizer_kind kind)
{
    char path[4096];
    const char *file = kind == LDM_TOKENIZER_BERT ? "bert-base-uncased-vocab.txt" : "bpe_simple_vocab_16e6.txt.gz";
    if (!vocab_path(file, path, sizeof path)) return NULL;
    ldm_tokenizer *tok = NULL;
    ck_assert_msg(ldm_tokenizer_load(kind, path, &tok) == LDM_OK, "%s", ldm_last_error());
    return tok;
}

static void encode_one(ldm_tokenizer *tok, const char *prompt, int ctx, int64_t *out)
{
    ldm_tensor *t = NULL;
    ldm_status st = ldm_tokenizer_encode(tok, &prompt, 1, ctx, &t);
    ck_assert_msg(st == LDM_OK, "encode \"%s\": %s", prompt, ldm_last_error());
    memcpy(out, ldm_tensor_data(t), (size_t)ctx * sizeof *out);
    ldm_tensor_free(t);
}

static void expect_row(ldm_tokenizer *tok, const char *prompt, int ctx, const int64_t *head, int n_head, int64_t pad)
{
    int64_t row[128];
    ck_assert(ctx <= 128);
    encode_one(tok, prompt, ctx, row);
    for (int i = 0; i < ctx; i++) {
        int64_t want = i < n_head ? head[i] : pad;
        ck_assert_msg(row[i] == want, "\"%s\": position %d: got %lld, expected %lld", prompt, i, (long long)row[i],
                      (long long)want);
    }
}

START_TEST(test_empty_prompt)
{
    static const ldm_tokenizer_kind kinds[] = {LDM_TOKENIZER_CLIP, LDM_TOKENIZER_OPENCLIP, LDM_TOKENIZER_BERT};
    static const int64_t heads[3][2] = {{49406, 49407}, {49406, 49407}, {101, 102}};
    static const int64_t pads[3] = {49407, 0, 0};
    for (int k = 0; k < 3; k++) {
        ldm_tokenizer *tok = load_or_skip(kinds[k]);
        if (!tok) return;
        expect_row(tok, "", 77, heads[k], 2, pads[k]);
        expect_row(tok, " \t\r\n ", 77, heads[k], 2, pads[k]);
        ldm_tokenizer_free(tok);
    }
}
END_TEST

START_TEST(test_clip_details)
{
    ldm_tokenizer *tok = load_or_skip(LDM_TOKENIZER_CLIP);
    if (!tok) return;
    /* Values from openai CLIP's SimpleTokenizer (Python, `regex`). */
    expect_row(tok, "a photograph of an astronaut", 77, (const int64_t[]){49406, 320, 8853, 539, 550, 18376, 49407}, 7, 49407);
    expect_row(tok, "<|endoftext|>a", 77, (const int64_t[]){49406, 49407, 320, 49407}, 4, 49407);
    /* IGNORECASE: long s matches the 's' of the special token, which then is ordinary text */
    expect_row(tok, "<|\xC5\xBFtartoftext|>", 77, (const int64_t[]){49406, 27, 91, 129, 123, 2002, 6659, 18169, 91, 285, 49407}, 11, 49407);
    expect_row(tok, "it'\xC5\xBF", 77, (const int64_t[]){49406, 585, 6, 129, 379, 49407}, 6, 49407);
    /* str.lower's final sigma: "ΑΣ" -> "ας" */
    expect_row(tok, "\xCE\x91\xCE\xA3", 77, (const int64_t[]){49406, 138, 109, 139, 480, 49407}, 6, 49407);
    /* short context: start + ctx-2 ids + end */
    expect_row(tok, "a photograph of an astronaut", 5, (const int64_t[]){49406, 320, 8853, 539, 49407}, 5, 49407);
    ldm_tokenizer_free(tok);

    tok = load_or_skip(LDM_TOKENIZER_OPENCLIP);
    if (!tok) return;
    expect_row(tok, "a photograph of an astronaut", 5, (const int64_t[]){49406, 320, 8853, 539, 49407}, 5, 0);
    expect_row(tok, "a photograph", 5, (const int64_t[]){49406, 320, 8853, 49407}, 4, 0);
    ldm_tokenizer_free(tok);
}
END_TEST

START_TEST(test_bert_details)
{
    ldm_tokenizer *tok = load_or_skip(LDM_TOKENIZER_BERT);
    if (!tok) return;
    /* HF's fast tokenizer matches special tokens in the raw text (case-sensitive) */
    expect_row(tok, "hello [MASK] world", 77, (const int64_t[]){101, 7592, 103, 2088, 102}, 5, 0);
    expect_row(tok, "x[SEP]y", 77, (const int64_t[]){101, 1060, 102, 1061, 102}, 5, 0);
    expect_row(tok, "[mask]", 77, (const int64_t[]){101, 1031, 7308, 1033, 102}, 5, 0);
    /* Hangul syllables split into jamo by NFD */
    expect_row(tok, "\xED\x95\x9C\xEA\xB5\xAD", 77, (const int64_t[]){101, 1469, 30006, 30021, 29991, 30014, 30020, 102}, 8, 0);
    expect_row(tok, "Hello, World!", 4, (const int64_t[]){101, 7592, 1010, 102}, 4, 0);
    ldm_tokenizer_free(tok);
}
END_TEST

START_TEST(test_missing_vocab)
{
    static const ldm_tokenizer_kind kinds[] = {LDM_TOKENIZER_CLIP, LDM_TOKENIZER_BERT};
    const char *path = "/nonexistent/dir/bpe_simple_vocab_16e6.txt.gz";
    for (int k = 0; k < 2; k++) {
        ldm_tokenizer *tok = (ldm_tokenizer *)1;
        ldm_status st = ldm_tokenizer_load(kinds[k], path, &tok);
        ck_assert_msg(st == LDM_ERR_NOT_FOUND || st == LDM_ERR_IO, "status %d", st);
        ck_assert_ptr_null(tok);
        ck_assert_msg(strstr(ldm_last_error(), path) != NULL, "message lacks the path: %s", ldm_last_error());
    }
    ldm_tokenizer *tok = NULL;
    ck_assert_int_eq(ldm_tokenizer_load(LDM_TOKENIZER_CLIP, NULL, &tok), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_tokenizer_load((ldm_tokenizer_kind)42, path, &tok), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_tokenizer_load(LDM_TOKENIZER_CLIP, path, NULL), LDM_ERR_INVALID_ARGUMENT);
}
END_TEST

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert(f != NULL);
    ck_assert_int_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void expect_load_failure(ldm_tokenizer_kind kind, const char *path, const char *what)
{
    ldm_tokenizer *tok = (ldm_tokenizer *)1;
    ldm_status st = ldm_tokenizer_load(kind, path, &tok);
    ck_assert_msg(st == LDM_ERR_FORMAT || st == LDM_ERR_NOT_FOUND, "%s: status %d (%s)", what, st, ldm_last_error());
    ck_assert_ptr_null(tok);
    ck_assert_msg(strstr(ldm_last_error(), path) != NULL, "%s: message lacks the path: %s", what, ldm_last_error());
}

START_TEST(test_corrupt_vocab)
{
    char tmpl[] = "/tmp/ldm_tok_XXXXXX";
    int fd = mkstemp(tmpl);
    ck_assert(fd >= 0);
    close(fd);
    /* gzip magic + deflate method, then garbage */
    static const unsigned char garbage[] = {0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff, 0x12, 0x34, 0x56};
    write_file(tmpl, garbage, sizeof garbage);
    expect_load_failure(LDM_TOKENIZER_CLIP, tmpl, "corrupt gzip");
    /* a plain file that is not a merge list */
    write_file(tmpl, "#version: 0.2\nnot a pair of symbols\n", 36);
    expect_load_failure(LDM_TOKENIZER_CLIP, tmpl, "bad merge line");
    write_file(tmpl, "#version: 0.2\ni n\n", 18);
    expect_load_failure(LDM_TOKENIZER_CLIP, tmpl, "too few merges");
    /* a BERT vocabulary without [CLS] */
    write_file(tmpl, "[PAD]\n[UNK]\nthe\n", 16);
    expect_load_failure(LDM_TOKENIZER_BERT, tmpl, "BERT vocab without [CLS]");
    /* a truncated copy of the real file */
    char path[4096];
    if (vocab_path("bpe_simple_vocab_16e6.txt.gz", path, sizeof path)) {
        size_t len;
        char *data = read_whole(path, &len);
        write_file(tmpl, data, len / 2);
        expect_load_failure(LDM_TOKENIZER_CLIP, tmpl, "truncated gzip");
        data[len / 2] ^= 0x55; /* a flipped byte: inflate error or CRC mismatch */
        write_file(tmpl, data, len);
        expect_load_failure(LDM_TOKENIZER_CLIP, tmpl, "corrupted gzip");
        free(data);
    }
    unlink(tmpl);
}
END_TEST

START_TEST(test_bad_arguments)
{
    ldm_tokenizer *tok = load_or_skip(LDM_TOKENIZER_BERT);
    if (!tok) return;
    ldm_tensor *t = (ldm_tensor *)1;
    const char *bad_utf8[] = {"ok", "caf\xC3", "\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xFF"};
    for (int i = 1; i < 6; i++) {
        const char *two[2] = {bad_utf8[0], bad_utf8[i]};
        ck_assert_int_eq(ldm_tokenizer_encode(tok, two, 2, 77, &t), LDM_ERR_INVALID_ARGUMENT);
        ck_assert_ptr_null(t);
        ck_assert_msg(strstr(ldm_last_error(), "prompt 1") != NULL, "%s", ldm_last_error());
    }
    const char *p = "a";
    const char *null_prompt[1] = {NULL};
    ck_assert_int_eq(ldm_tokenizer_encode(tok, &p, 1, 1, &t), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_tokenizer_encode(tok, &p, 0, 77, &t), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_tokenizer_encode(tok, NULL, 1, 77, &t), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_tokenizer_encode(tok, null_prompt, 1, 77, &t), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_tokenizer_encode(NULL, &p, 1, 77, &t), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ldm_tokenizer_encode(tok, &p, 1, 77, NULL), LDM_ERR_INVALID_ARGUMENT);
    ldm_tokenizer_free(tok);
    ldm_tokenizer_free(NULL);
}
END_TEST

/* Every allocation of a load and an encode failing in turn: an error each time, never a crash. */
START_TEST(test_allocation_failures)
{
    static const ldm_tokenizer_kind kinds[] = {LDM_TOKENIZER_CLIP, LDM_TOKENIZER_BERT};
    for (int k = 0; k < 2; k++) {
        char path[4096];
        const char *file = kinds[k] == LDM_TOKENIZER_BERT ? "bert-base-uncased-vocab.txt" : "bpe_simple_vocab_16e6.txt.gz";
        if (!vocab_path(file, path, sizeof path)) return;
        ldm_tokenizer *tok = NULL;
        for (long n = 1;; n++) {
            ldm_alloc_fail_after(n);
            ldm_status st = ldm_tokenizer_load(kinds[k], path, &tok);
            ldm_alloc_fail_after(0);
            if (st == LDM_OK) break;
            ck_assert_ptr_null(tok);
            ck_assert_msg(n < 1000, "load never succeeds");
        }
        const char *prompts[2] = {"Hello &amp; W\xC3\xB6rld, [MASK] \xCE\xA3 caf\xC3\xA9 \xE6\x9D\xB1", "second prompt"};
        for (long n = 1;; n++) {
            ldm_tensor *t = NULL;
            ldm_alloc_fail_after(n);
            ldm_status st = ldm_tokenizer_encode(tok, prompts, 2, 77, &t);
            ldm_alloc_fail_after(0);
            if (st == LDM_OK) {
                ldm_tensor_free(t);
                break;
            }
            ck_assert_ptr_null(t);
            ck_assert_msg(n < 1000, "encode never succeeds");
        }
        ldm_tokenizer_free(tok);
    }
}
END_TEST

/* ---- text clean-up pieces, expected values from CPython 3.11 */

static void decode(const char *s, ltx_cpbuf *b)
{
    b->len = 0;
    ck_assert_int_eq(ltx_utf8_decode(s, strlen(s), b, "test"), LDM_OK);
}

static void expect_cps(const ltx_cpbuf *got, const uint32_t *want, size_t n, const char *what)
{
    ck_assert_msg(got->len == n, "%s: %zu code points, expected %zu", what, got->len, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(got->cp[i] == want[i], "%s: position %zu: U+%04X, expected U+%04X", what, i, got->cp[i], want[i]);
}

START_TEST(test_html_unescape)
{
    static const struct {
        const char *in;
        uint32_t out[8];
        size_t n;
    } cases[] = {
        {"&amp;amp;", {'&', 'a', 'm', 'p', ';'}, 5},
        {"&ampx", {'&', 'x'}, 2},
        {"&notit;", {0xAC, 'i', 't', ';'}, 4},
        {"&#0;", {0xFFFD}, 1},
        {"&#13;", {'\r'}, 1},
        {"&#x80;", {0x20AC}, 1},
        {"&#xD800;", {0xFFFD}, 1},
        {"&#1114112;", {0xFFFD}, 1},
        {"&#99999999999999999999;", {0xFFFD}, 1},
        {"&#1;", {0}, 0},
        {"&#xfffe;", {0}, 0},
        {"&#65", {'A'}, 1},
        {"&#x41;;", {'A', ';'}, 2},
        {"&lt", {'<'}, 1},
        {"&LT;", {'<'}, 1},
        {"&a", {'&', 'a'}, 2},
        {"&#x", {'&', '#', 'x'}, 3},
        {"&#;", {'&', '#', ';'}, 3},
        {"&NotNestedGreaterGreater;", {0x2AA2, 0x338}, 2},
        {"&#x1F600;", {0x1F600}, 1},
        {"x&copy2", {'x', 0xA9, '2'}, 3},
        {"&", {'&'}, 1},
    };
    ltx_cpbuf in = {0}, out = {0};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        decode(cases[i].in, &in);
        out.len = 0;
        ck_assert_int_eq(ltx_html_unescape(in.cp, in.len, &out), LDM_OK);
        expect_cps(&out, cases[i].out, cases[i].n, cases[i].in);
    }
    /* a name longer than 32 chars is left alone */
    decode("&aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa;", &in);
    out.len = 0;
    ck_assert_int_eq(ltx_html_unescape(in.cp, in.len, &out), LDM_OK);
    expect_cps(&out, in.cp, in.len, "long name");
    ltx_cpbuf_free(&in);
    ltx_cpbuf_free(&out);
}
END_TEST

START_TEST(test_lower_and_nfd)
{
    ltx_cpbuf in = {0}, out = {0};
    /* 'ΑΣ ΑΣΑ Σ ΑΣ\u0301 aΣ1 İ'.lower() == 'ας ασα σ ας́ aς1 i̇' */
    decode("\xCE\x91\xCE\xA3 \xCE\x91\xCE\xA3\xCE\x91 \xCE\xA3 \xCE\x91\xCE\xA3\xCC\x81 a\xCE\xA3" "1 \xC4\xB0", &in);
    ck_assert_int_eq(ltx_u_lower_python(in.cp, in.len, &out), LDM_OK);
    static const uint32_t lower[] = {0x3B1, 0x3C2, ' ', 0x3B1, 0x3C3, 0x3B1, ' ', 0x3C3, ' ', 0x3B1, 0x3C2, 0x301,
                                     ' ', 'a', 0x3C2, '1', ' ', 'i', 0x307};
    expect_cps(&out, lower, sizeof lower / sizeof *lower, "lower");
    /* NFD: é -> e + U+0301; 한 -> 3 jamo; marks reordered by combining class (0323 < 0301) */
    decode("\xC3\xA9\xED\x95\x9C" "a\xCC\x81\xCC\xA3", &in);
    out.len = 0;
    ck_assert_int_eq(ltx_u_nfd(in.cp, in.len, &out), LDM_OK);
    static const uint32_t nfd[] = {'e', 0x301, 0x1112, 0x1161, 0x11AB, 'a', 0x323, 0x301};
    expect_cps(&out, nfd, sizeof nfd / sizeof *nfd, "nfd");
    ltx_cpbuf_free(&in);
    ltx_cpbuf_free(&out);
}
END_TEST

static Suite *tokenizer_suite(void)
{
    Suite *s = suite_create("tokenizers");
    TCase *fx = tcase_create("fixtures");
    tcase_set_timeout(fx, 120);
    tcase_add_test(fx, test_fixture_clip_sd1);
    tcase_add_test(fx, test_fixture_openclip_sd2);
    tcase_add_test(fx, test_fixture_bert);
    tcase_add_test(fx, test_fixture_layout);
    suite_add_tcase(s, fx);
    TCase *unit = tcase_create("unit");
    tcase_set_timeout(unit, 300);
    tcase_add_test(unit, test_empty_prompt);
    tcase_add_test(unit, test_clip_details);
    tcase_add_test(unit, test_bert_details);
    tcase_add_test(unit, test_missing_vocab);
    tcase_add_test(unit, test_corrupt_vocab);
    tcase_add_test(unit, test_bad_arguments);
    tcase_add_test(unit, test_allocation_failures);
    tcase_add_test(unit, test_html_unescape);
    tcase_add_test(unit, test_lower_and_nfd);
    tcase_add_test(unit, test_layout_errors);
    suite_add_tcase(s, unit);
    return s;
}

int main(void)
{
    return ck_run_suite(tokenizer_suite());
}
