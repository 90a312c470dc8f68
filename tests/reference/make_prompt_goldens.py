#!/usr/bin/env python3
"""Goldens of prompts as users write them (issue #14, docs/prompts.md), from the official code of
AUTOMATIC1111/stable-diffusion-webui:

  modules/prompt_parser.py    parse_prompt_attention         commit 28bd8e142d5f77b71ae8d7d7140b5da1b3a49906
  modules/sd_hijack_clip.py   FrozenCLIPEmbedderWithCustomWords(Base): tokenize_line, forward,
                              process_tokens                 commit 00e09382cd85c77ac35545c7264855823dfc2eb1
  modules/sd_hijack_open_clip.py  FrozenOpenCLIPEmbedderWithCustomWords
                                                             commit 6387043fd2c3311d66690ff27d7da0e030b29cd8
  modules/sd_emphasis.py      EmphasisOriginal               commit f8391b8a8ff61bf7ebcddc9b387e6c2f206ed056

imported as they are from --webui DIR (a folder holding those four files under modules/; the
parser needs `lark`). Only the modules they import for device handling, the model hijack and the
options (modules.devices, modules.sd_hijack, modules.shared) are replaced by stubs holding webui's
defaults: emphasis "Original", comma_padding_backtrack 20, CLIP_stop_at_last_layers 1, no
textual-inversion embeddings. Under them run the official text towers, with the seeded random
float16 weights of the shared fixtures cond_clip_sd1 / cond_openclip_sd2 (read from --shared
DIR/fixtures; outputs computed in float32 from those values, like theirs):
  SD 1.x: HF transformers CLIPTextModel (quick_gelu; width 32, 2 layers, 2 heads) and
          CLIPTokenizer (vocab.json / merges.txt derived from bpe_simple_vocab_16e6.txt.gz exactly
          as openai/CLIP builds its vocabulary), wrapped like CompVis FrozenCLIPEmbedder
          (.tokenizer, .transformer);
  SD 2.x: Stability-AI/stablediffusion ldm/modules/encoders/modules.py
          FrozenOpenCLIPEmbedder.encode_with_transformer (commit
          cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf, --sd2 DIR holding its ldm/ folder), layer
          "penultimate", on open_clip 2.20's Transformer (width 32, 3 layers, 4 heads), and
          open_clip's tokenizer (what webui's sd_hijack_open_clip uses).
The webui files are used at the commits above (e.g. `git archive <commit> modules/<file>`); nothing
of them is kept in the project.

Fixtures written (tests/fixtures/, the shared fixture format):
  prompt_parse         parse_prompt_attention of the prompts -> runs (texts as UTF-8 bytes, weights
                       as the bits of Python's float64), op prompt.parse
  prompt_clip_sd1      webui's chunks (ids, weights) and forward() of each prompt on the SD 1.x
                       tower, ops prompt.tokens + cond.encode_prompt; case.json "shared_weights"
                       names the shared fixture whose model.safetensors and config.yaml the runner
                       loads (no weights are copied)
  prompt_openclip_sd2  the same on the SD 2.x tower
cond.encode_prompt: prompt i -> forward([prompt_i]) (webui encodes each prompt on its own), then
the prompts shorter than the longest get forward([""]) appended per missing chunk, as webui's
pad_cond_uncond pads with cond_stage_model_empty_prompt.

Usage: make_prompt_goldens.py --webui /tmp/webui --sd2 /tmp/sd2 [--shared ../shared]
(venv: torch 1.13, lark, ftfy, regex, transformers 4.39, open_clip_torch 2.20 --no-deps).
"""
import argparse
import gzip
import importlib.util
import json
import os
import struct
import sys
import tempfile
import types

import numpy as np
import torch

WEBUI_COMMITS = {
    "modules/prompt_parser.py": "28bd8e142d5f77b71ae8d7d7140b5da1b3a49906",
    "modules/sd_hijack_clip.py": "00e09382cd85c77ac35545c7264855823dfc2eb1",
    "modules/sd_hijack_open_clip.py": "6387043fd2c3311d66690ff27d7da0e030b29cd8",
    "modules/sd_emphasis.py": "f8391b8a8ff61bf7ebcddc9b387e6c2f206ed056",
}
SD2_COMMIT = "cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf"

LONG_WITH_COMMAS = ", ".join(
    f"detail {w} of the scene" for w in ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                                         "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen"])
LONG_NO_COMMAS = " ".join(f"word{i}" for i in range(90))
PROMPTS = [
    "a photo of a cat",
    "an (important) word",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    "(unbalanced",
    "[unbalanced square and (round",
    "\\(literal\\] and \\\\ backslash \\ lone \\x",
    "[[nested (mix:1.4)]] ( spaced : 0.8 ) end",
    "first part BREAK second part",
    "BREAK leading break",
    "trailing break BREAK",
    "(inside BREAK brackets)",
    "aBREAK notbreak BREAKfast _BREAK BREAK_ BREAK BREAK",
    ":1.5) stray close ] and : colon",
    "(word:1.2e3) exponent is text",
    "(neg:-0.5) (plus:+1.5) (dot:.5) (int:2)",
    "(a BREAK b:0)",
    "[a:b:0.5] schedule syntax",
    "caf\u00e9 (cr\u00e8me br\u00fbl\u00e9e:1.2) \u00a0BREAK\u3000x",
    "(unnecessary)(parens)",
    "",
    "   ",
    LONG_WITH_COMMAS,
    "(" + LONG_WITH_COMMAS + ":0.9), [tail words]",
    LONG_NO_COMMAS,
    "a, " + LONG_NO_COMMAS,
    " ".join(["word"] * 75),
    " ".join(["word"] * 76),
    " ".join(["w,"] * 40),
    "start " + "BREAK " * 2 + "end",
]
# Prompts for the embedding goldens: a subset (the tower runs once per chunk).
EMBED_PROMPTS = [0, 2, 6, 7, 8, 14, 17, 22, 26]


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def stub_webui(webui):
    """The webui modules the chunking imports for devices, the hijack and options, with defaults."""
    pkg = types.ModuleType("modules")
    pkg.__path__ = [os.path.join(webui, "modules")]
    sys.modules["modules"] = pkg
    devices = types.ModuleType("modules.devices")
    devices.device = torch.device("cpu")
    devices.torch_npu_set_device = lambda: None
    sys.modules["modules.devices"] = devices
    sd_hijack = types.ModuleType("modules.sd_hijack")
    sd_hijack.StableDiffusionModelHijack = object
    sys.modules["modules.sd_hijack"] = sd_hijack
    shared = types.ModuleType("modules.shared")
    shared.opts = types.SimpleNamespace(emphasis="Original", comma_padding_backtrack=20,
                                        use_old_emphasis_implementation=False,
                                        textual_inversion_add_hashes_to_infotext=False, CLIP_stop_at_last_layers=1)
    sys.modules["modules.shared"] = shared
    for m in ["prompt_parser", "sd_emphasis", "sd_hijack_clip"]:
        setattr(pkg, m, load_module("modules." + m, os.path.join(webui, "modules", m + ".py")))
    return pkg


class NoEmbeddings:
    def find_embedding_at_position(self, tokens, offset):
        return None, None


def hijack():
    return types.SimpleNamespace(embedding_db=NoEmbeddings(), fixes=None, extra_generation_params={})


def open_clip_modules(vocab):
    """open_clip's tokenizer and transformer files without its package __init__ (which needs
    torchvision): a bare package object, utils.to_2tuple stubbed."""
    spec = importlib.util.find_spec("open_clip")
    root = spec.submodule_search_locations[0]
    pkg = types.ModuleType("open_clip")
    pkg.__path__ = [root]
    sys.modules["open_clip"] = pkg
    utils = types.ModuleType("open_clip.utils")
    utils.to_2tuple = lambda x: (x, x)
    sys.modules["open_clip.utils"] = utils
    pkg.tokenizer = load_module("open_clip.tokenizer", os.path.join(root, "tokenizer.py"))
    pkg.tokenizer._tokenizer = pkg.tokenizer.SimpleTokenizer(vocab)
    pkg.transformer = load_module("open_clip.transformer", os.path.join(root, "transformer.py"))
    return pkg


def hf_clip_tokenizer(vocab, tmp):
    """CLIPTokenizer files from the BPE merges, the vocabulary built as openai/CLIP does."""
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode
    merges = gzip.open(vocab).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    v = list(bytes_to_unicode().values())
    v = v + [x + "</w>" for x in v] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(tmp, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(v)}, f)
    with open(os.path.join(tmp, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"))


def read_safetensors(path, prefix):
    """The tensors under `prefix` (prefix removed), floats widened to float32."""
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__" or not k.startswith(prefix):
            continue
        dt = {"F32": np.float32, "F16": np.float16, "I64": np.int64}[v["dtype"]]
        s0, s1 = v["data_offsets"]
        a = np.frombuffer(b[8 + n + s0:8 + n + s1], dt).reshape(v["shape"])
        out[k[len(prefix):]] = torch.from_numpy(a.astype(np.float32) if dt == np.float16 else a.copy())
    return out


def sd1_tower(shared):
    from transformers import CLIPTextConfig, CLIPTextModel
    sd = read_safetensors(os.path.join(shared, "fixtures", "cond_clip_sd1", "model.safetensors"),
                          "cond_stage_model.transformer.")
    width = sd["text_model.embeddings.token_embedding.weight"].shape[1]
    layers = len({k.split(".")[3] for k in sd if k.startswith("text_model.encoder.layers.")})
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5, projection_dim=width)
    model = CLIPTextModel(cfg).eval()
    sd.pop("text_model.embeddings.position_ids", None)  # a buffer HF 4.39 no longer saves (always arange)
    model.load_state_dict(sd, strict=True)
    return model


class OpenCLIPText(torch.nn.Module):
    """The text half of open_clip's CLIP (the attributes FrozenOpenCLIPEmbedder reads)."""

    def __init__(self, oc, width, layers, heads, embed_dim):
        super().__init__()
        self.token_embedding = torch.nn.Embedding(49408, width)
        self.positional_embedding = torch.nn.Parameter(torch.empty(77, width))
        self.transformer = oc.transformer.Transformer(width, layers, heads, act_layer=torch.nn.GELU)
        self.ln_final = torch.nn.LayerNorm(width)
        self.text_projection = torch.nn.Parameter(torch.empty(width, embed_dim))
        self.logit_scale = torch.nn.Parameter(torch.ones([]))
        self.register_buffer("attn_mask", torch.empty(77, 77).fill_(float("-inf")).triu_(1), persistent=False)


def sd2_tower(oc, sd2, shared):
    sys.path.insert(0, sd2)
    sys.modules.setdefault("kornia", types.ModuleType("kornia"))
    from ldm.modules.encoders.modules import FrozenOpenCLIPEmbedder
    sd = read_safetensors(os.path.join(shared, "fixtures", "cond_openclip_sd2", "model.safetensors"),
                          "cond_stage_model.model.")
    width = sd["token_embedding.weight"].shape[1]
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    sd["logit_scale"] = sd["logit_scale"].reshape([])
    text = OpenCLIPText(oc, width, layers, 4, sd["text_projection"].shape[1])
    text.load_state_dict(sd, strict=True)
    emb = FrozenOpenCLIPEmbedder.__new__(FrozenOpenCLIPEmbedder)
    torch.nn.Module.__init__(emb)
    emb.model = text.eval()
    emb.device = "cpu"
    emb.layer = "penultimate"
    emb.layer_idx = 1
    emb.max_length = 77
    return emb


# ---------------------------------------------------------------- fixture files

def write_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        dtype = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("int64"): "I64"}[arr.dtype]
        b = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def tolerance(ref, f64_err):
    atol = max(1e-4 * max(1.0, float(np.abs(ref).max())), 20 * f64_err)
    return {"atol": float(f"{atol:.3g}"), "rtol": 1e-4, "max_abs": float(np.abs(ref).max()),
            "f32_vs_f64_max_err": float(f"{f64_err:.3g}")}


def write_case(out, name, description, calls, inputs, outputs, tolerances, weights=None, extra=None):
    case = {"kind": "prompt", "name": name, "description": description,
            "reference": {"repo": "AUTOMATIC1111/stable-diffusion-webui", "files": WEBUI_COMMITS}}
    if extra:
        case.update(extra)
    if weights:
        case["weights"] = weights
    case["calls"] = calls
    case["inputs"] = inputs
    case["outputs"] = outputs
    if tolerances:
        case["atol"] = max(t["atol"] for t in tolerances.values())
        case["rtol"] = max(t["rtol"] for t in tolerances.values())
    case["tolerances"] = tolerances
    with open(os.path.join(out, "case.json"), "w") as f:
        json.dump(case, f, indent=1, ensure_ascii=False)
        f.write("\n")


def shape_of(a):
    return {"shape": list(a.shape), "dtype": {"float32": "F32", "int64": "I64"}[str(a.dtype)]}


def parse_fixture(root, pp):
    texts, lens, bits, owner = [], [], [], []
    for i, p in enumerate(PROMPTS):
        for text, weight in pp.parse_prompt_attention(p):
            b = text.encode("utf-8")
            texts.extend(b)
            lens.append(len(b))
            bits.append(struct.unpack("<q", struct.pack("<d", float(weight)))[0])
            owner.append(i)
    io = {"runs_prompt": np.array(owner, np.int64), "runs_len": np.array(lens, np.int64),
          "runs_text": np.array(texts, np.int64), "runs_weight_bits": np.array(bits, np.int64)}
    out = os.path.join(root, "prompt_parse")
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "io.safetensors"), io)
    exact = {k: {"atol": 0.0, "rtol": 0.0, "exact": True} for k in io}
    calls = [{"op": "prompt.parse", "params": {"prompts": PROMPTS},
              "outputs": {k: k for k in io}}]
    write_case(out, "prompt_parse",
               "webui parse_prompt_attention of %d prompts: runs in order; runs_prompt = prompt index, runs_text = "
               "the UTF-8 bytes of all run texts concatenated, runs_len = bytes per run, runs_weight_bits = the "
               "IEEE-754 bits of each run's Python float weight (BREAK markers: text 'BREAK', weight -1)" % len(PROMPTS),
               calls, {}, {k: shape_of(v) for k, v in io.items()}, exact)


def chunks_of(embedder, prompt):
    chunks, _ = embedder.tokenize_line(prompt)
    ids, mults = [], []
    for c in chunks:
        t = list(c.tokens)
        if embedder.id_end != embedder.id_pad:  # process_tokens' padding rule
            k = t.index(embedder.id_end)
            t[k + 1:] = [embedder.id_pad] * (len(t) - k - 1)
        ids.append(t)
        mults.append(c.multipliers)
    return ids, mults


def encoder_fixture(root, name, kind, embedder, shared_fixture, f64_embedder, description):
    all_ids, all_w, counts = [], [], []
    for p in PROMPTS:
        ids, w = chunks_of(embedder, p)
        all_ids += ids
        all_w += w
        counts.append(len(ids))
    sel = [PROMPTS[i] for i in EMBED_PROMPTS]
    with torch.no_grad():
        per = [embedder([p])[0] for p in sel]
        empty = embedder([""])[0]
        torch.set_default_dtype(torch.float64)  # the float64 rerun (HF builds its mask in the default dtype)
        per64 = [f64_embedder([p])[0] for p in sel]
        empty64 = f64_embedder([""])[0]
        torch.set_default_dtype(torch.float32)
    k = max(x.shape[0] for x in per) // 77

    def pad(z, e):
        return torch.cat([z] + [e] * (k - z.shape[0] // 77), 0)
    c = torch.stack([pad(z, empty) for z in per]).numpy().astype(np.float32)
    c64 = torch.stack([pad(z, empty64) for z in per64]).numpy()
    io = {"ids": np.array(all_ids, np.int64), "weights": np.array(all_w, np.float32),
          "chunks": np.array(counts, np.int64), "c": c}
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "io.safetensors"), io)
    tols = {k2: {"atol": 0.0, "rtol": 0.0, "exact": True} for k2 in ("ids", "weights", "chunks")}
    tols["c"] = tolerance(c, float(np.abs(c64 - c).max()))
    calls = [{"op": "prompt.tokens", "params": {"prompts": PROMPTS, "tokenizer": kind, "context_length": 77},
              "outputs": {"ids": "ids", "weights": "weights", "chunks": "chunks"}},
             {"op": "cond.encode_prompt", "params": {"prompts": sel}, "outputs": {"c": "c"}}]
    write_case(out, name, description, calls, {}, {k2: shape_of(v) for k2, v in io.items()}, tols,
               extra={"shared_weights": shared_fixture,
                      "weights_dtype": "the shared fixture's F16 weights; expected outputs computed in float32 "
                                       "from these F16 values"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--webui", required=True)
    ap.add_argument("--sd2", required=True)
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                                     "shared"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
    a = ap.parse_args()
    torch.set_num_threads(2)
    vocab = os.path.join(a.shared, "vocab", "bpe_simple_vocab_16e6.txt.gz")
    webui = stub_webui(a.webui)
    parse_fixture(a.out, webui.prompt_parser)

    with tempfile.TemporaryDirectory() as tmp:
        tok = hf_clip_tokenizer(vocab, tmp)
        tower = sd1_tower(a.shared)
        emb = webui.sd_hijack_clip.FrozenCLIPEmbedderWithCustomWords(
            types.SimpleNamespace(tokenizer=tok, transformer=tower), hijack())
        emb64 = webui.sd_hijack_clip.FrozenCLIPEmbedderWithCustomWords(
            types.SimpleNamespace(tokenizer=tok, transformer=sd1_tower(a.shared).double()), hijack())
        encoder_fixture(a.out, "prompt_clip_sd1", "clip", emb, "cond_clip_sd1", emb64,
                        "webui chunks (tokenize_line + process_tokens) of %d prompts through HF CLIPTokenizer, and "
                        "webui forward() (EmphasisOriginal) of %d of them on the SD 1.x FrozenCLIPEmbedder tower of "
                        "the shared fixture cond_clip_sd1 (HF CLIPTextModel width 32, 2 layers, 2 heads, F16)"
                        % (len(PROMPTS), len(EMBED_PROMPTS)))

    oc = open_clip_modules(vocab)
    webui_oc = load_module("modules.sd_hijack_open_clip", os.path.join(a.webui, "modules", "sd_hijack_open_clip.py"))
    emb = webui_oc.FrozenOpenCLIPEmbedderWithCustomWords(sd2_tower(oc, a.sd2, a.shared), hijack())
    emb64 = webui_oc.FrozenOpenCLIPEmbedderWithCustomWords(sd2_tower(oc, a.sd2, a.shared).double(), hijack())
    encoder_fixture(a.out, "prompt_openclip_sd2", "openclip", emb, "cond_openclip_sd2", emb64,
                    "webui chunks (FrozenOpenCLIPEmbedderWithCustomWords: open_clip tokenizer, 0-padding after the "
                    "first end token) of %d prompts, and webui forward() (EmphasisOriginal) of %d of them on the SD "
                    "2.x FrozenOpenCLIPEmbedder tower of the shared fixture cond_openclip_sd2 (layer penultimate, "
                    "width 32, 3 layers, 4 heads, F16)" % (len(PROMPTS), len(EMBED_PROMPTS)))


if __name__ == "__main__":
    main()
