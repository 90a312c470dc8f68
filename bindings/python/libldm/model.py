"""Model: a loaded latent diffusion model (or a standalone autoencoder) and its calls."""
import contextlib
import ctypes
import os
import threading
import weakref

from . import _api, _callbacks
from ._handle import CallGuard
from .errors import check
from .tensor import Args, result, timesteps_arg

_lib = _api.lib


def _model_params(config, vocab, threads, weights, max_alloc_bytes, log, cpu_kernels=None, compute="f32"):
    params, _ = _api.init_params(_api.ModelParams, _lib.ldm_model_params_init)
    params.config_path = _api.path_bytes(config) if config is not None else None
    params.vocab_path = _api.path_bytes(vocab) if vocab is not None else None
    params.n_threads = _api.integer(threads, "threads")
    try:
        params.weights = _api.WEIGHTS[weights]
    except KeyError:
        raise ValueError("weights %r: expected one of %s" % (weights, ", ".join(_api.WEIGHTS))) from None
    params.max_alloc_bytes = _api.integer(max_alloc_bytes, "max_alloc_bytes", "size_t")
    params.log_callback = log.c_function
    if cpu_kernels is not None:
        if not isinstance(cpu_kernels, str):
            raise TypeError("cpu_kernels: expected a family name (str) or None, got %r" % (cpu_kernels,))
        params.cpu_kernels = cpu_kernels.encode("utf-8")
    params.compute = _enum(_api.COMPUTE, compute, "compute")
    return params


def _enum(table, value, what):
    if isinstance(value, int):
        return _api.integer(value, what)
    try:
        return table[value]
    except KeyError:
        raise ValueError("%s %r: expected one of %s" % (what, value, ", ".join(table))) from None


def sampler_params(kind, steps, eta, ddim_quad, seed, spacing="default", lcm_original_steps=50,
                   discretization="kdiffusion"):
    p, _ = _api.init_params(_api.SamplerParams, _lib.ldm_sampler_params_init)
    p.kind = _enum(_api.SAMPLERS, kind, "sampler")
    p.steps = _api.integer(steps, "steps")
    p.eta = float(eta)
    p.ddim_quad = 1 if ddim_quad else 0
    p.seed = _api.integer(seed, "seed", "uint64")
    p.spacing = _enum(_api.SPACINGS, spacing, "spacing")
    p.lcm_original_steps = _api.integer(lcm_original_steps, "lcm_original_steps")
    p.discretization = _enum(_api.DISCRETIZATIONS, discretization, "discretization")
    return p


class Model:
    """A model loaded with Model.load(path) or Model.load_builtin(name).

    Use it as a context manager (or call close()) to free it deterministically; otherwise it is
    freed when it and every component obtained from it are garbage.

    One call at a time: a call on the model or one of its components while another one runs (on
    another thread, or from a progress / abort callback of the running call) raises RuntimeError
    instead of entering the library, which forbids it. interrupt() is the exception: any thread
    may call it while another runs a call."""

    def __init__(self, handle, log):
        self._handle = handle
        self._log = log  # the C side keeps a pointer to log.c_function for the model's lifetime
        self._abort = None  # the installed abort callback (_callbacks.Abort): the C side points at it
        self._guard = CallGuard("model")  # held by the call in progress
        self._state = threading.Lock()  # close() against interrupt() from another thread
        self._finalizer = weakref.finalize(self, _lib.ldm_model_free, handle)

    @classmethod
    def load(cls, path, config=None, vocab=None, threads=0, weights="auto", max_alloc_bytes=0, log=None,
             cpu_kernels=None, compute="f32"):
        """Loads a .safetensors or PyTorch .ckpt checkpoint (format detected from the bytes).

        config: the model's original YAML config (default: detect from the tensor names);
        vocab: tokenizer vocabulary (default: $LDM_VOCAB, then next to the checkpoint);
        threads: 0 = all CPUs; weights: "auto" | "ema" | "raw"; max_alloc_bytes: refuse larger
        single allocations (0: no cap); log: fn(level, message); cpu_kernels: a kernel family
        ("avx2+fma", "avx2", "neon", "generic"; None/"auto": LDM_CPU or the CPU's best), held
        process-wide while the model lives (LDMError when the CPU lacks it or live models use
        another); compute: "f32", or "bf16" (refused: needs avx512_bf16, kernels not written)."""
        log = _callbacks.Log(log)
        params = _model_params(config, vocab, threads, weights, max_alloc_bytes, log, cpu_kernels, compute)
        out = ctypes.c_void_p()
        check(_lib.ldm_model_load(_api.path_bytes(path), ctypes.byref(params), ctypes.byref(out)), "ldm_model_load")
        return cls(out.value, log)

    @classmethod
    def load_builtin(cls, name="demo", seed=0, threads=0, max_alloc_bytes=0, log=None, cpu_kernels=None,
                     compute="f32"):
        """A model of a named architecture with seeded random (untrained) weights: "demo" (tiny,
        class-conditional, 64x64), "sd15", "sd21-v", "cin256-v2". No file, no download.
        cpu_kernels, compute: as in load()."""
        log = _callbacks.Log(log)
        params = _model_params(None, None, threads, "auto", max_alloc_bytes, log, cpu_kernels, compute)
        out = ctypes.c_void_p()
        check(_lib.ldm_model_load_builtin(name.encode("utf-8"), _api.integer(seed, "seed", "uint64"), ctypes.byref(params), ctypes.byref(out)),
              "ldm_model_load_builtin")
        return cls(out.value, log)

    # ------------------------------------------------------------ lifetime

    @property
    def handle(self):
        """The ldm_model pointer (an int). ValueError once the model is closed."""
        if self._handle is None:
            raise ValueError("model is closed")
        return self._handle

    @property
    def closed(self):
        return self._handle is None

    @contextlib.contextmanager
    def _running(self):
        """Holds the model's call guard for one library call on the model or a component, so that
        no other call (another thread's, a callback's) and no close() enters it meanwhile:
        RuntimeError for them. Yields the handle (ValueError when closed)."""
        with self._guard:
            handle = self.handle
            if self._abort is not None:
                self._abort.error = None  # a leftover of an earlier call (which raised something else first)
            yield handle

    def close(self):
        """Frees the model now. Components obtained from it stop working (ValueError). Refused
        (RuntimeError) while a call on the model runs: interrupt() it first."""
        if not self._guard.acquire():
            raise self._guard.busy_error("Model.close()")
        try:
            with self._state:
                self._handle = None
            self._finalizer()
            self._abort = None
        finally:
            self._guard.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<libldm.Model %s>" % ("closed" if self._handle is None else hex(self._handle))

    # ------------------------------------------------------------ model-wide calls

    def describe(self):
        """A one-paragraph description of the loaded architecture."""
        with self._running() as h:
            return _lib.ldm_model_describe(h).decode("utf-8", "replace")

    @property
    def config_path(self):
        """The YAML config the model was built from (the one given to load(), else the one found
        beside the checkpoint: <name>.yaml, then config.yaml), or None when the architecture was
        detected from the tensor names (and for built-in models)."""
        with self._running() as h:
            path = _lib.ldm_model_config_path(h)
        return os.fsdecode(path) if path is not None else None

    def set_threads(self, n):
        with self._running() as h:
            self._check(_lib.ldm_model_set_threads(h, _api.integer(n, "n")), "ldm_model_set_threads")

    def set_abort_callback(self, fn):
        """fn() is polled between network blocks and sampler steps of every call on this model
        (generate, apply, the components' calls, ...), on the thread running the call. Returning
        True stops the call, which raises libldm.Cancelled; an exception fn raises stops it too and
        propagates from that call instead. None removes the callback. Not allowed while a call on
        the model runs (fn itself included): RuntimeError."""
        if fn is not None and not callable(fn):
            raise TypeError("set_abort_callback: expected a callable or None, got %r" % (fn,))
        guard = _callbacks.Abort(fn) if fn is not None else None
        if not self._guard.acquire():
            raise self._guard.busy_error("Model.set_abort_callback()")
        try:
            c_function = guard.c_function if guard is not None else _api.ABORT_CALLBACK()  # NULL
            check(_lib.ldm_model_set_abort_callback(self.handle, c_function, None), "ldm_model_set_abort_callback")
            self._abort = guard  # the previous one is no longer called: it may go
        finally:
            self._guard.release()

    def _raise_abort_error(self):
        """Re-raises what the abort callback raised during the call that just returned."""
        if self._abort is not None:
            self._abort.raise_pending()

    def _check(self, status, name):
        """check() for a call on this model: an exception from the abort callback comes first (the
        call failed with LDM_CANCELLED because of it)."""
        self._raise_abort_error()
        check(status, name)

    def interrupt(self):
        """Asks the running call (on any thread) to stop; it then raises libldm.Cancelled.
        A no-op on a closed model."""
        with self._state:
            if self._handle is not None:
                _lib.ldm_model_interrupt(self._handle)

    # ------------------------------------------------------------ LoRA (docs/lora.md)

    def add_lora(self, path, multiplier=1.0, allow_unmatched=False):
        """Merges a LoRA file (kohya/webui or diffusers/PEFT; .safetensors, .pt, .ckpt) into the
        weights with `multiplier`; returns its id (for remove_lora / set_lora_multiplier). Keys that
        do not fit the model raise libldm.FormatError naming them, unless allow_unmatched (then they
        are skipped and logged). On failure nothing changes."""
        out = ctypes.c_int()
        flags = _api.LORA_ALLOW_UNMATCHED if allow_unmatched else 0
        with self._running() as h:
            self._check(_lib.ldm_model_lora_add(h, _api.path_bytes(path), float(multiplier), flags, ctypes.byref(out)),
                        "ldm_model_lora_add")
        return out.value

    def remove_lora(self, lora_id):
        """Takes a LoRA out again: the weights are exactly as if it had never been merged."""
        with self._running() as h:
            self._check(_lib.ldm_model_lora_remove(h, _api.integer(lora_id, "lora_id")), "ldm_model_lora_remove")

    def set_lora_multiplier(self, lora_id, multiplier):
        with self._running() as h:
            self._check(_lib.ldm_model_lora_set_multiplier(h, _api.integer(lora_id, "lora_id"), float(multiplier)),
                        "ldm_model_lora_set_multiplier")

    def clear_loras(self):
        with self._running() as h:
            self._check(_lib.ldm_model_lora_clear(h), "ldm_model_lora_clear")

    def loras(self):
        """The LoRAs merged, in order: dicts with id, path, multiplier, n_unet_layers,
        n_text_layers, n_skipped_keys."""
        result = []
        with self._running() as h:
            for i in range(_lib.ldm_model_lora_count(h)):
                info = _api.LoraInfo(struct_size=ctypes.sizeof(_api.LoraInfo))
                self._check(_lib.ldm_model_lora_get(h, i, ctypes.byref(info)), "ldm_model_lora_get")
                result.append({"id": info.id, "path": os.fsdecode(info.path), "multiplier": info.multiplier,
                               "n_unet_layers": info.n_unet_layers, "n_text_layers": info.n_text_layers,
                               "n_skipped_keys": info.n_skipped_keys})
        return result

    def autoencoder(self):
        from .components import Autoencoder
        return Autoencoder(self, self._component(_lib.ldm_model_autoencoder, "ldm_model_autoencoder"))

    def unet(self):
        from .components import UNet
        return UNet(self, self._component(_lib.ldm_model_unet, "ldm_model_unet"))

    def conditioner(self):
        from .components import Conditioner
        return Conditioner(self, self._component(_lib.ldm_model_conditioner, "ldm_model_conditioner"))

    def _component(self, fn, name):
        out = ctypes.c_void_p()
        with self._running() as h:
            self._check(fn(h, ctypes.byref(out)), name)
        return out.value

    def _tensor_call(self, name, *args):
        """Calls ldm_<name>(model, *args, &out) and returns the result."""
        out = ctypes.c_void_p()
        with self._running() as h:
            self._check(getattr(_lib, name)(h, *args, ctypes.byref(out)), name)
        return result(out.value)

    # ------------------------------------------------------------ latent diffusion calls

    def apply(self, x, timesteps, cond=None):
        """The network output (eps, or v) for x [B,C,h,w] at timesteps (a number or [B]); cond
        is the learned conditioning (cross-attention context or concat channels)."""
        t, tdtype = timesteps_arg(timesteps)
        with Args() as a:
            return self._tensor_call("ldm_model_apply", a.tensor(x), a.tensor(t, tdtype), a.tensor(cond))

    def apply_guided(self, x, timesteps, cond, uncond, scale):
        """Classifier-free guidance: uncond + scale * (cond - uncond) in one batched call."""
        t, tdtype = timesteps_arg(timesteps)
        with Args() as a:
            return self._tensor_call("ldm_model_apply_guided", a.tensor(x), a.tensor(t, tdtype), a.tensor(cond),
                                     a.tensor(uncond), ctypes.c_float(scale))

    def decode_latent(self, z):
        """decode_first_stage: image = decoder(z / scale_factor), [B,3,H,W] in [-1,1]."""
        with Args() as a:
            return self._tensor_call("ldm_model_decode_latent", a.tensor(z))

    def decode_latent_with(self, z, vae="full"):
        """decode_first_stage with the chosen autoencoder: "full" is decode_latent(); "tiny" decodes
        z as it is with the tiny autoencoder (set_tiny_autoencoder)."""
        with Args() as a:
            return self._tensor_call("ldm_model_decode_latent_with", a.tensor(z), _enum(_api.VAE_CHOICES, vae, "vae"))

    def encode_image(self, x, vae="full", seed=0):
        """An image [B,3,H,W] in [-1,1] to diffusion latents as image-to-image does: "full" =
        scale_factor * the first stage (KL: a posterior sample from seed), "tiny" = the tiny encoder."""
        with Args() as a:
            return self._tensor_call("ldm_model_encode_image", a.tensor(x), _enum(_api.VAE_CHOICES, vae, "vae"),
                                     _api.integer(seed, "seed", "uint64"))

    def set_tiny_autoencoder(self, path):
        """Gives the model a tiny autoencoder (TAESD / TAESDXL) file: the parts it holds (encoder,
        decoder or both) replace the model's; None removes both. Used by generate(vae="tiny"),
        decode_latent_with / encode_image(vae="tiny") and previews."""
        with self._running() as h:
            self._check(_lib.ldm_model_set_tiny_autoencoder(h, None if path is None else _api.path_bytes(path)),
                        "ldm_model_set_tiny_autoencoder")

    @property
    def has_tiny_decoder(self):
        with self._running() as h:
            return bool(_lib.ldm_model_has_tiny_decoder(h))

    @property
    def has_tiny_encoder(self):
        with self._running() as h:
            return bool(_lib.ldm_model_has_tiny_encoder(h))

    def inpaint_cond(self, masked_image, mask):
        """The LDM inpainting model's conditioning from a masked image and its mask."""
        with Args() as a:
            return self._tensor_call("ldm_model_inpaint_cond", a.tensor(masked_image), a.tensor(mask))

    def p_sample(self, x, timesteps, cond=None, noise=None):
        """One DDPM ancestral step at integer timesteps."""
        t, _ = timesteps_arg(timesteps)
        with Args() as a:
            return self._tensor_call("ldm_model_p_sample", a.tensor(x), a.tensor(t, "int64"), a.tensor(cond),
                                     a.tensor(noise))

    @property
    def guidance_embedding_dim(self):
        """Width of an LCM-distilled UNet's guidance embedding (time_embed.cond_proj), 0 when none."""
        with self._running() as h:
            return _lib.ldm_model_guidance_embedding_dim(h)

    def apply_embedded_guidance(self, x, timesteps, cond, guidance_scale):
        """apply() of an LCM-distilled UNet with its guidance embedding of guidance_scale."""
        t, tdtype = timesteps_arg(timesteps)
        with Args() as a:
            return self._tensor_call("ldm_model_apply_embedded_guidance", a.tensor(x), a.tensor(t, tdtype), a.tensor(cond),
                                     ctypes.c_float(guidance_scale))

    def apply_sdxl(self, x, timesteps, crossattn, vector, uncond_crossattn=None, uncond_vector=None, scale=1.0):
        """An SDXL model's UNet output (ldm_model_apply_sdxl) with Conditioner.encode_sdxl's
        crossattn / vector; with the uncond_* given and scale != 1, guided as u + scale (c - u)."""
        t, tdtype = timesteps_arg(timesteps)
        with Args() as a:
            return self._tensor_call("ldm_model_apply_sdxl", a.tensor(x), a.tensor(t, tdtype), a.tensor(crossattn),
                                     a.tensor(vector), a.tensor(uncond_crossattn), a.tensor(uncond_vector),
                                     ctypes.c_float(scale))

    def sampler(self, kind="ddim", steps=50, eta=0.0, ddim_quad=False, seed=0, spacing="default",
                lcm_original_steps=50, discretization="kdiffusion"):
        """A Sampler over this model's training schedule and parameterization. spacing "trailing"
        (k-samplers): diffusers' trailing timesteps (SD-Turbo / SDXL-Turbo); kind "lcm": the LCM
        scheduler over lcm_original_steps distillation timesteps (docs/few-step.md);
        discretization "sgm": SDXL's noise levels (euler, euler_a, heun, dpmpp_2m)."""
        from .sampler import Sampler
        p = sampler_params(kind, steps, eta, ddim_quad, seed, spacing, lcm_original_steps, discretization)
        out = ctypes.c_void_p()
        with self._running() as h:
            self._check(_lib.ldm_model_sampler(h, ctypes.byref(p), ctypes.byref(out)), "ldm_model_sampler")
        return Sampler(out.value)

    # ------------------------------------------------------------ pipeline

    def generate(self, prompt=None, negative_prompt=None, class_label=None, width=None, height=None,
                 batch=None, sampler=None, steps=None, eta=None, guidance_scale=None, seed=None,
                 init_image=None, strength=None, mask=None, cond_image=None, layout_tokens=None,
                 vae_tile=None, x_T=None, uncond_class=None, progress=None, timestep_spacing=None,
                 lcm_original_steps=None, plain_prompts=None, vae=None, preview=None,
                 preview_every=None, preview_kind=None, original_width=None,
                 original_height=None, crop_left=None, crop_top=None, target_width=None, target_height=None,
                 aesthetic_score=None, negative_aesthetic_score=None, refiner=None, refiner_start=None):
        """The whole pipeline (ldm_generate): returns images [B,3,H,W] in [-1,1].

        Few-step models (docs/few-step.md): sampler="lcm" (steps default 4; guidance off, or 8.5
        fed to an LCM-distilled UNet's guidance embedding); SD-Turbo / SDXL-Turbo:
        sampler="euler_a" (or "euler"), timestep_spacing="trailing", steps 1..4, guidance_scale=1.

        Arguments left at None keep the library's defaults (50 DDIM steps, the training size,
        guidance_scale 0 = the model's own default: 7.5 for text models, 3 for class models with
        an unconditional class, 1 = off otherwise; resolve_generate_params() tells the values).
        uncond_class (class-conditional models): the class that means "no class", used for the
        unconditional branch of guidance and when class_label is not given: None or "auto" = the
        model's own (the last class, unless its config says it has none), "none" = the model has
        none, or a class number.
        x_T: initial noise [B,C,h,w] (latent shape) instead of randn(seed, 0).
        prompt / negative_prompt use webui's syntax -- (word:1.3), (word), [word], BREAK -- and may
        be longer than 75 tokens (docs/prompts.md); plain_prompts=True reads them as plain text cut
        at 75 tokens.
        SDXL (docs/models.md): original_width / original_height, crop_left / crop_top and
        target_width / target_height are the size conditioning (None: the output size and crop 0),
        aesthetic_score / negative_aesthetic_score a refiner's (6 / 2.5); refiner: an SDXL refiner
        Model that takes over after refiner_start (default 0.8) of the schedule and decodes (it is
        busy for the call, as this model is).
        progress: fn(step, total) called after each step; returning True stops the run
        (libldm.Cancelled is raised); an exception it raises stops the run and propagates here. The
        model's abort callback (set_abort_callback) is polled as well.
        interrupt() from another thread also stops it (libldm.Cancelled), and Ctrl-C (SIGINT) in the
        main thread stops it with KeyboardInterrupt.
        vae: "full" (default) or "tiny" (the tiny autoencoder of set_tiny_autoencoder) encodes the
        init image and decodes the result.
        preview: fn(step, total, image) called after every preview_every-th step (default 1) with
        the current x0 prediction as an image [B,3,H,W] in about [-1,1]; preview_kind "auto"
        (default: "tiny" when a tiny decoder is set, else "linear" for SD latents -- at latent
        size --, else "full"), "tiny", "linear" or "full". Returning True stops the run
        (libldm.Cancelled); exceptions propagate as for progress."""
        guard = _callbacks.Progress(progress)
        pguard = _callbacks.Preview(preview)
        out = ctypes.c_void_p()
        with Args() as a:
            p = _generate_params(a, prompt=prompt, negative_prompt=negative_prompt, class_label=class_label,
                                 width=width, height=height, batch=batch, sampler=sampler, steps=steps, eta=eta,
                                 guidance_scale=guidance_scale, seed=seed, init_image=init_image, strength=strength,
                                 mask=mask, cond_image=cond_image, layout_tokens=layout_tokens, vae_tile=vae_tile,
                                 x_T=x_T, uncond_class=uncond_class, timestep_spacing=timestep_spacing,
                                 lcm_original_steps=lcm_original_steps, plain_prompts=plain_prompts, vae=vae,
                                 preview_every=preview_every, preview_kind=preview_kind,
                                 original_width=original_width, original_height=original_height,
                                 crop_left=crop_left, crop_top=crop_top, target_width=target_width,
                                 target_height=target_height, aesthetic_score=aesthetic_score,
                                 negative_aesthetic_score=negative_aesthetic_score, refiner_start=refiner_start)
            p.progress = guard.c_function
            if preview is not None:
                p.preview = pguard.c_function
            with self._running() as h, _refiner(refiner, self, p), \
                    _callbacks.sigint_interrupts(self.interrupt) as sigint:
                status = _lib.ldm_generate(h, ctypes.byref(p), ctypes.byref(out))
                image = result(out.value) if status == _api.LDM_OK else None
                guard.raise_pending()
                pguard.raise_pending()
                self._raise_abort_error()
                if sigint is not None and sigint["hit"]:
                    raise KeyboardInterrupt
                check(status, "ldm_generate")
        return image

    def resolve_generate_params(self, **kwargs):
        """What generate(**kwargs) would run with, without running it (ldm_generate_params_resolve):
        a dict of the scalar parameters with every model-dependent default made explicit -- width
        and height, guidance_scale, uncond_class (a class number, or "none"), class_label (the
        unconditional class when none was given) -- plus prompt, negative_prompt, batch,
        sampler (its name), steps, eta, seed, strength, vae_tile, plain_prompts, vae, preview_every and preview_kind. Takes generate()'s keyword
        arguments (progress is accepted and ignored) and raises what generate() would raise for an
        invalid combination."""
        kwargs.pop("progress", None)
        kwargs.pop("preview", None)
        refiner = kwargs.pop("refiner", None)
        resolved = _api.GenerateParams()
        with Args() as a:
            p = _generate_params(a, **kwargs)
            with self._running() as h, _refiner(refiner, self, p):
                self._check(_lib.ldm_generate_params_resolve(h, ctypes.byref(p), ctypes.byref(resolved)),
                            "ldm_generate_params_resolve")
        out = {}
        for field in ("prompt", "negative_prompt"):
            value = getattr(resolved, field)
            out[field] = value.decode("utf-8") if value is not None else ""
        for field in ("class_label", "width", "height", "batch", "steps", "seed", "vae_tile", "lcm_original_steps", "plain_prompts"):
            out[field] = getattr(resolved, field)
        for field in ("eta", "guidance_scale", "strength", "aesthetic_score", "negative_aesthetic_score",
                      "refiner_start"):
            out[field] = float(getattr(resolved, field))
        for field in ("original_width", "original_height", "crop_left", "crop_top", "target_width", "target_height"):
            out[field] = getattr(resolved, field)
        out["sampler"] = _SAMPLER_NAMES.get(resolved.sampler, resolved.sampler)
        out["timestep_spacing"] = {v: k for k, v in _api.SPACINGS.items()}.get(resolved.timestep_spacing,
                                                                              resolved.timestep_spacing)
        out["uncond_class"] = "none" if resolved.uncond_class == _api.UNCOND_CLASS_NONE else resolved.uncond_class
        out["vae"] = {v: k for k, v in _api.VAE_CHOICES.items()}.get(resolved.vae, resolved.vae)
        out["preview_every"] = resolved.preview_every
        out["preview_kind"] = {v: k for k, v in _api.PREVIEW_KINDS.items()}.get(resolved.preview_kind,
                                                                                 resolved.preview_kind)
        return out


# one name per sampler kind (the first spelling in _api.SAMPLERS)
_SAMPLER_NAMES = {}
for _name, _kind in _api.SAMPLERS.items():
    _SAMPLER_NAMES.setdefault(_kind, _name)


@contextlib.contextmanager
def _refiner(refiner, model, p):
    """Puts an SDXL refiner Model's handle into p for the call, holding its one-call guard."""
    if refiner is None:
        yield
        return
    if not isinstance(refiner, Model):
        raise TypeError("refiner: expected a libldm.Model, got %r" % (refiner,))
    if refiner is model:
        raise ValueError("refiner: the refiner must be another model than the one generating")
    with refiner._running() as rh:
        p.refiner = rh
        yield


def _uncond_class(value):
    if value is None or value == "auto":
        return _api.UNCOND_CLASS_AUTO
    if value == "none":
        return _api.UNCOND_CLASS_NONE
    if isinstance(value, str):
        raise ValueError("uncond_class %r: expected None, \"auto\", \"none\" or a class number" % (value,))
    return _api.integer(value, "uncond_class")


def _generate_params(a, prompt=None, negative_prompt=None, class_label=None, width=None, height=None, batch=None,
                     sampler=None, steps=None, eta=None, guidance_scale=None, seed=None, init_image=None,
                     strength=None, mask=None, cond_image=None, layout_tokens=None, vae_tile=None, x_T=None,
                     uncond_class=None, timestep_spacing=None, lcm_original_steps=None, plain_prompts=None,
                     vae=None, preview_every=None, preview_kind=None,
                     original_width=None, original_height=None, crop_left=None, crop_top=None, target_width=None,
                     target_height=None, aesthetic_score=None, negative_aesthetic_score=None, refiner_start=None):
    """An ldm_generate_params from generate()'s arguments (None: the library's default); tensors
    are converted into `a` (an Args), which must outlive the call."""
    p, _ = _api.init_params(_api.GenerateParams, _lib.ldm_generate_params_init)
    texts = {"prompt": prompt, "negative_prompt": negative_prompt}
    for field, value in texts.items():
        if value is not None:
            setattr(p, field, value.encode("utf-8"))
    integers = {"class_label": class_label, "width": width, "height": height, "batch": batch,
                "steps": steps, "vae_tile": vae_tile, "lcm_original_steps": lcm_original_steps,
                "original_width": original_width, "original_height": original_height, "crop_left": crop_left,
                "crop_top": crop_top, "target_width": target_width, "target_height": target_height}
    for field, value in integers.items():
        if value is not None:
            setattr(p, field, _api.integer(value, field))
    if seed is not None:
        p.seed = _api.integer(seed, "seed", "uint64")
    floats = {"eta": eta, "guidance_scale": guidance_scale, "strength": strength, "aesthetic_score": aesthetic_score,
              "negative_aesthetic_score": negative_aesthetic_score, "refiner_start": refiner_start}
    for field, value in floats.items():
        if value is not None:
            setattr(p, field, float(value))
    if sampler is not None:
        p.sampler = _enum(_api.SAMPLERS, sampler, "sampler")
    p.uncond_class = _uncond_class(uncond_class)
    if timestep_spacing is not None:
        p.timestep_spacing = _enum(_api.SPACINGS, timestep_spacing, "timestep_spacing")
    if plain_prompts is not None:
        p.plain_prompts = 1 if plain_prompts else 0
    if vae is not None:
        p.vae = _enum(_api.VAE_CHOICES, vae, "vae")
    if preview_every is not None:
        p.preview_every = _api.integer(preview_every, "preview_every")
    if preview_kind is not None:
        p.preview_kind = _enum(_api.PREVIEW_KINDS, preview_kind, "preview_kind")
    p.init_image = a.tensor(init_image)
    p.mask = a.tensor(mask)
    p.cond_image = a.tensor(cond_image)
    p.layout_tokens = a.tensor(layout_tokens, "int64")
    p.x_T = a.tensor(x_T)
    return p
