"""Conformance fixtures through the binding: the same numbers as the C conformance runner, reached
through ctypes, buffer-protocol inputs (no NumPy needed) and the binding's result types."""
import os
import unittest

import libldm
from support import as_buffer, compare, fixture_dir, load_case, read_safetensors


def need(name):
    d = fixture_dir(name)
    if d is None:
        raise unittest.SkipTest("fixture %s not found (set LDM_SHARED)" % name)
    return d, load_case(d), read_safetensors(os.path.join(d, "io.safetensors"))


class FixtureTest(unittest.TestCase):
    def test_ae_kl_f8_encode_decode(self):
        d, case, io = need("ae_kl_f8")
        tol = case["tolerances"]
        with libldm.Model.load(os.path.join(d, "model.safetensors"), config=os.path.join(d, "config.yaml")) as m:
            ae = m.autoencoder()
            moments = ae.encode(as_buffer(io["x"]))
            compare(self, "moments", moments, io["moments"], tol["moments"])
            mean, logvar, std = libldm.posterior_split(moments)
            for name, got in (("mean", mean), ("logvar", logvar), ("std", std)):
                compare(self, name, got, io[name], tol[name])
            compare(self, "image", ae.decode(as_buffer(io["z"])), io["image"], tol["image"])
            compare(self, "recon_mode", ae.decode(mean), io["recon_mode"], tol["recon_mode"])

    def test_ae_kl_f8_ckpt_gives_the_same_weights(self):
        d, case, io = need("ae_kl_f8")
        with libldm.Model.load(os.path.join(d, "model.ckpt"), config=os.path.join(d, "config.yaml")) as m:
            compare(self, "image", m.autoencoder().decode(as_buffer(io["z"])), io["image"], case["tolerances"]["image"])

    def test_unet_crossattn_forward(self):
        d, case, io = need("unet_crossattn")
        with libldm.Model.load(os.path.join(d, "model.safetensors"), config=os.path.join(d, "config.yaml")) as m:
            out = m.unet().forward(as_buffer(io["x"]), as_buffer(io["timesteps"]), as_buffer(io["context"]))
        compare(self, "out", out, io["out"], case["tolerances"]["out"])

    def test_tok_clip_sd1_tokenizer(self):
        d, case, io = need("tok_clip_sd1")
        params = case["calls"][0]["params"]
        with libldm.Tokenizer("clip", os.path.join(d, params["vocab"])) as tok:
            ids = tok.encode(params["prompts"])
        compare(self, "tokens", ids, io["tokens"], {"exact": True})

    def test_fixture_error_names_the_file(self):
        d, _, _ = need("ae_kl_f8")
        with self.assertRaises(libldm.FormatError) as cm:
            libldm.Model.load(os.path.join(d, "case.json"))  # JSON, not a checkpoint
        self.assertIn("case.json", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
