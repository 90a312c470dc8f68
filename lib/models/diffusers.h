/* diffusers.h - a model released as a diffusers folder (model_index.json, unet/, vae/,
 * text_encoder/, scheduler/) read as if it were a CompVis checkpoint: ONE weight store whose
 * tensors carry CompVis names (model.diffusion_model.*, first_stage_model.*, cond_stage_model.*)
 * and point into the components' own mappings (a float16 tensor stays in its file; a Linear that
 * CompVis stores as a 1x1 convolution is the same bytes with another shape; only SD 2.x's q/k/v
 * are stacked into a private copy), plus the architecture read from the components' config.json
 * files and the scheduler's scheduler_config.json. Everything downstream (config completion,
 * networks, samplers) is unchanged. */
#ifndef LDM_MODELS_DIFFUSERS_H
#define LDM_MODELS_DIFFUSERS_H

#include "../io/weights.h"
#include "desc.h"

/* Non-zero when `path` is a folder holding a model_index.json, or a file named model_index.json. */
int ld_diffusers_is_folder(const char *path);

/* Reads the folder (or the folder of a model_index.json). `max_alloc` caps single allocations
 * while the component files are opened (0 = none). On success *store holds the translated
 * tensors (its path is the folder) and *desc the architecture; notes in desc->notes say what was
 * read (pipeline and scheduler class, timestep spacing, bytes copied). Errors name the file and
 * key: a missing component or weights file, bad JSON, a configuration libldm does not implement
 * (LDM_ERR_UNSUPPORTED naming the key and value), a tensor with no CompVis counterpart. */
ldm_status ld_diffusers_open(const char *path, size_t max_alloc, lw_store **store, ld_model *desc);

#endif
