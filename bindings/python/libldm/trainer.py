"""Trainer: training and fine-tuning on the CPU (ldm_trainer_*, include/ldm.h "training").

    with libldm.Trainer("ae.yaml", data_dir="data", out_dir="run", max_steps=100,
                        callback=lambda p: print(p.step, p.loss)) as trainer:
        trainer.run()                          # saves run/last.safetensors + run/config.yaml
        trainer.export("run/export.safetensors", half=True)
"""
import ctypes
import dataclasses
import threading
import weakref

from . import _api, _callbacks
from ._handle import CallGuard
from .errors import check

_lib = _api.lib


@dataclasses.dataclass(frozen=True)
class TrainProgress:
    """The state after the last optimiser step (ldm_train_progress)."""
    step: int                 # optimiser steps done, resume included
    total_steps: int          # the planned number (0 when only a time limit is set)
    loss: float               # the objective of the last step
    loss_ema: float           # exponential moving average of the loss (factor 0.98)
    seconds: float            # wall time of the last step
    images_per_second: float
    phase: str                # "autoencoder" or "diffusion"

    @classmethod
    def _from_c(cls, p):
        return cls(step=p.step, total_steps=p.total_steps, loss=p.loss, loss_ema=p.loss_ema, seconds=p.seconds,
                   images_per_second=p.images_per_second,
                   phase=p.phase.decode("utf-8", "replace") if p.phase else "")


class _Callback(_callbacks._Stopping):
    """fn(TrainProgress) -> truthy to stop; an exception it raises stops the run and is re-raised
    (raise_pending) once the C call has returned, with its own type and traceback."""

    def __init__(self, fn):
        super().__init__()
        self._fn = fn
        # Installed even without fn: running Python after each step lets a SIGINT handler run.
        self.c_function = _api.TRAIN_CALLBACK(self._call)

    def _call(self, progress, user_data):
        if self._fn is None:
            return 1 if self.error is not None else 0
        return self._guarded(lambda: self._fn(TrainProgress._from_c(progress.contents)))


def _path(value):
    return _api.path_bytes(value) if value is not None else None


class Trainer:
    """A training run from a YAML config in the reference's format (ldm_trainer_create).

    data_dir: PNG images + labels.csv (docs/training-data.md); out_dir: where checkpoints go
    (created). first_stage: LatentDiffusion's autoencoder checkpoint (None: the config's
    ckpt_path); init_from: fine-tune from this checkpoint; resume: continue from
    out_dir/last.safetensors. max_steps (0: the config's), max_minutes (0: no time limit),
    batch_size (0: the config's), learning_rate (0: from the config), cond_drop_rate (< 0: the
    config's ucg_rate), save_every (0: only at the end), seed, n_threads (0: all CPUs),
    max_activation_bytes (0: no budget; else UNet blocks whose activations would exceed it are
    recomputed in backward, docs/training.md): as ldm_train_params. callback: fn(TrainProgress)
    after every step, True to stop. log: fn(level, message), as Model.load's.

    A context manager; close() frees it early, else the garbage collector does. One call at a
    time: a call while another runs (another thread's, or from the callback) raises RuntimeError;
    interrupt() may be called from anywhere."""

    def __init__(self, config, data_dir=None, out_dir=None, first_stage=None, init_from=None, resume=False,
                 max_steps=0, max_minutes=0.0, batch_size=0, learning_rate=0.0, cond_drop_rate=-1.0,
                 save_every=0, seed=23, n_threads=0, callback=None, log=None, max_activation_bytes=0):
        if callback is not None and not callable(callback):
            raise TypeError("callback: expected a callable or None, got %r" % (callback,))
        p = _api.TrainParams()
        _lib.ldm_train_params_init_size(ctypes.byref(p), ctypes.sizeof(p))
        p.data_dir = _path(data_dir)
        p.out_dir = _path(out_dir)
        p.first_stage = _path(first_stage)
        p.init_from = _path(init_from)
        p.resume = 1 if resume else 0
        p.max_steps = _api.integer(max_steps, "max_steps", "int64")
        p.max_minutes = float(max_minutes)
        p.batch_size = _api.integer(batch_size, "batch_size")
        p.learning_rate = float(learning_rate)
        p.cond_drop_rate = float(cond_drop_rate)
        p.save_every = _api.integer(save_every, "save_every")
        p.seed = _api.integer(seed, "seed", "uint64")
        p.n_threads = _api.integer(n_threads, "n_threads")
        p.max_activation_bytes = _api.integer(max_activation_bytes, "max_activation_bytes", "uint64")
        # The trainer keeps pointers to both C functions for its lifetime: so does this object.
        self._callback = _Callback(callback)
        self._log = _callbacks.Log(log)
        p.callback = self._callback.c_function
        p.log_callback = self._log.c_function
        out = ctypes.c_void_p()
        status = _lib.ldm_trainer_create(_api.path_bytes(config), ctypes.byref(p), ctypes.byref(out))
        check(status, "ldm_trainer_create")
        self._handle = out.value
        self._guard = CallGuard("trainer")  # held by the call in progress
        self._state = threading.Lock()  # close() against interrupt() from another thread
        self._finalizer = weakref.finalize(self, _lib.ldm_trainer_free, self._handle)

    # ------------------------------------------------------------ lifetime

    @property
    def handle(self):
        """The ldm_trainer pointer (an int). ValueError once the trainer is closed."""
        if self._handle is None:
            raise ValueError("trainer is closed")
        return self._handle

    @property
    def closed(self):
        return self._handle is None

    def close(self):
        """Frees the trainer now (nothing is saved: call save() or run() first). Refused
        (RuntimeError) while a call on it runs, from its callback too."""
        if not self._guard.acquire():
            raise self._guard.busy_error("Trainer.close()")
        try:
            with self._state:
                self._handle = None
            self._finalizer()
        finally:
            self._guard.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<libldm.Trainer %s>" % ("closed" if self._handle is None else hex(self._handle))

    # ------------------------------------------------------------ calls

    def _training(self, fn, name, *args):
        """fn(handle, *args) for a call that runs steps: under the guard, with the callback's
        exception and Ctrl-C re-raised once C has returned, then the status checked."""
        with self._guard:
            h = self.handle
            self._callback.error = None
            with _callbacks.sigint_interrupts(self.interrupt) as sigint:
                status = fn(h, *args)
            self._callback.raise_pending()
            if sigint is not None and sigint["hit"]:
                raise KeyboardInterrupt
            check(status, name)
            return self._progress(h)

    def step(self, n=1):
        """Runs n optimiser steps (no checkpoint) and returns progress(). The callback returning
        True, or interrupt(), stops it after the current step: libldm.Cancelled is raised."""
        return self._training(_lib.ldm_trainer_step, "ldm_trainer_step", _api.integer(n, "n"))

    def run(self):
        """Runs until max_steps or max_minutes, saving every save_every steps and at the end, and
        returns progress(). Stopped by the callback or interrupt(), it saves and raises
        libldm.Cancelled."""
        return self._training(_lib.ldm_trainer_run, "ldm_trainer_run")

    def save(self):
        """Writes out_dir/last.safetensors, config.yaml and the optimiser state now."""
        with self._guard:
            check(_lib.ldm_trainer_save(self.handle), "ldm_trainer_save")

    def export(self, path, half=False):
        """Writes the weights a sampler uses to path (EMA weights when the run keeps an EMA, no
        optimiser state), float16 when half. Load it with Model.load(path, config=out_dir/config.yaml)."""
        with self._guard:
            check(_lib.ldm_trainer_export(self.handle, _api.path_bytes(path), 1 if half else 0), "ldm_trainer_export")

    def _progress(self, h):
        p = _api.TrainProgress()
        check(_lib.ldm_trainer_progress(h, ctypes.byref(p)), "ldm_trainer_progress")
        return TrainProgress._from_c(p)

    def progress(self):
        """The state after the last step, a TrainProgress (step, total_steps, loss, loss_ema,
        seconds, images_per_second, phase)."""
        with self._guard:
            return self._progress(self.handle)

    def interrupt(self):
        """Asks a running step() / run() (on any thread, or from the callback) to stop after the
        current step; it then raises libldm.Cancelled. A no-op on a closed trainer."""
        with self._state:
            if self._handle is not None:
                _lib.ldm_trainer_interrupt(self._handle)
