"""examples/minimal.py run as a user would, with the built-in demo model."""
import os
import subprocess
import sys
import tempfile
import unittest

import libldm
from support import REPO, flat_values


class ExampleTest(unittest.TestCase):
    def test_minimal_py_writes_the_generated_image(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "minimal.png")
            package_root = os.path.dirname(os.path.dirname(os.path.abspath(libldm.__file__)))
            env = dict(os.environ, PYTHONPATH=package_root, LDM_LIBRARY=libldm.library_path)
            r = subprocess.run([sys.executable, os.path.join(REPO, "examples", "minimal.py"), "demo", "", out],
                               env=env, capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("wrote " + out, r.stdout)
            # the file holds what the same call gives here, quantised to 8 bits
            with libldm.Model.load_builtin("demo") as m:
                expected = flat_values(m.generate(class_label=979, steps=20, seed=42))
            got = flat_values(libldm.read_png(out))
            self.assertEqual(len(got), 3 * 64 * 64)
            worst = max(abs(g - e) for g, e in zip(got, [min(max(v, -1.0), 1.0) for v in expected]))
            self.assertLessEqual(worst, 2.0 / 255 + 1e-6)


if __name__ == "__main__":
    unittest.main()
