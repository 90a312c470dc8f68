"""The binding against the header it mirrors: versions, parameter struct layouts, package version."""
import ctypes
import os
import re
import shutil
import subprocess
import tempfile
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
        self.assertEqual(g.guidance_scale, 0.0)  # the model's own default
        self.assertEqual(g.uncond_class, libldm.UNCOND_CLASS_AUTO)
        self.assertAlmostEqual(g.strength, 0.75)
        self.assertFalse(g.progress)
        self.assertFalse(g.x_T)
        self.assertEqual((g.vae, g.preview_every, g.preview_kind), (0, 0, 0))  # full VAE, every step, auto
        self.assertFalse(g.preview)
        s, _ = _api.init_params(_api.SamplerParams, _api.lib.ldm_sampler_params_init)
        self.assertEqual((s.kind, s.steps, s.ddim_quad, s.seed), (0, 50, 0, 0))
        m, _ = _api.init_params(_api.ModelParams, _api.lib.ldm_model_params_init)
        self.assertEqual((m.config_path, m.n_threads, m.weights, m.max_alloc_bytes), (None, 0, 0, 0))

    @unittest.skipUnless(shutil.which(os.environ.get("CC", "cc")), "no C compiler")
    def test_param_struct_fields_match_the_header(self):
        # offsetof/sizeof of every field as a C compiler lays out include/ldm.h, against ctypes
        structs = (("ldm_model_params", _api.ModelParams), ("ldm_sampler_params", _api.SamplerParams),
                   ("ldm_generate_params", _api.GenerateParams), ("ldm_train_params", _api.TrainParams),
                   ("ldm_train_progress", _api.TrainProgress), ("ldm_lora_info", _api.LoraInfo),
                   ("ldm_sdxl_cond_params", _api.SdxlCondParams))
        lines = ['#include <stddef.h>', '#include <stdio.h>', '#include "ldm.h"', "int main(void) {"]
        for cname, struct in structs:
            lines.append('printf("%s %%zu\\n", sizeof(%s));' % (cname, cname))
            for field, _ in struct._fields_:
                lines.append('printf("%s.%s %%zu %%zu\\n", offsetof(%s, %s), sizeof(((%s *)0)->%s));'
                             % (cname, field, cname, field, cname, field))
        lines += ["return 0;", "}"]
        with tempfile.TemporaryDirectory() as tmp:
            src, exe = os.path.join(tmp, "layout.c"), os.path.join(tmp, "layout")
            with open(src, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            subprocess.run([os.environ.get("CC", "cc"), "-std=c11", "-I", os.path.join(REPO, "include"), src, "-o", exe],
                           check=True, capture_output=True, timeout=120)
            out = subprocess.run([exe], check=True, capture_output=True, text=True, timeout=60).stdout
        c_layout = {line.split()[0]: tuple(int(v) for v in line.split()[1:]) for line in out.splitlines()}
        for cname, struct in structs:
            self.assertEqual(c_layout[cname], (ctypes.sizeof(struct),), cname)
            for field, ctype in struct._fields_:
                got = (getattr(struct, field).offset, ctypes.sizeof(ctype))
                self.assertEqual(got, c_layout["%s.%s" % (cname, field)], "%s.%s (offset, size)" % (cname, field))
        # (equal sizes with equal offsets: no field of the header is missing, at the end either)

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
