/* diffusers_internal.h - the parts of a diffusers folder reader (diffusers.c): each component's
 * config.json into the model description (diffusers_config.c). `file` names the JSON file in
 * messages. Keys that are absent take diffusers' class defaults; a value libldm does not implement
 * is LDM_ERR_UNSUPPORTED naming the file, key and value; a value of the wrong type LDM_ERR_FORMAT.
 * Keys these functions do not know are ignored (diffusers adds keys with neutral defaults). */
#ifndef LDM_MODELS_DIFFUSERS_INTERNAL_H
#define LDM_MODELS_DIFFUSERS_INTERNAL_H

#include "../core/json.h"
#include "desc.h"
#include "unet_names.h"

/* UNet2DConditionModel: the UNet, the layout for name translation and sample_size. */
ldm_status ldd_unet_config(const char *file, const lj_value *c, ld_unet *u, ld_unet_layout *layout, int *sample_size);
/* AutoencoderKL: the first stage and scaling_factor. */
ldm_status ldd_vae_config(const char *file, const lj_value *c, ld_autoencoder *a, double *scaling_factor);
/* transformers CLIPTextModel: LD_COND_CLIP (quick_gelu, SD 1.x) or LD_COND_OPENCLIP (gelu, SD 2.x). */
ldm_status ldd_text_config(const char *file, const lj_value *c, ld_cond *cond);
/* A diffusers scheduler: timesteps, beta schedule and prediction type into m; notes for the rest. */
ldm_status ldd_scheduler_config(const char *file, const lj_value *c, ld_model *m);

#endif
