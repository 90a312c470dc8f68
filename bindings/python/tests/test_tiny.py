"""The tiny autoencoder (TAESD) and step previews through the binding: the project's own goldens
(tests/fixtures/taesd_*), the model-level setter and generate(preview=...)."""
import os
import unittest

import libldm
from support import REPO, as_buffer, compare, flat_values, load_case, read_safetensors, shape_of

OWN = os.path.join(REPO, "tests", "fixtures")


def own(name):
    d = os.path.join(OWN, name)
    return d, load_case(d), read_safetensors(os.path.join(d, "io.safetensors"))


class TinyAutoencoderTest(unittest.TestCase):
    def test_diffusers_file_goldens(self):
        d, case, io = own("taesd_diffusers")
        tol = case["tolerances"]
        with libldm.TinyAutoencoder(os.path.join(d, "diffusion_pytorch_model.safetensors"), threads=2) as t:
            self.assertTrue(t.has_encoder and t.has_decoder)
            self.assertEqual(t.latent_channels, 4)
            compare(self, "z", t.encode(as_buffer(io["x"])), io["z"], tol["z"])
            image = t.decode(as_buffer(io["z_in"]))
            compare(self, "image", image, io["image"], tol["image"])
            compare(self, "z_back", t.encode(image), io["z_back"], tol["z_back"])

    def test_decoder_file_and_pth_encoder(self):
        d, case, io = own("taesd_sd_decoder")
        with libldm.TinyAutoencoder(os.path.join(d, "taesd_decoder.safetensors")) as t:
            self.assertFalse(t.has_encoder)
            compare(self, "image", t.decode(as_buffer(io["z"])), io["image"], case["tolerances"]["image"])
            with self.assertRaises(libldm.NotFoundError):
                t.encode(as_buffer(io["image"]))
        d, case, io = own("taesd_diffusers")
        with libldm.TinyAutoencoder(os.path.join(d, "taesd_encoder.pth")) as t:
            compare(self, "z_pth", t.encode(as_buffer(io["x"])), io["z_pth"], case["tolerances"]["z_pth"])

    def test_bad_file_names_it(self):
        d = os.path.join(OWN, "taesd_sd_decoder")
        with self.assertRaises(libldm.FormatError) as e:
            libldm.TinyAutoencoder(os.path.join(d, "io.safetensors"))
        self.assertIn("io.safetensors", str(e.exception))
        with self.assertRaises(libldm.FileError):
            libldm.TinyAutoencoder(os.path.join(d, "absent.pth"))

    def test_model_refuses_another_latent_space(self):
        with libldm.Model.load_builtin("demo") as m:
            with self.assertRaises(libldm.InvalidArgumentError) as e:
                m.set_tiny_autoencoder(os.path.join(OWN, "taesd_sd_decoder", "taesd_decoder.safetensors"))
            self.assertIn("latent channels", str(e.exception))
            self.assertFalse(m.has_tiny_decoder)
            with self.assertRaises(libldm.InvalidArgumentError):
                m.generate(class_label=1, steps=2, vae="tiny")
            with self.assertRaises(ValueError):
                m.generate(class_label=1, steps=2, vae="small")


class PreviewTest(unittest.TestCase):
    def test_previews_count_shape_and_cancel(self):
        seen = []

        def on_preview(step, total, image):
            seen.append((step, total, tuple(shape_of(image))))

        with libldm.Model.load_builtin("demo") as m:
            r = m.resolve_generate_params(class_label=1, steps=4)
            self.assertEqual((r["vae"], r["preview_every"], r["preview_kind"]), ("full", 1, "full"))
            image = m.generate(class_label=1, steps=4, seed=3, preview=on_preview, preview_every=2)
            self.assertEqual([s[:2] for s in seen], [(2, 4), (4, 4)])
            self.assertEqual(seen[0][2], tuple(shape_of(image)))  # the full decoder: [1,3,64,64]
            with self.assertRaises(libldm.InvalidArgumentError):
                m.generate(class_label=1, steps=2, preview=on_preview, preview_kind="linear")  # 3-channel latents
            seen.clear()
            with self.assertRaises(libldm.Cancelled):
                m.generate(class_label=1, steps=4, preview=lambda s, t, img: s >= 1)

            def boom(step, total, image):
                raise KeyError("from the preview")
            with self.assertRaises(KeyError):
                m.generate(class_label=1, steps=4, preview=boom)
            # a preview image may be kept after the call
            kept = []
            m.generate(class_label=1, steps=2, preview=lambda s, t, img: kept.append(img))
            self.assertEqual(len(kept), 2)
            self.assertEqual(len(flat_values(kept[-1])), 3 * 64 * 64)


if __name__ == "__main__":
    unittest.main()
