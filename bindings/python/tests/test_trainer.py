"""libldm.Trainer: a tiny AutoencoderKL trained on 12 generated 16x16 images (the set of
tests/test_trainer.c): the loss falls, the callback runs once per step and can stop the run (or
raise), the export loads with Model.load, the struct mirrors the header, bad arguments raise."""
import ctypes
import os
import tempfile
import threading
import unittest

import libldm
from libldm import _api
from support import REPO, flat_values

AE_YAML = """\
model:
  base_learning_rate: 2.5e-4
  target: ldm.models.autoencoder.AutoencoderKL
  params:
    embed_dim: 2
    lossconfig:
      target: ldm.modules.losses.LPIPSWithDiscriminator
      params: {disc_start: 50001, kl_weight: 1.0e-6, disc_weight: 0.0, perceptual_weight: 0.0}
    ddconfig: {double_z: true, z_channels: 2, resolution: 16, in_channels: 3, out_ch: 3, ch: 32,
               ch_mult: [1, 1], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}
data:
  params: {batch_size: 4}
lightning:
  trainer: {max_steps: 20}
"""

STEPS = 20


def make_data(directory):
    """12 images of 16x16 in 3 classes: a bar whose orientation is the class, on a tinted ground."""
    os.makedirs(directory)
    lines = ["file,label"]
    for i in range(12):
        cls = i % 3
        image = []
        for c in range(3):
            ground = 0.6 + 0.1 * ((i + c) % 3)
            image.append([[-0.8 if (6 <= y < 10 if cls == 0 else 6 <= x < 10 if cls == 1 else abs(x - y) < 2)
                           else ground for x in range(16)] for y in range(16)])
        name = "img%02d.png" % i
        libldm.write_png(os.path.join(directory, name), image)
        lines.append("%s,%d" % (name, cls))
    with open(os.path.join(directory, "labels.csv"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


class TrainerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.root = cls.tmp.name
        cls.data = os.path.join(cls.root, "data")
        make_data(cls.data)
        cls.config = os.path.join(cls.root, "ae.yaml")
        with open(cls.config, "w", encoding="utf-8") as f:
            f.write(AE_YAML)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def trainer(self, out, **kw):
        kw.setdefault("n_threads", 1)
        kw.setdefault("seed", 5)
        return libldm.Trainer(self.config, data_dir=self.data, out_dir=os.path.join(self.root, out), **kw)

    def test_loss_falls_callback_per_step_and_export_loads(self):
        seen, logged = [], []
        with self.trainer("ae", callback=lambda p: seen.append(p), log=lambda *m: logged.append(m)) as t:
            self.assertIn("info", [level for level, _ in logged])
            self.assertTrue(any("training autoencoder" in message for _, message in logged), logged)
            before = t.progress()
            self.assertEqual((before.step, before.total_steps, before.phase), (0, STEPS, "autoencoder"))
            final = t.run()
            self.assertEqual(final, t.progress())
            self.assertEqual(final.step, STEPS)
            self.assertEqual([p.step for p in seen], list(range(1, STEPS + 1)))
            self.assertIsInstance(seen[0], libldm.TrainProgress)
            self.assertTrue(all(p.phase == "autoencoder" and p.total_steps == STEPS and p.seconds > 0
                                and p.images_per_second > 0 for p in seen))
            first = sum(p.loss for p in seen[:5]) / 5
            last = sum(p.loss for p in seen[-5:]) / 5
            self.assertLess(last, 0.5 * first, "the loss did not fall: %g -> %g" % (first, last))
            self.assertAlmostEqual(final.loss, seen[-1].loss)
            export = os.path.join(self.root, "ae", "export.safetensors")
            t.export(export, half=True)
            self.assertTrue(os.path.isfile(os.path.join(self.root, "ae", "last.safetensors")))
            # step() runs more steps outside the plan, and returns the progress
            self.assertEqual(t.step(2).step, STEPS + 2)
            self.assertEqual(len(seen), STEPS + 2)
        self.assertTrue(t.closed)
        with self.assertRaises(ValueError):
            t.step()
        t.interrupt()  # a no-op once closed
        config = os.path.join(self.root, "ae", "config.yaml")
        with libldm.Model.load(export, config=config) as model:
            ae = model.autoencoder()
            x = libldm.read_png(os.path.join(self.data, "img04.png"))
            mean, _, _ = libldm.posterior_split(ae.encode(x))
            y = ae.decode(mean)
            a, b = flat_values(x), flat_values(y)
            err = sum(abs(u - v) for u, v in zip(a, b)) / len(a)
            self.assertLess(err, 0.5, "mean reconstruction error %g" % err)

    def test_callback_stop_exception_interrupt_and_reentry(self):
        with self.trainer("stop", callback=lambda p: p.step >= 2) as t:
            with self.assertRaises(libldm.Cancelled) as cm:
                t.run()
            self.assertIn("callback", str(cm.exception))
            self.assertEqual(t.progress().step, 2)
            self.assertTrue(os.path.isfile(os.path.join(self.root, "stop", "last.safetensors")))  # run saved
            with self.assertRaises(libldm.Cancelled):
                t.step(5)  # the stop is not sticky: one more step, then the callback stops it
            self.assertEqual(t.progress().step, 3)

        class Boom(Exception):
            pass

        def explode(p):
            if p.step == 2:
                raise Boom("from the callback")

        with self.trainer("boom", callback=explode) as t:
            with self.assertRaises(Boom):
                t.step(5)
            self.assertEqual(t.progress().step, 2)
            t.step(1)  # the exception does not linger: the next call runs
            self.assertEqual(t.progress().step, 3)

        calls = {}

        def reenter(p):
            for name, fn in (("step", lambda: t.step()), ("progress", t.progress), ("save", t.save),
                             ("close", t.close)):
                try:
                    fn()
                    calls[name] = "ran"
                except RuntimeError as e:
                    calls[name] = "running" in str(e)
            t.interrupt()  # allowed from the callback: stops after this step

        with self.trainer("reenter", callback=reenter) as t:
            with self.assertRaises(libldm.Cancelled) as cm:
                t.step(5)
            self.assertIn("interrupted", str(cm.exception))
            self.assertEqual(calls, {"step": True, "progress": True, "save": True, "close": True})
            self.assertEqual(t.progress().step, 1)

    def test_interrupt_from_another_thread(self):
        started = threading.Event()

        def cb(p):
            started.set()

        with self.trainer("thread", callback=cb) as t:
            box = {}

            def work():
                try:
                    t.step(1000)
                except libldm.Cancelled as e:
                    box["error"] = e
            th = threading.Thread(target=work)
            th.start()
            self.assertTrue(started.wait(60))
            with self.assertRaises(RuntimeError):
                t.progress()  # the other thread's step() holds the trainer
            t.interrupt()
            th.join(60)
            self.assertIn("error", box)
            self.assertLess(t.progress().step, 1000)

    def test_bad_arguments(self):
        with self.assertRaises(libldm.InvalidArgumentError) as cm:
            libldm.Trainer(self.config, out_dir=os.path.join(self.root, "err"))
        self.assertIn("data_dir", str(cm.exception))
        with self.assertRaises(libldm.InvalidArgumentError):
            self.trainer("err", batch_size=-1)
        with self.assertRaises(libldm.InvalidArgumentError):
            self.trainer("err", resume=True, init_from=os.path.join(self.root, "x.safetensors"))
        with self.assertRaises(libldm.FileError):
            libldm.Trainer(os.path.join(self.root, "missing.yaml"), data_dir=self.data, out_dir=self.root)
        for name, value, ctype in (("batch_size", 2**32 + 4, "int"), ("save_every", -2**31 - 1, "int"),
                                   ("n_threads", 2**31, "int"), ("seed", -1, "uint64"), ("seed", 2**64, "uint64"),
                                   ("max_steps", 2**63, "int64")):
            with self.subTest(name=name, value=value):
                with self.assertRaises(OverflowError) as cm:
                    self.trainer("err", **{name: value})
                self.assertIn(name, str(cm.exception))
                self.assertIn("C %s" % ctype, str(cm.exception))
        with self.assertRaises(TypeError):
            self.trainer("err", max_steps=2.5)
        with self.assertRaises(TypeError):
            self.trainer("err", callback=42)
        with self.trainer("err") as t:
            with self.assertRaises(OverflowError) as cm:
                t.step(2**32 + 1)
            self.assertIn("C int", str(cm.exception))
            with self.assertRaises(libldm.InvalidArgumentError):
                t.step(-1)
            with self.assertRaises(libldm.FileError):
                t.export(os.path.join(self.root, "no", "such", "dir", "x.safetensors"))
            self.assertEqual(t.progress().step, 0)

    def test_max_activation_bytes(self):
        logged = []
        with self.trainer("budget", max_activation_bytes=1 << 20, log=lambda *m: logged.append(m)):
            pass
        # it reaches the library, which says the autoencoder has nothing to checkpoint
        self.assertIn(("warn", "max_activation_bytes 1048576: ignored (only the UNet checkpoints)"), logged)
        with self.assertRaises(OverflowError):
            self.trainer("budget", max_activation_bytes=-1)
        with self.assertRaises(TypeError):
            self.trainer("budget", max_activation_bytes=1.5)
        p = _api.TrainParams()
        _api.lib.ldm_train_params_init_size(ctypes.byref(p), ctypes.sizeof(p))
        self.assertEqual(p.max_activation_bytes, 0)

    def test_train_params_defaults_and_size(self):
        p = _api.TrainParams()
        _api.lib.ldm_train_params_init_size(ctypes.byref(p), ctypes.sizeof(p))
        self.assertEqual(p.struct_size, ctypes.sizeof(p))
        self.assertEqual((p.seed, p.cond_drop_rate, p.max_steps, p.resume, p.n_threads), (23, -1.0, 0, 0, 0))
        self.assertIsNone(p.data_dir)
        self.assertFalse(p.callback)


if __name__ == "__main__":
    unittest.main()
