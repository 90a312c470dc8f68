/* layout.h - layout-to-image conditioning tokens: taming-transformers'
 * ObjectsBoundingBoxConditionalBuilder.build() (layout2img-openimages256), without the random
 * shuffle of the objects (they keep their input order).
 *
 * A layout is a list of objects (category, box (x0, y0, w, h) relative to the image, flags), an
 * optional crop box and a horizontal-flip flag. Per object one triple
 *   (category_no + no_object_classes * modifier, token(top-left), token(bottom-right))
 * where token(x, y) = round(y * (S-1)) * S + round(x * (S-1)), S = floor(sqrt(no_tokens)), round
 * half to even; padding triples use no_tokens - 1; with encode_crop two crop tokens follow. */
#ifndef LDM_TEXT_LAYOUT_H
#define LDM_TEXT_LAYOUT_H

#include "../core/common.h"
#include "../core/json.h"

typedef struct {
    int no_tokens;         /* 8192 in layout2img-openimages256 */
    int no_object_classes; /* category count of the data set (data dependent) */
    int no_max_objects;    /* 30 */
    int encode_crop;       /* boxes stay in image coordinates, crop appended as 2 tokens */
    int use_group_parameter;
    int use_additional_parameters;
} ll_layout_builder;

enum { LL_GROUP_OF = 1, LL_OCCLUDED = 2, LL_DEPICTION = 4, LL_INSIDE = 8 };

typedef struct {
    int64_t category_no;
    double x0, y0, w, h; /* relative to the image; values outside [0,1] are clamped or dropped */
    int flags;           /* LL_GROUP_OF | LL_OCCLUDED | LL_DEPICTION | LL_INSIDE */
} ll_object;

typedef struct {
    ll_object *objects; /* ldm_malloc'ed, released by ll_layout_free */
    size_t n_objects;
    int has_crop;       /* 0: the full image (0, 0, 1, 1) */
    double crop[4];     /* x0, y0, w, h */
    int flip;
} ll_layout;

/* The layout2img-openimages256 settings: no_tokens 8192, no_max_objects 30, encode_crop,
 * use_group_parameter and use_additional_parameters all on. */
void ll_layout_builder_default(ll_layout_builder *b, int no_object_classes);
/* Number of ids build() produces: 3 * no_max_objects (+ 2 with encode_crop). */
int ll_layout_length(const ll_layout_builder *b);
/* Token ids of one layout into out_ids[0..n_out), n_out == ll_layout_length(b). Fails like the
 * reference's assertion when an id leaves [0, no_tokens) (e.g. a crop reaching outside the
 * image or too many object classes). */
ldm_status ll_layout_build(const ll_layout_builder *b, const ll_layout *layout, int64_t *out_ids, int n_out);

/* Parses {"objects": [[category_no, x0, y0, w, h, flags?], ...], "crop": null | [x0, y0, w, h],
 * "flip": bool} ("crop" and "flip" optional, flags default 0). */
ldm_status ll_layout_parse_json(const lj_value *v, ll_layout *out);
void ll_layout_free(ll_layout *layout);

#endif
