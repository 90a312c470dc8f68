"""The parts of a model: Autoencoder (first stage), UNet, Conditioner.

Their handles belong to the model: each object keeps its Model alive and stops working (ValueError)
once the model is closed. Their calls share the model's one-call-at-a-time guard (RuntimeError while
another call on the model or any of its components runs)."""
import ctypes

from . import _api
from .errors import check
from .tensor import Args, is_number, result, timesteps_arg

_lib = _api.lib


class _Component:
    def __init__(self, model, handle):
        self.model = model
        self._handle = handle

    def _call(self, name, *args):
        """ldm_<name>(handle, *args, &out) -> result; raises when the model is closed."""
        out = ctypes.c_void_p()
        with self.model._running():
            self.model._check(getattr(_lib, name)(self._handle, *args, ctypes.byref(out)), name)
        return result(out.value)

    def _get(self, fn):
        """fn(handle) -> a plain value, under the model's guard."""
        with self.model._running():
            return fn(self._handle)

    @property
    def handle(self):
        self.model.handle  # raises once the model is closed
        return self._handle


class Autoencoder(_Component):
    """The first stage (AutoencoderKL or VQModel)."""

    @property
    def kind(self):
        """"kl" or "vq"."""
        return _api.AUTOENCODER_KINDS[self._get(_lib.ldm_autoencoder_get_kind)]

    @property
    def factor(self):
        """Spatial downsampling factor (8 for kl-f8)."""
        return self._get(_lib.ldm_autoencoder_factor)

    @property
    def latent_channels(self):
        return self._get(_lib.ldm_autoencoder_latent_channels)

    def encode(self, x):
        """x [B,in,H,W] in [-1,1] -> KL: moments [B,2E,h,w]; VQ: the pre-quantisation latent."""
        with Args() as a:
            return self._call("ldm_autoencoder_encode", a.tensor(x))

    def decode(self, z):
        """z [B,E,h,w] -> image [B,out,H,W] (VQ quantises first). No scale_factor here."""
        with Args() as a:
            return self._call("ldm_autoencoder_decode", a.tensor(z))

    def decode_unquantized(self, z):
        """VQ only: decode without quantising."""
        with Args() as a:
            return self._call("ldm_autoencoder_decode_unquantized", a.tensor(z))

    def quantize(self, h):
        """VQ only: (quant [B,E,h,w], indices [B,h,w] int64)."""
        quant, indices = ctypes.c_void_p(), ctypes.c_void_p()
        with Args() as a, self.model._running():
            self.model._check(_lib.ldm_autoencoder_quantize(self._handle, a.tensor(h), ctypes.byref(quant),
                                                            ctypes.byref(indices)), "ldm_autoencoder_quantize")
        return result(quant.value), result(indices.value)


def posterior_split(moments):
    """KL moments -> (mean, logvar clamped to [-30,20], std = exp(logvar/2))."""
    outs = [ctypes.c_void_p() for _ in range(3)]
    with Args() as a:
        check(_lib.ldm_posterior_split(a.tensor(moments), *(ctypes.byref(o) for o in outs)), "ldm_posterior_split")
    return tuple(result(o.value) for o in outs)


class UNet(_Component):
    """The diffusion network."""

    def forward(self, x, timesteps, context=None, y=None):
        """eps (or v) = UNet(x [B,C,H,W], timesteps (a number or [B]), context [B,T,D],
        class labels y [B])."""
        with Args() as a:
            xh = a.tensor(x)
            if is_number(timesteps):  # one number applies to the whole batch
                timesteps = [timesteps] * max(1, _lib.ldm_tensor_dim(xh, 0))
            t, tdtype = timesteps_arg(timesteps)
            return self._call("ldm_unet_forward", xh, a.tensor(t, tdtype), a.tensor(context), a.tensor(y, "int64"))

    __call__ = forward


class Conditioner(_Component):
    """The conditioning stage (text tower, class embedder, spatial rescaler, ...)."""

    @property
    def kind(self):
        """"none", "class", "clip_text", "openclip_text", "bert", "spatial_rescaler",
        "first_stage", "identity" or "sdxl"."""
        return _api.CONDITIONER_KINDS[self._get(_lib.ldm_conditioner_get_kind)]

    def encode_tokens(self, tokens):
        """Token ids [B,T] -> embeddings [B,T,D]."""
        with Args() as a:
            return self._call("ldm_conditioner_encode_tokens", a.tensor(tokens, "int64"))

    def encode_text(self, prompts):
        """A prompt or a list of prompts -> embeddings (needs the model's vocabulary)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        arr, n = _api.strings(prompts)
        return self._call("ldm_conditioner_encode_text", arr, n)

    def encode_prompt(self, prompts, emphasis=True, comma_backtrack=True, normalize=True):
        """A prompt or a list of prompts with webui's syntax and length rules (docs/prompts.md) ->
        embeddings [n, 77*k, D], k = the most chunks any of them needs (the others get empty
        chunks; encode a negative prompt together with its prompt to give both the same length).
        emphasis=False: brackets and BREAK are plain text; comma_backtrack=False: chunks cut at
        exactly 75 tokens; normalize=False: weights applied without restoring the mean."""
        if isinstance(prompts, str):
            prompts = [prompts]
        arr, n = _api.strings(prompts)
        return self._call("ldm_conditioner_encode_prompt", arr, n,
                          _api.prompt_flags(emphasis, comma_backtrack, normalize))

    def encode_sdxl(self, prompts=None, tokens=None, original_width=None, original_height=None, crop_left=None,
                    crop_top=None, target_width=None, target_height=None, aesthetic_score=None, zero_text=False,
                    prompt_syntax=False, emphasis=True, comma_backtrack=True, normalize=True):
        """SDXL's conditioner (ldm_conditioner_encode_sdxl) -> (crossattn [B,T,D], vector [B,adm]).

        prompts: a prompt or a list (needs the vocabulary), or tokens: one int64 [B,T] per text
        encoder. Size / crop numbers left at None are 0; aesthetic_score (refiner) defaults to 6.
        zero_text: the text encoders' outputs are zeros (the SDXL base's unconditional branch).
        prompt_syntax: webui's syntax and long prompts on every text encoder, the pooled vector
        from the first chunk (docs/prompts.md; emphasis / comma_backtrack / normalize as in
        encode_prompt)."""
        p = _api.SdxlCondParams()
        _lib.ldm_sdxl_cond_params_init_size(ctypes.byref(p), ctypes.sizeof(p))
        numbers = {"original_width": original_width, "original_height": original_height, "crop_left": crop_left,
                   "crop_top": crop_top, "target_width": target_width, "target_height": target_height,
                   "aesthetic_score": aesthetic_score}
        for field, value in numbers.items():
            if value is not None:
                if not is_number(value):
                    raise TypeError("%s: expected a number, got %r" % (field, value))
                setattr(p, field, float(value))
        p.zero_text = 1 if zero_text else 0
        p.prompt_syntax = 1 if prompt_syntax else 0
        p.prompt_flags = _api.prompt_flags(emphasis, comma_backtrack, normalize)
        if isinstance(prompts, str):
            prompts = [prompts]
        ca, vec = ctypes.c_void_p(), ctypes.c_void_p()
        with Args() as a:
            if tokens is not None:
                handles = [a.tensor(t, "int64") for t in tokens]
                arr = (ctypes.c_void_p * max(len(handles), 1))(*handles)
                p.tokens = ctypes.cast(arr, ctypes.POINTER(ctypes.c_void_p))
                p.n_tokens = len(handles)
            elif prompts is not None:
                texts = (ctypes.c_char_p * len(prompts))(*[t.encode("utf-8") for t in prompts])
                p.prompts = ctypes.cast(texts, ctypes.POINTER(ctypes.c_char_p))
                p.n_prompts = len(prompts)
            with self.model._running():
                self.model._check(_lib.ldm_conditioner_encode_sdxl(self._handle, ctypes.byref(p), ctypes.byref(ca),
                                                                   ctypes.byref(vec)), "ldm_conditioner_encode_sdxl")
        return result(ca.value), result(vec.value)

    def encode_labels(self, labels):
        """Class labels [B] -> [B,1,D]."""
        with Args() as a:
            return self._call("ldm_conditioner_encode_labels", a.tensor(labels, "int64"))

    def encode_image(self, x):
        """Spatial inputs (one-hot maps, masked images, LR images) -> conditioning."""
        with Args() as a:
            return self._call("ldm_conditioner_encode_image", a.tensor(x))
