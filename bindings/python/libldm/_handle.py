"""_Owned: the lifetime of a library handle that one Python object owns outright (a sampler, a
tokenizer): close() frees it once, the object is a context manager, and the garbage collector
frees what was not closed. (Model and Tensor manage their handles themselves: a model may be
in use on another thread, a tensor's memory may be shared with NumPy.)"""
from . import _api


class _Owned:
    _what = "handle"  # for the "... is closed" message
    _free = None  # name of the ldm_*_free function

    def __init__(self, handle):
        self._handle = handle

    @property
    def handle(self):
        if self._handle is None:
            raise ValueError("%s is closed" % self._what)
        return self._handle

    @property
    def closed(self):
        return self._handle is None

    def close(self):
        if self._handle is not None:
            getattr(_api.lib, self._free)(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_handle", None) is not None and _api.lib is not None:
            self.close()
