/* layout_tokens.c - the cond.layout_tokens op: builder settings and layouts from a case.json call.
 * The builder's settings vary per fixture, so this uses the internal builder with all of them
 * (the public ldm_layout_tokens_from_json uses the layout2img-openimages256 defaults). */
#include "fixture.h"

#include "core/tensor.h"
#include "text/layout.h"

static int flag(const lj_value *params, const char *key, int fallback)
{
    const lj_value *v = lj_get(params, key);
    return (v && v->type == LJ_BOOL) ? v->boolean : fallback;
}

ldm_status fx_layout_tokens(const lj_value *params, ldm_tensor **out)
{
    ll_layout_builder b;
    ll_layout_builder_default(&b, (int)lj_number(lj_get(params, "no_object_classes"), 300));
    b.no_tokens = (int)lj_number(lj_get(params, "no_tokens"), b.no_tokens);
    b.no_max_objects = (int)lj_number(lj_get(params, "no_max_objects"), b.no_max_objects);
    b.encode_crop = flag(params, "encode_crop", b.encode_crop);
    b.use_group_parameter = flag(params, "use_group_parameter", b.use_group_parameter);
    b.use_additional_parameters = flag(params, "use_additional_parameters", b.use_additional_parameters);
    const lj_value *layouts = lj_get(params, "layouts");
    if (!layouts || layouts->type != LJ_ARRAY) return ldm_fail(LDM_ERR_FORMAT, "layout_tokens: params.layouts missing");
    int len = ll_layout_length(&b);
    int64_t shape[2] = {(int64_t)layouts->count, len};
    LDM_TRY(ldm_tensor_create(LDM_I64, 2, shape, out));
    for (size_t i = 0; i < layouts->count; i++) {
        ll_layout lay;
        ldm_status st = ll_layout_parse_json(layouts->items[i], &lay);
        if (st == LDM_OK) {
            st = ll_layout_build(&b, &lay, lt_i64(*out) + i * (size_t)len, len);
            ll_layout_free(&lay);
        }
        if (st != LDM_OK) {
            ldm_tensor_free(*out);
            *out = NULL;
            return st;
        }
    }
    return LDM_OK;
}
