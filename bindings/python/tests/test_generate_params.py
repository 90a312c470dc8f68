"""generate()'s model-dependent defaults (guidance_scale 0 = the model's own, uncond_class),
Model.resolve_generate_params(), Model.config_path and set_thread_max_alloc(), on the built-in
demo model (class-conditional, 1000 classes + the unconditional class 1000) and the fixtures."""
import os
import shutil
import tempfile
import threading
import unittest

import libldm
from support import fixture_dir, flat_values

SMALL = dict(steps=2, seed=3, width=32, height=32)


class GenerateDefaultsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = libldm.Model.load_builtin("demo", seed=0)

    @classmethod
    def tearDownClass(cls):
        cls.model.close()

    def generate(self, **kw):
        args = dict(SMALL)
        args.update(kw)
        return flat_values(self.model.generate(**args))

    def test_resolve_makes_the_model_defaults_explicit(self):
        r = self.model.resolve_generate_params()
        self.assertEqual((r["width"], r["height"]), (64, 64))  # the training size
        self.assertEqual(r["guidance_scale"], 3.0)  # a class model with an unconditional class
        self.assertEqual(r["uncond_class"], 1000)  # the last class
        self.assertEqual(r["class_label"], 1000)  # no label: the unconditional class
        self.assertEqual((r["sampler"], r["steps"], r["batch"], r["seed"]), ("ddim", 50, 1, 0))
        self.assertEqual((r["prompt"], r["negative_prompt"]), ("", ""))
        self.assertAlmostEqual(r["strength"], 0.75)
        # what is given comes back as given
        r = self.model.resolve_generate_params(class_label=7, guidance_scale=5.5, sampler="euler_a", steps=20,
                                               seed=2**64 - 1, width=32, height=48, batch=2, progress=print)
        self.assertEqual((r["class_label"], r["guidance_scale"], r["sampler"], r["steps"]), (7, 5.5, "euler_a", 20))
        self.assertEqual((r["seed"], r["width"], r["height"], r["batch"]), (2**64 - 1, 32, 48, 2))
        with self.assertRaises(TypeError):
            self.model.resolve_generate_params(stpes=20)

    def test_guidance_default_is_the_model_default_not_7_5(self):
        image = self.generate(class_label=7)
        self.assertEqual(image, self.generate(class_label=7, guidance_scale=3.0))
        self.assertNotEqual(image, self.generate(class_label=7, guidance_scale=7.5))
        self.assertEqual(image, self.generate(class_label=7, guidance_scale=0))  # 0: explicitly the default

    def test_uncond_class(self):
        resolve = self.model.resolve_generate_params
        for auto in (None, "auto", libldm.UNCOND_CLASS_AUTO):
            self.assertEqual(resolve(class_label=7, uncond_class=auto)["uncond_class"], 1000)
        for none in ("none", libldm.UNCOND_CLASS_NONE):
            r = resolve(class_label=7, uncond_class=none)
            self.assertEqual((r["uncond_class"], r["guidance_scale"]), ("none", 1.0))  # nothing to guide against
        r = resolve(uncond_class=5)
        self.assertEqual((r["uncond_class"], r["class_label"], r["guidance_scale"]), (5, 5, 3.0))
        # without an unconditional class: guidance and a missing label are errors, in both calls
        for call in (resolve, self.model.generate):
            with self.assertRaises(libldm.InvalidArgumentError):
                call(uncond_class="none", **SMALL)
            with self.assertRaises(libldm.InvalidArgumentError):
                call(class_label=7, uncond_class="none", guidance_scale=3.0, **SMALL)
            with self.assertRaises(libldm.InvalidArgumentError):
                call(class_label=5000, **SMALL)
        with self.assertRaises(ValueError):
            resolve(uncond_class="nothing")
        with self.assertRaises(OverflowError):
            resolve(uncond_class=2**32 - 2)  # would have been NONE in 32 bits
        # it reaches generate: another unconditional class guides elsewhere; unguided, it is unused
        reference = self.generate(class_label=7)
        self.assertNotEqual(self.generate(class_label=7, uncond_class=5), reference)
        self.assertEqual(self.generate(class_label=7, uncond_class="none"), self.generate(class_label=7, guidance_scale=1))
        # no label = the unconditional class
        self.assertEqual(self.generate(), self.generate(class_label=1000))
        self.assertEqual(self.generate(uncond_class=5), self.generate(class_label=5, uncond_class=5))

    def test_config_path(self):
        self.assertIsNone(self.model.config_path)  # built-in: no config file
        d = fixture_dir("ae_kl_f8")
        if d is None:
            self.skipTest("fixture ae_kl_f8 not found (set LDM_SHARED)")
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, "vae.safetensors")
            shutil.copy(os.path.join(d, "model.safetensors"), ckpt)
            with libldm.Model.load(ckpt) as m:  # nothing beside it: detected from the tensor names
                self.assertIsNone(m.config_path)
            given = os.path.join(tmp, "given.yaml")
            shutil.copy(os.path.join(d, "config.yaml"), given)
            with libldm.Model.load(ckpt, config=given) as m:
                self.assertEqual(m.config_path, given)
            shutil.copy(given, os.path.join(tmp, "config.yaml"))  # found beside the checkpoint
            with libldm.Model.load(ckpt) as m:
                self.assertEqual(m.config_path, os.path.join(tmp, "config.yaml"))
            shutil.copy(given, os.path.join(tmp, "vae.yaml"))  # <name>.yaml comes first
            with libldm.Model.load(ckpt) as m:
                self.assertEqual(m.config_path, os.path.join(tmp, "vae.yaml"))
        m.close()
        with self.assertRaises(ValueError):
            m.config_path

    def test_set_thread_max_alloc(self):
        self.assertEqual(libldm.set_thread_max_alloc(0), 0)
        try:
            self.assertEqual(libldm.set_thread_max_alloc(1000), 0)
            self.assertEqual(libldm.set_thread_max_alloc(1000), 1000)  # returns the previous cap
            libldm.Tensor.zeros((250,))  # 1000 bytes: allowed
            with self.assertRaises(libldm.LimitError):
                libldm.Tensor.zeros((251,))
            # a model without a cap of its own (the header says LDM_ERR_LIMIT; ldm_generate reports
            # some refusals as out of memory: the message is what is checked here)
            with self.assertRaises(libldm.LdmError) as cm:
                self.model.generate(class_label=7, **SMALL)
            self.assertIn("exceeds the limit of 1000 bytes", str(cm.exception))
            # per thread: another thread has no cap
            other = []
            t = threading.Thread(target=lambda: other.append(libldm.Tensor.zeros((10000,)).shape))
            t.start()
            t.join()
            self.assertEqual(other, [(10000,)])
        finally:
            self.assertEqual(libldm.set_thread_max_alloc(0), 1000)
        self.assertEqual(len(self.generate(class_label=7)), 3 * 32 * 32)
        for bad in (-1, 2**64):
            with self.assertRaises(OverflowError):
                libldm.set_thread_max_alloc(bad)


if __name__ == "__main__":
    unittest.main()
