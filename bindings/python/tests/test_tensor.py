"""Tensor interop: zero-copy inputs, conversions, the light Tensor type, NumPy when present."""
import array
import os
import subprocess
import sys
import unittest

import libldm
from libldm import _api

try:
    import numpy
except ImportError:
    numpy = None


def data_address(t):
    return _api.lib.ldm_tensor_data(t.handle)


class WithoutNumpy(unittest.TestCase):
    """The light Tensor results (what users without NumPy get), forced even when NumPy exists."""

    def setUp(self):
        self.previous = libldm.set_numpy(False)

    def tearDown(self):
        libldm.set_numpy(self.previous)

    def test_result_is_tensor(self):
        t = libldm.randn(5, 0, shape=(2, 3))
        self.assertIsInstance(t, libldm.Tensor)
        self.assertEqual((t.shape, t.dtype, t.ndim, t.size, t.nbytes, len(t)), ((2, 3), "float32", 2, 6, 24, 2))
        rows = t.tolist()
        self.assertEqual([len(r) for r in rows], [3, 3])
        flat = array.array("f")
        flat.frombytes(t.tobytes())
        self.assertEqual(list(flat), rows[0] + rows[1])
        mv = t.memoryview()
        self.assertEqual((mv.format, mv.shape), ("f", (2, 3)))
        self.assertEqual(mv.tolist(), rows)
        self.assertIn("float32 2x3", repr(t))

    def test_memoryview_outlives_close(self):
        t = libldm.randn(5, 0, shape=(4,))
        expected = t.tolist()
        mv = t.memoryview()
        t.close()
        del t
        self.assertEqual(mv.tolist(), expected)  # the storage lives as long as the view

    def test_randn_is_elementwise(self):
        # element i depends on (seed, stream, i) only, not on the shape
        a = libldm.randn(0, 0, shape=(4,)).tolist()
        b = libldm.randn(0, 0, shape=(2, 2)).tolist()
        self.assertEqual(a, b[0] + b[1], "element values depend on the shape")
        self.assertNotEqual(a, libldm.randn(0, 1, shape=(4,)).tolist(), "the stream is ignored")

    def test_zero_copy_inputs(self):
        values = array.array("f", [1.0, 2.0, 3.0, 4.0])
        t = libldm.as_tensor(values)
        self.assertEqual(data_address(t), values.buffer_info()[0])
        raw = bytearray(values.tobytes())
        view = libldm.Tensor.frombuffer(raw, (2, 2))
        self.assertEqual(view.tolist(), [[1.0, 2.0], [3.0, 4.0]])
        raw[0:4] = array.array("f", [9.0]).tobytes()
        self.assertEqual(view.tolist()[0][0], 9.0, "frombuffer copied")
        with self.assertRaises(BufferError):
            raw.extend(b"1234")  # pinned while the view exists
        view.close()
        raw.extend(b"1234")
        # read-only memory (bytes) is wrapped too: the library only reads inputs
        frozen = bytes(values.tobytes())
        t = libldm.Tensor.frombuffer(frozen, (4,))
        self.assertEqual(t.tolist(), [1.0, 2.0, 3.0, 4.0])
        int64 = array.array("q", [5, 6])
        self.assertEqual(data_address(libldm.as_tensor(int64, "int64")), int64.buffer_info()[0])

    def test_randn_fills_caller_memory_in_place(self):
        out = array.array("f", [0.0] * 6)
        self.assertIs(libldm.randn(5, 0, out=out), out)
        self.assertEqual(list(out), [v for row in libldm.randn(5, 0, shape=(2, 3)).tolist() for v in row])
        with self.assertRaises(ValueError):
            libldm.randn(5, 0, out=bytes(24))  # read-only
        with self.assertRaises(ValueError):
            libldm.randn(5, 0, out=array.array("d", [0.0] * 3))  # not float32

    def test_conversions(self):
        self.assertEqual(libldm.as_tensor([[1, 2], [3, 4]]).tolist(), [[1.0, 2.0], [3.0, 4.0]])
        self.assertEqual(libldm.as_tensor([1, 2], "int64").dtype, "int64")
        doubles = array.array("d", [0.5, 1.5])  # converted to what the call expects
        t = libldm.as_tensor(doubles)
        self.assertEqual((t.dtype, t.tolist()), ("float32", [0.5, 1.5]))
        strided = memoryview(array.array("f", [1, 2, 3, 4]))[::2]
        self.assertEqual(libldm.as_tensor(strided).tolist(), [1.0, 3.0])
        with self.assertRaises(ValueError):
            libldm.as_tensor([[1, 2], [3]])
        with self.assertRaises(TypeError):
            libldm.as_tensor(object())
        with self.assertRaises(TypeError):
            libldm.as_tensor([0.5], "int64")
        with self.assertRaises(ValueError):
            libldm.Tensor.frombuffer(bytearray(10), (2, 2))
        with self.assertRaises(libldm.InvalidArgumentError):
            libldm.Tensor.zeros((1,) * 7)  # rank above LDM_MAX_DIMS

    @unittest.skipIf(sys.version_info < (3, 12), "memoryview(obj) on Python classes needs Python 3.12")
    def test_buffer_protocol(self):
        t = libldm.randn(1, 0, shape=(2, 2))
        self.assertEqual(memoryview(t).tolist(), t.tolist())

    def test_without_numpy_installed(self):
        # A fresh interpreter where `import numpy` fails, whether or not NumPy is installed.
        code = ("import sys; sys.modules['numpy'] = None\n"
                "import libldm\n"
                "assert not libldm.numpy_enabled()\n"
                "m = libldm.Model.load_builtin('demo')\n"
                "img = m.generate(class_label=1, steps=10, seed=1)\n"
                "assert isinstance(img, libldm.Tensor) and img.shape == (1, 3, 64, 64), img\n"
                "print('ok')\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(libldm.__file__))] + sys.path))
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "ok"), r.stderr)


@unittest.skipIf(numpy is None, "NumPy not installed for %s" % sys.executable)
class WithNumpy(unittest.TestCase):
    def setUp(self):
        self.previous = libldm.set_numpy(True)

    def tearDown(self):
        libldm.set_numpy(self.previous)

    def test_results_are_arrays_sharing_library_memory(self):
        a = libldm.randn(2, 0, shape=(1, 3, 8, 8))
        self.assertIsInstance(a, numpy.ndarray)
        self.assertEqual((a.dtype, a.shape), (numpy.float32, (1, 3, 8, 8)))
        self.assertTrue(a.flags.writeable)
        t = libldm.Tensor.zeros((2,))
        self.assertEqual(t.numpy().ctypes.data, data_address(t))
        self.assertEqual(numpy.asarray(t).shape, (2,))

    def test_zero_copy_array_inputs(self):
        a = numpy.arange(12, dtype=numpy.float32).reshape(3, 4)
        self.assertEqual(data_address(libldm.as_tensor(a)), a.ctypes.data)
        ro = numpy.frombuffer(a.tobytes(), dtype=numpy.float32)  # read-only
        self.assertFalse(ro.flags.writeable)
        self.assertEqual(data_address(libldm.as_tensor(ro)), ro.ctypes.data)
        out = numpy.zeros((2, 3), numpy.float32)
        libldm.randn(9, 0, out=out)
        numpy.testing.assert_array_equal(out, libldm.randn(9, 0, shape=(2, 3)))

    def test_converted_array_inputs(self):
        a = numpy.arange(12, dtype=numpy.float64).reshape(3, 4)
        t = libldm.as_tensor(a.T)  # float64, not C-contiguous
        self.assertEqual(t.dtype, "float32")
        numpy.testing.assert_array_equal(t.numpy(), a.T.astype(numpy.float32))
        labels = libldm.as_tensor(numpy.array([1, 2], numpy.int32), "int64")
        self.assertEqual((labels.dtype, labels.tolist()), ("int64", [1, 2]))

    def test_generate_with_numpy(self):
        with libldm.Model.load_builtin("demo") as m:
            img = m.generate(class_label=1, steps=10, seed=1)
            x = numpy.asfortranarray(libldm.randn(0, 0, shape=(1, 3, 16, 16)).astype(numpy.float64))
            out = m.apply(x, numpy.int64(999), m.conditioner().encode_labels(numpy.array([1])))
        self.assertEqual(img.shape, (1, 3, 64, 64))
        self.assertEqual(out.shape, (1, 3, 16, 16))


if __name__ == "__main__":
    unittest.main()
