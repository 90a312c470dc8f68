"""LoRA through the binding (docs/lora.md): the lora_sd1 golden of tests/fixtures (kohya-ss' merge,
the official UNet and CLIP), removal giving the base outputs back bit for bit, errors by name."""
import os
import unittest

import libldm
from support import REPO, as_buffer, compare, flat_values, load_case, read_safetensors

D = os.path.join(REPO, "tests", "fixtures", "lora_sd1")


class LoraTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.case = load_case(D)
        cls.io = read_safetensors(os.path.join(D, "io.safetensors"))

    def load(self):
        return libldm.Model.load(os.path.join(D, "model.safetensors"), config=os.path.join(D, "config.yaml"))

    def outputs(self, m):
        io = self.io
        out = m.unet().forward(as_buffer(io["x"]), as_buffer(io["timesteps"]), as_buffer(io["context"]))
        return out, m.conditioner().encode_tokens(as_buffer(io["tokens"]))

    def test_golden_stack_and_removal(self):
        tol = self.case["tolerances"]
        with self.load() as m:
            base_u, base_c = self.outputs(m)
            compare(self, "out_base", base_u, self.io["out_base"], tol["out_base"])
            k = m.add_lora(os.path.join(D, "lora_kohya.safetensors"), 0.7)
            p = m.add_lora(os.path.join(D, "lora_peft.safetensors"), -0.5)
            u, c = self.outputs(m)
            compare(self, "out_both", u, self.io["out_both"], tol["out_both"])
            compare(self, "c_both", c, self.io["c_both"], tol["c_both"])
            info = m.loras()
            self.assertEqual([i["id"] for i in info], [k, p])
            self.assertEqual(info[0]["multiplier"], 0.7)
            self.assertTrue(info[1]["path"].endswith("lora_peft.safetensors"))
            m.remove_lora(p)
            m.set_lora_multiplier(k, 0.7)
            u, c = self.outputs(m)
            compare(self, "out_kohya", u, self.io["out_kohya"], tol["out_kohya"])
            m.clear_loras()
            self.assertEqual(m.loras(), [])
            u, c = self.outputs(m)
            self.assertEqual(flat_values(u), flat_values(base_u), "removal is not exact")
            self.assertEqual(flat_values(c), flat_values(base_c), "removal is not exact")

    def test_errors_name_the_keys(self):
        with self.load() as m:
            with self.assertRaises(libldm.FormatError) as e:
                m.add_lora(os.path.join(D, "model.safetensors"))
            self.assertIn("not a LoRA key", str(e.exception))
            with self.assertRaises(libldm.NotFoundError):
                m.remove_lora(12345)
            self.assertEqual(m.loras(), [])


if __name__ == "__main__":
    unittest.main()
