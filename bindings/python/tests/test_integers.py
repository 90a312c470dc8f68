"""Integers crossing into C: each is checked against the C type it is passed as (int, int64,
uint64, size_t). ctypes would keep the low bits: generate(steps=2**32+1) ran one step,
width=2**32+64 became 64, seed=-1 became 2**64-1. Out of range is OverflowError naming the
parameter; a non-integer is TypeError."""
import os
import tempfile
import unittest

import libldm

INT_MAX = 2**31 - 1
INT_MIN = -2**31
WRAPS_TO_SMALL = 2**32 + 2  # an int that used to arrive in C as 2
OUT_OF_INT = (INT_MAX + 1, WRAPS_TO_SMALL, INT_MIN - 1, 2**64 + 2)


class IntegerRangeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = libldm.Model.load_builtin("demo", seed=0)

    @classmethod
    def tearDownClass(cls):
        cls.model.close()

    def overflows(self, name, fn, *args, **kw):
        with self.assertRaises(OverflowError, msg=name) as cm:
            fn(*args, **kw)
        self.assertIn(name, str(cm.exception))
        return cm.exception

    def test_generate_int_parameters(self):
        base = dict(class_label=7, steps=2, seed=3, width=32, height=32)
        for field in ("steps", "width", "height", "batch", "class_label", "vae_tile"):
            for value in OUT_OF_INT:
                with self.subTest(field=field, value=value):
                    args = dict(base)
                    args[field] = value
                    e = self.overflows(field, self.model.generate, **args)
                    self.assertIn("C int", str(e))
        with self.assertRaises(TypeError):
            self.model.generate(class_label=7, steps=2.0)
        # the edges of int still reach the library, which judges them itself
        with self.assertRaises(libldm.InvalidArgumentError):
            self.model.generate(class_label=7, steps=INT_MAX, width=INT_MAX)

    def test_seeds_are_uint64(self):
        for value in (-1, -2**63, 2**64, 2**70):
            with self.subTest(value=value):
                self.overflows("seed", self.model.generate, class_label=7, steps=2, seed=value, width=32, height=32)
                self.overflows("seed", self.model.sampler, "ddim", steps=2, seed=value)
                self.overflows("seed", libldm.Sampler.create, [0.9, 0.5, 0.1], steps=2, seed=value)
                self.overflows("seed", libldm.randn, value, 0, shape=(2,))
                self.overflows("stream", libldm.randn, 0, value, shape=(2,))
                self.overflows("seed", libldm.Model.load_builtin, "demo", seed=value)
        # the whole uint64 range is accepted
        top = self.model.generate(class_label=7, steps=2, seed=2**64 - 1, width=32, height=32)
        self.assertEqual(tuple(top.shape), (1, 3, 32, 32))
        self.assertEqual(libldm.randn(2**64 - 1, 2**64 - 1, shape=(3,)).tolist(),
                         libldm.randn(2**64 - 1, 2**64 - 1, shape=(3,)).tolist())

    def test_model_and_sampler_parameters(self):
        for value in OUT_OF_INT:
            with self.subTest(value=value):
                self.overflows("threads", libldm.Model.load_builtin, "demo", threads=value)
                self.overflows("n", self.model.set_threads, value)
                self.overflows("steps", self.model.sampler, "ddim", steps=value)
                self.overflows("steps", libldm.Sampler.create, [0.9, 0.5, 0.1], steps=value)
                self.overflows("sampler", self.model.generate, class_label=7, sampler=value)
        for value in (-1, 2**64):
            with self.subTest(max_alloc_bytes=value):
                e = self.overflows("max_alloc_bytes", libldm.Model.load_builtin, "demo", max_alloc_bytes=value)
                self.assertIn("size_t", str(e))
        with self.assertRaises(TypeError):
            self.model.set_threads(1.5)

    def test_tensor_shapes_and_values(self):
        for value in (2**63, 2**64 + 2, -2**63 - 1):
            with self.subTest(value=value):
                self.overflows("shape[1]", libldm.Tensor.zeros, (1, value))
                self.overflows("shape[0]", libldm.randn, 0, 0, shape=(value,))
                self.overflows("shape[0]", libldm.Tensor.frombuffer, bytearray(8), (value, 2))
                self.overflows("timesteps", self.model.apply, libldm.randn(0, 0, shape=(1, 3, 16, 16)), value)
                self.overflows("timesteps[1]", self.model.unet().forward, libldm.randn(0, 0, shape=(2, 3, 16, 16)),
                               [1, value])
                with self.assertRaises(OverflowError):
                    self.model.conditioner().encode_labels([value])

    def test_tokenizer_and_layout_lengths(self):
        with tempfile.TemporaryDirectory() as tmp:
            vocab = os.path.join(tmp, "vocab.txt")
            with open(vocab, "w", encoding="utf-8") as f:
                f.write("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\ncat\n")
            with libldm.Tokenizer("bert", vocab) as tok:
                self.assertEqual(tok.encode("a cat", context_length=6).tolist(), [[2, 5, 6, 3, 0, 0]])
                for value in OUT_OF_INT:
                    with self.subTest(value=value):
                        self.overflows("context_length", tok.encode, "a cat", context_length=value)
        for value in OUT_OF_INT:
            with self.subTest(value=value):
                self.overflows("no_object_classes", libldm.layout_tokens, {"objects": []}, value)


if __name__ == "__main__":
    unittest.main()
