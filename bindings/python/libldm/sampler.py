"""Sampler: a libldm sampler state machine driven from Python.

The library never calls the network here; the host evaluates the model where the sampler asks:

    with model.sampler("ddim", steps=20, seed=1) as s:
        s.begin(x_T)
        for x, t in s:                       # one request per model evaluation
            s.give(model.apply_guided(x, t, cond, uncond, 7.5))
        z0 = s.current

or in one line: ``z0 = s.run(lambda x, t: model.apply(x, t, cond), x_T)``.
"""
import array
import ctypes

from . import _api
from ._handle import _Owned
from .errors import InvalidArgumentError, check, error_for
from .model import sampler_params
from .tensor import Args, copy_of

_lib = _api.lib


class Sampler(_Owned):
    """A sampler (ldm_sampler). Create it with Model.sampler(...) or Sampler.create(...); close()
    it or use it as a context manager to free it early.

    One call at a time: a call while another one on the same sampler runs (another thread's)
    raises RuntimeError. A sampler made by Model.sampler() holds its own copy of the model's
    schedule, so it is independent of the model: it may step while the model runs a call, and
    it keeps working after the model is closed."""

    _what = "sampler"
    _free = "ldm_sampler_free"

    def __init__(self, handle):
        super().__init__(handle)
        self._given = True

    @classmethod
    def create(cls, alphas_cumprod, parameterization="eps", kind="ddim", steps=50, eta=0.0, ddim_quad=False, seed=0,
               spacing="default", lcm_original_steps=50):
        """A sampler over a training schedule given as its alphas_cumprod values (any sequence of
        numbers), for an "eps" or "v" network ("x0": the LCM sampler only)."""
        values = array.array("f", [float(v) for v in alphas_cumprod])
        try:
            param = _api.PARAMETERIZATIONS[parameterization]
        except KeyError:
            raise ValueError("parameterization %r: expected 'eps', 'v' or 'x0'" % (parameterization,)) from None
        p = sampler_params(kind, steps, eta, ddim_quad, seed, spacing, lcm_original_steps)
        buf = (ctypes.c_float * max(1, len(values))).from_buffer(values) if values else None
        out = ctypes.c_void_p()
        check(_lib.ldm_sampler_create(buf, len(values), param, ctypes.byref(p), ctypes.byref(out)),
              "ldm_sampler_create")
        return cls(out.value)

    # ------------------------------------------------------------ the run

    def begin(self, x_T):
        """Starts (or restarts) a run from unit-variance noise x_T."""
        with Args() as a:
            check(self._call(_lib.ldm_sampler_begin, a.tensor(x_T)), "ldm_sampler_begin")
        self._given = True

    def begin_at(self, x, first_step):
        """Starts a run at step first_step from x, a sample already at that step's noise level
        (another sampler's current() after first_step steps of the same schedule: the SDXL base ->
        refiner hand-off, ldm_sampler_begin_at)."""
        with Args() as a:
            check(self._call(_lib.ldm_sampler_begin_at, a.tensor(x), _api.integer(first_step, "first_step")),
                  "ldm_sampler_begin_at")
        self._given = True

    def begin_noised(self, z0, noise, first_step):
        """Starts a run at step first_step from the clean latent z0 noised with the unit noise
        `noise` to that step's level (image-to-image; ldm_sampler_begin_noised)."""
        with Args() as a:
            check(self._call(_lib.ldm_sampler_begin_noised, a.tensor(z0), a.tensor(noise),
                             _api.integer(first_step, "first_step")), "ldm_sampler_begin_noised")
        self._given = True

    def blend_known(self, z0, noise, mask):
        """Inpainting's blending after a step (ldm_sampler_blend_known): where mask [B,1,H,W] is 0
        the sample becomes z0 noised with `noise` to the level reached, where it is 1 it stays."""
        with Args() as a:
            check(self._call(_lib.ldm_sampler_blend_known, a.tensor(z0), a.tensor(noise), a.tensor(mask)),
                  "ldm_sampler_blend_known")

    def set_noise(self, noise):
        """Fixed per-step noise [n_steps, *x_T.shape] instead of the seeded generator (None: back
        to the generator)."""
        with Args() as a:
            check(self._call(_lib.ldm_sampler_set_noise, a.tensor(noise)), "ldm_sampler_set_noise")

    def next(self):
        """The next request as (x, timestep) -- x is a copy, timestep a float -- or None when the run
        is finished. Asking twice without give() returns the same request."""
        x_in = ctypes.c_void_p()
        t = ctypes.c_double()
        with self._guard:  # x_in belongs to the sampler: copied before another call may change it
            r = _lib.ldm_sampler_next(self.handle, ctypes.byref(x_in), ctypes.byref(t))
            if r < 0:
                raise error_for(_api.STATUS_INVALID_ARGUMENT, "ldm_sampler_next")
            if r == 0:
                return None
            x = copy_of(x_in.value)
        self._given = False
        return x, t.value

    def give(self, model_output):
        """The (guided) raw model output for the last request; advances the run."""
        with Args() as a:
            check(self._call(_lib.ldm_sampler_give, a.tensor(model_output)), "ldm_sampler_give")
        self._given = True

    def __iter__(self):
        """Yields (x, timestep) requests until the run is finished; give() each one's output."""
        while True:
            request = self.next()
            if request is None:
                return
            yield request
            if not self._given:
                raise InvalidArgumentError(_api.STATUS_INVALID_ARGUMENT,
                                           "give() the model output of each request before the next one",
                                           "Sampler.__iter__")

    def run(self, model_fn, x_T):
        """begin(x_T), then give(model_fn(x, t)) for every request; returns the final sample."""
        self.begin(x_T)
        for x, t in self:
            self.give(model_fn(x, t))
        return self.current

    # ------------------------------------------------------------ state

    @property
    def current(self):
        """A copy of the current x (the final sample once the run is finished), or None."""
        with self._guard:
            return copy_of(_lib.ldm_sampler_current(self.handle))

    @property
    def pred_x0(self):
        """A copy of the x0 prediction of the last completed step, or None."""
        with self._guard:
            return copy_of(_lib.ldm_sampler_pred_x0(self.handle))

    @property
    def total_evaluations(self):
        return self._call(_lib.ldm_sampler_total_evaluations)

    @property
    def total_steps(self):
        return self._call(_lib.ldm_sampler_total_steps)

    @property
    def steps_done(self):
        return self._call(_lib.ldm_sampler_steps_done)
