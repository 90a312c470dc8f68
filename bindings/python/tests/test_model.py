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

import ldm
from support import flat_values, shape_of

STEPS = 10  # DDIM over 1000 timesteps: 10 steps run exactly 10 evaluations


class DemoModelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = ldm.Model.load_builtin("demo", seed=0)

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
        x_T = ldm.randn(3, 0, shape=(1, 3, 16, 16))
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
        given = self.generate(seed=99, x_T=ldm.randn(3, 0, shape=(1, 3, 16, 16)))
        self.assertEqual(flat_values(given), flat_values(seeded))

    def test_sampler_requires_give(self):
        with self.model.sampler("ddim", steps=STEPS) as s:
            s.begin(ldm.randn(0, 0, shape=(1, 3, 16, 16)))
            with self.assertRaises(ldm.InvalidArgumentError) as cm:
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
        with self.assertRaises(ldm.Cancelled) as cm:
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
            with self.assertRaises(ldm.Cancelled):
                self.generate(steps=200, progress=progress)  # ~10 s if the interrupt were lost
        finally:
            t.join()
        self.assertLess(len(steps), 200)
        # the flag is cleared when the next call starts
        self.assertEqual(shape_of(self.generate()), (1, 3, 64, 64))

    def test_ctrl_c_stops_generate(self):
        # SIGINT while the library works (no progress callback given): KeyboardInterrupt soon after,
        # not when the 400 steps (~20 s) are done.
        code = ("import ldm\n"
                "m = ldm.Model.load_builtin('demo')\n"
                "print('generating', flush=True)\n"
                "try:\n"
                "    m.generate(class_label=1, steps=400)\n"
                "    print('finished')\n"
                "except KeyboardInterrupt:\n"
                "    print('interrupted')\n")
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(ldm.__file__))),
                   LDM_LIBRARY=ldm.library_path)
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

    def test_components(self):
        ae = self.model.autoencoder()
        self.assertEqual((ae.kind, ae.factor, ae.latent_channels), ("kl", 4, 3))
        self.assertEqual(self.model.conditioner().kind, "class")
        self.assertIn("class-conditional", self.model.describe())
        emb = self.model.conditioner().encode_labels([1, 2])
        self.assertEqual(shape_of(emb), (2, 1, 64))
        x = ldm.randn(1, 0, shape=(2, 3, 16, 16))
        out = self.model.unet()(x, 500, emb)
        self.assertEqual(shape_of(out), (2, 3, 16, 16))
        # a number is the same timestep for the whole batch; apply() routes the conditioning
        self.assertEqual(flat_values(out), flat_values(self.model.unet().forward(x, [500, 500], emb)))
        self.assertEqual(flat_values(out), flat_values(self.model.apply(x, 500, emb)))

    def test_error_messages(self):
        with self.assertRaises(ldm.InvalidArgumentError) as cm:
            self.generate(class_label=5000)  # -1 would be the demo's unconditional class
        self.assertIn("class label", cm.exception.message)
        self.assertIsInstance(cm.exception, ValueError)
        with self.assertRaises(ldm.InvalidArgumentError) as cm:
            self.generate(steps=3)  # DDIM 3 steps over 1000 reaches timestep 1000
        self.assertIn("timestep", str(cm.exception))
        with self.assertRaises(ldm.InvalidArgumentError) as cm:
            self.model.unet()(ldm.randn(0, 0, shape=(1, 5, 16, 16)), 1, [[[0.0] * 64]])
        self.assertIn("ldm_unet_forward", str(cm.exception))
        with self.assertRaises(ValueError):
            self.generate(sampler="no-such-sampler")
        with self.assertRaises(ldm.FileError) as cm:
            ldm.Model.load("/nonexistent/model.safetensors")
        self.assertIn("/nonexistent/model.safetensors", str(cm.exception))
        self.assertIsInstance(cm.exception, OSError)
        with self.assertRaises(ldm.NotFoundError):
            ldm.Model.load_builtin("no-such-model")


class LifetimeTest(unittest.TestCase):
    def test_context_manager_closes(self):
        with ldm.Model.load_builtin("demo") as m:
            ae = m.autoencoder()
            self.assertFalse(m.closed)
        self.assertTrue(m.closed)
        with self.assertRaises(ValueError):
            m.describe()
        with self.assertRaises(ValueError):
            ae.decode(ldm.randn(0, 0, shape=(1, 3, 4, 4)))
        m.close()  # closing twice is harmless
        m.interrupt()  # and so is interrupting a closed model

    def test_component_keeps_model_alive(self):
        ae = ldm.Model.load_builtin("demo").autoencoder()
        gc.collect()
        image = ae.decode(ldm.randn(0, 0, shape=(1, 3, 4, 4)))
        self.assertEqual(shape_of(image), (1, 3, 16, 16))

    def test_sampler_and_tensor_context_managers(self):
        with ldm.Model.load_builtin("demo") as m:
            with m.sampler("euler", steps=4) as s:
                self.assertEqual(s.total_evaluations, 4)
            with self.assertRaises(ValueError):
                s.begin(ldm.randn(0, 0, shape=(1, 3, 16, 16)))
        with ldm.Tensor.zeros((2, 2)) as t:
            self.assertEqual(t.shape, (2, 2))
        with self.assertRaises(ValueError):
            t.shape

    def test_log_callback(self):
        messages = []
        with ldm.Model.load_builtin("demo", log=lambda level, msg: messages.append((level, msg))) as m:
            with self.assertRaises(ldm.InvalidArgumentError):
                m.generate(class_label=5000, steps=STEPS)
        self.assertTrue(any(level == "info" and msg.startswith("loaded") for level, msg in messages), messages)
        self.assertTrue(any(level == "error" and "class label" in msg for level, msg in messages), messages)


if __name__ == "__main__":
    unittest.main()
