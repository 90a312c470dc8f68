"""Few-step sampling through the binding (docs/few-step.md): the LCM sampler and trailing spacing
names, generate()'s few-step parameters and defaults, and an LCM-distilled UNet's guidance
embedding on the project's fixture tests/fixtures/fewstep_sd1 (golden from diffusers)."""
import os
import unittest

import libldm
from support import as_buffer, compare, load_case, read_safetensors

FEWSTEP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tests", "fixtures",
                       "fewstep_sd1")


class FewStepTest(unittest.TestCase):
    def test_sampler_names(self):
        ac = [0.9999 - 0.00099 * t for t in range(1000)]
        s = libldm.Sampler.create(ac, kind="lcm", steps=4)
        self.assertEqual(s.total_steps, 4)
        s = libldm.Sampler.create(ac, kind="euler", steps=4, spacing="trailing")
        self.assertEqual(s.total_steps, 4)
        with self.assertRaises(libldm.LdmError):
            libldm.Sampler.create(ac, kind="ddim", steps=4, spacing="trailing")
        with self.assertRaises(ValueError):
            libldm.Sampler.create(ac, kind="euler", steps=4, spacing="leading")

    def test_generate_defaults(self):
        with libldm.Model.load_builtin("demo", seed=0) as m:
            self.assertEqual(m.guidance_embedding_dim, 0)
            r = m.resolve_generate_params(sampler="lcm", steps=0)
            self.assertEqual((r["sampler"], r["steps"], r["guidance_scale"], r["lcm_original_steps"]),
                             ("lcm", 4, 1.0, 50))
            r = m.resolve_generate_params(sampler="euler_a", timestep_spacing="trailing", steps=1, guidance_scale=1)
            self.assertEqual((r["timestep_spacing"], r["steps"]), ("trailing", 1))

    def test_guidance_embedding_golden(self):
        case = load_case(FEWSTEP)
        io = read_safetensors(os.path.join(FEWSTEP, "io.safetensors"))
        with libldm.Model.load(os.path.join(FEWSTEP, "model.safetensors"),
                               config=os.path.join(FEWSTEP, "config.yaml")) as m:
            self.assertEqual(m.guidance_embedding_dim, 32)
            out = m.apply_embedded_guidance(as_buffer(io["apply_x"]), as_buffer(io["apply_t"]),
                                            as_buffer(io["apply_context"]), 8.5)
            compare(self, "apply_out", out, io["apply_out"], case["tolerances"]["apply_out"])
            r = m.resolve_generate_params(sampler="lcm", steps=0, class_label=0)
            self.assertEqual((r["steps"], r["guidance_scale"]), (4, 8.5))


if __name__ == "__main__":
    unittest.main()
