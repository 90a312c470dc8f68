"""The binding against the header it mirrors: versions, parameter struct layouts, package version."""
import ctypes
import os
import re
import unittest

import libldm
from libldm import _api
from support import REPO


def header_define(name):
    with open(os.path.join(REPO, "include", "ldm.h"), encoding="utf-8") as f:
        m = re.search(r"#define %s (\S+)" % name, f.read())
    return m.group(1).strip('"')


class AbiTest(unittest.TestCase):
    def test_version_matches_header(self):
        major, minor, patch = (int(header_define("LDM_VERSION_" + p)) for p in ("MAJOR", "MINOR", "PATCH"))
        self.assertEqual(libldm.version(), header_define("LDM_VERSION_STRING"))
        self.assertEqual(libldm.version(), "%d.%d.%d" % (major, minor, patch))
        self.assertEqual(libldm.version_number(), major * 10000 + minor * 100 + patch)
        self.assertEqual(libldm.__version__, libldm.version())
        self.assertIn("libldm.so.%d" % major, libldm.library_path)  # the soname carries MAJOR

    def test_pyproject_version_is_the_library_version(self):
        with open(os.path.join(REPO, "bindings", "python", "pyproject.toml"), encoding="utf-8") as f:
            self.assertIn('\nversion = "%s"\n' % libldm.version(), f.read())

    def test_param_structs_match_the_library(self):
        # *_params_init stores sizeof(struct) of the library's header: ours must be the same size,
        # and the documented defaults must land in the fields we think they are in.
        for struct, init in ((_api.ModelParams, _api.lib.ldm_model_params_init),
                             (_api.SamplerParams, _api.lib.ldm_sampler_params_init),
                             (_api.GenerateParams, _api.lib.ldm_generate_params_init)):
            params, lib_size = _api.init_params(struct, init)
            self.assertEqual(lib_size, ctypes.sizeof(struct), struct.__name__)
        g, _ = _api.init_params(_api.GenerateParams, _api.lib.ldm_generate_params_init)
        self.assertEqual((g.class_label, g.batch, g.sampler, g.steps, g.seed), (-1, 1, 0, 50, 0))
        self.assertAlmostEqual(g.guidance_scale, 7.5)
        self.assertAlmostEqual(g.strength, 0.75)
        self.assertFalse(g.progress)
        s, _ = _api.init_params(_api.SamplerParams, _api.lib.ldm_sampler_params_init)
        self.assertEqual((s.kind, s.steps, s.ddim_quad, s.seed), (0, 50, 0, 0))
        m, _ = _api.init_params(_api.ModelParams, _api.lib.ldm_model_params_init)
        self.assertEqual((m.config_path, m.n_threads, m.weights, m.max_alloc_bytes), (None, 0, 0, 0))

    def test_every_status_has_its_exception(self):
        classes = set()
        for status in range(1, 12):  # LDM_ERR_INVALID_ARGUMENT .. LDM_ERR_INTERNAL
            e = libldm.errors._BY_STATUS[status](status, "msg", "fn")
            self.assertEqual(e.status_name, _api.lib.ldm_status_string(status).decode())
            self.assertNotEqual(e.status_name, "unknown status")
            self.assertEqual(str(e), "fn: msg (%s)" % e.status_name)
            classes.add(type(e))
        self.assertEqual(len(classes), 11)
        self.assertIs(libldm.errors._BY_STATUS[10], libldm.Cancelled)


if __name__ == "__main__":
    unittest.main()
