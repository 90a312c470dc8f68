"""PNG files as image tensors (ldm_image_read_png / _read_png_gray / _write_png)."""
import ctypes

from . import _api
from .errors import check
from .tensor import Args, result

_lib = _api.lib


def read_png(path):
    """A PNG as float32 [1,3,H,W] in [-1,1] (2*v/255 - 1; alpha dropped, gray replicated)."""
    out = ctypes.c_void_p()
    check(_lib.ldm_image_read_png(_api.path_bytes(path), ctypes.byref(out)), "ldm_image_read_png")
    return result(out.value)


def read_png_gray(path, normalize=True):
    """A single-channel PNG as float32 [1,1,H,W]: values in [0,1] (normalize, colour converted to
    luminance) or raw 0..255 / palette indices (normalize=False, for label maps)."""
    out = ctypes.c_void_p()
    check(_lib.ldm_image_read_png_gray(_api.path_bytes(path), 1 if normalize else 0, ctypes.byref(out)),
          "ldm_image_read_png_gray")
    return result(out.value)


def write_png(path, image, text=None):
    """Writes the first image of `image` ([B,3,H,W] or [3,H,W] in [-1,1]) as 8-bit RGB; `text` is
    an optional dict of tEXt/iTXt key/value pairs."""
    text = dict(text or {})
    keys, n = _api.strings(text.keys())
    values, _ = _api.strings(text.values())
    with Args() as a:
        check(_lib.ldm_image_write_png(_api.path_bytes(path), a.tensor(image), keys, values, n),
              "ldm_image_write_png")
