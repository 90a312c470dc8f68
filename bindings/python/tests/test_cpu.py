"""Kernel families and compute modes (issue #15): libldm.cpu_info(), Model.load_builtin's
cpu_kernels= and compute= (ldm_model_params.cpu_kernels / .compute)."""
import re
import unittest

import libldm


def family_in_use():
    return re.search(r"^kernels: (\S+) \(", libldm.cpu_info(), re.M).group(1)


class CpuKernelsTest(unittest.TestCase):
    def test_cpu_info_names_features_and_family(self):
        info = libldm.cpu_info()
        self.assertIn("cpu features:", info)
        self.assertIn("kernel families available:", info)
        self.assertIn(family_in_use(), info.split("kernel families available:")[1].splitlines()[0].split())

    def test_request_for_the_family_in_use(self):
        # Other suites of this process may hold models; the family they use can always be asked for.
        family = family_in_use()
        with libldm.Model.load_builtin("demo", seed=0, threads=1, cpu_kernels=family) as m:
            self.assertEqual(family_in_use(), family)
            self.assertIn("ldm_model_params.cpu_kernels=%s" % family, libldm.cpu_info())
            self.assertEqual(m.generate(class_label=1, steps=2, seed=1).shape[0], 1)

    def test_bad_requests(self):
        with self.assertRaisesRegex(libldm.InvalidArgumentError, "unknown kernel family"):
            libldm.Model.load_builtin("demo", cpu_kernels="sse9")
        with self.assertRaisesRegex(libldm.UnsupportedError, "no avx512_bf16 kernels are written yet"):
            libldm.Model.load_builtin("demo", cpu_kernels="avx512_bf16")
        with self.assertRaises(TypeError):
            libldm.Model.load_builtin("demo", cpu_kernels=1)

    def test_bf16_compute_is_refused(self):
        with self.assertRaisesRegex(libldm.UnsupportedError, "LDM_COMPUTE_BF16") as cm:
            libldm.Model.load_builtin("demo", compute="bf16")
        if "avx512_bf16" not in libldm.cpu_info():
            self.assertIn("needs a CPU with avx512_bf16", str(cm.exception))
        else:
            self.assertIn("not written yet", str(cm.exception))
        with self.assertRaises(ValueError):
            libldm.Model.load_builtin("demo", compute="fp8")
        libldm.Model.load_builtin("demo", compute="f32").close()


if __name__ == "__main__":
    unittest.main()
