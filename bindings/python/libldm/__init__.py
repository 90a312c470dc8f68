"""libldm: Python bindings of libldm (Latent Diffusion Models / Stable Diffusion 1.x-2.x on the CPU).

Pure Python over ctypes: no compiled extension. The shared library is looked for in this order:

  1. $LDM_LIBRARY -- the path of libldm.so.0, or of a directory holding it. When set, it is the
     only place tried (a wrong path raises ImportError instead of picking up another copy).
  2. libldm.so.0 inside this package's directory (next to this __init__.py).
  3. the dynamic loader's search path (LD_LIBRARY_PATH, /etc/ld.so.cache, /usr/lib, ...), where
     `make install` puts it.

Quick start::

    import libldm
    with libldm.Model.load_builtin("demo") as model:          # or libldm.Model.load("sd15.safetensors")
        image = model.generate(class_label=1, steps=20, seed=1)   # [1,3,64,64] in [-1,1]
        libldm.write_png("out.png", image)

Tensors: inputs may be NumPy arrays, buffer-protocol objects, nested lists or libldm.Tensor
(contiguous float32 / int64 memory is passed without a copy); results are NumPy arrays when NumPy
is installed, else libldm.Tensor (see libldm.tensor). Failures raise libldm.LdmError subclasses carrying
the library's message (see libldm.errors). Handles are freed by close(), by `with`, or by the
garbage collector.
"""
from . import _api
from .components import Autoencoder, Conditioner, UNet, posterior_split
from .errors import (Cancelled, FileError, FormatError, InternalError, InvalidArgumentError, LdmError,
                     LimitError, NotFoundError, NumericError, OutOfMemoryError, SecurityError,
                     UnsupportedError)
from .image import read_png, read_png_gray, write_png
from .layout import layout_tokens
from .model import Model
from .noise import randn
from .prompt import parse_prompt
from .sampler import Sampler
from .tensor import Tensor, as_tensor, numpy_enabled, set_numpy
from .tiny import TinyAutoencoder
from .tokenizer import Tokenizer
from .trainer import Trainer, TrainProgress

#: Where the shared library was loaded from.
library_path = _api.library_path

#: generate(uncond_class=...): the model's own unconditional class (the default) / none at all.
UNCOND_CLASS_AUTO = _api.UNCOND_CLASS_AUTO
UNCOND_CLASS_NONE = _api.UNCOND_CLASS_NONE


def set_thread_max_alloc(max_bytes):
    """Caps single allocations made by the calling thread's library calls at max_bytes (0: no
    cap, the default) and returns the previous cap (ldm_set_thread_max_alloc). It applies to
    calls without a model (read_png, tokenizers, layout_tokens, tensors) and to a model's calls
    when the model has no max_alloc_bytes of its own (else the smaller of the two). A refused
    allocation raises LimitError. Per thread: other threads keep their own cap."""
    return _api.lib.ldm_set_thread_max_alloc(_api.integer(max_bytes, "max_bytes", "size_t"))


def sdxl_base_steps(steps, refiner_start):
    """The base's share of an SDXL base -> refiner run of `steps` steps handed over at fraction
    refiner_start of the schedule (sgm's demo rule, ldm_sdxl_base_steps)."""
    return _api.lib.ldm_sdxl_base_steps(_api.integer(steps, "steps"), float(refiner_start))


def sdxl_img2img_first_step(steps, strength):
    """The first step of an SDXL image-to-image run of `steps` steps at `strength` (sgm's
    Img2ImgDiscretizationWrapper rule, ldm_sdxl_img2img_first_step); steps: nothing runs."""
    return _api.lib.ldm_sdxl_img2img_first_step(_api.integer(steps, "steps"), float(strength))


def version():
    """The library's version string (ldm_version()), e.g. "0.1.0"."""
    return _api.lib.ldm_version().decode("ascii")


def version_number():
    """MAJOR*10000 + MINOR*100 + PATCH of the loaded library."""
    return _api.lib.ldm_version_number()


def cpu_info():
    """ldm_cpu_info(): the CPU's vector features, the kernel families it can run and the one in
    use, and why (LDM_CPU, a model's cpu_kernels, or auto)."""
    return _api.lib.ldm_cpu_info().decode("utf-8")


__version__ = version()

__all__ = [
    "Autoencoder", "Cancelled", "Conditioner", "FileError", "FormatError", "InternalError",
    "InvalidArgumentError", "LdmError", "LimitError", "Model", "NotFoundError", "NumericError",
    "OutOfMemoryError", "Sampler", "SecurityError", "Tensor", "TinyAutoencoder", "Tokenizer", "Trainer", "TrainProgress", "UNet", "UnsupportedError",
    "as_tensor", "layout_tokens", "library_path", "numpy_enabled", "parse_prompt", "posterior_split", "randn",
    "read_png", "read_png_gray", "set_numpy", "set_thread_max_alloc", "UNCOND_CLASS_AUTO", "UNCOND_CLASS_NONE",
    "version", "version_number", "write_png",
]
