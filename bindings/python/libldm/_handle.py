"""Handle lifetimes and the one-call-at-a-time guard.

CallGuard: the library forbids two calls at once on one handle -- a model and everything obtained
from it (its components), a sampler, a tokenizer -- and does not check it: two threads in one
model corrupt its workspaces and the process dies. So every call takes the guard of the handle it
uses with a non-blocking test-and-set; a call that finds it taken (another thread is inside, or
this call comes from a callback of the running one) raises RuntimeError instead of entering the
library. Nothing ever waits on a guard.

_Owned: the lifetime of a library handle that one Python object owns outright (a sampler, a
tokenizer): close() frees it once, the object is a context manager, and the garbage collector
frees what was not closed. (Model and Tensor manage their handles themselves: a model may be
in use on another thread, a tensor's memory may be shared with NumPy.)"""
import threading

from . import _api


class CallGuard:
    """`with guard:` around a library call on one handle; RuntimeError when a call holds it."""

    def __init__(self, what):
        self._lock = threading.Lock()
        self._what = what

    def acquire(self):
        """True when this caller now holds the guard, False when a call is running."""
        return self._lock.acquire(blocking=False)

    def release(self):
        self._lock.release()

    def busy_error(self, action="call"):
        return RuntimeError(
            "libldm: %s refused: a call on this %s is already running (on another thread, or this comes "
            "from one of its callbacks); a %s and what was obtained from it take one call at a time"
            % (action, self._what, self._what))

    def __enter__(self):
        if not self._lock.acquire(blocking=False):
            raise self.busy_error()
        return self

    def __exit__(self, *exc):
        self._lock.release()


class _Owned:
    _what = "handle"  # for the "... is closed" and "... is running" messages
    _free = None  # name of the ldm_*_free function

    def __init__(self, handle):
        self._handle = handle
        self._guard = CallGuard(self._what)

    @property
    def handle(self):
        if self._handle is None:
            raise ValueError("%s is closed" % self._what)
        return self._handle

    def _call(self, fn, *args):
        """fn(handle, *args) under the guard: RuntimeError when another call on this handle runs."""
        with self._guard:
            return fn(self.handle, *args)

    @property
    def closed(self):
        return self._handle is None

    def close(self):
        if not self._guard.acquire():
            raise self._guard.busy_error("close()")
        try:
            if self._handle is not None:
                getattr(_api.lib, self._free)(self._handle)
                self._handle = None
        finally:
            self._guard.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_handle", None) is not None and _api.lib is not None:
            self.close()
