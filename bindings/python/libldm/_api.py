"""ctypes declarations of include/ldm.h: the loaded library with every prototype, the parameter
structs and the callback types. Nothing here is Pythonic; the classes in the other modules are.

Handles are plain c_void_p: the C types are opaque, so there is nothing to declare for them.
"""
import ctypes
import operator
import os
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char, c_char_p, c_double, c_float, c_int,
                    c_int64, c_size_t, c_uint64, c_void_p)

from . import _library

lib, library_path = _library.load()

# ---------------------------------------------------------------- enums (values of include/ldm.h)

LDM_OK = 0
STATUS_INVALID_ARGUMENT = 1
LDM_CANCELLED = 10

F32, I64 = 0, 1
MAX_DIMS = 6

WEIGHTS = {"auto": 0, "ema": 1, "raw": 2}
COMPUTE = {"f32": 0, "bf16": 1}  # ldm_compute
SAMPLERS = {"ddim": 0, "plms": 1, "ddpm": 2, "euler": 3, "euler_a": 4, "euler_ancestral": 4,
            "heun": 5, "dpmpp_2m": 6, "dpmpp_2m_karras": 7, "lcm": 8}
PARAMETERIZATIONS = {"eps": 0, "v": 1, "x0": 2}
SPACINGS = {"default": 0, "trailing": 1}  # ldm_timestep_spacing
DISCRETIZATIONS = {"kdiffusion": 0, "sgm": 1}  # LDM_DISCRETIZATION_* (SDXL samples with "sgm")
TOKENIZERS = {"clip": 0, "openclip": 1, "bert": 2}
AUTOENCODER_KINDS = {0: "kl", 1: "vq"}
CONDITIONER_KINDS = {0: "none", 1: "class", 2: "clip_text", 3: "openclip_text", 4: "bert",
                     5: "spatial_rescaler", 6: "first_stage", 7: "identity", 8: "sdxl"}
LOG_LEVELS = {0: "error", 1: "warn", 2: "info", 3: "debug"}
UNCOND_CLASS_AUTO = -1  # LDM_UNCOND_CLASS_AUTO: the model's own unconditional class, if any
UNCOND_CLASS_NONE = -2  # LDM_UNCOND_CLASS_NONE: the model has none
PROMPT_NO_EMPHASIS = 1  # LDM_PROMPT_*: prompt syntax flags (docs/prompts.md)
PROMPT_NO_COMMA_BACKTRACK = 2
PROMPT_NO_NORMALIZE = 4


def prompt_flags(emphasis=True, comma_backtrack=True, normalize=True):
    """The LDM_PROMPT_* flags of the keyword arguments the bindings take."""
    return ((0 if emphasis else PROMPT_NO_EMPHASIS) | (0 if comma_backtrack else PROMPT_NO_COMMA_BACKTRACK)
            | (0 if normalize else PROMPT_NO_NORMALIZE))

# ---------------------------------------------------------------- callbacks and structs

LOG_CALLBACK = CFUNCTYPE(None, c_int, c_char_p, c_void_p)
PROGRESS_CALLBACK = CFUNCTYPE(c_int, c_int, c_int, c_void_p)
ABORT_CALLBACK = CFUNCTYPE(c_int, c_void_p)
PREVIEW_CALLBACK = CFUNCTYPE(c_int, c_int, c_int, c_void_p, c_void_p)

VAE_CHOICES = {"full": 0, "tiny": 1}  # ldm_vae_choice
PREVIEW_KINDS = {"auto": 0, "tiny": 1, "linear": 2, "full": 3}  # ldm_preview_kind


class ModelParams(Structure):
    _fields_ = [("struct_size", c_size_t), ("config_path", c_char_p), ("vocab_path", c_char_p),
                ("n_threads", c_int), ("weights", c_int), ("max_alloc_bytes", c_size_t),
                ("log_callback", LOG_CALLBACK), ("log_user_data", c_void_p),
                ("cpu_kernels", c_char_p), ("compute", c_int)]


class SamplerParams(Structure):
    _fields_ = [("struct_size", c_size_t), ("kind", c_int), ("steps", c_int), ("eta", c_float),
                ("ddim_quad", c_int), ("seed", c_uint64), ("spacing", c_int), ("lcm_original_steps", c_int),
                ("discretization", c_int)]


class GenerateParams(Structure):
    _fields_ = [("struct_size", c_size_t), ("prompt", c_char_p), ("negative_prompt", c_char_p),
                ("class_label", c_int), ("width", c_int), ("height", c_int), ("batch", c_int),
                ("sampler", c_int), ("steps", c_int), ("eta", c_float),
                ("guidance_scale", c_float), ("seed", c_uint64), ("init_image", c_void_p),
                ("strength", c_float), ("mask", c_void_p), ("cond_image", c_void_p),
                ("layout_tokens", c_void_p), ("vae_tile", c_int),
                ("progress", PROGRESS_CALLBACK), ("progress_user_data", c_void_p), ("x_T", c_void_p),
                ("uncond_class", c_int), ("timestep_spacing", c_int), ("lcm_original_steps", c_int),
                ("plain_prompts", c_int),
                # tiny autoencoder and previews
                ("vae", c_int), ("preview", PREVIEW_CALLBACK), ("preview_user_data", c_void_p),
                ("preview_every", c_int), ("preview_kind", c_int),
                # SDXL (issue #14)
                ("original_width", c_int), ("original_height", c_int), ("crop_left", c_int), ("crop_top", c_int),
                ("target_width", c_int), ("target_height", c_int), ("aesthetic_score", c_float),
                ("negative_aesthetic_score", c_float), ("refiner", c_void_p), ("refiner_start", c_double)]


class SdxlCondParams(Structure):  # ldm_sdxl_cond_params (SDXL, issue #14)
    _fields_ = [("struct_size", c_size_t), ("prompts", POINTER(c_char_p)), ("n_prompts", c_int),
                ("tokens", POINTER(c_void_p)), ("n_tokens", c_int), ("zero_text", c_int),
                ("original_height", c_double), ("original_width", c_double), ("crop_top", c_double),
                ("crop_left", c_double), ("target_height", c_double), ("target_width", c_double),
                ("aesthetic_score", c_double), ("prompt_syntax", c_int), ("prompt_flags", ctypes.c_uint)]


class TrainProgress(Structure):
    _fields_ = [("step", c_int64), ("total_steps", c_int64), ("loss", c_double), ("loss_ema", c_double),
                ("seconds", c_double), ("images_per_second", c_double), ("phase", c_char_p)]


class LoraInfo(Structure):
    _fields_ = [("struct_size", c_size_t), ("id", c_int), ("path", c_char_p), ("multiplier", c_double),
                ("n_unet_layers", c_int), ("n_text_layers", c_int), ("n_skipped_keys", c_int)]


LORA_ALLOW_UNMATCHED = 1

TRAIN_CALLBACK = CFUNCTYPE(c_int, POINTER(TrainProgress), c_void_p)


class TrainParams(Structure):
    _fields_ = [("struct_size", c_size_t), ("data_dir", c_char_p), ("out_dir", c_char_p),
                ("first_stage", c_char_p), ("init_from", c_char_p), ("resume", c_int),
                ("max_steps", c_int64), ("max_minutes", c_double), ("batch_size", c_int),
                ("learning_rate", c_double), ("cond_drop_rate", c_double), ("save_every", c_int),
                ("seed", c_uint64), ("n_threads", c_int), ("callback", TRAIN_CALLBACK),
                ("user_data", c_void_p), ("log_callback", LOG_CALLBACK), ("log_user_data", c_void_p),
                ("max_activation_bytes", c_uint64),
                ("lora_rank", c_int), ("lora_alpha", c_double), ("vocab_path", c_char_p)]


# The library refuses struct_size above this, so it is also the most any *_params_init may write.
_INIT_SCRATCH = 4096


def init_params(struct_type, init_fn):
    """A parameter struct filled by the library's *_params_init().

    init() writes sizeof(struct) of the LIBRARY's header, which is larger than ours when the
    library is newer than this binding (fields are appended). So it writes into a scratch buffer
    big enough for any version; we keep the prefix we know and declare our own size, exactly as a C
    program compiled against an older header would (docs/abi.md, struct_size)."""
    scratch = (c_char * _INIT_SCRATCH)()
    init_fn(scratch)
    params = struct_type()
    lib_size = c_size_t.from_buffer(scratch).value
    ctypes.memmove(ctypes.addressof(params), scratch, min(lib_size, ctypes.sizeof(struct_type)))
    params.struct_size = ctypes.sizeof(struct_type)
    return params, lib_size


# ---------------------------------------------------------------- prototypes

def _proto(name, restype, *argtypes):
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


_P = c_void_p  # any handle
_OUT = POINTER(c_void_p)  # a handle returned through a pointer
_STRS = POINTER(c_char_p)
_S = c_int  # ldm_status

_proto("ldm_version", c_char_p)
_proto("ldm_version_number", c_int)
_proto("ldm_cpu_info", c_char_p)
_proto("ldm_status_string", c_char_p, c_int)
_proto("ldm_last_error", c_char_p)
_proto("ldm_clear_error", None)
_proto("ldm_set_thread_max_alloc", c_size_t, c_size_t)

_proto("ldm_tensor_create", _S, c_int, c_int, POINTER(c_int64), _OUT)
_proto("ldm_tensor_wrap", _S, c_int, c_int, POINTER(c_int64), c_void_p, _OUT)
_proto("ldm_tensor_free", None, _P)
_proto("ldm_tensor_dtype", c_int, _P)
_proto("ldm_tensor_ndim", c_int, _P)
_proto("ldm_tensor_dim", c_int64, _P, c_int)
_proto("ldm_tensor_numel", c_int64, _P)
_proto("ldm_tensor_data", c_void_p, _P)

_proto("ldm_model_params_init", None, c_void_p)
_proto("ldm_model_load", _S, c_char_p, POINTER(ModelParams), _OUT)
_proto("ldm_model_free", None, _P)
_proto("ldm_model_load_builtin", _S, c_char_p, c_uint64, POINTER(ModelParams), _OUT)
_proto("ldm_model_interrupt", None, _P)
_proto("ldm_model_set_threads", _S, _P, c_int)
_proto("ldm_model_set_abort_callback", _S, _P, ABORT_CALLBACK, c_void_p)
_proto("ldm_model_describe", c_char_p, _P)
_proto("ldm_model_config_path", c_char_p, _P)
_proto("ldm_model_autoencoder", _S, _P, _OUT)
_proto("ldm_model_unet", _S, _P, _OUT)
_proto("ldm_model_conditioner", _S, _P, _OUT)

_proto("ldm_autoencoder_get_kind", c_int, _P)
_proto("ldm_autoencoder_factor", c_int, _P)
_proto("ldm_autoencoder_latent_channels", c_int, _P)
_proto("ldm_autoencoder_encode", _S, _P, _P, _OUT)
_proto("ldm_posterior_split", _S, _P, _OUT, _OUT, _OUT)
_proto("ldm_autoencoder_quantize", _S, _P, _P, _OUT, _OUT)
_proto("ldm_autoencoder_decode", _S, _P, _P, _OUT)
_proto("ldm_autoencoder_decode_unquantized", _S, _P, _P, _OUT)

_proto("ldm_unet_forward", _S, _P, _P, _P, _P, _P, _OUT)

_proto("ldm_conditioner_get_kind", c_int, _P)
_proto("ldm_conditioner_encode_tokens", _S, _P, _P, _OUT)
_proto("ldm_conditioner_encode_text", _S, _P, _STRS, c_int, _OUT)
_proto("ldm_conditioner_encode_labels", _S, _P, _P, _OUT)
_proto("ldm_conditioner_encode_image", _S, _P, _P, _OUT)

_proto("ldm_tokenizer_load", _S, c_int, c_char_p, _OUT)
_proto("ldm_tokenizer_free", None, _P)
_proto("ldm_tokenizer_encode", _S, _P, _STRS, c_int, c_int, _OUT)

_proto("ldm_sampler_params_init", None, c_void_p)
_proto("ldm_sampler_create", _S, POINTER(c_float), c_int, c_int, POINTER(SamplerParams), _OUT)
_proto("ldm_sampler_free", None, _P)
_proto("ldm_sampler_begin", _S, _P, _P)
_proto("ldm_sampler_total_evaluations", c_int, _P)
_proto("ldm_sampler_total_steps", c_int, _P)
_proto("ldm_sampler_steps_done", c_int, _P)
_proto("ldm_sampler_next", c_int, _P, _OUT, POINTER(c_double))
_proto("ldm_sampler_give", _S, _P, _P)
_proto("ldm_sampler_set_noise", _S, _P, _P)
_proto("ldm_sampler_current", c_void_p, _P)
_proto("ldm_sampler_pred_x0", c_void_p, _P)
_proto("ldm_randn", _S, c_uint64, c_uint64, _P)

_proto("ldm_model_apply", _S, _P, _P, _P, _P, _OUT)
_proto("ldm_model_apply_guided", _S, _P, _P, _P, _P, _P, c_float, _OUT)
_proto("ldm_model_apply_embedded_guidance", _S, _P, _P, _P, _P, c_float, _OUT)
_proto("ldm_model_guidance_embedding_dim", c_int, _P)
_proto("ldm_model_decode_latent", _S, _P, _P, _OUT)
_proto("ldm_model_inpaint_cond", _S, _P, _P, _P, _OUT)
_proto("ldm_model_p_sample", _S, _P, _P, _P, _P, _P, _OUT)
_proto("ldm_model_sampler", _S, _P, POINTER(SamplerParams), _OUT)

_proto("ldm_generate_params_init", None, c_void_p)
_proto("ldm_generate", _S, _P, POINTER(GenerateParams), _OUT)
_proto("ldm_generate_params_resolve", _S, _P, POINTER(GenerateParams), POINTER(GenerateParams))

_proto("ldm_image_read_png", _S, c_char_p, _OUT)
_proto("ldm_image_read_png_gray", _S, c_char_p, c_int, _OUT)
_proto("ldm_image_write_png", _S, c_char_p, _P, _STRS, _STRS, c_int)

_proto("ldm_layout_tokens_from_json", _S, c_char_p, c_size_t, c_int, _OUT)

_proto("ldm_train_params_init_size", None, POINTER(TrainParams), c_size_t)
_proto("ldm_trainer_create", _S, c_char_p, POINTER(TrainParams), _OUT)
_proto("ldm_trainer_step", _S, _P, c_int)
_proto("ldm_trainer_run", _S, _P)
_proto("ldm_trainer_save", _S, _P)
_proto("ldm_trainer_export", _S, _P, c_char_p, c_int)
_proto("ldm_trainer_progress", _S, _P, POINTER(TrainProgress))
_proto("ldm_trainer_interrupt", None, _P)
_proto("ldm_trainer_free", None, _P)
_proto("ldm_trainer_lora_rank", c_int, _P)

_proto("ldm_model_lora_add", _S, _P, c_char_p, c_double, ctypes.c_uint, POINTER(c_int))
_proto("ldm_model_lora_remove", _S, _P, c_int)
_proto("ldm_model_lora_set_multiplier", _S, _P, c_int, c_double)
_proto("ldm_model_lora_clear", _S, _P)
_proto("ldm_model_lora_count", c_int, _P)
_proto("ldm_model_lora_get", _S, _P, c_int, POINTER(LoraInfo))
_proto("ldm_prompt_parse", _S, c_char_p, ctypes.c_uint, _OUT)
_proto("ldm_prompt_runs_count", c_int, _P)
_proto("ldm_prompt_runs_text", c_char_p, _P, c_int)
_proto("ldm_prompt_runs_weight", c_double, _P, c_int)
_proto("ldm_prompt_runs_is_break", c_int, _P, c_int)
_proto("ldm_prompt_runs_free", None, _P)
_proto("ldm_tokenizer_encode_prompt", _S, _P, c_char_p, c_int, ctypes.c_uint, _OUT, _OUT)
_proto("ldm_conditioner_encode_prompt", _S, _P, _STRS, c_int, ctypes.c_uint, _OUT)
_proto("ldm_sdxl_cond_params_init_size", None, c_void_p, c_size_t)
_proto("ldm_conditioner_encode_sdxl", _S, _P, POINTER(SdxlCondParams), _OUT, _OUT)
_proto("ldm_model_apply_sdxl", _S, _P, _P, _P, _P, _P, _P, _P, c_float, _OUT)
_proto("ldm_sampler_begin_at", _S, _P, _P, c_int)
_proto("ldm_sdxl_base_steps", c_int, c_int, c_double)
_proto("ldm_sampler_begin_noised", _S, _P, _P, _P, c_int)
_proto("ldm_sdxl_img2img_first_step", c_int, c_int, c_float)
_proto("ldm_sampler_blend_known", _S, _P, _P, _P, _P)


_BITS = {"int": 8 * ctypes.sizeof(c_int), "int64": 64, "uint64": 64, "size_t": 8 * ctypes.sizeof(c_size_t)}
RANGES = {ctype: ((0, (1 << bits) - 1) if ctype in ("uint64", "size_t") else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1))
          for ctype, bits in _BITS.items()}


def integer(value, name, ctype="int"):
    """value as a Python int that fits the C type it is passed as ("int", "int64", "uint64",
    "size_t"). ctypes would silently keep the low bits (steps=2**32+1 running 1 step, seed=-1
    becoming 2**64-1), so out-of-range values raise OverflowError naming the parameter, and
    non-integers (floats, strings) raise TypeError."""
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError("%s: expected an integer, got %s" % (name, type(value).__name__)) from None
    lo, hi = RANGES[ctype]
    if not lo <= v <= hi:
        raise OverflowError("%s=%d is out of range: it is passed as a C %s (%d..%d)" % (name, v, ctype, lo, hi))
    return v


def shape(dims, name="shape"):
    """A tensor shape as a tuple of ints, each a valid int64 dimension (negative ones are left to
    the library, which names them)."""
    return tuple(integer(d, "%s[%d]" % (name, i), "int64") for i, d in enumerate(dims))


def strings(items):
    """A C array of UTF-8 strings (const char *const *) and its length; the array keeps the
    encoded bytes alive as long as it lives."""
    encoded = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in items]
    arr = (c_char_p * max(1, len(encoded)))(*encoded)
    return arr, len(encoded)


# tiny autoencoder (TAESD)
_proto("ldm_tiny_autoencoder_load", _S, c_char_p, POINTER(ModelParams), _OUT)
_proto("ldm_tiny_autoencoder_free", None, _P)
_proto("ldm_tiny_autoencoder_has_encoder", c_int, _P)
_proto("ldm_tiny_autoencoder_has_decoder", c_int, _P)
_proto("ldm_tiny_autoencoder_latent_channels", c_int, _P)
_proto("ldm_tiny_autoencoder_decode", _S, _P, _P, _OUT)
_proto("ldm_tiny_autoencoder_encode", _S, _P, _P, _OUT)
_proto("ldm_model_set_tiny_autoencoder", _S, _P, c_char_p)
_proto("ldm_model_has_tiny_decoder", c_int, _P)
_proto("ldm_model_has_tiny_encoder", c_int, _P)
_proto("ldm_model_decode_latent_with", _S, _P, _P, c_int, _OUT)
_proto("ldm_model_encode_image", _S, _P, _P, c_int, c_uint64, _OUT)


def path_bytes(path):
    """A filesystem path (str, bytes or os.PathLike) as bytes for the C side."""
    return os.fsencode(path)
