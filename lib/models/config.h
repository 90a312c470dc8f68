/* config.h - the model description from an original YAML config or from the checkpoint itself. */
#ifndef LDM_MODELS_CONFIG_H
#define LDM_MODELS_CONFIG_H

#include "../io/weights.h"
#include "desc.h"

/* Reads a CompVis/Stability YAML config (model: target: ... params: ...) into `out`. Unknown keys
 * are ignored; values of the wrong type or unsupported targets are errors naming the key. Also
 * reads the fixtures' `libldm_test.text_encoder` dims when present. */
ldm_status ld_config_load(const char *yaml_path, ld_model *out);
/* Same from a string in memory (name is used in messages). */
ldm_status ld_config_parse(const char *yaml_text, size_t len, const char *name, ld_model *out);

/* Fills the parts of `m` that only the weights can tell (text tower dims, vocab sizes, layer
 * counts) and checks the config against the checkpoint's tensor shapes. */
ldm_status ld_config_complete(ld_model *m, const lw_store *s);

/* Detects the architecture from tensor names and shapes alone (SD 1.x, SD 2.x, LDM zoo). The
 * error says what could not be decided (e.g. "parameterization (eps or v) cannot be told from
 * the weights: pass a config"). */
ldm_status ld_detect(const lw_store *s, ld_model *out);

/* A multi-line human description: architecture, parameter counts per component, dtypes. */
ldm_status ld_describe(const ld_model *m, const lw_store *s, char *buf, size_t cap);

#endif
