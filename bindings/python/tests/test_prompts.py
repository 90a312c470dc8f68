"""Prompts as users write them (docs/prompts.md): the parser, a tokenizer's chunks, a conditioner's
weighted embeddings and generate()'s plain_prompts switch, checked against the project's goldens
from webui's own code (tests/fixtures/prompt_*) and against the plain path."""
import os
import struct
import unittest

import libldm
from support import REPO, SHARED, fixture_dir, flat_values, read_safetensors

OWN_FIXTURES = os.path.join(REPO, "tests", "fixtures")
VOCAB = os.path.join(SHARED, "vocab")
BPE = os.path.join(VOCAB, "bpe_simple_vocab_16e6.txt.gz")


def own_case(name):
    import json
    with open(os.path.join(OWN_FIXTURES, name, "case.json"), encoding="utf-8") as f:
        return json.load(f)


def flat(x):
    return [float(v) for v in flat_values(x)]


class ParseTest(unittest.TestCase):
    def test_webui_doctest(self):
        runs = libldm.parse_prompt("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
        self.assertEqual(runs, [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1),
                                ("hill", 0.55), (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)])

    def test_break_escape_and_plain(self):
        self.assertEqual(libldm.parse_prompt("a BREAK \\(b\\)"), [("a", 1.0), ("BREAK", -1.0), ("(b)", 1.0)])
        self.assertEqual(libldm.parse_prompt("(a:2) BREAK", emphasis=False), [("(a:2) BREAK", 1.0)])

    def test_bad_weight(self):
        with self.assertRaises(libldm.InvalidArgumentError):
            libldm.parse_prompt("(a:1.2.3)")

    def test_matches_the_webui_golden(self):
        io = read_safetensors(os.path.join(OWN_FIXTURES, "prompt_parse", "io.safetensors"))
        prompts = own_case("prompt_parse")["calls"][0]["params"]["prompts"]
        owner, lens, text, bits = (io[k][2] for k in ("runs_prompt", "runs_len", "runs_text", "runs_weight_bits"))
        k = pos = 0
        for i, p in enumerate(prompts):
            for t, w in libldm.parse_prompt(p):
                self.assertEqual(owner[k], i)
                self.assertEqual(t.encode("utf-8"), bytes(list(text[pos:pos + lens[k]])), p)
                self.assertEqual(struct.pack("<d", w), struct.pack("<q", bits[k]), p)
                pos += lens[k]
                k += 1
        self.assertEqual(k, len(owner))


@unittest.skipUnless(os.path.isfile(BPE), "shared vocabulary not found (set LDM_SHARED)")
class TokenizerTest(unittest.TestCase):
    def test_chunks_match_the_webui_golden(self):
        io = read_safetensors(os.path.join(OWN_FIXTURES, "prompt_openclip_sd2", "io.safetensors"))
        prompts = own_case("prompt_openclip_sd2")["calls"][0]["params"]["prompts"]
        ids_ref, w_ref, counts = io["ids"][2], io["weights"][2], io["chunks"][2]
        row = 0
        with libldm.Tokenizer("openclip", BPE) as tok:
            for i, p in enumerate(prompts):
                ids, w = tok.encode_prompt(p)
                n = len(flat(ids)) // 77
                self.assertEqual(n, counts[i], p)
                self.assertEqual([int(v) for v in flat(ids)], list(ids_ref[row * 77:(row + n) * 77]), p)
                self.assertEqual(flat(w), list(w_ref[row * 77:(row + n) * 77]), p)
                row += n


@unittest.skipUnless(fixture_dir("ldm_sd1_txt2img"), "shared fixtures not found (set LDM_SHARED)")
class ConditionerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        d = fixture_dir("ldm_sd1_txt2img")
        cls.model = libldm.Model.load(os.path.join(d, "model.safetensors"), config=os.path.join(d, "config.yaml"),
                                      vocab=VOCAB)

    @classmethod
    def tearDownClass(cls):
        cls.model.close()

    def test_plain_prompt_is_encode_text(self):
        cond = self.model.conditioner()
        self.assertEqual(flat(cond.encode_prompt(["a cat", ""])), flat(cond.encode_text(["a cat", ""])))

    def test_long_and_weighted(self):
        cond = self.model.conditioner()
        long_prompt = " ".join(["red cat"] * 50)
        c = cond.encode_prompt([long_prompt, "(cat:1.4)"])
        self.assertEqual(tuple(int(d) for d in c.shape)[:2], (2, 154))
        self.assertNotEqual(flat(cond.encode_prompt("(cat:1.4)")), flat(cond.encode_text("(cat:1.4)")))
        self.assertEqual(flat(cond.encode_prompt("(cat:1.4)", emphasis=False)), flat(cond.encode_text("(cat:1.4)")))

    def test_generate_plain_prompts(self):
        kw = dict(prompt="a red house", steps=2, seed=3)
        self.assertEqual(flat(self.model.generate(**kw)), flat(self.model.generate(plain_prompts=True, **kw)))
        kw["prompt"] = "a (red:1.5) house"
        self.assertNotEqual(flat(self.model.generate(**kw)), flat(self.model.generate(plain_prompts=True, **kw)))
        self.assertEqual(self.model.resolve_generate_params(plain_prompts=True)["plain_prompts"], 1)
        self.assertEqual(self.model.resolve_generate_params()["plain_prompts"], 0)


if __name__ == "__main__":
    unittest.main()
