/*
 * ldm.h - libldm public API: Latent Diffusion Models (CompVis LDM zoo, Stable Diffusion 1.x/2.x)
 * on a plain CPU, behind opaque handles.
 *
 * Conventions
 * - Every call that can fail returns an ldm_status. On failure a human-readable message naming
 *   what failed (file, tensor, expected vs found) is available from ldm_last_error(), which is
 *   thread-local: it describes the last failed call made by the calling thread.
 * - Handles are opaque. Objects obtained with *_create / *_load are released with the matching
 *   *_free. Handles obtained from a model (ldm_model_autoencoder, ...) are owned by the model and
 *   live as long as it does.
 * - Tensors (ldm_tensor) are dense, row-major, float32 or int64, NCHW for images and latents,
 *   [B,T,D] for sequences. A tensor returned through an `ldm_tensor **out` parameter is owned by
 *   the caller and released with ldm_tensor_free(). ldm_tensor_wrap() views caller memory
 *   without copying; the caller keeps ownership of that memory.
 * - Parameter structs carry their own size (struct_size). Always fill them with the matching
 *   *_params_init() function, then change the fields you need: new fields are only ever appended,
 *   so a program built against an older header keeps working with a newer library.
 * - The library never prints, never calls abort() or exit(). Logging goes to the per-model log
 *   callback if one is set.
 * - Thread safety: different handles may be used from different threads at the same time. One
 *   model handle (and the handles obtained from it) must be used by one thread at a time, except
 *   ldm_model_interrupt(), which may be called from any thread at any time.
 */
#ifndef LDM_H
#define LDM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(LDM_BUILD_SHARED)
#define LDM_API __declspec(dllexport)
#elif defined(_WIN32) && defined(LDM_SHARED)
#define LDM_API __declspec(dllimport)
#elif defined(__GNUC__)
#define LDM_API __attribute__((visibility("default")))
#else
#define LDM_API
#endif

#define LDM_VERSION_MAJOR 0
#define LDM_VERSION_MINOR 1
#define LDM_VERSION_PATCH 0
#define LDM_VERSION_STRING "0.1.0"
/* MAJOR*10000 + MINOR*100 + PATCH */
#define LDM_VERSION_NUMBER (LDM_VERSION_MAJOR * 10000 + LDM_VERSION_MINOR * 100 + LDM_VERSION_PATCH)

LDM_API const char *ldm_version(void);
LDM_API int ldm_version_number(void);
/* What the kernels run on this CPU, as three lines of text: the vector features detected (e.g.
 * "avx2 fma f16c", with "avx512f avx512_bf16 avx512bw avx512vl avx512dq" where present, or
 * "neon ..."), the kernel families this CPU could run, and the family chosen ("neon", "avx512",
 * "avx2+fma", "avx2" or "generic") with why:
 * "auto", the LDM_CPU environment variable that forced it (a family this build or CPU lacks, or an
 * unknown name, runs "generic" and says so), or a live model's ldm_model_params.cpu_kernels. The
 * family is chosen once per process, at the first kernel call (again after the last model that
 * asked for one is freed). Valid until the next call on the same thread. */
LDM_API const char *ldm_cpu_info(void);

/* ---------------------------------------------------------------- status and errors */

typedef enum ldm_status {
    LDM_OK = 0,
    LDM_ERR_INVALID_ARGUMENT = 1, /* a NULL handle, a bad parameter value, a wrong tensor shape */
    LDM_ERR_IO = 2,               /* a file could not be opened, read or written */
    LDM_ERR_FORMAT = 3,           /* a file is truncated, corrupt or not what it claims to be */
    LDM_ERR_UNSUPPORTED = 4,      /* valid input that this version cannot handle */
    LDM_ERR_NOT_FOUND = 5,        /* a tensor, key or vocabulary that is needed is missing */
    LDM_ERR_OUT_OF_MEMORY = 6,    /* an allocation failed */
    LDM_ERR_LIMIT = 7,            /* a size limit was exceeded (see max_alloc_bytes) */
    LDM_ERR_SECURITY = 8,         /* a checkpoint asked for something forbidden (pickle global) */
    LDM_ERR_NUMERIC = 9,          /* NaN or Inf found in weights, inputs or results */
    LDM_CANCELLED = 10,           /* stopped by ldm_model_interrupt() or a progress callback */
    LDM_ERR_INTERNAL = 11
} ldm_status;

/* A static English name for a status, e.g. "format error". Never NULL. */
LDM_API const char *ldm_status_string(ldm_status status);
/* Message of the last failed call on this thread ("" if none). Valid until the next failing
 * call on the same thread. */
LDM_API const char *ldm_last_error(void);
/* Caps single allocations made by this thread's calls (0: no cap, the default) and returns the
 * previous cap. It applies to calls without a model (ldm_image_read_png, tokenizers, layout
 * tokens, ldm_tensor_create, ...) and to model calls whose model has no cap of its own; a model
 * with ldm_model_params.max_alloc_bytes set uses the smaller of the two for the duration of each
 * of its calls, and leaves this thread's cap as it was. Refused allocations fail with
 * LDM_ERR_LIMIT. */
LDM_API size_t ldm_set_thread_max_alloc(size_t max_bytes);
/* Clears this thread's last error message. */
LDM_API void ldm_clear_error(void);

/* ---------------------------------------------------------------- tensors */

typedef enum ldm_dtype { LDM_F32 = 0, LDM_I64 = 1 } ldm_dtype;

#define LDM_MAX_DIMS 6

typedef struct ldm_tensor ldm_tensor;

/* A new zero-filled tensor owned by the caller. */
LDM_API ldm_status ldm_tensor_create(ldm_dtype dtype, int ndim, const int64_t *shape,
                                     ldm_tensor **out);
/* A tensor viewing caller memory (no copy, no ownership taken). `data` must stay valid and be
 * suitably aligned for dtype while the tensor is used. Free the view with ldm_tensor_free(). */
LDM_API ldm_status ldm_tensor_wrap(ldm_dtype dtype, int ndim, const int64_t *shape, void *data,
                                   ldm_tensor **out);
LDM_API void ldm_tensor_free(ldm_tensor *t);
LDM_API ldm_dtype ldm_tensor_dtype(const ldm_tensor *t);
LDM_API int ldm_tensor_ndim(const ldm_tensor *t);
/* Size of dimension i, or 0 when i is out of range. */
LDM_API int64_t ldm_tensor_dim(const ldm_tensor *t, int i);
LDM_API int64_t ldm_tensor_numel(const ldm_tensor *t);
LDM_API void *ldm_tensor_data(ldm_tensor *t);

/* ---------------------------------------------------------------- callbacks */

typedef enum ldm_log_level { LDM_LOG_ERROR = 0, LDM_LOG_WARN = 1, LDM_LOG_INFO = 2, LDM_LOG_DEBUG = 3 } ldm_log_level;

typedef void (*ldm_log_callback)(ldm_log_level level, const char *message, void *user_data);
/* Called after each unit of long work (a sampler step, a decoder tile). Return non-zero to
 * stop: the running call then returns LDM_CANCELLED. */
typedef int (*ldm_progress_callback)(int step, int total_steps, void *user_data);

/* ---------------------------------------------------------------- model */

typedef struct ldm_model ldm_model;
typedef struct ldm_autoencoder ldm_autoencoder;
typedef struct ldm_unet ldm_unet;
typedef struct ldm_conditioner ldm_conditioner;

typedef enum ldm_weights_choice {
    LDM_WEIGHTS_AUTO = 0, /* EMA weights when the checkpoint has them (as the reference samples) */
    LDM_WEIGHTS_EMA = 1,  /* EMA weights; an error if the checkpoint has none */
    LDM_WEIGHTS_RAW = 2   /* the trained (non-EMA) model.diffusion_model.* weights */
} ldm_weights_choice;

typedef struct ldm_model_params {
    size_t struct_size;         /* set by ldm_model_params_init() */
    const char *config_path;    /* CompVis/Stability YAML config; NULL: detect from tensor names */
    const char *vocab_path;     /* CLIP BPE file (bpe_simple_vocab_16e6.txt.gz) or BERT vocab.txt;
                                   NULL: $LDM_VOCAB, then a file of the usual name next to the
                                   checkpoint */
    int n_threads;              /* 0: all online CPUs */
    ldm_weights_choice weights; /* which diffusion weights to use */
    size_t max_alloc_bytes;     /* refuse single allocations above this during this model's
                                   calls (load included); 0: the calling thread's cap
                                   (ldm_set_thread_max_alloc), if any */
    ldm_log_callback log_callback;
    void *log_user_data;
    /* issue #15 (docs/performance.md, "Kernel families and compute modes"): */
    const char *cpu_kernels;    /* NULL, "" or "auto": LDM_CPU, else the best family for the CPU; a
                                   family name ("avx512", "avx2+fma", "avx2", "neon", "generic"): that one,
                                   process-wide while the model lives; an error when the CPU or build
                                   lacks it or live models use another family */
    int compute;                /* an ldm_compute value; 0 = LDM_COMPUTE_F32 */
} ldm_model_params;

LDM_API void ldm_model_params_init(ldm_model_params *params);
/* Fills the first `struct_size` bytes of *params with the defaults and stores struct_size in it
 * (bytes past what this library knows are zeroed). Safe for a struct from any header version. */
LDM_API void ldm_model_params_init_size(ldm_model_params *params, size_t struct_size);
/* C callers: the macro passes the caller's own sizeof, so a program built against an older or
 * newer header never has bytes written past its struct. (The function form remains exported for
 * callers of this exact header version, e.g. FFI bindings that size their structs alike.) */
#define ldm_model_params_init(params) ldm_model_params_init_size((params), sizeof *(params))

/* Loads a checkpoint (.safetensors or PyTorch .ckpt, detected from the bytes). The model may be a
 * whole latent diffusion model or a standalone first stage (autoencoder). `path` may also be a
 * diffusers folder or its model_index.json (unet/, vae/, text_encoder/, scheduler/: docs/models.md). */
LDM_API ldm_status ldm_model_load(const char *path, const ldm_model_params *params,
                                  ldm_model **out);
LDM_API void ldm_model_free(ldm_model *model);
/* A built-in model.
 *   "glyphs"     TRAINED: the library's own class-conditional LDM drawing the 62 characters A-Z a-z
 *                0-9 (class k = position in "ABC...Zabc...z012...9"; class 62 = unconditional) at
 *                32x32, trained by `ldm train` (examples/glyphs/README.md); float16 files
 *                glyphs.safetensors + glyphs.yaml found in $LDM_DATA_DIR, the installed
 *                $(PREFIX)/share/libldm, or beside the library; `seed` is ignored.
 * The others have the named architecture with seeded random weights, for demos, tests and
 * benchmarks (no file, no download; the weights are untrained, so images are noise-like):
 *   "demo"       tiny class-conditional LDM (KL-f4 first stage), 64x64 images, seconds on a CPU;
 *   "sd15"       Stable Diffusion 1.5 (UNet 860M, CLIP ViT-L/14 text, KL-f8), 512x512;
 *   "sd21-v"     Stable Diffusion 2.1 768-v (OpenCLIP ViT-H/14 text, v-prediction);
 *   "cin256-v2"  the LDM class-conditional ImageNet model (VQ-f4).
 * The same seed gives the same weights on every platform. */
LDM_API ldm_status ldm_model_load_builtin(const char *name, uint64_t seed, const ldm_model_params *params,
                                          ldm_model **out);

/* Requests that the model's running call stop as soon as possible (it then returns
 * LDM_CANCELLED). Safe to call from any thread or a signal handler. The flag is cleared when the
 * next call on the model starts. */
LDM_API void ldm_model_interrupt(ldm_model *model);
LDM_API ldm_status ldm_model_set_threads(ldm_model *model, int n_threads);
/* A host callback polled between network blocks and sampler steps of every call on this model
 * (like ldm_model_interrupt, but pulled rather than pushed); returning non-zero stops the running
 * call with LDM_CANCELLED. NULL removes it. Called on the thread running the model. */
typedef int (*ldm_abort_callback)(void *user_data);
LDM_API ldm_status ldm_model_set_abort_callback(ldm_model *model, ldm_abort_callback callback, void *user_data);

/* A one-paragraph description of the loaded architecture (static for the model's lifetime). */
LDM_API const char *ldm_model_describe(ldm_model *model);
/* The YAML config the model was built from: ldm_model_params.config_path, else the one found
 * beside the checkpoint (<checkpoint name without extension>.yaml, then config.yaml in the same
 * folder); a diffusers folder's model_index.json when the model was read from one; NULL when the
 * architecture was detected from tensor names (and for built-in models).
 * Valid for the model's lifetime. */
LDM_API const char *ldm_model_config_path(const ldm_model *model);

/* Components. Each returns LDM_ERR_NOT_FOUND when the checkpoint has no such part. The handles
 * are owned by the model. */
LDM_API ldm_status ldm_model_autoencoder(ldm_model *model, ldm_autoencoder **out);
LDM_API ldm_status ldm_model_unet(ldm_model *model, ldm_unet **out);
LDM_API ldm_status ldm_model_conditioner(ldm_model *model, ldm_conditioner **out);

/* ---------------------------------------------------------------- autoencoder (first stage) */

typedef enum ldm_autoencoder_kind { LDM_AUTOENCODER_KL = 0, LDM_AUTOENCODER_VQ = 1 } ldm_autoencoder_kind;

LDM_API ldm_autoencoder_kind ldm_autoencoder_get_kind(const ldm_autoencoder *ae);
/* Spatial downsampling factor (8 for kl-f8) and latent channel count. */
LDM_API int ldm_autoencoder_factor(const ldm_autoencoder *ae);
LDM_API int ldm_autoencoder_latent_channels(const ldm_autoencoder *ae);

/* x [B,in,H,W] in [-1,1] -> KL: moments [B,2E,h,w] (mean ‖ logvar, unclamped);
 * VQ: the pre-quantisation latent h [B,E,h,w]. */
LDM_API ldm_status ldm_autoencoder_encode(ldm_autoencoder *ae, const ldm_tensor *x,
                                          ldm_tensor **out);
/* KL only: splits moments into mean, logvar (clamped to [-30,20]) and std = exp(logvar/2).
 * Any output pointer may be NULL. */
LDM_API ldm_status ldm_posterior_split(const ldm_tensor *moments, ldm_tensor **mean,
                                       ldm_tensor **logvar, ldm_tensor **std);
/* VQ only: nearest-codebook quantisation of h -> quant [B,E,h,w] and indices [B,h,w] (I64).
 * Either output may be NULL. */
LDM_API ldm_status ldm_autoencoder_quantize(ldm_autoencoder *ae, const ldm_tensor *h,
                                            ldm_tensor **quant, ldm_tensor **indices);
/* z [B,E,h,w] -> image [B,out,H,W]. VQ models quantise z first (as the reference does). No
 * scale_factor is applied here: that is the diffusion model's business. */
LDM_API ldm_status ldm_autoencoder_decode(ldm_autoencoder *ae, const ldm_tensor *z,
                                          ldm_tensor **image);
/* VQ only: decode without quantising. */
LDM_API ldm_status ldm_autoencoder_decode_unquantized(ldm_autoencoder *ae, const ldm_tensor *z,
                                                      ldm_tensor **image);

/* ---------------------------------------------------------------- UNet */

/* eps (or v) = UNet(x [B,C,H,W], timesteps [B] I64, context [B,T,D] or NULL,
 * class labels y [B] I64 or NULL for num_classes models; SDXL (adm_in_channels): the vector
 * conditioning y [B, adm_in_channels] F32). */
LDM_API ldm_status ldm_unet_forward(ldm_unet *unet, const ldm_tensor *x,
                                    const ldm_tensor *timesteps, const ldm_tensor *context,
                                    const ldm_tensor *y, ldm_tensor **out);

/* ---------------------------------------------------------------- conditioners */

typedef enum ldm_conditioner_kind {
    LDM_COND_NONE = 0,             /* unconditional model */
    LDM_COND_CLASS = 1,            /* ClassEmbedder: labels [B] -> [B,1,D] */
    LDM_COND_CLIP_TEXT = 2,        /* SD 1.x FrozenCLIPEmbedder */
    LDM_COND_OPENCLIP_TEXT = 3,    /* SD 2.x FrozenOpenCLIPEmbedder */
    LDM_COND_BERT = 4,             /* LDM BERTEmbedder (text2img, layout2img) */
    LDM_COND_SPATIAL_RESCALER = 5, /* semantic maps */
    LDM_COND_FIRST_STAGE = 6,      /* the first stage encodes the condition (inpainting) */
    LDM_COND_IDENTITY = 7,         /* the condition is used as is (super-resolution) */
    LDM_COND_SDXL = 8              /* SDXL GeneralConditioner: ldm_conditioner_encode_sdxl */
} ldm_conditioner_kind;

LDM_API ldm_conditioner_kind ldm_conditioner_get_kind(const ldm_conditioner *cond);
/* Token ids [B,T] I64 -> embeddings [B,T,D] (text and BERT conditioners). */
LDM_API ldm_status ldm_conditioner_encode_tokens(ldm_conditioner *cond, const ldm_tensor *tokens,
                                                 ldm_tensor **out);
/* Prompts -> tokens -> embeddings (needs the vocabulary, see ldm_model_params.vocab_path). */
LDM_API ldm_status ldm_conditioner_encode_text(ldm_conditioner *cond, const char *const *prompts,
                                               int n_prompts, ldm_tensor **out);
/* Class labels [B] I64 -> [B,1,D]. */
LDM_API ldm_status ldm_conditioner_encode_labels(ldm_conditioner *cond, const ldm_tensor *labels,
                                                 ldm_tensor **out);
/* Spatial inputs (one-hot semantic maps [B,C,H,W], masked images, LR images) -> conditioning. */
LDM_API ldm_status ldm_conditioner_encode_image(ldm_conditioner *cond, const ldm_tensor *x,
                                                ldm_tensor **out);

/* ---------------------------------------------------------------- tokenizers */

typedef struct ldm_tokenizer ldm_tokenizer;

typedef enum ldm_tokenizer_kind {
    LDM_TOKENIZER_CLIP = 0,     /* SD 1.x (HF CLIPTokenizer): pad with end-of-text 49407 */
    LDM_TOKENIZER_OPENCLIP = 1, /* SD 2.x (open_clip.tokenize): pad with 0 */
    LDM_TOKENIZER_BERT = 2      /* bert-base-uncased WordPiece (LDM text2img) */
} ldm_tokenizer_kind;

/* vocab_path: bpe_simple_vocab_16e6.txt.gz (CLIP kinds) or vocab.txt (BERT). */
LDM_API ldm_status ldm_tokenizer_load(ldm_tokenizer_kind kind, const char *vocab_path,
                                      ldm_tokenizer **out);
LDM_API void ldm_tokenizer_free(ldm_tokenizer *tok);
/* prompts -> ids [n_prompts, context_length] I64 (context_length 77 for every family). */
LDM_API ldm_status ldm_tokenizer_encode(ldm_tokenizer *tok, const char *const *prompts,
                                        int n_prompts, int context_length, ldm_tensor **out);

/* ---------------------------------------------------------------- sampler */

/* Samplers as host-driven state machines: the library never calls the network itself here. The
 * host runs the loop, evaluates the UNet (with classifier-free guidance, conditioning, ...) where
 * the sampler asks, and hands the raw output back:
 *
 *     ldm_sampler_begin(s, x_T);
 *     while ((r = ldm_sampler_next(s, &x_in, &t)) == 1) {
 *         out = UNet(x_in, t)               // e.g. uncond + scale*(cond - uncond)
 *         ldm_sampler_give(s, out);
 *     }                                     // r == 0: done, r < 0: error
 *     x0 = ldm_sampler_current(s);          // final latent
 *
 * Kinds (reference code in brackets):
 * - DDIM  [CompVis latent-diffusion / Stability-AI stablediffusion ddim.py]: timesteps
 *   range(0, T, T//steps) + 1 ('uniform'; MORE than `steps` steps when T % steps != 0, e.g.
 *   steps 6 -> 7) or 'quad'; eta > 0 adds sigma_i * noise. v-prediction handled as Stability does.
 * - PLMS  [latent-diffusion plms.py]: the DDIM timesteps; the first step evaluates the model twice
 *   (pseudo improved Euler), later steps use Adams-Bashforth 2/3/4 on the history of raw outputs.
 *   eta must be 0. (The reference PLMS has no v branch; here v outputs are converted to eps first.)
 * - DDPM  [LatentDiffusion.p_sample, clip_denoised False]: ancestral sampling over the consecutive
 *   training timesteps steps-1, ..., 1, 0 (steps <= 0 or > T: all T). One evaluation per step.
 * - EULER, EULER_ANCESTRAL (eta 1), HEUN, DPMPP_2M, DPMPP_2M_KARRAS [crowsonkb/k-diffusion
 *   sampling.py with external.CompVisDenoiser / CompVisVDenoiser]: sigma_t = sqrt((1-ac_t)/ac_t);
 *   `steps` sigmas from t = linspace(T-1, 0, steps) by log-sigma interpolation (Karras: rho 7
 *   between the model's sigma_min and sigma_max), then 0. The model is evaluated at
 *   x/sqrt(sigma^2+1) with the FRACTIONAL timestep sigma_to_t(sigma) (log-sigma interpolation), so
 *   the host's UNet must accept non-integer timesteps (the sinusoidal embedding is continuous).
 *   Heun evaluates twice per step except on the last one (to sigma 0): 2*steps - 1 evaluations.
 *
 * - LCM [diffusers LCMScheduler]: `steps` (default 4 in ldm_generate) of the lcm_original_steps
 *   (50) distillation timesteps (50/4: 999, 759, 499, 259); each step maps the output to x0
 *   (eps, v or x0 parameterization), applies the consistency boundary conditions (c_skip, c_out
 *   with timestep_scaling 10, sigma_data 0.5) and, except after the last step, re-noises the
 *   denoised sample to the next timestep with that step's noise row: x = sqrt(a_next) x0 +
 *   sqrt(1 - a_next) noise. The final x is the denoised sample; pred_x0 is each step's denoised.
 *
 * Guidance combines raw outputs (eps or v) linearly; that is exact for both parameterizations.
 * Noise: by default drawn with ldm_randn(seed, 1 + k, ...) for step k (stream 0 is left for the
 * host's x_T); ldm_sampler_set_noise() supplies it instead. */
typedef struct ldm_sampler ldm_sampler;

typedef enum ldm_sampler_kind {
    LDM_SAMPLER_DDIM = 0,
    LDM_SAMPLER_PLMS = 1,
    LDM_SAMPLER_DDPM = 2,
    LDM_SAMPLER_EULER = 3,
    LDM_SAMPLER_EULER_ANCESTRAL = 4,
    LDM_SAMPLER_HEUN = 5,
    LDM_SAMPLER_DPMPP_2M = 6,
    LDM_SAMPLER_DPMPP_2M_KARRAS = 7,
    LDM_SAMPLER_LCM = 8 /* Latent Consistency Models (diffusers LCMScheduler), docs/few-step.md */
} ldm_sampler_kind;

/* What the network predicts: the noise (eps, LDM and SD 1.x/2.x-base) or v = sqrt(ac)*eps -
 * sqrt(1-ac)*x0 (SD 2.x 768-v models; `parameterization: "v"` in the config, not in checkpoints). */
typedef enum ldm_parameterization {
    LDM_PARAM_EPS = 0,
    LDM_PARAM_V = 1,
    LDM_PARAM_X0 = 2 /* the network predicts x0 ("sample"): only the LCM sampler takes it */
} ldm_parameterization;

/* Where the k-samplers place their `steps` noise levels (TRAILING: EULER, EULER_ANCESTRAL, HEUN
 * and DPMPP_2M; an error for the other kinds).
 * DEFAULT: k-diffusion's get_sigmas (t = linspace(T-1, 0, steps), Karras for DPMPP_2M_KARRAS).
 * TRAILING: diffusers' timestep_spacing "trailing" (t_i = round(T - i*T/steps) - 1: 999 for one
 * step, 999, 749, 499, 249 for four), the model's own sigma at each, then 0; the k-sampler
 * starts from x_T * sigma(999) and the model sees the integer timesteps. This is how the
 * SD-Turbo / SDXL-Turbo model cards run them (docs/few-step.md). */
typedef enum ldm_timestep_spacing {
    LDM_SPACING_DEFAULT = 0,
    LDM_SPACING_TRAILING = 1
} ldm_timestep_spacing;

typedef struct ldm_sampler_params {
    size_t struct_size;    /* set by ldm_sampler_params_init() */
    ldm_sampler_kind kind; /* default DDIM */
    int steps;             /* requested steps, default 50 (DDIM/PLMS may run more, see above) */
    float eta;             /* DDIM only (default 0); PLMS requires 0; EULER_ANCESTRAL always uses 1 */
    int ddim_quad;         /* DDIM/PLMS timestep spacing: 0 'uniform' (default), 1 'quad' */
    uint64_t seed;         /* seed of the default noise (ldm_randn); default 0 */
    ldm_timestep_spacing spacing; /* k-samplers only; default LDM_SPACING_DEFAULT */
    int lcm_original_steps;       /* LCM: original_inference_steps of the distillation, default 50 */
    int discretization;    /* k-samplers' noise levels: LDM_DISCRETIZATION_KDIFFUSION (0, default) or
                              LDM_DISCRETIZATION_SGM (SDXL's, see the SDXL section at the end) */
} ldm_sampler_params;

LDM_API void ldm_sampler_params_init(ldm_sampler_params *p);
/* Fills the first `struct_size` bytes of *params with the defaults and stores struct_size in it
 * (bytes past what this library knows are zeroed). Safe for a struct from any header version. */
LDM_API void ldm_sampler_params_init_size(ldm_sampler_params *params, size_t struct_size);
/* C callers: the macro passes the caller's own sizeof, so a program built against an older or
 * newer header never has bytes written past its struct. (The function form remains exported for
 * callers of this exact header version, e.g. FFI bindings that size their structs alike.) */
#define ldm_sampler_params_init(params) ldm_sampler_params_init_size((params), sizeof *(params))

/* A sampler over a model's training schedule: `alphas_cumprod` [n_train_steps] float32 as stored
 * in the checkpoint (key "alphas_cumprod"), copied. LDM_ERR_INVALID_ARGUMENT for values that are
 * not finite, outside (0,1) or increasing with t, and for bad parameters (steps outside
 * 1..n_train_steps, except DDPM where steps <= 0 or > n_train_steps mean all of them; a DDIM/PLMS
 * spacing that reaches timestep n_train_steps ('uniform' when n_train_steps // steps divides
 * n_train_steps - 1: every steps > n_train_steps/2, and e.g. 3 or 9 of 1000; the reference fails
 * on these too, and the message names the nearest count that works); eta < 0; PLMS with eta != 0; an unknown kind). */
LDM_API ldm_status ldm_sampler_create(const float *alphas_cumprod, int n_train_steps,
                                      ldm_parameterization param, const ldm_sampler_params *p,
                                      ldm_sampler **out);
LDM_API void ldm_sampler_free(ldm_sampler *s);

/* Starts (or restarts) a run from x_T, F32 of any shape [B,...], copied. x_T is UNIT-variance
 * noise for every kind: the k-samplers multiply it by their first sigma (sigma_max) as
 * k-diffusion's scripts do. A noise tensor given earlier with ldm_sampler_set_noise is kept. */
LDM_API ldm_status ldm_sampler_begin(ldm_sampler *s, const ldm_tensor *x_T);

/* Model evaluations a full run needs (DDIM: steps run; PLMS: that + 1; Heun: 2*steps - 1 ...) and
 * the number of steps (= rows of noise consumed, = step_x entries). -1 on a NULL handle. */
LDM_API int ldm_sampler_total_evaluations(const ldm_sampler *s);
LDM_API int ldm_sampler_total_steps(const ldm_sampler *s);
/* Steps completed in the current run (for progress reporting). */
LDM_API int ldm_sampler_steps_done(const ldm_sampler *s);

/* Asks what to evaluate next. Returns 1: evaluate the model on *x_in (owned by the sampler, same
 * shape as x_T, valid until the next ldm_sampler_give/begin/free) at model timestep *timestep
 * (the same for the whole batch; an integer value for DDIM/PLMS/DDPM, fractional for the
 * k-samplers) and pass the output to ldm_sampler_give(). Returns 0 when the run is finished and
 * -1 on error (no run begun, NULL arguments; message in ldm_last_error()). Calling it twice
 * without give returns the same request. */
LDM_API int ldm_sampler_next(ldm_sampler *s, const ldm_tensor **x_in, double *timestep);

/* The (guided) raw model output for the last request: eps or v per the parameterization, F32 of
 * the shape of x_T. Advances the state machine; when it completes a step, ldm_sampler_current and
 * ldm_sampler_pred_x0 are updated. LDM_ERR_INVALID_ARGUMENT when nothing was requested or the
 * shape is wrong; LDM_ERR_NUMERIC when the output holds NaN/Inf (the state is left unchanged). */
LDM_API ldm_status ldm_sampler_give(ldm_sampler *s, const ldm_tensor *model_output);

/* Optional fixed noise: F32 [n_rows, <shape of x_T>]; row k is the standard-normal noise of step
 * k (DDIM: times sigma_k, even when that is 0; DDPM: times the posterior std, unused at t = 0;
 * EULER_ANCESTRAL: times sigma_up; LCM: the re-noising after step k, the last row unused; other
 * kinds use none). n_rows must be >= the total steps of a
 * noise-using kind (checked at begin). Copied. NULL returns to the seeded generator. */
LDM_API ldm_status ldm_sampler_set_noise(ldm_sampler *s, const ldm_tensor *noise);

/* The current x (x_T scaled as documented before the first step, then x after the last completed
 * step; the final sample once next() returned 0) and the x0 prediction of the last completed step
 * (k-samplers: the denoised estimate of the step's first evaluation). NULL before begin / before
 * the first step completes (pred_x0). Owned by the sampler. */
LDM_API const ldm_tensor *ldm_sampler_current(const ldm_sampler *s);
LDM_API const ldm_tensor *ldm_sampler_pred_x0(const ldm_sampler *s);

/* Reproducible standard-normal noise, identical for any thread count and platform:
 * element i (row-major) of `out` (an F32 tensor, filled in place) is
 *     block = floor(i / 2);  key = (lo32(seed), hi32(seed));
 *     ctr   = (lo32(block), hi32(block), lo32(stream), hi32(stream));
 *     (w0, w1, w2, w3) = Philox4x32-10(ctr, key)        (Random123 constants and round order)
 *     u1 = ((((w1 << 32) | w0) >> 11) + 1) * 2^-53     in (0, 1]
 *     u2 =  (((w3 << 32) | w2) >> 11)      * 2^-53     in [0, 1)
 *     r  = sqrt(-2 ln u1),  th = 2 pi u2                (Box-Muller, all in double)
 *     out[i] = (float)(i even ? r cos th : r sin th)
 * so any element can be computed on its own. Only libm's log/cos/sin can differ between platforms
 * (by an ulp of a double), which is invisible after the rounding to float in all but the rarest
 * cases. `stream` separates independent draws under one seed (the samplers use 1 + step). */
LDM_API ldm_status ldm_randn(uint64_t seed, uint64_t stream, ldm_tensor *out);


/* ---------------------------------------------------------------- latent diffusion calls */

/* The diffusion model's network output (eps, or v for v-parameterised models) for a batch:
 * x [B,C,h,w], timesteps [B] or [1] (I64, or F32 holding integers). `cond` is the learned
 * conditioning, routed as the model's config says: cross-attention context [B,T,D]
 * (crossattn models) or channels concatenated to x (concat models: inpainting, super-resolution,
 * semantic synthesis), or the class labels y, I64 [B], when the UNet itself is class-conditional
 * (num_classes: label_emb) and no cond stage feeds it; NULL for unconditional models. */
LDM_API ldm_status ldm_model_apply(ldm_model *model, const ldm_tensor *x, const ldm_tensor *timesteps,
                                   const ldm_tensor *cond, ldm_tensor **out);
/* Classifier-free guidance: out = u + scale (c - u) from ONE batched network call on
 * cat[x,x], cat[t,t], cat[uncond,cond] (uncond first, as the reference). With uncond NULL or
 * scale 1 it is ldm_model_apply(cond). */
LDM_API ldm_status ldm_model_apply_guided(ldm_model *model, const ldm_tensor *x, const ldm_tensor *timesteps,
                                          const ldm_tensor *cond, const ldm_tensor *uncond, float scale,
                                          ldm_tensor **out);
/* decode_first_stage: image = decoder(z / scale_factor) (VQ first stages quantise first). */
LDM_API ldm_status ldm_model_decode_latent(ldm_model *model, const ldm_tensor *z, ldm_tensor **image);
/* The LDM inpainting model's conditioning: cat(first_stage.encode(masked_image),
 * nearest-resize(mask)) with masked_image [B,3,H,W] and mask [B,1,H,W] both in the model's input
 * range (the reference maps image, mask and masked image to [-1,1]). */
LDM_API ldm_status ldm_model_inpaint_cond(ldm_model *model, const ldm_tensor *masked_image, const ldm_tensor *mask,
                                          ldm_tensor **out);
/* One DDPM ancestral step (LatentDiffusion.p_sample, clip_denoised false) at integer timesteps
 * [B]: x_prev = posterior mean + [t != 0] exp(logvar/2) * noise. noise: same shape as x, or NULL
 * for none (the posterior mean). */
LDM_API ldm_status ldm_model_p_sample(ldm_model *model, const ldm_tensor *x, const ldm_tensor *timesteps,
                                      const ldm_tensor *cond, const ldm_tensor *noise, ldm_tensor **x_prev);

/* A sampler over the model's own training schedule (its stored alphas_cumprod) and
 * parameterization (eps or v, from the config). Free with ldm_sampler_free(). */
LDM_API ldm_status ldm_model_sampler(ldm_model *model, const ldm_sampler_params *params, ldm_sampler **out);


/* ---------------------------------------------------------------- pipelines */

/* One call from conditioning to pixels. Which inputs matter depends on the model:
 * - text models (SD 1.x/2.x, LDM BERT text2img): prompt, negative_prompt;
 * - class-conditional models: class_label, uncond_class (the unconditional class, n_classes-1
 *   by default, guides and stands for class_label -1; see LDM_UNCOND_CLASS_AUTO);
 * - super-resolution (LDM-BSR): cond_image = the low-resolution image [B,3,h,w] in [-1,1];
 * - semantic synthesis: cond_image = a label map [B,1,H,W] (F32 holding class ids) or a one-hot
 *   map [B,n_classes,H,W];
 * - layout-to-image: layout_tokens [B,T] I64 (see ldm_layout_tokens_from_json);
 * - the LDM inpainting model: init_image + mask (the result keeps the known pixels exactly);
 * - SD inpainting models (hybrid conditioning, e.g. sd-v1-5-inpainting): prompt + init_image +
 *   mask; both inpainting models start from pure noise (strength is not used);
 * - any other model: init_image + strength (image-to-image), and init_image + mask + strength for
 *   mask-blended inpainting (the known region is re-noised and pasted back at every step).
 * Images are F32 [B,3,H,W] in [-1,1]; masks F32 [B,1,H,W] in [0,1], 1 = to be generated.
 * Image, mask, label-map and layout inputs with a batch of 1 are repeated to `batch`. The output
 * size follows the conditioning image (super-resolution: the LR size times the first stage's
 * factor; semantic maps: the map's size after the rescaler, times the factor) or init_image;
 * width/height apply only when neither is given. Image-to-image re-runs the last
 * max(1, int(strength * n)) of the n steps the sampler runs, starting from the init latent noised
 * to the level of the first step run. Progress reports count the steps run. */
typedef struct ldm_generate_params {
    size_t struct_size;           /* set by ldm_generate_params_init() */
    const char *prompt;           /* NULL = "" */
    const char *negative_prompt;  /* the unconditional prompt for guidance; NULL = "" */
    int class_label;              /* -1: none */
    int width, height;            /* output pixels; 0: the model's training size (negative: an error) */
    int batch;                    /* images per call, default 1 */
    ldm_sampler_kind sampler;     /* default DDIM */
    int steps;                    /* default 50; 0: the sampler's default (4 for LDM_SAMPLER_LCM) */
    float eta;                    /* DDIM eta, default 0 */
    float guidance_scale;         /* classifier-free guidance scale (1: off). 0 (default): the model's
                                     own default, 7.5 for text models, 3 for class models with an
                                     unconditional class, 1 for models that cannot be guided and
                                     for the LCM sampler; 8.5 for an LCM-distilled UNet, whose
                                     guidance embedding takes it (no unconditional branch then).
                                     A scale != 1 that the model cannot apply is an error. */
    uint64_t seed;                /* x_T = ldm_randn(seed, 0); sampler noise from the same seed */
    const ldm_tensor *init_image; /* image-to-image / inpainting source */
    float strength;               /* image-to-image: fraction of the schedule re-run, default 0.75 */
    const ldm_tensor *mask;       /* inpainting mask (1 = generate) */
    const ldm_tensor *cond_image; /* super-resolution input or semantic label map */
    const ldm_tensor *layout_tokens;
    int vae_tile;                 /* decode in tiles of this many latent pixels (0: automatic, < 0: never) */
    ldm_progress_callback progress;
    void *progress_user_data;
    const ldm_tensor *x_T;        /* initial noise [B,C,h,w] (latent shape) instead of the seeded one;
                                     NULL: ldm_randn(seed, 0). Image-to-image re-noises with it. */
    int uncond_class;             /* class-conditional models: the class that stands for "no class",
                                     used as the unconditional branch of guidance and for samples
                                     without class_label. LDM_UNCOND_CLASS_AUTO (default): see below;
                                     LDM_UNCOND_CLASS_NONE: the model has none; >= 0: that class. */
    ldm_timestep_spacing timestep_spacing; /* k-samplers: DEFAULT or TRAILING (SD-Turbo, SDXL-Turbo) */
    int lcm_original_steps;       /* LCM sampler: original_inference_steps, 0 = 50 */
    int plain_prompts;            /* 0 (default): prompt and negative_prompt use webui's syntax and
                                     length rules (see "prompts as users write them" below; the
                                     shorter of the two gets empty chunks); 1: plain text, cut at
                                     75 tokens (ldm_conditioner_encode_text) */
    /* Tiny autoencoder and step previews (see "tiny autoencoder and previews" below). */
    int vae;                      /* ldm_vae_choice: LDM_VAE_FULL (default) or LDM_VAE_TINY, which
                                     autoencoder encodes init images and decodes the result */
    int (*preview)(int step, int total_steps, const ldm_tensor *image, void *user_data);
                                  /* an ldm_preview_callback, or NULL */
    void *preview_user_data;
    int preview_every;            /* steps between previews; 0: 1 (every step) */
    int preview_kind;             /* ldm_preview_kind, default LDM_PREVIEW_AUTO */
    /* SDXL (sgm) models, see the SDXL section at the end of this header: */
    int original_width, original_height; /* size conditioning; 0 (default): the output size */
    int crop_left, crop_top;              /* crop_coords_top_left, default 0 */
    int target_width, target_height;      /* 0 (default): the output size */
    float aesthetic_score;                /* refiner models: default 6.0 */
    float negative_aesthetic_score;       /* refiner models' unconditional branch: default 2.5 */
    ldm_model *refiner;                   /* an SDXL refiner that finishes the run; NULL: none. It
                                             is used by this call: no other thread may use it
                                             meanwhile (one thread at a time per model) */
    double refiner_start;                 /* fraction of the schedule the base runs (default 0.8;
                                             ldm_sdxl_base_steps) */
} ldm_generate_params;

/* The unconditional class of a class-conditional model (ldm_generate_params.uncond_class).
 * AUTO follows the reference ClassEmbedder: the extra class n_classes - 1, which a model trained
 * with label dropout (ucg_rate, or cin256-v2's class 1000) learned as "no class"; a config whose
 * ClassEmbedder sets `ucg_rate: 0` declares that the model has none. With no unconditional class,
 * guidance_scale != 1 and a missing class_label are LDM_ERR_INVALID_ARGUMENT (never silently
 * ignored). See docs/tasks/class-conditional.md. */
#define LDM_UNCOND_CLASS_AUTO (-1)
#define LDM_UNCOND_CLASS_NONE (-2)

LDM_API void ldm_generate_params_init(ldm_generate_params *params);
/* Fills the first `struct_size` bytes of *params with the defaults and stores struct_size in it
 * (bytes past what this library knows are zeroed). Safe for a struct from any header version. */
LDM_API void ldm_generate_params_init_size(ldm_generate_params *params, size_t struct_size);
/* C callers: the macro passes the caller's own sizeof, so a program built against an older or
 * newer header never has bytes written past its struct. (The function form remains exported for
 * callers of this exact header version, e.g. FFI bindings that size their structs alike.) */
#define ldm_generate_params_init(params) ldm_generate_params_init_size((params), sizeof *(params))
/* Runs the whole pipeline; *image receives F32 [B,3,H,W] in [-1,1]. Cancellable through the
 * progress callback or ldm_model_interrupt().
 * Memory: float16 weights are read from the memory-mapped checkpoint as they are used, and the
 * pages of one phase (text encoding, sampling, decoding) are given back before the next, so the
 * peak is the largest phase, not the sum (SD 1.5 at 512x512 from a float16 file: about 2.3 GB).
 * With LDM_LOW_MEMORY=1 in the environment every layer's weight pages are given back as soon as
 * the layer is done and no scratch is kept (same results, under 1 GB, somewhat slower); see
 * docs/performance.md. */
LDM_API ldm_status ldm_generate(ldm_model *model, const ldm_generate_params *params, ldm_tensor **image);
/* What ldm_generate would run with these params, without running it: *resolved is a copy of
 * *params (filled with ldm_generate_params_init first) with every model-dependent default made
 * explicit: width/height (0: the training size, or the conditioning image's size),
 * guidance_scale (0: the model's default; 1 when the model cannot be guided), uncond_class
 * (AUTO: the model's class, or LDM_UNCOND_CLASS_NONE), class_label (-1 on a class model: the
 * unconditional class). Fails with the same status and message ldm_generate would for an invalid
 * combination (a class out of range, guidance the model cannot apply, a negative size, ...).
 * Hosts use it to record exactly what ran (the ldm tool's PNG text chunk). *resolved has the size
 * params->struct_size says (the same struct type; this header's size when params is NULL) and
 * may be params itself. */
LDM_API ldm_status ldm_generate_params_resolve(ldm_model *model, const ldm_generate_params *params,
                                               ldm_generate_params *resolved);

/* ---------------------------------------------------------------- images */

/* Reads a PNG (8- or 16-bit; gray, gray+alpha, RGB, RGBA or palette) as F32 [1,3,H,W] in [-1,1],
 * computed as the CompVis scripts do: 2*(v/255) - 1. Alpha is dropped, gray is replicated to the
 * three channels and 16-bit samples keep their high byte (as PIL's convert("RGB")). Sides above
 * 16384 pixels are refused (LDM_ERR_LIMIT); corrupt files give LDM_ERR_FORMAT. `path` must be a
 * regular file (or a link to one): a FIFO, device or directory fails at once with LDM_ERR_IO
 * instead of blocking. Ancillary chunks (text, ICC profile, EXIF, ...) are skipped unread, so
 * memory stays bounded by the image size whatever lengths they claim; every allocation is
 * subject to the thread's cap (ldm_set_thread_max_alloc). Both readers behave alike. */
LDM_API ldm_status ldm_image_read_png(const char *path, ldm_tensor **out);
/* Reads a single-channel PNG (mask or label map) as F32 [1,1,H,W].
 * normalize = 1: values in [0,1] (v/255) after converting colour images to luminance like PIL's
 * convert("L"); normalize = 0: raw values 0..255 as floats (palette images give their palette
 * indices, as np.array(Image.open(path)) does; use this for label maps). */
LDM_API ldm_status ldm_image_read_png_gray(const char *path, int normalize, ldm_tensor **out);
/* Writes the first image of `image` (F32 [B,3,H,W] or [3,H,W], values in [-1,1]) as an 8-bit RGB
 * PNG, each sample = (uint8)(255 * clamp((x+1)/2, 0, 1)) (truncated, as the CompVis scripts'
 * astype(np.uint8)). n_text key/value pairs are stored as tEXt chunks (iTXt when a value is not
 * ASCII); keys are 1..79 printable Latin-1 characters. Either array may be NULL when n_text = 0.
 * The file is replaced atomically: the image is written to a temporary file in the same folder
 * (".<name>.XXXXXX.tmp"), flushed to disk and renamed over `path`, so a failed write (full disk,
 * file-size limit) leaves an existing file untouched and removes only its own temporary file
 * (LDM_ERR_IO naming the path). A new file gets mode 0666 less the umask; a replaced one keeps
 * its permissions. Only a regular file or a path that does not exist is written: a directory,
 * FIFO, device or socket is refused with LDM_ERR_INVALID_ARGUMENT and never opened or deleted. A
 * symbolic link is followed: the regular file it leads to is replaced and the link stays (a link
 * to anything else, or to nothing, is refused). */
LDM_API ldm_status ldm_image_write_png(const char *path, const ldm_tensor *image, const char *const *text_keys,
                                       const char *const *text_values, int n_text);

/* ---------------------------------------------------------------- layout */

/* Layout-to-image conditioning ids (layout2img-openimages256: taming's
 * ObjectsBoundingBoxConditionalBuilder with no_tokens 8192, at most 30 objects, crop, group and
 * additional parameters encoded; the objects keep their order instead of being shuffled).
 * json_text (len bytes, UTF-8) is one layout or an array of layouts, each
 *   {"objects": [[category_no, x0, y0, w, h, flags], ...], "crop": null | [x0, y0, w, h],
 *    "flip": false}
 * with coordinates relative to the image ((x0, y0) = top-left; boxes reaching outside are
 * clamped, boxes not overlapping the crop dropped), flags = 1 group-of | 2 occluded |
 * 4 depiction | 8 inside (optional), "crop" / "flip" optional. no_object_classes is the
 * category count the model was trained with (category_no < no_object_classes).
 * out: I64 [n_layouts, 92] = 30 (class, top-left, bottom-right) triples padded with 8191, then
 * the 2 crop tokens; feed it to the BERT conditioner with ldm_conditioner_encode_tokens(). */
LDM_API ldm_status ldm_layout_tokens_from_json(const char *json_text, size_t len, int no_object_classes,
                                               ldm_tensor **out);

/* ---------------------------------------------------------------- training */

/* Training and fine-tuning on the CPU, from a YAML config in the reference's format (issue #13):
 *   model.target ldm.models.autoencoder.AutoencoderKL: the KL autoencoder, L1 reconstruction +
 *     kl_weight * KL (lossconfig params kl_weight, logvar_init; the perceptual and adversarial
 *     terms of LPIPSWithDiscriminator are not implemented: a config that enables them before
 *     disc_start is trained without them, and ldm_trainer_create says so in the log);
 *   model.target ldm.models.diffusion.ddpm.LatentDiffusion: the UNet (and a trainable
 *     ClassEmbedder when cond_stage_trainable) on latents of a frozen first stage read from
 *     first_stage_config.params.ckpt_path or ldm_train_params.first_stage; the reference's
 *     p_losses (parameterization eps / x0 / v, loss_type l2 / l1, l_simple_weight,
 *     original_elbo_weight, timesteps drawn uniformly), scale_factor as configured, or
 *     scale_by_std (1 / std of the first batch's latents, as on_train_batch_start computes it).
 *     Classifier-free guidance training: with `ucg_rate` in the ClassEmbedder's params (or
 *     ldm_train_params.cond_drop_rate) that share of labels is replaced by the extra last class.
 * Read from the config as the reference does: model.base_learning_rate (scaled by batch size *
 * accumulate_grad_batches as main.py's --scale_lr unless scale_lr is 0), model.params.use_ema,
 * scheduler_config (LambdaLinearScheduler / LambdaWarmUpCosineScheduler), data.params.batch_size
 * and lightning.trainer.max_steps / accumulate_grad_batches; every ldm_train_params field that is
 * set wins. Optimiser: AdamW (torch defaults, weight decay 0.01), EMA as LitEma (decay 0.9999 with
 * its warm-up) stored as model_ema.*.
 *
 * Checkpoints are safetensors in the reference's key layout (a whole LatentDiffusion or
 * AutoencoderKL state dict, schedule buffers included) written atomically as <out_dir>/last.
 * safetensors, with <out_dir>/config.yaml beside it (the training config), so ldm_model_load()
 * and the official code both load them; the optimiser state goes to <out_dir>/last.state.
 * safetensors for resume. A trainer is used from one thread at a time (ldm_trainer_interrupt
 * from any thread). */
typedef struct ldm_trainer ldm_trainer;

typedef struct ldm_train_progress {
    int64_t step;        /* optimiser steps done, resume included */
    int64_t total_steps; /* the planned number (0 when only a time limit is set) */
    double loss;         /* the objective of the last step */
    double loss_ema;     /* exponential moving average of the loss (factor 0.98) */
    double seconds;      /* wall time of the last step */
    double images_per_second;
    const char *phase;   /* "autoencoder" or "diffusion" */
} ldm_train_progress;

/* Called after every step; return non-zero to stop (the run then saves and returns LDM_CANCELLED). */
typedef int (*ldm_train_callback)(const ldm_train_progress *progress, void *user_data);

typedef struct ldm_train_params {
    size_t struct_size;       /* set by ldm_train_params_init() */
    const char *data_dir;     /* PNG images + labels.csv (docs/training-data.md); required */
    const char *out_dir;      /* where checkpoints go (created); required */
    const char *first_stage;  /* LatentDiffusion: the autoencoder checkpoint; NULL: the config's
                                 first_stage_config.params.ckpt_path */
    const char *init_from;    /* fine-tune: start from this checkpoint's weights; NULL: from scratch
                                 (seeded initialisation) */
    int resume;               /* continue from <out_dir>/last.safetensors and its optimiser state */
    int64_t max_steps;        /* 0: lightning.trainer.max_steps of the config, else no step limit */
    double max_minutes;       /* 0: no time limit; at least one limit must be set */
    int batch_size;           /* 0: data.params.batch_size */
    double learning_rate;     /* 0: from the config (see above) */
    double cond_drop_rate;    /* < 0: the config's ucg_rate (0 when absent) */
    int save_every;           /* steps between checkpoints; 0: only at the end */
    uint64_t seed;            /* initialisation, data order, noise, timesteps */
    int n_threads;            /* 0: all online CPUs */
    ldm_train_callback callback;
    void *user_data;
    ldm_log_callback log_callback;
    void *log_user_data;
    /* ---- appended (activation checkpointing) */
    uint64_t max_activation_bytes; /* 0: no budget; else UNet blocks whose activations would exceed it are
                                      recomputed in backward (the config's use_checkpoint recomputes all) */
    /* ---- appended (LoRA fine-tuning, captions) */
    /* LoRA fine-tuning (docs/training.md "LoRA fine-tuning"): adapters of this rank on the
     * UNet's SpatialTransformer linear layers, base weights frozen (needs init_from or resume);
     * ldm_trainer_export then writes a kohya-format LoRA file. 0: the config's lora.rank (none). */
    int lora_rank;
    double lora_alpha;        /* scale = alpha / rank; < 0 (default): the config's lora.alpha (1.0);
                                 0: alpha = rank (kohya's rule) */
    const char *vocab_path;   /* caption-conditioned models: the tokenizer vocabulary (file or
                                 folder); NULL: $LDM_VOCAB, then the folder of the text encoder's
                                 checkpoint */
} ldm_train_params;

LDM_API void ldm_train_params_init_size(ldm_train_params *params, size_t struct_size);
#define ldm_train_params_init(params) ldm_train_params_init_size((params), sizeof *(params))

/* Reads the config, opens the data set, builds or loads the networks (one forward pass declares
 * a fresh model's parameters). Errors name the config key, file or tensor at fault. */
LDM_API ldm_status ldm_trainer_create(const char *config_path, const ldm_train_params *params,
                                      ldm_trainer **out);
/* Runs n_steps optimiser steps (no checkpoint). */
LDM_API ldm_status ldm_trainer_step(ldm_trainer *trainer, int n_steps);
/* Runs until max_steps or max_minutes, saving every save_every steps and at the end. */
LDM_API ldm_status ldm_trainer_run(ldm_trainer *trainer);
/* Writes the checkpoint, config.yaml and optimiser state to out_dir now. */
LDM_API ldm_status ldm_trainer_save(ldm_trainer *trainer);
/* Writes the weights a sampler uses to `path` (atomically): the EMA weights in place of the raw
 * UNet when the run keeps an EMA (as the released "ema-only" checkpoints), without optimiser or
 * EMA copies; float16 when `half` (schedule buffers stay float32). Load it with ldm_model_load
 * and the run's config.yaml. */
LDM_API ldm_status ldm_trainer_export(ldm_trainer *trainer, const char *path, int half);
/* The state after the last step (progress->phase stays valid while the trainer lives). */
LDM_API ldm_status ldm_trainer_progress(const ldm_trainer *trainer, ldm_train_progress *progress);
/* Asks a running ldm_trainer_step/run to stop after the current step (any thread). */
LDM_API void ldm_trainer_interrupt(ldm_trainer *trainer);
LDM_API void ldm_trainer_free(ldm_trainer *trainer);

/* ---------------------------------------------------------------- few-step models (LCM guidance embedding) */

/* LCM-distilled UNets carry a guidance embedding (diffusers UNet2DConditionModel
 * time_cond_proj_dim, weight `time_embedding.cond_proj.weight`; in the CompVis layout this
 * library reads: `model.diffusion_model.time_embed.cond_proj.weight` [model_channels, dim]): the
 * guidance scale w' is given to the network instead of running classifier-free guidance,
 *     emb = time_embed(timestep_embedding(t) + cond_proj(guidance_embedding((w' - 1) * 1000))),
 * guidance_embedding(v)[j] = sin(v f_j), [half + j] = cos(v f_j), f_j = exp(-j ln(10000)/(half - 1))
 * (the LCM pipeline's get_guidance_scale_embedding; note sin first, unlike the timestep's).
 * ldm_generate passes guidance_scale there and runs no unconditional branch for such a model
 * (default guidance 8.5, the LCM pipeline's). Returns the embedding width, 0 when the model has
 * none (or is NULL). */
LDM_API int ldm_model_guidance_embedding_dim(const ldm_model *model);
/* ldm_model_apply with the guidance embedding of `guidance_scale` (w = guidance_scale - 1) added
 * to the timestep embedding. LDM_ERR_UNSUPPORTED when the model has no guidance embedding. */
LDM_API ldm_status ldm_model_apply_embedded_guidance(ldm_model *model, const ldm_tensor *x, const ldm_tensor *timesteps,
                                                     const ldm_tensor *cond, float guidance_scale, ldm_tensor **out);

/* ---------------------------------------------------------------- LoRA */

/* LoRA files merged into a loaded model's weights (docs/lora.md): kohya-ss / AUTOMATIC1111 files
 * (`lora_unet_*`, `lora_te_*` / `lora_te1_*` / `lora_te2_*` with .lora_down / .lora_up / .alpha,
 * LoCon on 3x3 convolutions included), diffusers / PEFT files (`unet.*`, `text_encoder.*` with
 * .lora_A / .lora_B, the older .lora.down / .lora.up and attention-processor keys), as
 * .safetensors or PyTorch .pt / .ckpt (read by the library's restricted unpickler). Each adds
 * multiplier * (alpha / rank) * up @ down to the weight it names (alpha absent or 0: the rank);
 * SD2's fused q/k/v projection takes HF-named q/k/v deltas in its row thirds.
 *
 * Merging replaces each affected matrix by a private float32 copy (the checkpoint's bytes are
 * never written, float16 ones included); removing a LoRA recomputes those copies from the file's
 * values and the LoRAs that remain, and a matrix no LoRA touches any more reads the file again:
 * the weights are then bit-identical to never having applied it. Networks already created are
 * rebuilt from the new weights (their caches of transformed weights go with them); add LoRAs
 * right after ldm_model_load to pay nothing for that. Several LoRAs stack in the order added.
 *
 * Every key of a file must be used: an unknown module name, an unsupported key (e.g. LyCORIS
 * lora_mid, DoRA), a shape that does not fit the weight it names or up/down ranks that disagree
 * fail with LDM_ERR_FORMAT naming the keys and nothing is merged; with
 * LDM_LORA_ALLOW_UNMATCHED those keys are skipped instead and listed in a LDM_LOG_WARN message.
 * Non-finite values or alpha, and ranks above the weight's own dimensions, are always errors. */
#define LDM_LORA_ALLOW_UNMATCHED 1u

typedef struct ldm_lora_info {
    size_t struct_size;   /* set by the caller: sizeof(ldm_lora_info) */
    int id;               /* the handle ldm_model_lora_add returned */
    const char *path;     /* as given; valid until the LoRA is removed */
    double multiplier;
    int n_unet_layers;    /* UNet weights it changes */
    int n_text_layers;    /* text-encoder weight slices it changes */
    int n_skipped_keys;   /* keys skipped under LDM_LORA_ALLOW_UNMATCHED */
} ldm_lora_info;

/* Reads `path` and merges it with `multiplier` (flags: 0 or LDM_LORA_ALLOW_UNMATCHED). *id (may
 * be NULL) receives a handle > 0, unique within the model. On failure nothing changes. */
LDM_API ldm_status ldm_model_lora_add(ldm_model *model, const char *path, double multiplier, unsigned flags,
                                      int *id);
/* Takes LoRA `id` out again (LDM_ERR_NOT_FOUND for an unknown id). */
LDM_API ldm_status ldm_model_lora_remove(ldm_model *model, int id);
/* Changes LoRA `id`'s multiplier (the same as removing it and adding it again at its place). */
LDM_API ldm_status ldm_model_lora_set_multiplier(ldm_model *model, int id, double multiplier);
/* Removes every LoRA: the model computes with the checkpoint's own weights again. */
LDM_API ldm_status ldm_model_lora_clear(ldm_model *model);
/* The number of LoRAs merged (0 for NULL). */
LDM_API int ldm_model_lora_count(const ldm_model *model);
/* LoRA number `index` (0 .. count-1, in the order added). info->struct_size must be set. */
LDM_API ldm_status ldm_model_lora_get(const ldm_model *model, int index, ldm_lora_info *info);

/* ---------------------------------------------------------------- prompts as users write them */

/* Prompt syntax and long prompts as AUTOMATIC1111/stable-diffusion-webui reads them (issue #14,
 * docs/prompts.md): "(word:1.3)" weighs word by 1.3, "(word)" by 1.1, "[word]" by 1/1.1 (nested
 * brackets multiply; an unclosed bracket runs to the end; \( \) \[ \] \\ are the literal
 * characters); "BREAK" starts a new chunk. A prompt longer than 75 tokens is cut into chunks of
 * 75 (a chunk ends early at a comma up to 20 tokens back, webui's comma_padding_backtrack), each
 * chunk is wrapped in start/end tokens, padded to 77 as the encoder pads and encoded on its own,
 * and the chunks' embeddings are concatenated: [B, 77*n, D]. After the text tower each token's
 * embedding is multiplied by its weight and the chunk is rescaled so that its mean equals the
 * unweighted mean (webui's "Original" emphasis). A prompt without syntax and within 75 tokens
 * gives exactly ldm_conditioner_encode_text's result. The BERT text encoder (LDM text2img) follows
 * the same rules with chunks of max_seq_len - 2 tokens. */
#define LDM_PROMPT_NO_EMPHASIS        1u /* brackets and BREAK are plain text (webui's emphasis "None") */
#define LDM_PROMPT_NO_COMMA_BACKTRACK 2u /* chunks are cut at exactly 75 tokens (comma_padding_backtrack 0) */
#define LDM_PROMPT_NO_NORMALIZE       4u /* weights applied without restoring the mean (webui's "No norm") */

/* A prompt split into runs of text of equal weight, exactly as webui's parse_prompt_attention
 * returns them (neighbouring runs of equal weight merged; a BREAK is the run "BREAK" of weight
 * -1). flags: LDM_PROMPT_NO_EMPHASIS gives the whole prompt as one run of weight 1. Invalid UTF-8
 * and a weight that is not a number ("(a:1.2.3)", which webui refuses too) are
 * LDM_ERR_INVALID_ARGUMENT. */
typedef struct ldm_prompt_runs ldm_prompt_runs;
LDM_API ldm_status ldm_prompt_parse(const char *prompt, unsigned flags, ldm_prompt_runs **out);
LDM_API int ldm_prompt_runs_count(const ldm_prompt_runs *runs);
/* Run i's UTF-8 text (valid while runs lives; NULL when i is out of range) and weight. */
LDM_API const char *ldm_prompt_runs_text(const ldm_prompt_runs *runs, int i);
LDM_API double ldm_prompt_runs_weight(const ldm_prompt_runs *runs, int i);
/* Whether run i is a BREAK (a new chunk starts there). */
LDM_API int ldm_prompt_runs_is_break(const ldm_prompt_runs *runs, int i);
LDM_API void ldm_prompt_runs_free(ldm_prompt_runs *runs);

/* One prompt -> its chunks: ids [n_chunks, context_length] I64 (each chunk: start, up to
 * context_length - 2 tokens, end, padding as the family pads) and the weight of every id
 * [n_chunks, context_length] F32 (1 for start/end/padding). context_length 77 (BERT: the
 * encoder's max_seq_len). */
LDM_API ldm_status ldm_tokenizer_encode_prompt(ldm_tokenizer *tok, const char *prompt, int context_length,
                                               unsigned flags, ldm_tensor **ids, ldm_tensor **weights);

/* Prompts with the syntax and length rules above -> F32 [n_prompts, 77*k, D], k = the largest
 * chunk count of the prompts (a shorter prompt is followed by the embeddings of empty chunks, as
 * webui pads them). To guide with a negative prompt longer or shorter than the prompt, encode the
 * two in ONE call (then both have k chunks). The weights' mean is restored per prompt and chunk.
 * Text conditioners only (CLIP, OpenCLIP, BERT); needs the vocabulary like
 * ldm_conditioner_encode_text. */
LDM_API ldm_status ldm_conditioner_encode_prompt(ldm_conditioner *cond, const char *const *prompts, int n_prompts,
                                                 unsigned flags, ldm_tensor **out);

/* ---------------------------------------------------------------- tiny autoencoder and previews */

/* TAESD / TAESDXL (madebyollin/taesd): tiny autoencoders distilled from the SD (taesd_*) and SDXL
 * (taesdxl_*) VAEs, about 1.2M parameters per part, decoding about 9x faster than the full VAE with
 * somewhat softer detail (docs/performance.md). Files read (float32 or float16, .safetensors or
 * PyTorch .pth, layout found from the tensor names): the released taesd_encoder.pth /
 * taesd_decoder.pth (and taesdxl_*, and .safetensors conversions of them; one part per file),
 * a whole TAESD module's state dict (encoder.* + decoder.*), and diffusers' AutoencoderTiny file
 * (diffusion_pytorch_model.safetensors: encoder.layers.* + decoder.layers.*).
 * Latents: a tiny autoencoder works on the DIFFUSION model's latents (the ones the UNet samples,
 * i.e. the VAE's latent times the model's scale_factor: TAESD's own scale factor is 1), so the
 * same file serves any model of its VAE's latent space whatever the scale_factor: taesd_* for
 * SD 1.x/2.x, taesdxl_* for SDXL. Images are [-1,1] like everywhere else in the library (the
 * networks see [0,1]; the mapping is done here, as diffusers' AutoencoderTiny does). */
typedef struct ldm_tiny_autoencoder ldm_tiny_autoencoder;

typedef enum ldm_vae_choice {
    LDM_VAE_FULL = 0, /* the model's own first stage */
    LDM_VAE_TINY = 1  /* the tiny autoencoder set with ldm_model_set_tiny_autoencoder */
} ldm_vae_choice;

/* Loads a tiny autoencoder on its own (encoder, decoder or both, as the file holds). params:
 * n_threads, max_alloc_bytes and log_callback are used (NULL: defaults); the rest is ignored.
 * Errors name the file and tensor: LDM_ERR_FORMAT for a file that is no tiny autoencoder, holds a
 * tensor the network does not use, or a mis-shaped one; LDM_ERR_NOT_FOUND for a missing tensor. */
LDM_API ldm_status ldm_tiny_autoencoder_load(const char *path, const ldm_model_params *params,
                                             ldm_tiny_autoencoder **out);
LDM_API void ldm_tiny_autoencoder_free(ldm_tiny_autoencoder *tae);
/* 1 when the file held that part, else 0 (also for NULL). */
LDM_API int ldm_tiny_autoencoder_has_encoder(const ldm_tiny_autoencoder *tae);
LDM_API int ldm_tiny_autoencoder_has_decoder(const ldm_tiny_autoencoder *tae);
LDM_API int ldm_tiny_autoencoder_latent_channels(const ldm_tiny_autoencoder *tae);
/* z [B,C,h,w] (diffusion latents) -> image [B,3,8h,8w] = 2 * Decoder(z) - 1 (not clamped; the
 * decoder itself soft-clamps z with tanh(z/3)*3). Latents above 128x128 are decoded in blended
 * tiles of 64 (as ldm_generate's automatic vae_tile), which bounds the memory of the 64-channel
 * maps. LDM_ERR_NOT_FOUND without a decoder. */
LDM_API ldm_status ldm_tiny_autoencoder_decode(ldm_tiny_autoencoder *tae, const ldm_tensor *z,
                                               ldm_tensor **image);
/* x [B,3,H,W] in [-1,1] -> z [B,C,ceil(H/8),ceil(W/8)] = Encoder((x+1)/2), deterministic (no
 * posterior sampling), already in diffusion-latent scale. LDM_ERR_NOT_FOUND without an encoder. */
LDM_API ldm_status ldm_tiny_autoencoder_encode(ldm_tiny_autoencoder *tae, const ldm_tensor *x,
                                               ldm_tensor **z);
/* Gives the model a tiny autoencoder from `path` (read with the model's allocation cap and run on
 * its threads): the parts the file holds replace the model's (so a decoder file and an encoder
 * file may be set one after the other); NULL removes both. Refused (LDM_ERR_INVALID_ARGUMENT)
 * when its latent channels differ from the model's first stage (e.g. the VQ-f4 LDM models); a
 * file of the wrong family with the same channel count (taesd for an SDXL model) is not
 * detectable and decodes poorly. Used where ldm_generate_params.vae is LDM_VAE_TINY, by
 * ldm_model_decode_latent_with / ldm_model_encode_image, and for previews. */
LDM_API ldm_status ldm_model_set_tiny_autoencoder(ldm_model *model, const char *path);
/* Whether the model has a tiny decoder / encoder set (0 or 1). */
LDM_API int ldm_model_has_tiny_decoder(const ldm_model *model);
LDM_API int ldm_model_has_tiny_encoder(const ldm_model *model);
/* decode_first_stage with the chosen autoencoder: LDM_VAE_FULL is ldm_model_decode_latent
 * (decoder(z / scale_factor)); LDM_VAE_TINY decodes z as it is (see above). */
LDM_API ldm_status ldm_model_decode_latent_with(ldm_model *model, const ldm_tensor *z, ldm_vae_choice vae,
                                                ldm_tensor **image);
/* An image [B,3,H,W] in [-1,1] to diffusion latents, as image-to-image does: LDM_VAE_FULL =
 * scale_factor * first stage (KL: posterior sample mean + std * ldm_randn(seed, ...), the stream
 * ldm_generate uses; VQ: the pre-quantisation latent), LDM_VAE_TINY = the tiny encoder (seed
 * unused). */
LDM_API ldm_status ldm_model_encode_image(ldm_model *model, const ldm_tensor *x, ldm_vae_choice vae, uint64_t seed,
                                          ldm_tensor **z);

/* Step previews (ldm_generate_params.preview): after every preview_every-th step of the run (the
 * steps progress reports count, so floor(steps run / preview_every) calls), the callback gets
 * the sampler's current prediction of the final latent (its x0 estimate, k-samplers: the denoised
 * estimate) made into an image F32 [B,3,H,W] in about [-1,1], valid during the call only.
 * Returning non-zero stops the run (ldm_generate returns LDM_CANCELLED). How it is made: */
typedef enum ldm_preview_kind {
    LDM_PREVIEW_AUTO = 0,   /* TINY when a tiny decoder is set, else LINEAR for a 4-channel latent
                               space with an 8x first stage (SD), else FULL */
    LDM_PREVIEW_TINY = 1,   /* the tiny decoder: [B,3,H,W] at the output size (a fraction of the
                               full decoder's time: docs/performance.md) */
    LDM_PREVIEW_LINEAR = 2, /* a fixed linear map of the 4 SD latent channels to RGB at LATENT
                               resolution [B,3,h,w] (the factors ComfyUI fitted for SD 1.5, its SDXL ones for SDXL; a rough
                               colour preview, nearly free); 4-channel latents only */
    LDM_PREVIEW_FULL = 3    /* the model's own first stage (exact, as slow as the final decode) */
} ldm_preview_kind;
typedef int (*ldm_preview_callback)(int step, int total_steps, const ldm_tensor *image, void *user_data);

/* ---------------------------------------------------------------- training: LoRA and captions */

/* Fine-tuning with LoRA (issue #13; docs/training.md "LoRA fine-tuning"): with a rank from
 * ldm_train_params.lora_rank or the config's `lora:` section, ldm_trainer_create loads the base
 * model from init_from (or the run's own checkpoint on resume), freezes every base weight and
 * trains only the adapters (kohya-ss/sd-scripts networks/lora.py's default set and init).
 * Checkpoints keep base + adapters + optimiser state (exact resume); ldm_trainer_export writes the
 * adapters as a kohya / webui LoRA safetensors file (float16 when `half`).
 * Caption-conditioned models (FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder, BERTEmbedder with
 * cond_stage_trainable false) train with each image's caption from labels.csv through the frozen
 * text encoder; ucg_training (or cond_drop_rate) replaces that share of captions with "".
 * The LoRA rank in effect (0: the run trains the model itself; -1 for NULL). */
LDM_API int ldm_trainer_lora_rank(const ldm_trainer *trainer);

/* ---------------------------------------------------------------- SDXL (issue #14) */

/* Stable Diffusion XL base 1.0 / refiner 1.0 from the original release layout (Stability-AI
 * generative-models: conditioner.embedders.N.*, model.diffusion_model.*, first_stage_model.*;
 * configs/inference/sd_xl_base.yaml, sd_xl_refiner.yaml, or detected from the weights).
 * docs/models.md describes what is implemented and checked. */

/* ldm_sampler_params.discretization. KDIFFUSION: k-diffusion's sigmas (interpolated fractional
 * timesteps, x_T * sigma_max). SGM: sgm's LegacyDDPMDiscretization + DiscreteDenoiser, what SDXL
 * samples with: the table sigmas of the integer timesteps linspace(T-1, 0, steps, endpoint=False)
 * truncated, the model evaluated at the integer index of each sigma, x_T * sqrt(1 + sigma_max^2).
 * Euler, Euler ancestral, Heun and DPM++ 2M only (sgm's EulerEDM / EulerAncestral / HeunEDM /
 * DPMPP2M samplers with their defaults), default spacing only: trailing spacing is diffusers'
 * schedule and goes with KDIFFUSION (ldm_generate on an SDXL model with
 * timestep_spacing TRAILING samples that way: SDXL-Turbo, docs/few-step.md). */
#define LDM_DISCRETIZATION_KDIFFUSION 0
#define LDM_DISCRETIZATION_SGM 1

/* The inputs of an SDXL conditioner (sgm GeneralConditioner): text for the text encoders, the
 * numbers of the size/crop/aesthetic embedders. */
typedef struct ldm_sdxl_cond_params {
    size_t struct_size;                /* set by ldm_sdxl_cond_params_init() */
    const char *const *prompts;        /* n_prompts prompts, tokenised for each text encoder */
    int n_prompts;
    const ldm_tensor *const *tokens;   /* instead of prompts: I64 [B,T] ids per text encoder */
    int n_tokens;
    int zero_text;                     /* the text encoders' outputs are zeros (sgm's
                                          force_zero_embeddings ["txt"]: SDXL base's unconditional
                                          branch) */
    double original_height, original_width; /* original_size_as_tuple */
    double crop_top, crop_left;             /* crop_coords_top_left */
    double target_height, target_width;     /* target_size_as_tuple */
    double aesthetic_score;                 /* refiner; default 6.0 */
    int prompt_syntax;                      /* 0 (default): prompts are plain text cut at 75 tokens (as
                                               ldm_conditioner_encode_text); 1: webui's syntax and long
                                               prompts on every text encoder (as
                                               ldm_conditioner_encode_prompt: all prompts of the call get
                                               the same chunk count; the pooled vector is the first
                                               chunk's; docs/prompts.md) */
    unsigned prompt_flags;                  /* with prompt_syntax: LDM_PROMPT_* */
} ldm_sdxl_cond_params;

LDM_API void ldm_sdxl_cond_params_init_size(ldm_sdxl_cond_params *params, size_t struct_size);
#define ldm_sdxl_cond_params_init(params) ldm_sdxl_cond_params_init_size((params), sizeof *(params))

/* crossattn [B,T,context_dim] (the text encoders' hidden states side by side) and vector
 * [B,adm_in_channels] (pooled text embedding and the size embeddings), as the UNet takes them
 * (ldm_unet_forward context and y). LDM_ERR_UNSUPPORTED on a model that is not SDXL. */
LDM_API ldm_status ldm_conditioner_encode_sdxl(ldm_conditioner *cond, const ldm_sdxl_cond_params *params,
                                               ldm_tensor **crossattn, ldm_tensor **vector);

/* The UNet output (eps, or v) of an SDXL model for x [B,C,h,w] at timesteps [B] (I64 or F32)
 * with crossattn / vector from ldm_conditioner_encode_sdxl; with uncond_* given and scale != 1
 * one batched call on [uncond; cond] guided as u + scale (c - u) (sgm's VanillaCFG combines the
 * denoised estimates, which is the same affine combination). On a UNet with an LCM guidance
 * embedding (ldm_model_guidance_embedding_dim() > 0) scale is the network's input instead and
 * uncond_* are not used (one branch, as diffusers' SDXL pipeline with time_cond_proj_dim). */
LDM_API ldm_status ldm_model_apply_sdxl(ldm_model *model, const ldm_tensor *x, const ldm_tensor *timesteps,
                                        const ldm_tensor *crossattn, const ldm_tensor *vector,
                                        const ldm_tensor *uncond_crossattn, const ldm_tensor *uncond_vector,
                                        float scale, ldm_tensor **out);

/* Starts a run at step `first_step` (0 <= first_step < total steps) from x, a sample already at
 * that step's noise level (another sampler's ldm_sampler_current after first_step steps of the
 * same schedule: the SDXL base -> refiner hand-off). Multistep histories start empty. With the
 * SGM discretization x makes sgm's round trip x / sqrt(1 + sigma^2) * sqrt(1 + sigma^2) (the
 * refiner demo's do_img2img without added noise). */
LDM_API ldm_status ldm_sampler_begin_at(ldm_sampler *s, const ldm_tensor *x, int first_step);

/* The base steps of an SDXL base -> refiner run of `steps` steps in which the refiner takes over
 * at fraction `refiner_start` of the schedule, by sgm's demo rule (Txt2NoisyDiscretizationWrapper
 * and Img2ImgDiscretizationWrapper with strength 1 - refiner_start over the same steps):
 * steps - max(min(int((1 - refiner_start) * (steps + 1)) - 1, steps), 0). */
LDM_API int ldm_sdxl_base_steps(int steps, double refiner_start);

/* ---------------------------------------------------------------- compute modes (issue #15) */

/* ldm_model_params.compute. LDM_COMPUTE_F32: float32 arithmetic throughout (the default, what
 * every result in the documentation is). LDM_COMPUTE_BF16: products in bfloat16 with float32
 * accumulation, opt-in per model, on CPUs with avx512_bf16. Its kernels are NOT written yet: a
 * load asking for it fails with LDM_ERR_UNSUPPORTED (naming avx512_bf16 when the CPU lacks it),
 * never silently computing in float32. */
typedef enum ldm_compute {
    LDM_COMPUTE_F32 = 0,
    LDM_COMPUTE_BF16 = 1,
} ldm_compute;

/* ---------------------------------------------------------------- SDXL image-to-image (issue #14) */

/* Starts a run at step `first_step` (0 <= first_step < total steps) from the clean latent z0
 * noised with the unit noise `noise` (same shape) to that step's level: the start of
 * image-to-image. k-samplers: z0 + sigma * noise (with the SGM discretization followed by sgm's
 * round trip / sqrt(1 + sigma^2) * sqrt(1 + sigma^2), as sgm's do_img2img); DDIM/PLMS/DDPM/LCM:
 * sqrt(abar) z0 + sqrt(1 - abar) noise at the step's timestep. Multistep histories start empty;
 * ancestral noise rows keep their step numbers. */
LDM_API ldm_status ldm_sampler_begin_noised(ldm_sampler *s, const ldm_tensor *z0, const ldm_tensor *noise,
                                            int first_step);

/* The first step of an SDXL image-to-image run of `steps` steps at `strength` (0..1), by sgm's
 * Img2ImgDiscretizationWrapper: of the steps + 1 noise levels the last
 * K = max(int(strength * (steps + 1)), 1) are kept, so the run starts at step steps + 1 - K
 * (strength 1: step 0 from z0 + sigma_max * noise; K = 1: no step runs, the result is z0). The
 * product is taken of the decimal strength (0.7 * 10 is 7). Returns steps for a strength outside
 * [0,1] or steps < 1 (nothing to run). */
LDM_API int ldm_sdxl_img2img_first_step(int steps, float strength);

/* ---------------------------------------------------------------- SDXL inpainting (issue #14) */

/* Inpainting's mask blending with an ordinary (4-channel) UNet, as diffusers'
 * StableDiffusionXLInpaintPipeline does after every scheduler step: where `mask` is 0 (keep) the
 * sample becomes the clean latent z0 noised with `noise` to the level the run has reached
 * (ldm_sampler_begin_noised's rule at ldm_sampler_steps_done; z0 itself after the last step),
 * where it is 1 (repaint) the sample stays: x = (1 - mask) * known + mask * x. Call it after each
 * completed step. mask [B,1,H,W] at the latent's size (diffusers': the binarised mask resized
 * nearest), z0 and noise of the sample's shape (diffusers re-noises with the run's initial noise,
 * x_T). */
LDM_API ldm_status ldm_sampler_blend_known(ldm_sampler *s, const ldm_tensor *z0, const ldm_tensor *noise,
                                           const ldm_tensor *mask);

#ifdef __cplusplus
}
#endif
#endif /* LDM_H */
