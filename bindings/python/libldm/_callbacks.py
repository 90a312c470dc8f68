"""Python functions as libldm callbacks.

The C function pointers made here must stay alive as long as the library may call them, so their
owners (a Model for the log and abort callbacks, one generate() call for progress) keep the
objects. An exception cannot travel through C frames: the progress and abort wrappers catch it,
ask the library to stop (non-zero return), and the caller re-raises it once the C call has
returned.
"""
import contextlib
import signal
import threading

from . import _api


class _Stopping:
    """What the progress and abort wrappers share: run the Python function, turn a truthy result
    into "stop" (non-zero) and an exception into "stop" plus a pending error, which
    raise_pending() re-raises with its original type and traceback once C has returned."""

    def __init__(self):
        self.error = None

    def _guarded(self, call):
        if self.error is not None:
            return 1
        try:
            return 1 if call() else 0
        except BaseException as e:  # KeyboardInterrupt too: Ctrl-C stops the run at the next check
            self.error = e
            return 1

    def raise_pending(self):
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class Progress(_Stopping):
    """fn(step, total) -> truthy to stop; any exception it raises stops the run and is re-raised
    by raise_pending() with its original type and traceback."""

    def __init__(self, fn):
        super().__init__()
        self._fn = fn
        self.stopped = False
        # Installed even without fn: running Python once per step is what lets a SIGINT handler
        # (sigint_interrupts) run while the library works.
        self.c_function = _api.PROGRESS_CALLBACK(self._call)

    def _call(self, step, total, user_data):
        if self._fn is None:
            return 1 if self.error is not None else 0
        stop = self._guarded(lambda: self._fn(step, total))
        if stop and self.error is None:
            self.stopped = True
        return stop


class Preview(_Stopping):
    """fn(step, total, image) -> truthy to stop; image is a copy of the library's preview (a NumPy
    array when enabled, else a Tensor) that fn may keep. Exceptions as for Progress."""

    def __init__(self, fn):
        super().__init__()
        self._fn = fn
        self.c_function = _api.PREVIEW_CALLBACK(self._call) if fn is not None else _api.PREVIEW_CALLBACK()

    def _call(self, step, total, image, user_data):
        from .tensor import copy_of
        return self._guarded(lambda: self._fn(step, total, copy_of(image)))


class Abort(_Stopping):
    """fn() -> truthy to stop the running call; polled between network blocks and sampler steps of
    every call on the model. An exception it raises stops the call; the call re-raises it
    (raise_pending()) with its original type and traceback instead of libldm.Cancelled."""

    def __init__(self, fn):
        super().__init__()
        self._fn = fn
        self.c_function = _api.ABORT_CALLBACK(self._call)

    def _call(self, user_data):
        return self._guarded(self._fn)


@contextlib.contextmanager
def sigint_interrupts(interrupt):
    """Ctrl-C during a long call: Python runs signal handlers only between bytecodes, and the
    default one would raise KeyboardInterrupt at the entry of a ctypes callback, where nothing can
    catch it (ctypes reports and drops it). So while the call runs, SIGINT calls interrupt() (the
    library then stops at its next check) and the caller raises KeyboardInterrupt once the C call
    has returned. Yields {"hit": bool}, or None when the handler is not ours to replace (not the
    main thread, or the program installed its own)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield None
        return
    state = {"hit": False}

    def handler(signum, frame):
        state["hit"] = True
        interrupt()
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


class Log:
    """fn(level, message) with level one of "error", "warn", "info", "debug". The library cannot be
    stopped from here; an exception raised by fn is reported through sys.unraisablehook."""

    def __init__(self, fn):
        self._fn = fn
        self.c_function = _api.LOG_CALLBACK(self._call) if fn is not None else _api.LOG_CALLBACK()

    def _call(self, level, message, user_data):
        self._fn(_api.LOG_LEVELS.get(level, str(level)), message.decode("utf-8", "replace") if message else "")
