"""Model, generate, callbacks, cancellation, context managers and error messages, on the built-in
demo model (seeded weights: no file, no download)."""
import gc
import math
import os
import signal
import subprocess
import sys
import threading
import time
import unittest

import libldm
from support import flat_values, shape_of

STEPS = 10  # DDIM over 1000 timesteps: 10 steps run exactly 10 evaluations


class DemoModelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = libldm.Model.load_builtin("demo", seed=0)

    @classmethod
    def tearDownClass(cls):
        cls.model.close()

    def generate(self, **kw):
        args = dict(class_label=7, steps=STEPS, seed=3)
        args.update(kw)
        return self.model.generate(**args)

    def test_generate_shape_range_and_determinism(self):
        a = self.generate()
        self.assertEqual(shape_of(a), (1, 3, 64, 64))
        values = flat_values(a)
        self.assertTrue(all(math.isfinite(v) for v in values), "NaN/Inf in the image")
        self.assertGreater(max(values) - min(values), 1e-3, "a constant image")
        self.assertEqual(flat_values(self.generate()), values, "same seed, different image")
        self.assertNotEqual(flat_values(self.generate(seed=4)), values, "the seed is ignored")
        self.assertNotEqual(flat_values(self.generate(class_label=8)), values, "the class label is ignored")

    def test_manual_sampler_loop_reproduces_generate(self):
        # generate() is x_T = randn(seed, stream 0), DDIM with guidance against class 1000, decode.
        image = self.generate(guidance_scale=3.0)
        cond = self.model.conditioner().encode_labels([7])
        uncond = self.model.conditioner().encode_labels([1000])
        x_T = libldm.randn(3, 0, shape=(1, 3, 16, 16))
        with self.model.sampler("ddim", steps=STEPS, seed=3) as s:
            self.assertEqual(s.total_evaluations, STEPS)
            seen = []
            s.begin(x_T)
            self.assertIsNone(s.pred_x0)  # before the first step
            for x, t in s:
                seen.append(t)
                self.assertEqual(shape_of(x), (1, 3, 16, 16))
                s.give(self.model.apply_guided(x, t, cond, uncond, 3.0))
                self.assertEqual(shape_of(s.pred_x0), (1, 3, 16, 16))
            self.assertEqual(s.steps_done, STEPS)
            z = s.current
        self.assertEqual(seen, sorted(seen, reverse=True))
        self.assertEqual(seen[0], 901.0)  # range(0,1000,100)+1, last first
        self.assertEqual(flat_values(self.model.decode_latent(z)), flat_values(image))

    def test_given_x_T_replaces_the_seeded_noise(self):
        seeded = self.generate(seed=3)
        given = self.generate(seed=99, x_T=libldm.randn(3, 0, shape=(1, 3, 16, 16)))
        self.assertEqual(flat_values(given), flat_values(seeded))

    def test_sampler_requires_give(self):
        with self.model.sampler("ddim", steps=STEPS) as s:
            s.begin(libldm.randn(0, 0, shape=(1, 3, 16, 16)))
            with self.assertRaises(libldm.InvalidArgumentError) as cm:
                for _ in s:
                    pass
            self.assertIn("give()", str(cm.exception))

    def test_progress_reports_every_step(self):
        calls = []
        self.generate(progress=lambda step, total: calls.append((step, total)))
        self.assertEqual(calls, [(i, STEPS) for i in range(1, STEPS + 1)])

    def test_progress_exception_stops_and_propagates(self):
        class Boom(Exception):
            pass
        calls = []

        def progress(step, total):
            calls.append(step)
            if step == 2:
                raise Boom("stop at step 2")
        with self.assertRaises(Boom) as cm:
            self.generate(progress=progress)
        self.assertEqual(str(cm.exception), "stop at step 2")
        self.assertEqual(calls, [1, 2], "generation went on after the callback raised")
        # the model is usable afterwards
        self.assertEqual(shape_of(self.generate(steps=STEPS)), (1, 3, 64, 64))

    def test_progress_returning_true_cancels(self):
        with self.assertRaises(libldm.Cancelled) as cm:
            self.generate(progress=lambda step, total: step == 3)
        self.assertEqual(cm.exception.status, 10)
        self.assertEqual(cm.exception.function, "ldm_generate")

    def test_interrupt_from_another_thread(self):
        started = threading.Event()
        steps = []

        def progress(step, total):
            steps.append(step)
            started.set()
        t = threading.Thread(target=lambda: (started.wait(30), self.model.interrupt()))
        t.start()
        try:
            with self.assertRaises(libldm.Cancelled):
                self.generate(steps=200, progress=progress)  # ~10 s if the interrupt were lost
        finally:
            t.join()
        self.assertLess(len(steps), 200)
        # the flag is cleared when the next call starts
        self.assertEqual(shape_of(self.generate()), (1, 3, 64, 64))

    def test_ctrl_c_stops_generate(self):
        # SIGINT while the library works (no progress callback given): KeyboardInterrupt soon after,
        # not when the 400 steps (~20 s) are done.
        # The child restores Python's own SIGINT handler: started from a background job of a
        # non-interactive shell (a CI script run with `&`), it would inherit SIGINT ignored.
        code = ("import libldm, signal\n"
                "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
                "m = libldm.Model.load_builtin('demo')\n"
                "print('generating', flush=True)\n"
                "try:\n"
                "    m.generate(class_label=1, steps=400)\n"
                "    print('finished')\n"
                "except KeyboardInterrupt:\n"
                "    print('interrupted')\n")
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(libldm.__file__))),
                   LDM_LIBRARY=libldm.library_path)
        child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(child.stdout.readline().strip(), "generating")
            time.sleep(1.0)
            sent = time.monotonic()
            child.send_signal(signal.SIGINT)
            out, _ = child.communicate(timeout=120)
        finally:
            child.kill()
        self.assertEqual(out.strip(), "interrupted")
        self.assertLess(time.monotonic() - sent, 10.0)

    def test_abort_callback_returning_true_cancels(self):
        reference = flat_values(self.generate())
        emb = self.model.conditioner().encode_labels([1])
        polls = []

        def abort_at_5():
            polls.append(1)
            return len(polls) >= 5
        self.model.set_abort_callback(abort_at_5)
        try:
            with self.assertRaises(libldm.Cancelled) as cm:
                self.generate()
            self.assertEqual(cm.exception.function, "ldm_generate")
            self.assertEqual(len(polls), 5, "polled on after it asked to stop")
            # the components' calls poll it too: stop at the UNet's 3rd poll
            polls[:] = [1, 1]
            with self.assertRaises(libldm.Cancelled) as cm:
                self.model.unet()(libldm.randn(1, 0, shape=(1, 3, 16, 16)), 500, emb)
            self.assertEqual(cm.exception.function, "ldm_unet_forward")
            self.assertEqual(len(polls), 5)
        finally:
            self.model.set_abort_callback(None)
        # removed: the next call runs to the end, and gives the same image as before
        self.assertEqual(flat_values(self.generate()), reference)
        self.assertEqual(len(polls), 5)

    def test_abort_callback_returning_false_changes_nothing(self):
        reference = flat_values(self.generate())
        polls = []
        self.model.set_abort_callback(lambda: polls.append(1))  # None: go on
        try:
            self.assertEqual(flat_values(self.generate()), reference)
            self.assertGreater(len(polls), STEPS, "not polled between network blocks")
            before = len(polls)
            self.model.autoencoder().decode(libldm.randn(0, 0, shape=(1, 3, 4, 4)))
            self.assertGreater(len(polls), before, "a component call did not poll it")
        finally:
            self.model.set_abort_callback(None)

    def test_abort_callback_exception_stops_and_propagates(self):
        class Boom(Exception):
            pass
        polls = []

        def abort(limit=3):
            polls.append(1)
            if len(polls) == limit:
                raise Boom("poll %d" % limit)
            return False
        self.model.set_abort_callback(abort)
        try:
            with self.assertRaises(Boom) as cm:
                self.generate()
            self.assertEqual(str(cm.exception), "poll 3")
            self.assertEqual(len(polls), 3, "called again after it raised")
            # still installed, and no longer raising: the next call completes
            self.assertEqual(shape_of(self.generate()), (1, 3, 64, 64))
            self.assertGreater(len(polls), 3 + STEPS)
            # from a component call as well
            polls.clear()
            with self.assertRaises(Boom):
                self.model.autoencoder().decode(libldm.randn(0, 0, shape=(1, 3, 16, 16)))
            self.assertEqual(len(polls), 3)
        finally:
            self.model.set_abort_callback(None)

    def test_set_abort_callback_arguments(self):
        with self.assertRaises(TypeError):
            self.model.set_abort_callback(42)

        def reinstall():
            self.model.set_abort_callback(None)  # not while a call runs: raises, which aborts
        self.model.set_abort_callback(reinstall)
        try:
            with self.assertRaises(RuntimeError) as cm:
                self.generate()
            self.assertIn("running", str(cm.exception))
        finally:
            self.model.set_abort_callback(None)

    def test_components(self):
        ae = self.model.autoencoder()
        self.assertEqual((ae.kind, ae.factor, ae.latent_channels), ("kl", 4, 3))
        self.assertEqual(self.model.conditioner().kind, "class")
        self.assertIn("class-conditional", self.model.describe())
        emb = self.model.conditioner().encode_labels([1, 2])
        self.assertEqual(shape_of(emb), (2, 1, 64))
        x = libldm.randn(1, 0, shape=(2, 3, 16, 16))
        out = self.model.unet()(x, 500, emb)
        self.assertEqual(shape_of(out), (2, 3, 16, 16))
        # a number is the same timestep for the whole batch; apply() routes the conditioning
        self.assertEqual(flat_values(out), flat_values(self.model.unet().forward(x, [500, 500], emb)))
        self.assertEqual(flat_values(out), flat_values(self.model.apply(x, 500, emb)))

    def test_error_messages(self):
        with self.assertRaises(libldm.InvalidArgumentError) as cm:
            self.generate(class_label=5000)  # -1 would be the demo's unconditional class
        self.assertIn("class label", cm.exception.message)
        self.assertIsInstance(cm.exception, ValueError)
        with self.assertRaises(libldm.InvalidArgumentError) as cm:
            self.generate(steps=3)  # DDIM 3 steps over 1000 reaches timestep 1000
        self.assertIn("timestep", str(cm.exception))
        with self.assertRaises(libldm.InvalidArgumentError) as cm:
            self.model.unet()(libldm.randn(0, 0, shape=(1, 5, 16, 16)), 1, [[[0.0] * 64]])
        self.assertIn("ldm_unet_forward", str(cm.exception))
        with self.assertRaises(ValueError):
            self.generate(sampler="no-such-sampler")
        with self.assertRaises(libldm.FileError) as cm:
            libldm.Model.load("/nonexistent/model.safetensors")
        self.assertIn("/nonexistent/model.safetensors", str(cm.exception))
        self.assertIsInstance(cm.exception, OSError)
        with self.assertRaises(libldm.NotFoundError):
            libldm.Model.load_builtin("no-such-model")


class LifetimeTest(unittest.TestCase):
    def test_context_manager_closes(self):
        with libldm.Model.load_builtin("demo") as m:
            ae = m.autoencoder()
            self.assertFalse(m.closed)
        self.assertTrue(m.closed)
        with self.assertRaises(ValueError):
            m.describe()
        with self.assertRaises(ValueError):
            ae.decode(libldm.randn(0, 0, shape=(1, 3, 4, 4)))
        m.close()  # closing twice is harmless
        m.interrupt()  # and so is interrupting a closed model
        with self.assertRaises(ValueError):
            m.set_abort_callback(lambda: False)

    def test_component_keeps_model_alive(self):
        ae = libldm.Model.load_builtin("demo").autoencoder()
        gc.collect()
        image = ae.decode(libldm.randn(0, 0, shape=(1, 3, 4, 4)))
        self.assertEqual(shape_of(image), (1, 3, 16, 16))

    def test_sampler_and_tensor_context_managers(self):
        with libldm.Model.load_builtin("demo") as m:
            with m.sampler("euler", steps=4) as s:
                self.assertEqual(s.total_evaluations, 4)
            with self.assertRaises(ValueError):
                s.begin(libldm.randn(0, 0, shape=(1, 3, 16, 16)))
        with libldm.Tensor.zeros((2, 2)) as t:
            self.assertEqual(t.shape, (2, 2))
        with self.assertRaises(ValueError):
            t.shape

    def test_log_callback(self):
        messages = []
        with libldm.Model.load_builtin("demo", log=lambda level, msg: messages.append((level, msg))) as m:
            with self.assertRaises(libldm.InvalidArgumentError):
                m.generate(class_label=5000, steps=STEPS)
        self.assertTrue(any(level == "info" and msg.startswith("loaded") for level, msg in messages), messages)
        self.assertTrue(any(level == "error" and "class label" in msg for level, msg in messages), messages)


if __name__ == "__main__":
    unittest.main()
