#!/usr/bin/env python3
"""make_lora_goldens.py - the LoRA goldens of tests/fixtures/lora_* (issue #14), made with
kohya-ss sd-scripts' own merge code and the OFFICIAL networks, so that the conformance runner can
check libldm's LoRA merging (lib/api/lora.c, lora_names.c) without PyTorch.

  tests/fixtures/lora_sd1   the SD1 model of ../shared/fixtures/ldm_sd1_txt2img (its text tower; to
      keep the fixture small the token table is cut to its first 1000 rows and the first stage
      left out; CLIP text weights F16 as there) with its UNet structure at 64 channels (random
      weights stored F16: the shared UNet's 32 channels are one per GroupNorm group, which
      normalises the time embedding away) and two LoRA files:
        lora_kohya.safetensors  kohya/webui keys (lora_unet_<diffusers path>, lora_te_<HF path>,
            .lora_down/.lora_up stored F16, .alpha != rank): every Linear / 1x1 conv of each
            Transformer2DModel (rank 4, alpha 2), two ResnetBlock2D 3x3 convs as LoCon (a 3x3
            down with a 1x1 up, rank 3, alpha 1.5) and every q/k/v/out_proj/fc1/fc2 of the text
            encoder (rank 4, alpha 3);
        lora_peft.safetensors   diffusers/PEFT keys (unet.<diffusers path>.lora_A/.lora_B,
            text_encoder.<HF path>..., F16) of other random factors on the attention projections, rank
            6, no alpha: PEFT's default
            lora_alpha = r (diffusers get_peft_kwargs), i.e. scale 1.
      The calls: UNet forward and text encoding without LoRA, with the kohya file at 0.7, with
      both (PEFT at -0.5 stacked on it), and after ldm_model_lora_clear (= the base outputs).
  tests/fixtures/lora_sd2_openclip   the SD2 OpenCLIP text tower of
      ../shared/fixtures/cond_openclip_sd2 (fused in_proj_weight; token table cut to 1000 rows)
      and a kohya file in HF naming (lora_te_text_model_encoder_layers_N_self_attn_q_proj, ...,
      mlp_fc1/fc2; rank 4, alpha 6): the q/k/v deltas land in the row thirds of in_proj_weight.

The merged weights are computed by sd-scripts' networks/merge_lora.py merge_to_sd_model (W +
ratio * (up @ down) * alpha / rank, 3x3 LoCon as conv2d of down by up), on modules named as kohya
names them: the CompVis UNet converted to diffusers layout by library/model_util.py
convert_ldm_unet_checkpoint (and back by convert_unet_state_dict_to_sd), the SD2 OpenCLIP tower
converted to HF CLIPTextModel by convert_ldm_clip_checkpoint_v2 (what kohya trains SD2 LoRAs on).
The outputs come from latent-diffusion's openaimodel.UNetModel and transformers' CLIPTextModel
(SD1's FrozenCLIPEmbedder is that model; for SD2 the penultimate hidden state through
final_layer_norm equals FrozenOpenCLIPEmbedder(layer="penultimate"), checked here against the
shared cond_openclip_sd2 golden before use).

Tolerances follow ../shared/fixtures/README.md: atol = max(1e-4 * max(1, max|ref|), 20 * |f32 -
f64|) with the float64 rerun of the same models and merges (the UNet switched to float64 as
make_train_goldens.py's float64_unet does).

References (nothing of them is committed here):
  kohya-ss/sd-scripts commit 48d368fa557731ad0488c07304dfeba8c07910eb
  CompVis/latent-diffusion commit a506df5756472e2ebaf9078affdde2c4f1502cd4
  transformers 4.39.3 (Debian python3-transformers), torch 1.13

How to run (never needed to run the tests):
    git clone https://github.com/kohya-ss/sd-scripts /tmp/lora_ref/kohya   (checkout the commit)
    git clone https://github.com/CompVis/latent-diffusion /tmp/lora_ref/ld (checkout the commit)
    /tmp/ldvenv/bin/python tests/reference/make_lora_goldens.py /tmp/lora_ref/kohya /tmp/lora_ref/ld \
        ../shared/fixtures [OUT_DIR]
(/tmp/ldvenv: a venv with the system site packages, einops and safetensors.) kohya's imports that
the merge does not use (diffusers, its UNet classes, train_util, torchvision-based utils) are
stubbed; the arithmetic is its own.
"""
import copy
import json
import os
import re
import sys
import types

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

KOHYA_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
LD_COMMIT = "a506df5756472e2ebaf9078affdde2c4f1502cd4"
VOCAB = 1000
HERE = os.path.dirname(os.path.abspath(__file__))


def _module(name, **attrs):
    m = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(m, k, v)
    sys.modules[name] = m
    return m


def import_references(kohya, ld):
    sys.path.insert(0, HERE)
    from make_train_goldens import install_stubs, float64_unet  # the latent-diffusion import stubs
    install_stubs()
    global FLOAT64_UNET
    FLOAT64_UNET = float64_unet
    sys.path.insert(0, ld)
    # kohya: a real `library` package whose heavy modules are stubbed
    lib = _module("library")
    lib.__path__ = [os.path.join(kohya, "library")]
    _module("library.utils", setup_logging=lambda *a, **k: None)
    _module("library.device_utils", init_ipex=lambda: None)
    _module("library.original_unet", UNet2DConditionModel=None)
    _module("library.sdxl_original_unet", SdxlUNet2DConditionModel=None)
    _module("library.train_util", load_metadata_from_safetensors=lambda f: {})
    _module("library.sai_model_spec")
    _module("diffusers", AutoencoderKL=None, DDIMScheduler=None, StableDiffusionPipeline=None,
            __version__="0.25.0")  # model_util picks the attention naming of diffusers >= 0.17
    sys.path.insert(0, os.path.join(kohya, "networks"))
    import library.model_util as model_util
    import merge_lora
    return model_util, merge_lora


# ------------------------------------------------------------------ kohya-named module trees

def kohya_class(path):
    """The diffusers class of a UNet module path, the one kohya's target lists name."""
    if re.fullmatch(r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+", path):
        return "Transformer2DModel"
    if re.fullmatch(r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.resnets\.\d+", path):
        return "ResnetBlock2D"
    if re.fullmatch(r"down_blocks\.\d+\.downsamplers\.\d+", path):
        return "Downsample2D"
    if re.fullmatch(r"up_blocks\.\d+\.upsamplers\.\d+", path):
        return "Upsample2D"
    return "Module"


def unet_tree(diff_sd):
    """An nn.Module tree with diffusers' paths and class names holding the matrices of diff_sd."""
    root = torch.nn.Module()
    for key, t in diff_sd.items():
        if not key.endswith(".weight") or t.ndim not in (2, 4):
            continue
        parts = key[:-7].split(".")
        node = root
        for i, part in enumerate(parts[:-1]):
            if part not in node._modules:
                cls = type(kohya_class(".".join(parts[: i + 1])), (torch.nn.Module,), {})
                node.add_module(part, cls())
            node = node._modules[part]
        if t.ndim == 2:
            leaf = torch.nn.Linear(t.shape[1], t.shape[0], bias=False)
        else:
            leaf = torch.nn.Conv2d(t.shape[1], t.shape[0], t.shape[2], bias=False)
        leaf.weight = torch.nn.Parameter(t.clone())
        node.add_module(parts[-1], leaf)
    return root


def tree_weights(root):
    return {n + ".weight": m.weight.detach() for n, m in root.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


# ------------------------------------------------------------------ random LoRA factors

def factors(gen, out_shape, rank, conv_k=None):
    """down [r, in(,k,k)], up [out, r(,1,1)] giving deltas of the size of the weights."""
    out, fan_in = out_shape[0], int(np.prod(out_shape[1:]))
    dshape = [rank] + list(out_shape[1:])
    down = (torch.rand(dshape, generator=gen, dtype=torch.float64) * 2 - 1) / np.sqrt(fan_in)
    up = (torch.rand([out, rank] + ([1, 1] if len(out_shape) == 4 else []), generator=gen, dtype=torch.float64) * 2 - 1)
    return down, up / np.sqrt(rank)


def kohya_unet_lora(gen, diff_sd):
    """{module path: (down, up, alpha)} for every Transformer2DModel Linear / 1x1 conv and two 3x3
    ResnetBlock2D convs (LoCon)."""
    mods = {}
    for key, t in sorted(diff_sd.items()):
        if not key.endswith(".weight") or t.ndim not in (2, 4):
            continue
        path = key[:-7]
        parent = re.match(r"((down_blocks|up_blocks)\.\d+\.attentions\.\d+|mid_block\.attentions\.\d+)\.", path)
        if parent and (t.ndim == 2 or t.shape[2] == 1):
            d, u = factors(gen, t.shape, 4)
            mods[path] = (d, u, 2.0)
    for path in ("down_blocks.0.resnets.0.conv1", "mid_block.resnets.1.conv2"):
        d, u = factors(gen, diff_sd[path + ".weight"].shape, 3)
        mods[path] = (d, u, 1.5)
    return mods


def text_lora(gen, hf_sd, rank, alpha):
    mods = {}
    for key, t in sorted(hf_sd.items()):
        if re.search(r"layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])\.weight$", key):
            d, u = factors(gen, t.shape, rank)
            mods[key[:-7]] = (d, u, alpha)
    return mods


def f16(t):
    return t.to(torch.float16).to(torch.float64)


def write_kohya(path, unet_mods, te_mods, half):
    """kohya keys; the factors rounded to F16 first when `half` (and stored so)."""
    sd = {}
    for prefix, mods in (("lora_unet_", unet_mods), ("lora_te_", te_mods)):
        for path_, (d, u, alpha) in mods.items():
            name = prefix + path_.replace(".", "_")
            dt = torch.float16 if half else torch.float32
            sd[name + ".lora_down.weight"] = d.to(dt).contiguous()
            sd[name + ".lora_up.weight"] = u.to(dt).contiguous()
            if alpha is not None:
                sd[name + ".alpha"] = torch.tensor(alpha, dtype=torch.float32)
    save_file(sd, path)


def write_peft(path, unet_mods, te_mods):
    sd = {}
    for prefix, mods in (("unet.", unet_mods), ("text_encoder.", te_mods)):
        for path_, (d, u, _) in mods.items():
            sd[prefix + path_ + ".lora_A.weight"] = d.to(torch.float16).contiguous()
            sd[prefix + path_ + ".lora_B.weight"] = u.to(torch.float16).contiguous()
    save_file(sd, path)


# ------------------------------------------------------------------ models

def clip_config(hf_sd, act, heads):
    from transformers import CLIPTextConfig
    tok = hf_sd["text_model.embeddings.token_embedding.weight"]
    layers = len({k.split(".")[3] for k in hf_sd if k.startswith("text_model.encoder.layers.")})
    return CLIPTextConfig(vocab_size=tok.shape[0], hidden_size=tok.shape[1],
                          intermediate_size=hf_sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                          num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                          hidden_act=act, layer_norm_eps=1e-5)


def clip_model(hf_sd, act, heads, dtype):
    from transformers import CLIPTextModel
    m = CLIPTextModel(clip_config(hf_sd, act, heads))
    weights = {k: v.to(dtype) for k, v in hf_sd.items() if not k.endswith("position_ids")}  # a buffer: arange
    missing, unexpected = m.load_state_dict(weights, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return m.to(dtype).eval()


def run_clip(m, tokens, penultimate):
    # transformers 4.39 builds its causal mask with torch.full(..., finfo(dtype).min) in the default
    # dtype: float64 runs need float64 as the default (torch 1.13 does not infer it)
    saved = torch.get_default_dtype()
    torch.set_default_dtype(m.dtype)
    try:
        with torch.no_grad():
            o = m(input_ids=tokens, output_hidden_states=penultimate)
            if not penultimate:
                return o.last_hidden_state
            return m.text_model.final_layer_norm(o.hidden_states[-2])
    finally:
        torch.set_default_dtype(saved)


class UNetRef:
    def __init__(self, params):
        from ldm.modules.diffusionmodules.openaimodel import UNetModel
        p = dict(params)
        p["use_checkpoint"] = False
        self.params = p
        self.UNetModel = UNetModel

    def run(self, sd_unet, x, t, ctx, dtype):
        m = self.UNetModel(**self.params)
        m.load_state_dict({k: v.to(torch.float32) for k, v in sd_unet.items()})
        m = m.to(dtype).eval()
        if dtype == torch.float32:
            with torch.no_grad():
                return m(x, t, context=ctx)
        m.dtype = torch.float64
        with torch.no_grad(), FLOAT64_UNET():
            return m(x.to(dtype), t, context=ctx.to(dtype))


def merge(merge_lora, te, unet_root, files, ratios, dtype):
    te = copy.deepcopy(te).to(dtype)
    unet_root = copy.deepcopy(unet_root).to(dtype)
    if files:
        merge_lora.merge_to_sd_model(te, unet_root, files, ratios, dtype)
    return te, unet_root


# ------------------------------------------------------------------ fixture writing

def tol(ref32, ref64):
    ref = ref32.double()
    err = float((ref - ref64.double()).abs().max())
    mx = float(ref.abs().max())
    return {"atol": float("%.3g" % max(1e-4 * max(1.0, mx), 20 * err)), "rtol": 1e-4, "max_abs": float("%.6g" % mx),
            "f32_vs_f64_max_err": float("%.3g" % err)}


def write_fixture(d, name, description, config_yaml, model_sd, inputs, outputs, outputs64, calls, lora_files):
    os.makedirs(d, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model_sd.items()}, os.path.join(d, "model.safetensors"))
    io = {k: v.clone().contiguous() for k, v in list(inputs.items()) + list(outputs.items())}
    save_file(io, os.path.join(d, "io.safetensors"))
    with open(os.path.join(d, "config.yaml"), "w") as f:
        f.write(config_yaml)

    def spec(dct):
        return {n: {"shape": list(a.shape), "dtype": "I64" if a.dtype == torch.int64 else "F32"} for n, a in dct.items()}

    tols = {n: tol(a, outputs64[n]) for n, a in outputs.items()}
    case = {
        "kind": "lora",
        "name": name,
        "description": description,
        "reference": {"repo": "kohya-ss/sd-scripts", "commit": KOHYA_COMMIT, "unet_repo": "CompVis/latent-diffusion",
                      "unet_commit": LD_COMMIT, "torch": torch.__version__},
        "generator": "tests/reference/make_lora_goldens.py",
        "weights": ["model.safetensors"],
        "lora_files": lora_files,
        "calls": calls,
        "inputs": spec(inputs),
        "outputs": spec(outputs),
        "atol": max(t["atol"] for t in tols.values()),
        "rtol": max(t["rtol"] for t in tols.values()),
        "tolerances": tols,
    }
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
    print("%s: %d outputs, %.2f MB" % (d, len(outputs), size / 1e6))


def shrink_config(text, vocab):
    return re.sub(r"(\n +vocab: )\d+", r"\g<1>%d" % vocab, text)


# ------------------------------------------------------------------ SD1

UNET_CHANNELS = 64


def random_unet(uparams, gen):
    """latent-diffusion's UNetModel of these params, every parameter random (make_train_goldens'
    randomise, zero_module layers too), stored float16."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from make_train_goldens import randomise
    m = UNetModel(**dict(uparams, use_checkpoint=False))
    randomise(m, gen)
    return {k: v.half().contiguous() for k, v in m.state_dict().items()}

def make_sd1(model_util, merge_lora, shared, out):
    src = os.path.join(shared, "ldm_sd1_txt2img")
    sd = load_file(os.path.join(src, "model.safetensors"))
    tok_key = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    sd[tok_key] = sd[tok_key][:VOCAB].clone()
    # under 1 MB: the smallest first stage of the shared set (cond_openclip_sd2's: these calls never
    # run it), the UNet stored F16 like a released fp16 checkpoint (the merge then starts from its
    # widened values, as kohya's unet.to(float))
    tiny = os.path.join(shared, "cond_openclip_sd2")
    sd = {k: (v.half() if k.startswith("model.diffusion_model.") else v) for k, v in sd.items()
          if "." in k and not k.startswith("first_stage_model.")}  # no DDPM buffers: no sampling here
    sd.update({k: v for k, v in load_file(os.path.join(tiny, "model.safetensors")).items()
               if k.startswith("first_stage_model.")})
    fs = re.compile(r"\n    first_stage_config:\n(?:      .*\n|        .*\n)+")
    config_text = open(os.path.join(src, "config.yaml")).read()
    config_text = fs.sub(fs.search(open(os.path.join(tiny, "config.yaml")).read()).group(0).replace("\\", "\\\\"),
                         config_text)
    config_text = shrink_config(config_text, VOCAB)
    # The shared UNet has 32 channels, one per GroupNorm32 group: the time embedding, added per
    # channel before a GroupNorm in every ResBlock, is normalised away there (the output would not
    # see the timestep, nor a LoRA on time_emb_proj). A 64-channel UNet of the same structure with
    # random float16 weights replaces it (two channels per group).
    config_text = re.sub(r"(\n +model_channels: )32\n", r"\g<1>%d\n" % UNET_CHANNELS, config_text)
    cfg = yaml.safe_load(config_text)
    uparams = cfg["model"]["params"]["unet_config"]["params"]
    assert uparams["model_channels"] == UNET_CHANNELS
    heads = cfg["libldm_test"]["text_encoder"]["heads"]
    gen = torch.Generator().manual_seed(14)
    sd = {k: v for k, v in sd.items() if not k.startswith("model.diffusion_model.")}
    sd.update({"model.diffusion_model." + k: v for k, v in random_unet(uparams, gen).items()})

    # kohya's view of the UNet: diffusers layout (its SD1 training UNet)
    ucfg = {"layers_per_block": uparams["num_res_blocks"], "num_head_channels": None}
    sd64 = {k: v.double() for k, v in sd.items()}
    compvis_of = {v.data_ptr(): k[len("model.diffusion_model."):] for k, v in sd64.items()
                  if k.startswith("model.diffusion_model.")}
    diff_sd = model_util.convert_ldm_unet_checkpoint(False, dict(sd64), ucfg)
    # back to CompVis names: model_util's own inverse (convert_unet_state_dict_to_sd) hard-codes SD's
    # block counts, so invert its forward conversion instead (it assigns the very same tensors)
    to_compvis = {dk: compvis_of[dv.data_ptr()] for dk, dv in diff_sd.items()}
    assert len(set(to_compvis.values())) == len(compvis_of)
    hf_sd = {k[len("cond_stage_model.transformer."):]: v.double() for k, v in sd.items()
             if k.startswith("cond_stage_model.transformer.")}

    k_unet = kohya_unet_lora(gen, diff_sd)
    k_te = text_lora(gen, hf_sd, 4, 3.0)
    # the PEFT file covers the attention projections only (rank 6), kohya's file everything
    p_unet = {p: factors(gen, diff_sd[p + ".weight"].shape, 6) + (None,) for p in k_unet if ".attn" in p}
    p_te = {p: factors(gen, hf_sd[p + ".weight"].shape, 6) + (None,) for p in k_te if "self_attn" in p}
    d = os.path.join(out, "lora_sd1")
    os.makedirs(d, exist_ok=True)
    write_kohya(os.path.join(d, "lora_kohya.safetensors"), k_unet, k_te, half=True)
    write_peft(os.path.join(d, "lora_peft.safetensors"), p_unet, p_te)
    # the PEFT file as kohya merges it: alpha = rank (scale 1), factors as stored (F16)
    peft_as_kohya = "/tmp/lora_peft_as_kohya.safetensors"
    write_kohya(peft_as_kohya, {p: (a, b, float(a.shape[0])) for p, (a, b, _) in p_unet.items()},
                {p: (a, b, float(a.shape[0])) for p, (a, b, _) in p_te.items()}, half=True)

    x = torch.randn(2, uparams["in_channels"], 8, 8, generator=gen)
    t = torch.tensor([981, 17], dtype=torch.int64)
    ctx = torch.randn(2, 5, uparams["context_dim"], generator=gen)
    tokens = torch.randint(0, VOCAB, (2, 77), generator=gen, dtype=torch.int64)
    unet_ref = UNetRef(uparams)
    base_unet_root = unet_tree(diff_sd)
    te_base = clip_model(hf_sd, "quick_gelu", heads, torch.float64)

    outs, outs64 = {}, {}
    stages = [("base", [], []), ("kohya", [os.path.join(d, "lora_kohya.safetensors")], [0.7]),
              ("both", [os.path.join(d, "lora_kohya.safetensors"), peft_as_kohya], [0.7, -0.5])]
    for tag, files, ratios in stages:
        for dtype in (torch.float32, torch.float64):
            te, root = merge(merge_lora, te_base, base_unet_root, files, ratios, dtype)
            merged = dict(diff_sd)
            merged.update(tree_weights(root))
            sd_unet = {to_compvis[k]: v.reshape(sd64["model.diffusion_model." + to_compvis[k]].shape)
                       for k, v in merged.items()}
            want = {k[len("model.diffusion_model."):] for k in sd if k.startswith("model.diffusion_model.")}
            assert set(sd_unet) == want, set(sd_unet) ^ want
            o = unet_ref.run(sd_unet, x, t, ctx, dtype)
            c = run_clip(te, tokens, False)
            dst = outs if dtype == torch.float32 else outs64
            dst["out_" + tag] = o.float() if dtype == torch.float32 else o
            dst["c_" + tag] = c.float() if dtype == torch.float32 else c
    base_unet = {k[len("model.diffusion_model."):]: v for k, v in sd64.items() if k.startswith("model.diffusion_model.")}
    swapped = unet_ref.run(base_unet, x, t.flip(0), ctx, torch.float32)
    moved = float((swapped - outs["out_base"]).abs().max() / outs["out_base"].abs().max())
    print("lora_sd1: relative UNet output change with the timesteps swapped: %.3g" % moved)
    assert moved > 1e-2  # the golden sees the timestep path
    for o in (outs, outs64):
        o["out_cleared"] = o["out_base"]
        o["c_cleared"] = o["c_base"]

    def fwd(tag):
        return [{"op": "unet.forward", "inputs": {"x": "x", "timesteps": "timesteps", "context": "context"},
                 "outputs": {"out": "out_" + tag}},
                {"op": "cond.clip_text", "inputs": {"tokens": "tokens"}, "outputs": {"c": "c_" + tag}}]

    calls = (fwd("base") + [{"op": "lora.add", "params": {"file": "lora_kohya.safetensors", "multiplier": 0.7}}] +
             fwd("kohya") + [{"op": "lora.add", "params": {"file": "lora_peft.safetensors", "multiplier": -0.5}}] +
             fwd("both") + [{"op": "lora.clear"}] + fwd("cleared"))
    desc = ("SD1 (ldm_sd1_txt2img's text tower, token table cut to %d rows, CLIP F16; its UNet structure with 64 "
            "channels, two per GroupNorm group, random F16 weights) with LoRAs merged by kohya-ss "
            "merge_to_sd_model: a kohya file (F16 factors, alpha != rank, LoCon 3x3 on two ResnetBlock2D convs, text "
            "q/k/v/out/fc1/fc2) at 0.7, then a diffusers/PEFT file (attention projections, rank 6, no alpha: scale 1) at -0.5 stacked; "
            "UNet forward and CLIP text before, between, and after ldm_model_lora_clear" % VOCAB)
    write_fixture(d, "lora_sd1", desc, config_text, sd, {"x": x, "timesteps": t, "context": ctx, "tokens": tokens},
                  outs, outs64, calls, ["lora_kohya.safetensors", "lora_peft.safetensors"])


# ------------------------------------------------------------------ SD2 OpenCLIP

def make_sd2(model_util, merge_lora, shared, out):
    src = os.path.join(shared, "cond_openclip_sd2")
    sd = load_file(os.path.join(src, "model.safetensors"))
    config_text = open(os.path.join(src, "config.yaml")).read()
    heads = yaml.safe_load(config_text)["libldm_test"]["text_encoder"]["heads"]
    # kohya's SD2 text encoder: the OpenCLIP tower converted to HF CLIPTextModel
    hf_full = model_util.convert_ldm_clip_checkpoint_v2({k: v.double() for k, v in sd.items()}, 77)
    hf_full = {k: v for k, v in hf_full.items() if not k.endswith("position_ids")}
    io = load_file(os.path.join(src, "io.safetensors"))
    check = run_clip(clip_model(hf_full, "gelu", heads, torch.float32), io["tokens"], True)
    err = float((check - io["c"]).abs().max())
    print("SD2: kohya's HF conversion vs the official FrozenOpenCLIPEmbedder golden: max |diff| %.3g" % err)
    assert err < 1e-3, err

    tok_key = "cond_stage_model.model.token_embedding.weight"
    sd[tok_key] = sd[tok_key][:VOCAB].clone()
    hf_sd = dict(hf_full)
    hf_sd["text_model.embeddings.token_embedding.weight"] = hf_sd["text_model.embeddings.token_embedding.weight"][:VOCAB]
    gen = torch.Generator().manual_seed(142)
    te_mods = text_lora(gen, hf_sd, 4, 6.0)
    d = os.path.join(out, "lora_sd2_openclip")
    os.makedirs(d, exist_ok=True)
    write_kohya(os.path.join(d, "lora_te.safetensors"), {}, te_mods, half=False)
    tokens = torch.randint(0, VOCAB, (2, 77), generator=gen, dtype=torch.int64)
    outs, outs64 = {}, {}
    for tag, files, ratios in (("base", [], []), ("lora", [os.path.join(d, "lora_te.safetensors")], [1.3])):
        for dtype in (torch.float32, torch.float64):
            te, _ = merge(merge_lora, clip_model(hf_sd, "gelu", heads, dtype), torch.nn.Module(), files, ratios, dtype)
            c = run_clip(te, tokens, True)
            (outs if dtype == torch.float32 else outs64)["c_" + tag] = c.float() if dtype == torch.float32 else c
    for o in (outs, outs64):
        o["c_removed"] = o["c_base"]
    calls = [{"op": "cond.openclip_text", "inputs": {"tokens": "tokens"}, "outputs": {"c": "c_base"}},
             {"op": "lora.add", "params": {"file": "lora_te.safetensors", "multiplier": 1.3}},
             {"op": "cond.openclip_text", "inputs": {"tokens": "tokens"}, "outputs": {"c": "c_lora"}},
             {"op": "lora.remove_last"},
             {"op": "cond.openclip_text", "inputs": {"tokens": "tokens"}, "outputs": {"c": "c_removed"}}]
    desc = ("SD2 FrozenOpenCLIPEmbedder (cond_openclip_sd2 weights, F16, token table cut to %d rows) with a kohya "
            "text-encoder LoRA in HF naming (q/k/v into the row thirds of in_proj_weight, out_proj, fc1 = c_fc, fc2 = "
            "c_proj; rank 4, alpha 6) at 1.3, merged by kohya-ss merge_to_sd_model on the HF tower of "
            "convert_ldm_clip_checkpoint_v2; before, with, and after ldm_model_lora_remove" % VOCAB)
    write_fixture(d, "lora_sd2_openclip", desc, shrink_config(config_text, VOCAB), sd, {"tokens": tokens}, outs, outs64,
                  calls, ["lora_te.safetensors"])


def main():
    if len(sys.argv) < 4:
        sys.exit("usage: make_lora_goldens.py KOHYA_DIR LATENT_DIFFUSION_DIR SHARED_FIXTURES [OUT_DIR]")
    kohya, ld, shared = sys.argv[1:4]
    out = sys.argv[4] if len(sys.argv) > 4 else os.path.join(HERE, "..", "fixtures")
    model_util, merge_lora = import_references(kohya, ld)
    torch.manual_seed(0)
    make_sd1(model_util, merge_lora, shared, out)
    make_sd2(model_util, merge_lora, shared, out)


if __name__ == "__main__":
    main()
