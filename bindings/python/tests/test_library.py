"""Where the package finds libldm.so.0: $LDM_LIBRARY, then next to the package, then the system
path (the order the package docstring and README.md document). Each case runs in a fresh
interpreter with a controlled environment."""
import ctypes.util
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import libldm

PACKAGE_DIR = os.path.dirname(os.path.abspath(libldm.__file__))
PROBE = "import libldm; print(libldm.library_path); print(libldm.version())"


def run(env_changes, path_entry):
    env = {k: v for k, v in os.environ.items() if k not in ("LDM_LIBRARY", "LD_LIBRARY_PATH")}
    env.update(env_changes)
    env["PYTHONPATH"] = path_entry
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)


@unittest.skipUnless(os.path.isabs(libldm.library_path), "the library was not loaded from a known file")
class LibrarySearchTest(unittest.TestCase):
    def setUp(self):
        self.libdir = os.path.dirname(libldm.library_path)
        self.package_root = os.path.dirname(PACKAGE_DIR)

    def test_ldm_library_file_or_directory(self):
        r = run({"LDM_LIBRARY": libldm.library_path}, self.package_root)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split()[0], libldm.library_path)
        r = run({"LDM_LIBRARY": self.libdir}, self.package_root)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split()[0], os.path.join(self.libdir, "libldm.so.0"))

    def test_a_wrong_ldm_library_is_an_error_not_a_fallback(self):
        r = run({"LDM_LIBRARY": "/nonexistent/libldm.so.0", "LD_LIBRARY_PATH": self.libdir}, self.package_root)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("ImportError", r.stderr)
        self.assertIn("$LDM_LIBRARY", r.stderr)

    def test_next_to_the_package_then_system_path(self):
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(PACKAGE_DIR, os.path.join(tmp, "libldm"), ignore=shutil.ignore_patterns("__pycache__"))
            bundled = os.path.join(tmp, "libldm", "libldm.so.0")
            shutil.copy(os.path.join(self.libdir, "libldm.so.0"), bundled)
            # the bundled copy wins over the loader path...
            r = run({"LD_LIBRARY_PATH": self.libdir}, tmp)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout.split()[0], bundled)
            # ...and $LDM_LIBRARY over the bundled copy
            r = run({"LDM_LIBRARY": libldm.library_path}, tmp)
            self.assertEqual(r.stdout.split()[0], libldm.library_path, r.stderr)
            # without either, the dynamic loader's path
            os.remove(bundled)
            r = run({"LD_LIBRARY_PATH": self.libdir}, tmp)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout.split(), ["libldm.so.0", libldm.version()])

    @unittest.skipIf(ctypes.util.find_library("ldm"), "a libldm is installed system-wide")
    def test_not_found_says_how_to_fix_it(self):
        r = run({}, self.package_root)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("set $LDM_LIBRARY", r.stderr)


if __name__ == "__main__":
    unittest.main()
