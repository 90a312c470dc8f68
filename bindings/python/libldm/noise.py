"""ldm_randn: the library's reproducible Philox normal noise (x_T of ldm_generate is stream 0)."""
from . import _api
from .errors import check
from .tensor import Tensor, as_output_buffer, deliver

_lib = _api.lib


def randn(seed, stream=0, shape=None, out=None):
    """Standard-normal float32 noise, identical on every platform and thread count.

    Either `shape` (returns a new array/Tensor) or `out`: a writable C-contiguous float32 buffer
    (NumPy array, array('f'), ...) filled in place without a copy; `out` is then returned."""
    if (shape is None) == (out is None):
        raise ValueError("randn: give exactly one of shape= and out=")
    seed = _api.integer(seed, "seed", "uint64")
    stream = _api.integer(stream, "stream", "uint64")
    if out is None:
        t = Tensor.zeros(shape, "float32")
        check(_lib.ldm_randn(seed, stream, t.handle), "ldm_randn")
        return deliver(t)
    view = as_output_buffer(out)
    try:
        check(_lib.ldm_randn(seed, stream, view.handle), "ldm_randn")
    finally:
        if view is not out:
            view.close()
    return out
