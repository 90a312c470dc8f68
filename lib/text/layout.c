/* layout.c - ObjectsBoundingBoxConditionalBuilder.build() (taming-transformers
 * taming/data/conditional_builder/{objects_bbox,objects_center_points,utils}.py), the JSON layout
 * form, and the public ldm_layout_tokens_from_json(). All coordinate arithmetic is double, in the
 * reference's order, so that the round-half-even grid positions match bit for bit. */
#include "layout.h"

#include "../core/tensor.h"

#include <math.h>
#include <string.h>

typedef struct { double x0, y0, w, h; } box;

static const box full_crop = {0.0, 0.0, 1.0, 1.0};

void ll_layout_builder_default(ll_layout_builder *b, int no_object_classes)
{
    b->no_tokens = 8192;
    b->no_object_classes = no_object_classes;
    b->no_max_objects = 30;
    b->encode_crop = 1;
    b->use_group_parameter = 1;
    b->use_additional_parameters = 1;
}

int ll_layout_length(const ll_layout_builder *b) { return 3 * b->no_max_objects + (b->encode_crop ? 2 : 0); }

/* ---------------------------------------------------------------- build */

/* Python round(): nearest integer, ties to even. */
static double round_half_even(double v)
{
    double r = floor(v);
    double d = v - r; /* exact */
    if (d > 0.5 || (d == 0.5 && fmod(r, 2.0) != 0.0)) r += 1.0;
    return r;
}

/* tokenize_coordinates(x, y) = round(y*(S-1))*S + round(x*(S-1)); fails on non-finite or
 * absurdly large coordinates (where Python's int(round()) would raise). */
static ldm_status grid_token(int sections, double x, double y, int64_t *out)
{
    double rx = round_half_even(x * (double)(sections - 1));
    double ry = round_half_even(y * (double)(sections - 1));
    if (!(fabs(rx) < 1e15) || !(fabs(ry) < 1e15))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "layout: coordinate (%g, %g) is not a usable number", x, y);
    *out = (int64_t)ry * sections + (int64_t)rx;
    return LDM_OK;
}

static double intersection_area(box a, box b)
{
    double x_overlap = fmax(0.0, fmin(a.x0 + a.w, b.x0 + b.w) - fmax(a.x0, b.x0));
    double y_overlap = fmax(0.0, fmin(a.y0 + a.h, b.y0 + b.h) - fmax(a.y0, b.y0));
    return x_overlap * y_overlap;
}

/* Python max(min(x, 1.), 0.) (NaN passes through; the caller rejects it later). */
static double clamp01(double x)
{
    double m = x < 1.0 ? x : (1.0 < x ? 1.0 : x);
    return 0.0 > m ? 0.0 : m;
}

/* rescale_annotations' rescale_bbox for one box. */
static ldm_status rescale(box b, box crop, int flip, box *out)
{
    if (crop.w == 0.0 || crop.h == 0.0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "layout: crop box has zero width or height");
    double x0 = clamp01((b.x0 - crop.x0) / crop.w);
    double y0 = clamp01((b.y0 - crop.y0) / crop.h);
    double w = fmin(b.w / crop.w, 1.0 - x0);
    double h = fmin(b.h / crop.h, 1.0 - y0);
    if (flip) x0 = 1.0 - (x0 + w);
    *out = (box){x0, y0, w, h};
    return LDM_OK;
}

static int64_t object_representation(const ll_layout_builder *b, const ll_object *o)
{
    int64_t modifier = 0;
    if (b->use_group_parameter) modifier |= o->flags & LL_GROUP_OF;
    if (b->use_additional_parameters) modifier |= o->flags & (LL_OCCLUDED | LL_DEPICTION | LL_INSIDE);
    return o->category_no + (int64_t)b->no_object_classes * modifier;
}

static ldm_status check_builder(const ll_layout_builder *b, int n_out)
{
    if (b->no_tokens < 4 || b->no_object_classes < 1 || b->no_max_objects < 0 || b->no_max_objects > (1 << 20))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "layout builder: no_tokens %d (>= 4), no_object_classes %d (>= 1), no_max_objects %d (0..%d)",
                        b->no_tokens, b->no_object_classes, b->no_max_objects, 1 << 20);
    if (n_out != ll_layout_length(b))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "layout builder: output has %d ids, expected %d", n_out,
                        ll_layout_length(b));
    return LDM_OK;
}

static ldm_status check_object(const ll_object *o, size_t index)
{
    if (!isfinite(o->x0) || !isfinite(o->y0) || !isfinite(o->w) || !isfinite(o->h))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "layout: object %zu has a non-finite box", index);
    if (o->flags < 0 || o->flags > 15)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "layout: object %zu: flags %d outside 0..15", index, o->flags);
    return LDM_OK;
}

ldm_status ll_layout_build(const ll_layout_builder *b, const ll_layout *layout, int64_t *out_ids, int n_out)
{
    if (!b || !layout || !out_ids) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "layout build: NULL argument");
    LDM_TRY(check_builder(b, n_out));
    int sections = (int)sqrt((double)b->no_tokens);
    int64_t none = b->no_tokens - 1;
    box crop = full_crop;
    if (layout->has_crop) crop = (box){layout->crop[0], layout->crop[1], layout->crop[2], layout->crop[3]};
    if (!isfinite(crop.x0) || !isfinite(crop.y0) || !isfinite(crop.w) || !isfinite(crop.h))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "layout: non-finite crop box");
    size_t n_objects = LDM_MIN(layout->n_objects, (size_t)b->no_max_objects);
    int64_t *ids = out_ids;
    for (size_t i = 0; i < n_objects; i++) {
        const ll_object *o = &layout->objects[i];
        LDM_TRY(check_object(o, i));
        box bb = {o->x0, o->y0, o->w, o->h};
        if (!(intersection_area(bb, crop) > 0.0)) continue; /* outside the crop: dropped */
        box r = {0};
        LDM_TRY(rescale(bb, b->encode_crop ? full_crop : crop, layout->flip, &r));
        ids[0] = object_representation(b, o);
        LDM_TRY(grid_token(sections, r.x0, r.y0, &ids[1]));
        LDM_TRY(grid_token(sections, r.x0 + r.w, r.y0 + r.h, &ids[2]));
        ids += 3;
    }
    while (ids < out_ids + 3 * (size_t)b->no_max_objects) *ids++ = none;
    if (b->encode_crop) {
        if (layout->flip) crop.x0 = 1.0 - (crop.x0 + crop.w);
        LDM_TRY(grid_token(sections, crop.x0, crop.y0, &ids[0]));
        LDM_TRY(grid_token(sections, crop.x0 + crop.w, crop.y0 + crop.h, &ids[1]));
    }
    for (int i = 0; i < n_out; i++)
        if (out_ids[i] < 0 || out_ids[i] >= b->no_tokens)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                            "layout: token %lld at position %d is outside [0, %d) (crop outside the image, or a "
                            "category/flag combination beyond the vocabulary)",
                            (long long)out_ids[i], i, b->no_tokens);
    return LDM_OK;
}

/* ---------------------------------------------------------------- JSON */

static ldm_status parse_number(const lj_value *v, const char *what, size_t index, double *out)
{
    if (!v || v->type != LJ_NUMBER)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "layout JSON: object %zu: %s is not a number", index, what);
    *out = v->number;
    return LDM_OK;
}

static ldm_status parse_object(const lj_value *v, size_t index, ll_object *o)
{
    if (!v || v->type != LJ_ARRAY || (v->count != 5 && v->count != 6))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "layout JSON: object %zu is not [category_no, x0, y0, w, h, flags]", index);
    int64_t category, flags = 0;
    if (lj_int64(v->items[0], &category) != 0 || category < 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "layout JSON: object %zu: category_no is not an integer >= 0", index);
    if (v->count == 6 && (lj_int64(v->items[5], &flags) != 0 || flags < 0 || flags > 15))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "layout JSON: object %zu: flags is not an integer in 0..15", index);
    o->category_no = category;
    o->flags = (int)flags;
    LDM_TRY(parse_number(v->items[1], "x0", index, &o->x0));
    LDM_TRY(parse_number(v->items[2], "y0", index, &o->y0));
    LDM_TRY(parse_number(v->items[3], "w", index, &o->w));
    return parse_number(v->items[4], "h", index, &o->h);
}

static ldm_status parse_crop(const lj_value *c, ll_layout *out)
{
    if (!c || c->type == LJ_NULL) return LDM_OK;
    if (c->type != LJ_ARRAY || (c->count != 0 && c->count != 4))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "layout JSON: \"crop\" is not null or [x0, y0, w, h]");
    if (c->count == 0) return LDM_OK; /* an empty crop is falsy: the full image, as in the reference */
    for (int i = 0; i < 4; i++) {
        if (c->items[i]->type != LJ_NUMBER)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "layout JSON: \"crop\" item %d is not a number", i);
        out->crop[i] = c->items[i]->number;
    }
    out->has_crop = 1;
    return LDM_OK;
}

ldm_status ll_layout_parse_json(const lj_value *v, ll_layout *out)
{
    memset(out, 0, sizeof *out);
    if (!v || v->type != LJ_OBJECT) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "layout JSON: a layout must be an object");
    const lj_value *objects = lj_get(v, "objects");
    if (!objects || objects->type != LJ_ARRAY)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "layout JSON: missing \"objects\" array");
    const lj_value *flip = lj_get(v, "flip");
    if (flip && flip->type != LJ_BOOL && flip->type != LJ_NULL)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "layout JSON: \"flip\" is not a boolean");
    out->flip = flip && flip->type == LJ_BOOL && flip->boolean;
    LDM_TRY(parse_crop(lj_get(v, "crop"), out));
    if (objects->count) {
        out->objects = ldm_calloc(objects->count, sizeof *out->objects);
        if (!out->objects) return LDM_ERR_OUT_OF_MEMORY;
    }
    for (size_t i = 0; i < objects->count; i++) {
        ldm_status st = parse_object(objects->items[i], i, &out->objects[i]);
        if (st != LDM_OK) {
            ll_layout_free(out);
            return st;
        }
    }
    out->n_objects = objects->count;
    return LDM_OK;
}

void ll_layout_free(ll_layout *layout)
{
    if (!layout) return;
    ldm_free(layout->objects);
    layout->objects = NULL;
    layout->n_objects = 0;
}

/* ---------------------------------------------------------------- public API */

static ldm_status build_rows(const lj_value *root, int no_object_classes, ldm_tensor **out)
{
    ll_layout_builder b;
    ll_layout_builder_default(&b, no_object_classes);
    int is_list = root->type == LJ_ARRAY;
    size_t n = is_list ? root->count : 1;
    if (n == 0) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "layout JSON: empty list of layouts");
    if (n > (1u << 20)) return ldm_fail(LDM_ERR_LIMIT, "layout JSON: %zu layouts (limit %u)", n, 1u << 20);
    int len = ll_layout_length(&b);
    int64_t shape[2] = {(int64_t)n, len};
    ldm_tensor *t = lt_new_i64(2, shape);
    if (!t) return LDM_ERR_OUT_OF_MEMORY;
    ldm_status st = LDM_OK;
    for (size_t i = 0; i < n && st == LDM_OK; i++) {
        ll_layout layout;
        st = ll_layout_parse_json(is_list ? root->items[i] : root, &layout);
        if (st == LDM_OK) st = ll_layout_build(&b, &layout, lt_i64(t) + i * (size_t)len, len);
        ll_layout_free(&layout);
        if (st != LDM_OK && is_list) ldm_fail_context(st, "layout %zu: ", i);
    }
    if (st != LDM_OK) {
        ldm_tensor_free(t);
        return st;
    }
    *out = t;
    return LDM_OK;
}

LDM_API ldm_status ldm_layout_tokens_from_json(const char *json_text, size_t len, int no_object_classes,
                                               ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_layout_tokens_from_json: out is NULL");
    *out = NULL;
    if (!json_text) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_layout_tokens_from_json: json_text is NULL");
    if (no_object_classes < 1)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_layout_tokens_from_json: no_object_classes %d < 1",
                        no_object_classes);
    lj_value *root = lj_parse(json_text, len);
    if (!root) return ldm_fail_context(LDM_ERR_INVALID_ARGUMENT, "layout: ");
    ldm_status st = build_rows(root, no_object_classes, out);
    lj_free(root);
    return st;
}
