"""TinyAutoencoder: TAESD / TAESDXL on its own (a model's own is set with Model.set_tiny_autoencoder)."""
import ctypes

from . import _api
from ._handle import _Owned
from .errors import check
from .tensor import Args, result

_lib = _api.lib


class TinyAutoencoder(_Owned):
    """TinyAutoencoder(path, threads=0): a tiny autoencoder file -- taesd_encoder.pth /
    taesd_decoder.pth (taesdxl_* for SDXL), their .safetensors conversions, or diffusers'
    AutoencoderTiny diffusion_pytorch_model.safetensors (both parts). It works on the diffusion
    model's latents (the VAE latent times scale_factor) and [-1,1] images. A context manager;
    close() frees it early."""

    _what = "tiny autoencoder"
    _free = "ldm_tiny_autoencoder_free"

    def __init__(self, path, threads=0, max_alloc_bytes=0):
        p, _ = _api.init_params(_api.ModelParams, _lib.ldm_model_params_init)
        p.n_threads = _api.integer(threads, "threads")
        p.max_alloc_bytes = _api.integer(max_alloc_bytes, "max_alloc_bytes", "size_t")
        out = ctypes.c_void_p()
        check(_lib.ldm_tiny_autoencoder_load(_api.path_bytes(path), ctypes.byref(p), ctypes.byref(out)),
              "ldm_tiny_autoencoder_load")
        super().__init__(out.value)

    @property
    def has_encoder(self):
        return bool(self._call(_lib.ldm_tiny_autoencoder_has_encoder))

    @property
    def has_decoder(self):
        return bool(self._call(_lib.ldm_tiny_autoencoder_has_decoder))

    @property
    def latent_channels(self):
        return self._call(_lib.ldm_tiny_autoencoder_latent_channels)

    def decode(self, z):
        """z [B,C,h,w] -> image [B,3,8h,8w] in about [-1,1]."""
        return self._run(_lib.ldm_tiny_autoencoder_decode, z, "ldm_tiny_autoencoder_decode")

    def encode(self, x):
        """x [B,3,H,W] in [-1,1] -> z [B,C,ceil(H/8),ceil(W/8)] (deterministic)."""
        return self._run(_lib.ldm_tiny_autoencoder_encode, x, "ldm_tiny_autoencoder_encode")

    def _run(self, fn, x, name):
        out = ctypes.c_void_p()
        with Args() as a:
            check(self._call(fn, a.tensor(x), ctypes.byref(out)), name)
        return result(out.value)
