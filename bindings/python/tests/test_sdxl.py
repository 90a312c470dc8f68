"""SDXL through the binding (docs/models.md): Conditioner.encode_sdxl, Model.apply_sdxl,
Model.sampler(discretization="sgm"), Sampler.begin_at and sdxl_base_steps against the
sdxl_base_tiny golden of tests/fixtures (the official sgm code, base -> refiner hand-off
included), and generate()'s SDXL fields (size / crop / aesthetic conditioning, refiner,
refiner_start) against the same run composed from those calls."""
import json
import os
import struct
import tempfile
import unittest

import libldm
from support import REPO, SHARED, as_buffer, compare, flat_values, load_case, read_safetensors

D = os.path.join(REPO, "tests", "fixtures", "sdxl_base_tiny")
R = os.path.join(REPO, "tests", "fixtures", "sdxl_refiner_tiny")  # the refiner of D's hand-off
VOCAB = os.path.join(SHARED, "vocab", "bpe_simple_vocab_16e6.txt.gz")
FULL_VOCAB = 49408


def fixture_dir(name):
    return D if name == "model" else R


def load(name="model", vocab=None, path=None):
    weights = path or os.path.join(fixture_dir(name), "model.safetensors")
    config = os.path.join(fixture_dir(name), "config.yaml")
    return libldm.Model.load(weights, config=config, vocab=vocab, threads=2)


def run_steps(model, sampler, c, uc, scale, last):
    """Steps of sampler until `last` are done, with model's guided SDXL UNet."""
    for x, t in sampler:
        sampler.give(model.apply_sdxl(x, [t] * int(x.shape[0]), c[0], c[1], uc[0], uc[1], scale))
        if sampler.steps_done >= last:
            break


def padded_copy(src, dst):
    """The fixture model with its 256-row token tables repeated to the real vocabulary's size, so
    that prompts through the real tokenizers can run (rows beyond 256 repeat the first ones)."""
    with open(src, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data, out_header, offset = [], {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            out_header[name] = info
            continue
        begin, end = info["data_offsets"]
        raw, shape = blob[8 + n + begin:8 + n + end], list(info["shape"])
        if name.endswith("token_embedding.weight"):
            row = len(raw) // shape[0]
            raw = b"".join(raw[(r % shape[0]) * row:(r % shape[0] + 1) * row] for r in range(FULL_VOCAB))
            shape[0] = FULL_VOCAB
        out_header[name] = {"dtype": info["dtype"], "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        data.append(raw)
        offset += len(raw)
    head = json.dumps(out_header).encode("utf-8")
    head += b" " * (-len(head) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(data))


class SdxlGoldenTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.case = load_case(D)
        cls.io = read_safetensors(os.path.join(D, "io.safetensors"))
        cls.tol = cls.case["tolerances"]

    def test_conditioner(self):
        io = self.io
        with load() as m:
            cond = m.conditioner()
            self.assertEqual(cond.kind, "sdxl")
            args = dict(tokens=[as_buffer(io["tokens_clip"]), as_buffer(io["tokens_openclip"])],
                        original_height=64, original_width=48, crop_top=3, crop_left=5, target_height=64,
                        target_width=64)
            ca, vec = cond.encode_sdxl(**args)
            compare(self, "c_crossattn", ca, io["c_crossattn"], self.tol["c_crossattn"])
            compare(self, "c_vector", vec, io["c_vector"], self.tol["c_vector"])
            uca, uvec = cond.encode_sdxl(zero_text=True, **args)
            compare(self, "uc_crossattn", uca, io["uc_crossattn"], self.tol["uc_crossattn"])
            compare(self, "uc_vector", uvec, io["uc_vector"], self.tol["uc_vector"])
            with self.assertRaises(libldm.InvalidArgumentError):
                cond.encode_sdxl(tokens=[as_buffer(io["tokens_clip"])])  # one token tensor per encoder
            with self.assertRaises(TypeError):
                cond.encode_sdxl(tokens=args["tokens"], crop_top="3")

    def test_refiner_handoff(self):
        io = self.io
        steps, start = 8, 0.6
        k = libldm.sdxl_base_steps(steps, start)
        self.assertEqual(k, 6)
        c = (as_buffer(io["c_crossattn"]), as_buffer(io["c_vector"]))
        uc = (as_buffer(io["uc_crossattn"]), as_buffer(io["uc_vector"]))
        rio = read_safetensors(os.path.join(R, "io.safetensors"))
        rtol = load_case(R)["tolerances"]
        with load() as base, load("refiner") as ref:
            rcond = ref.conditioner()
            rc = rcond.encode_sdxl(tokens=[as_buffer(io["tokens_openclip"])], original_height=64, original_width=64,
                                   target_height=64, target_width=64, aesthetic_score=6.0)
            ruc = rcond.encode_sdxl(tokens=[as_buffer(rio["tokens_empty"])], original_height=64, original_width=64,
                                    target_height=64, target_width=64, aesthetic_score=2.5)
            compare(self, "rc_vector", rc[1], rio["rc_vector"], rtol["rc_vector"])
            s = base.sampler("euler", steps, discretization="sgm")
            s.begin(as_buffer(io["x_T"]))
            run_steps(base, s, c, uc, 5.0, k)
            self.assertEqual(s.steps_done, k)
            s2 = ref.sampler("euler", steps, discretization="sgm")
            s2.begin_at(s.current, k)
            self.assertEqual(s2.steps_done, k)
            run_steps(ref, s2, rc, ruc, 5.0, steps)
            compare(self, "handoff_samples", s2.current, io["handoff_samples"], self.tol["handoff_samples"])
            image = ref.decode_latent(s2.current)
            compare(self, "handoff_image", image, io["handoff_image"], self.tol["handoff_image"])
            with self.assertRaises(libldm.InvalidArgumentError):
                s2.begin_at(s.current, steps)  # past the last step
            with self.assertRaises(libldm.InvalidArgumentError):
                base.sampler("ddim", steps, discretization="sgm")
            with self.assertRaises(ValueError):
                base.sampler("euler", steps, discretization="karras")

    def test_img2img_start(self):
        """Sampler.begin_noised at sdxl_img2img_first_step: the sdxl_img_tiny golden's Euler
        img2img (generative-models' do_img2img, strength 0.6 of 8 steps)."""
        d = os.path.join(REPO, "tests", "fixtures", "sdxl_img_tiny")
        io, tol = read_safetensors(os.path.join(d, "io.safetensors")), load_case(d)["tolerances"]
        first = libldm.sdxl_img2img_first_step(8, 0.6)
        self.assertEqual(first, 4)
        self.assertEqual(libldm.sdxl_img2img_first_step(8, 0.05), 8)  # no step runs
        c = (as_buffer(io["c_crossattn"]), as_buffer(io["c_vector"]))
        uc = (as_buffer(io["uc_crossattn"]), as_buffer(io["uc_vector"]))
        with load() as base:
            s = base.sampler("euler", 8, discretization="sgm")
            s.begin_noised(as_buffer(io["z0"]), as_buffer(io["x_T"]), first)
            self.assertEqual(s.steps_done, first)
            run_steps(base, s, c, uc, 5.0, 8)
            compare(self, "i2i_euler_samples", s.current, io["i2i_euler_samples"], tol["i2i_euler_samples"])
            with self.assertRaises(libldm.InvalidArgumentError):
                s.begin_noised(as_buffer(io["z0"]), as_buffer(io["x_T"]), 8)  # past the last step

    def test_inpaint_blend(self):
        """Sampler.blend_known after each step: the sdxl_inpaint_tiny golden's Euler (trailing,
        strength 0.6 of 8 steps: diffusers' StableDiffusionXLInpaintPipeline starts at step 4)."""
        d = os.path.join(REPO, "tests", "fixtures", "sdxl_inpaint_tiny")
        io, tol = read_safetensors(os.path.join(d, "io.safetensors")), load_case(d)["tolerances"]
        c = (as_buffer(io["c_crossattn"]), as_buffer(io["c_vector"]))
        uc = (as_buffer(io["uc_crossattn"]), as_buffer(io["uc_vector"]))
        z0, x_T, mask = as_buffer(io["z0"]), as_buffer(io["x_T"]), as_buffer(io["mask"])
        with load() as base:
            s = base.sampler("euler", 8, spacing="trailing")
            s.begin_noised(z0, x_T, 4)
            for k in range(5, 9):
                run_steps(base, s, c, uc, 5.0, k)
                s.blend_known(z0, x_T, mask)
            compare(self, "inpaint_euler_s06_samples", s.current, io["inpaint_euler_s06_samples"],
                    tol["inpaint_euler_s06_samples"])
            with self.assertRaises(libldm.InvalidArgumentError):
                s.blend_known(z0, x_T, as_buffer(io["z0"]))  # a 4-channel mask


@unittest.skipUnless(os.path.isfile(VOCAB), "no CLIP vocabulary (LDM_SHARED)")
class SdxlGenerateTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        for name in ("model", "refiner"):
            padded_copy(os.path.join(fixture_dir(name), "model.safetensors"),
                        os.path.join(cls.tmp.name, name + ".safetensors"))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def model(self, name):
        return load(name, vocab=VOCAB, path=os.path.join(self.tmp.name, name + ".safetensors"))

    def test_prompt_syntax(self):
        with self.model("model") as m:
            cond = m.conditioner()
            plain = cond.encode_sdxl("a red bicycle", original_width=64, original_height=64)
            same = cond.encode_sdxl("a red bicycle", original_width=64, original_height=64, prompt_syntax=True)
            for a, b in zip(plain, same):
                self.assertEqual(flat_values(a), flat_values(b))  # no syntax, one chunk: byte for byte
            ca, vec = cond.encode_sdxl(["a (red:1.5) bicycle", "x " * 80], prompt_syntax=True)
            self.assertEqual(tuple(ca.shape)[:2], (2, 154))  # the long prompt's two chunks for both
            self.assertNotEqual(flat_values(ca)[:77 * 128], flat_values(plain[0]))
            flat, _ = cond.encode_sdxl("a (red:1.5) bicycle", prompt_syntax=True, emphasis=False)
            self.assertEqual(tuple(flat.shape), (1, 77, 128))

    def test_generate_fields_and_refiner(self):
        prompt, steps, start, scale = "a red bicycle", 8, 0.6, 4.0
        size = dict(original_width=96, original_height=80, crop_left=2, crop_top=6, target_width=64,
                    target_height=48)
        x_T = libldm.randn(5, 0, shape=[1, 4, 8, 8])
        with self.model("model") as base, self.model("refiner") as ref:
            r = base.resolve_generate_params(prompt=prompt, width=8, height=8, steps=steps, refiner=ref,
                                             refiner_start=start, aesthetic_score=7.0, **size)
            for field, value in size.items():
                self.assertEqual(r[field], value, field)
            self.assertEqual((r["aesthetic_score"], r["negative_aesthetic_score"], r["refiner_start"]),
                             (7.0, 2.5, start))
            self.assertEqual(r["sampler"], "euler")  # sgm's default sampler
            image = base.generate(prompt=prompt, width=8, height=8, steps=steps, x_T=x_T, sampler="dpmpp_2m",
                                  guidance_scale=scale, refiner=ref, refiner_start=start, aesthetic_score=7.0,
                                  negative_aesthetic_score=2.0, **size)
            # the same run from the public calls: the base sees the caller's size conditioning and a
            # zeroed unconditional text, the refiner the output size, crop 0 and the aesthetic scores
            toks = {kind: libldm.Tokenizer(kind, VOCAB) for kind in ("clip", "openclip")}
            bc = base.conditioner()
            sizes = dict(original_width=96, original_height=80, crop_left=2, crop_top=6, target_width=64,
                         target_height=48)
            c = bc.encode_sdxl(tokens=[toks["clip"].encode(prompt), toks["openclip"].encode(prompt)], **sizes)
            uc = bc.encode_sdxl(tokens=[toks["clip"].encode(""), toks["openclip"].encode("")], zero_text=True,
                                **sizes)
            rsize = dict(original_width=8, original_height=8, target_width=8, target_height=8)
            rc = ref.conditioner().encode_sdxl(tokens=[toks["openclip"].encode(prompt)], aesthetic_score=7.0, **rsize)
            ruc = ref.conditioner().encode_sdxl(tokens=[toks["openclip"].encode("")], aesthetic_score=2.0, **rsize)
            k = libldm.sdxl_base_steps(steps, start)
            s = base.sampler("dpmpp_2m", steps, discretization="sgm")
            s.begin(x_T)
            run_steps(base, s, c, uc, scale, k)
            s2 = ref.sampler("dpmpp_2m", steps, discretization="sgm")
            s2.begin_at(s.current, k)
            run_steps(ref, s2, rc, ruc, scale, steps)
            got = flat_values(image)
            # the same calls in the same order: equal up to nothing (the tiny model barely feels the
            # base's size conditioning once the refiner has taken over: a wrong crop moves it ~1e-6)
            worst = max(abs(a - b) for a, b in zip(got, flat_values(ref.decode_latent(s2.current))))
            self.assertLess(worst, 1e-7, "generate() with the refiner differs from the composed run by %g" % worst)
            # without the refiner the base finishes and decodes: the size conditioning all the way
            alone = base.generate(prompt=prompt, width=8, height=8, steps=steps, x_T=x_T, sampler="dpmpp_2m",
                                  guidance_scale=scale, **size)
            s = base.sampler("dpmpp_2m", steps, discretization="sgm")
            s.begin(x_T)
            run_steps(base, s, c, uc, scale, steps)
            worst = max(abs(a - b) for a, b in zip(flat_values(alone), flat_values(base.decode_latent(s.current))))
            self.assertLess(worst, 1e-7, "generate() differs from the composed run by %g" % worst)
            self.assertGreater(max(abs(a - b) for a, b in zip(flat_values(alone), got)), 1e-4)
            with self.assertRaises(TypeError):
                base.generate(prompt=prompt, width=8, height=8, refiner="refiner.safetensors")
            with self.assertRaises(ValueError):
                base.generate(prompt=prompt, width=8, height=8, refiner=base)


if __name__ == "__main__":
    unittest.main()
