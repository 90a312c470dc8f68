#!/usr/bin/env python3
"""make_sdxl_goldens.py - SDXL goldens under tests/fixtures/ (issue #14), made with the OFFICIAL
Stability-AI generative-models code (the `sgm` package), in the ../shared/fixtures format
(config.yaml + model.safetensors + io.safetensors + case.json per directory).

Fixtures (random weights, every zero_module layer re-randomised so no path hides; channel counts
shrunk, structure kept; weights stored float16, the reference computed in float32 from the
float16-rounded values, like the shared cond_* fixtures). Every UNet and every first stage that a
call runs has 64 channels: sgm's GroupNorm32 has 32 groups, and with one channel per group the
time embedding and the vector y (added per channel before a GroupNorm in each ResBlock) would be
normalised away, so the goldens would not test them. The UNet fixtures store how much the output
moves with other timesteps and with y zeroed ("sensitivity" in case.json):

  unet_sdxl_base     sgm UNetModel shaped like sd_xl_base.yaml: 3 levels, attention_resolutions
                     [4, 2], transformer_depth [0, 1, 2] (middle = last = 2), num_res_blocks 0,
                     num_classes: sequential + adm_in_channels (label_emb.0.0 / .0.2),
                     use_linear_in_transformer, num_head_channels, context_dim;
                     op unet.forward(x, timesteps, context, y) with y the F32 vector.
  unet_sdxl_refiner  the same for sd_xl_refiner.yaml: 4 levels, transformer_depth 2 (an int),
                     context_dim given as a list, no attention at the deepest level.
  sdxl_base_tiny     the base end to end (text towers, size embedders, samplers, first stage) and
                     the base -> refiner hand-off with
  sdxl_refiner_tiny  the refiner end to end (its conditioner's goldens; the model of the hand-off).

Reference: https://github.com/Stability-AI/generative-models commit
0ad7de9a5cb53fd63d6d30a4f385485e72e08597 (nothing of it is committed here).

How to run (never needed to run the tests): Debian's python3-torch (1.13) and numpy, plus
    /usr/bin/python3 -m venv --system-site-packages /tmp/sdxlvenv
    /tmp/sdxlvenv/bin/pip install einops omegaconf fsspec safetensors packaging tqdm scipy
    git clone https://github.com/Stability-AI/generative-models /tmp/gm && git -C /tmp/gm checkout <commit>
    /tmp/sdxlvenv/bin/python tests/reference/make_sdxl_goldens.py /tmp/gm [OUT_DIR]
OUT_DIR defaults to tests/fixtures next to this script's folder.

Two adaptations to torch 1.13, neither changing the numbers: (1) sgm's CrossAttention calls
torch.nn.functional.scaled_dot_product_attention (torch >= 2.0) and refuses to build "softmax"
attention without it; the golden defines that function exactly as torch documents it
(softmax(q k^T / sqrt(d)) v, no mask, no dropout) and sets SDP_IS_AVAILABLE. (2) The package
__init__ files import training-only dependencies (lightning, kornia, ...); the sub-packages are
registered without running them, and the modules used are imported directly.

Each golden is rerun in float64 (GroupNorm32's float32 cast made float64, the sinusoidal
timestep embedding still computed in float32 as the code does) for f32_vs_f64_max_err, and the
tolerance follows ../shared/fixtures/README.md: atol = max(1e-4 * max(1, max|ref|),
20 * |f32 - f64|), rtol 1e-4 for single forward ops.
"""
import json
import math
import os
import sys
import types

import numpy as np
import torch

REF_REPO = "Stability-AI/generative-models"
REF_COMMIT = "0ad7de9a5cb53fd63d6d30a4f385485e72e08597"

F64 = {"on": False}

# sgm's normalization() is GroupNorm32: 32 groups whatever the width. Every UNet and exercised
# first stage here has 64 channels, two per group: with one channel per group, anything added per
# channel before a GroupNorm (the time embedding and the vector y in every ResBlock) would be
# normalised away, and the goldens would not see the timestep or y path at all.
MODEL_CHANNELS = 64
AE_CH = 64


# ---------------------------------------------------------------- importing sgm

def sdpa_reference(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
    """torch.nn.functional.scaled_dot_product_attention as documented (torch 2.x), mask-free."""
    assert attn_mask is None and dropout_p == 0.0 and not is_causal
    scale = 1.0 / math.sqrt(q.shape[-1])
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v


def import_sgm(root):
    sys.path.insert(0, root)
    torch.nn.functional.scaled_dot_product_attention = sdpa_reference
    for pkg in ["sgm", "sgm.modules", "sgm.modules.diffusionmodules", "sgm.modules.encoders", "sgm.models"]:
        m = types.ModuleType(pkg)
        m.__path__ = [os.path.join(root, *pkg.split("."))]
        sys.modules[pkg] = m
    import sgm.modules.attention as attention
    attention.SDP_IS_AVAILABLE = True
    attention.BACKEND_MAP = {None: {}}
    import sgm.modules.diffusionmodules.openaimodel as openaimodel
    import sgm.modules.diffusionmodules.util as dutil

    plain_gn = dutil.GroupNorm32.forward

    def gn_forward(self, x):
        if F64["on"]:
            return torch.nn.GroupNorm.forward(self, x)
        return plain_gn(self, x)

    dutil.GroupNorm32.forward = gn_forward
    plain_te = openaimodel.timestep_embedding

    def te(*a, **kw):
        e = plain_te(*a, **kw)
        return e.double() if F64["on"] else e

    openaimodel.timestep_embedding = te
    return types.SimpleNamespace(openaimodel=openaimodel, attention=attention, dutil=dutil)


# ---------------------------------------------------------------- fixture writing

def randomise(module, gen):
    """Every parameter random (zero_module layers too), rounded to float16: matrices and kernels
    ~ N(0, 1/fan_in), norm gains 1 + N(0, 0.1^2), other vectors (biases) N(0, 0.1^2)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p.shape[1] * int(np.prod(p.shape[2:]))
                v = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
            elif name.endswith("weight"):
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            else:
                v = 0.1 * torch.randn(p.shape, generator=gen)
            p.copy_(v.half().float())


def f16_state(sd):
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def tolerance(ref, f64, forward=True):
    ref = ref.detach().double()
    err = float((ref - f64.detach().double()).abs().max()) if f64 is not None else 0.0
    mx = float(ref.abs().max())
    if forward:
        atol = max(1e-4 * max(1.0, mx), 20 * err)
        rtol = 1e-4
    else:
        atol = max(1e-3 * max(1.0, mx), 20 * err)
        rtol = 1e-3
    return {"atol": float("%.3g" % atol), "rtol": rtol, "max_abs": float("%.5g" % mx),
            "f32_vs_f64_max_err": float("%.3g" % err)}


def dtype_name(t):
    return {torch.float32: "F32", torch.int64: "I64", torch.float16: "F16"}[t.dtype]


def write_fixture(out, name, description, config_yaml, state, inputs, outputs, calls, tolerances, extra=None,
                  more_files=None):
    from safetensors.torch import save_file
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    for fname, content in (more_files or {}).items():
        if isinstance(content, str):
            with open(os.path.join(d, fname), "w") as f:
                f.write(content)
        else:
            save_file(f16_state(content), os.path.join(d, fname))
    with open(os.path.join(d, "config.yaml"), "w") as f:
        f.write(config_yaml)
    save_file(f16_state(state), os.path.join(d, "model.safetensors"))
    io = {k: v.detach().contiguous() for k, v in {**inputs, **outputs}.items()}
    save_file(io, os.path.join(d, "io.safetensors"))
    case = {
        "kind": "sdxl",
        "name": name,
        "description": description,
        "reference": {"repo": REF_REPO, "commit": REF_COMMIT, "torch": torch.__version__},
        "weights": ["model.safetensors"],
        "weights_dtype": "F16 (every tensor); expected outputs computed in float32 from these F16 values",
        "calls": calls,
        "inputs": {k: {"shape": list(v.shape), "dtype": dtype_name(v)} for k, v in inputs.items()},
        "outputs": {k: {"shape": list(v.shape), "dtype": dtype_name(v)} for k, v in outputs.items()},
        "atol": max(t["atol"] for t in tolerances.values()),
        "rtol": max(t["rtol"] for t in tolerances.values()),
        "tolerances": tolerances,
    }
    if extra:
        case.update(extra)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
    sizes = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
    print("%s: %d bytes" % (d, sizes))


def yaml_list(v):
    return "[" + ", ".join(str(x) for x in v) + "]"


# ---------------------------------------------------------------- UNet fixtures

def unet_config_yaml(p, ae_ch=32):
    lines = ["model:", "  target: sgm.models.diffusion.DiffusionEngine", "  params:", "    scale_factor: 0.13025",
             "    disable_first_stage_autocast: True", "    denoiser_config:",
             "      target: sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser", "      params:",
             "        num_idx: 1000", "        scaling_config:",
             "          target: sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling",
             "        discretization_config:",
             "          target: sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization",
             "    network_config:", "      target: sgm.modules.diffusionmodules.openaimodel.UNetModel",
             "      params:"]
    for k, v in p.items():
        lines.append("        %s: %s" % (k, yaml_list(v) if isinstance(v, (list, tuple)) else v))
    return "\n".join(lines) + "\n" + first_stage_yaml(ae_ch) + CONDITIONER_YAML_UNUSED


def first_stage_yaml(ch):
    return FIRST_STAGE_YAML.replace("          ch: 32\n", "          ch: %d\n" % ch)


FIRST_STAGE_YAML = """    first_stage_config:
      target: sgm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        monitor: val/rec_loss
        ddconfig:
          attn_type: none
          double_z: true
          z_channels: 4
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 32
          ch_mult: [1]
          num_res_blocks: 0
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity
"""

# The UNet fixtures only exercise the network: their conditioner is the size embedders alone
# (no text tower weights needed).
CONDITIONER_YAML_UNUSED = """    conditioner_config:
      target: sgm.modules.GeneralConditioner
      params:
        emb_models:
          - is_trainable: False
            input_key: original_size_as_tuple
            target: sgm.modules.encoders.modules.ConcatTimestepEmbedderND
            params:
              outdim: 8
"""


def first_stage_state(gen):
    """A one-level AutoencoderKL state dict (shrunk as far as the config allows), not exercised here."""
    sys.path.insert(0, SGM_ROOT)
    from sgm.modules.diffusionmodules.model import Decoder, Encoder
    dd = dict(attn_type="none", double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=32,
              ch_mult=[1], num_res_blocks=0, attn_resolutions=[], dropout=0.0)
    enc, dec = Encoder(**dd), Decoder(**dd)
    qc, pqc = torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(4, 4, 1)
    sd = {}
    for pre, m in [("encoder.", enc), ("decoder.", dec), ("quant_conv.", qc), ("post_quant_conv.", pqc)]:
        randomise(m, gen)
        for k, v in m.state_dict().items():
            sd["first_stage_model." + pre + k] = v
    return sd


def make_unet_fixture(sgm, out, name, description, params, B=2, H=8, W=8, ctx_len=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    unet = sgm.openaimodel.UNetModel(**params).eval()
    randomise(unet, gen)
    x = torch.randn(B, params["in_channels"], H, W, generator=gen)
    t = torch.tensor([999, 17][:B], dtype=torch.int64)
    cdim = params["context_dim"][0] if isinstance(params["context_dim"], list) else params["context_dim"]
    context = torch.randn(B, ctx_len, cdim, generator=gen)
    y = torch.randn(B, params["adm_in_channels"], generator=gen)
    with torch.no_grad():
        ref = unet(x, timesteps=t, context=context, y=y)
        # What the golden would miss if a path were broken: the output at other timesteps and with
        # y zeroed, relative to max|ref| (stored in case.json; tests/test_sdxl.c checks libldm sees it).
        sens = {"timesteps_swapped": unet(x, timesteps=t.flip(0), context=context, y=y),
                "timesteps_500": unet(x, timesteps=torch.full_like(t, 500), context=context, y=y),
                "y_zero": unet(x, timesteps=t, context=context, y=torch.zeros_like(y))}
        sens = {k: float("%.3g" % float((v - ref).abs().max() / ref.abs().max())) for k, v in sens.items()}
        print(name, "relative output change:", sens)
        assert min(sens.values()) > 1e-2, sens
        F64["on"] = True
        u64 = unet.double()
        ref64 = u64(x.double(), timesteps=t, context=context.double(), y=y.double())
        F64["on"] = False
        unet.float()
    state = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    state.update(first_stage_state(gen))
    calls = [{"op": "unet.forward", "inputs": {"x": "x", "timesteps": "timesteps", "context": "context", "y": "y"},
              "outputs": {"out": "out"}}]
    write_fixture(out, name, description, unet_config_yaml(params), state,
                  {"x": x, "timesteps": t, "context": context, "y": y}, {"out": ref}, calls,
                  {"out": tolerance(ref, ref64)}, extra={"sensitivity": sens})


# ---------------------------------------------------------------- full tiny models

class _AnyAttr(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return None


class _Stub(types.ModuleType):
    """A module whose every attribute is a dummy class (image-side imports open_clip makes)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _AnyAttr(name, (), {"__init__": lambda self, *a, **k: None})


def import_encoders():
    """sgm.modules.encoders.modules, with torchvision / kornia stubbed (only open_clip's image
    transforms and sgm's image embedders use them)."""
    import transformers  # noqa: F401  (before the stubs: it probes for torchvision)
    from transformers import CLIPTextModel  # noqa: F401
    for name in ["torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops",
                 "torchvision.ops.misc", "kornia"]:
        sys.modules.setdefault(name, _Stub(name))
        if "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(sys.modules[parent], child, sys.modules[name])
    import sgm.modules.encoders.modules as enc
    return enc


VOCAB = 256  # shrunk token tables; the ids fed are < VOCAB and end-of-text is the largest id of a row
EOT = VOCAB - 1


def clip_embedder(enc, gen, width=64, layers=2, layer_idx=1):
    """FrozenCLIPEmbedder(layer: hidden, layer_idx) on a shrunk HF CLIPTextModel (the released
    one loads openai/clip-vit-large-patch14: 12 layers, layer_idx 11)."""
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = CLIPTextConfig(vocab_size=VOCAB, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                         num_attention_heads=width // 64, max_position_embeddings=77, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5)
    e = enc.FrozenCLIPEmbedder.__new__(enc.FrozenCLIPEmbedder)
    enc.AbstractEmbModel.__init__(e)
    e.transformer = CLIPTextModel(cfg).eval()
    randomise(e.transformer, gen)
    e.device, e.max_length, e.layer, e.layer_idx, e.return_pooled = "cpu", 77, "hidden", layer_idx, False
    return e


def openclip_embedder(enc, gen, width=64, layers=2, embed_dim=32, pooled=True):
    """FrozenOpenCLIPEmbedder2(layer: penultimate, always_return_pooled, legacy: false) on a shrunk
    open_clip CLIP text tower (the released one: ViT-bigG-14, 32 layers, width 1280)."""
    import open_clip.model as ocm
    model = ocm.CLIP(embed_dim=embed_dim, vision_cfg=ocm.CLIPVisionCfg(layers=1, width=64, patch_size=16,
                                                                          image_size=32),
                     text_cfg=ocm.CLIPTextCfg(context_length=77, vocab_size=VOCAB, width=width, heads=width // 64,
                                              layers=layers))
    del model.visual
    e = enc.FrozenOpenCLIPEmbedder2.__new__(enc.FrozenOpenCLIPEmbedder2)
    enc.AbstractEmbModel.__init__(e)
    e.model = model.eval()
    randomise(e.model, gen)
    e.device, e.max_length, e.return_pooled = "cpu", 77, pooled
    e.layer, e.layer_idx, e.legacy = "penultimate", 1, False
    return e


def conditioner(enc, embedders, keys):
    """GeneralConditioner.__init__'s bookkeeping around already-built embedders."""
    g = enc.GeneralConditioner([])
    for e, key in zip(embedders, keys):
        e.is_trainable, e.ucg_rate, e.input_key, e.legacy_ucg_val = False, 0.0, key, None
    g.embedders = torch.nn.ModuleList(embedders)
    return g.eval()


def feed_tokens(enc, embedders, tokens):
    """The fixture's token ids replace the tokenizers' output (the tokenizers are checked by the
    shared tok_clip_sd1 / tok_openclip_sd2 fixtures: SDXL's CLIP embedder uses the SD1 one, its
    open_clip embedder the SD2 one)."""
    k = 0
    for e in embedders:
        if isinstance(e, enc.FrozenCLIPEmbedder):
            ids = tokens[k]
            e.tokenizer = lambda text, _ids=ids, **kw: {"input_ids": _ids}
            k += 1
        elif isinstance(e, enc.FrozenOpenCLIPEmbedder2):
            ids = tokens[k]
            enc.open_clip = types.SimpleNamespace(tokenize=lambda text, _ids=ids: _ids)
            k += 1


def make_tokens(gen, B, lengths, pad):
    """[B,77] ids: start 0... (any id < EOT), a random body, EOT, then the pad id."""
    t = torch.full((B, 77), pad, dtype=torch.int64)
    for b in range(B):
        n = lengths[b]
        t[b, 0] = EOT - 1  # stands for the start token (both tokenizers put 49406 first)
        t[b, 1:1 + n] = torch.randint(1, EOT - 1, (n,), generator=gen)
        t[b, 1 + n] = EOT
    return t


def sgm_sampling(sgm_root, steps, scale, strength=None, original_steps=None, img2img_strength=None):
    from sgm.modules.diffusionmodules.sampling import EulerEDMSampler
    sys.path.insert(0, os.path.join(sgm_root, "scripts", "demo"))
    import discretization as demo_disc
    s = EulerEDMSampler(num_steps=steps, discretization_config={
        "target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"},
        guider_config={"target": "sgm.modules.diffusionmodules.guiders.VanillaCFG", "params": {"scale": scale}},
        device="cpu")
    if img2img_strength is not None:
        s.discretization = demo_disc.Img2ImgDiscretizationWrapper(s.discretization, strength=img2img_strength)
    if strength is not None:
        s.discretization = demo_disc.Txt2NoisyDiscretizationWrapper(s.discretization, strength=strength,
                                                                    original_steps=original_steps)
    return s


def record_steps(sampler):
    """Wraps sampler_step to keep x after every step (the loop itself is the reference's)."""
    steps = []
    plain = sampler.sampler_step

    def step(*a, **k):
        x = plain(*a, **k)
        steps.append(x.detach().clone())
        return x

    sampler.sampler_step = step
    return steps


def denoiser_and_unet(gen, unet_params):
    from sgm.modules.diffusionmodules.denoiser import DiscreteDenoiser
    from sgm.modules.diffusionmodules.wrappers import OpenAIWrapper
    unet = SGM.openaimodel.UNetModel(**unet_params).eval()
    randomise(unet, gen)
    den = DiscreteDenoiser(num_idx=1000, scaling_config={
        "target": "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling"},
        discretization_config={"target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"})
    # The checkpoint stores this buffer (denoiser.sigmas) in float16 like every other tensor here:
    # the reference quantises to the rounded values after loading it, while the sampler visits the
    # discretization's own float32 sigmas.
    with torch.no_grad():
        den.sigmas.copy_(den.sigmas.half().float())
    return unet, den, OpenAIWrapper(unet, compile_model=False)


def first_stage_decoder(gen, ch=AE_CH):
    from sgm.modules.diffusionmodules.model import Decoder, Encoder
    dd = dict(attn_type="none", double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=ch,
              ch_mult=[1], num_res_blocks=0, attn_resolutions=[], dropout=0.0)
    enc_, dec = Encoder(**dd), Decoder(**dd)
    qc, pqc = torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(4, 4, 1)
    sd = {}
    for pre, m in [("encoder.", enc_), ("decoder.", dec), ("quant_conv.", qc), ("post_quant_conv.", pqc)]:
        randomise(m, gen)
        for k, v in m.state_dict().items():
            sd["first_stage_model." + pre + k] = v

    def decode(z, scale_factor):  # DiffusionEngine.decode_first_stage -> AutoencodingEngineLegacy.decode
        return dec(pqc(z / scale_factor))
    return sd, decode


def sgm_yaml(unet_params, emb_yaml, scale_factor=0.13025, ae_ch=AE_CH):
    lines = unet_config_yaml(unet_params, ae_ch).split("\n")
    head = "\n".join(lines[:lines.index("    first_stage_config:")])
    return (head.replace("    scale_factor: 0.13025", "    scale_factor: %g" % scale_factor) + "\n" +
            first_stage_yaml(ae_ch) +
            "    conditioner_config:\n      target: sgm.modules.GeneralConditioner\n      params:\n        emb_models:\n" +
            emb_yaml)


def emb_yaml_item(target, key, params):
    y = "          - is_trainable: False\n            input_key: %s\n            target: %s\n" % (key, target)
    if params:
        y += "            params:\n" + "".join("              %s: %s\n" % kv for kv in params.items())
    return y


BASE_EMB_YAML = (
    emb_yaml_item("sgm.modules.encoders.modules.FrozenCLIPEmbedder", "txt",
                  {"version": "libldm-test/tiny-clip", "layer": "hidden", "layer_idx": 1}) +
    emb_yaml_item("sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2", "txt",
                  {"arch": "libldm-test-tiny", "version": "none", "freeze": True, "layer": "penultimate",
                   "always_return_pooled": True, "legacy": False}) +
    "".join(emb_yaml_item("sgm.modules.encoders.modules.ConcatTimestepEmbedderND", k, {"outdim": 8})
            for k in ["original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple"]))

REFINER_EMB_YAML = (
    emb_yaml_item("sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2", "txt",
                  {"arch": "libldm-test-tiny", "version": "none", "legacy": False, "freeze": True,
                   "layer": "penultimate", "always_return_pooled": True}) +
    "".join(emb_yaml_item("sgm.modules.encoders.modules.ConcatTimestepEmbedderND", k, {"outdim": 8})
            for k in ["original_size_as_tuple", "crop_coords_top_left", "aesthetic_score"]))


def batch_for(keys, B, size, crop, target, aesthetic, n_txt):
    """sgm.inference.helpers.get_batch-style batch (the text comes from feed_tokens)."""
    batch = {}
    for k in keys:
        if k == "txt":
            batch[k] = [""] * B
        elif k == "original_size_as_tuple":
            batch[k] = torch.tensor([size[0], size[1]]).repeat(B, 1)
        elif k == "crop_coords_top_left":
            batch[k] = torch.tensor([crop[0], crop[1]]).repeat(B, 1)
        elif k == "target_size_as_tuple":
            batch[k] = torch.tensor([target[0], target[1]]).repeat(B, 1)
        elif k == "aesthetic_score":
            batch[k] = torch.tensor([aesthetic]).repeat(B, 1)
    return batch


def cond_call(name_c, name_v, n_txt, token_names, size, crop, target, aesthetic=None, zero_text=0, model=None):
    params = {"original_size": list(size), "crop": list(crop), "zero_text": zero_text}
    if model:
        params["model"] = model
    if target is not None:
        params["target_size"] = list(target)
    if aesthetic is not None:
        params["aesthetic_score"] = aesthetic
    return {"op": "cond.sdxl", "inputs": {"tokens%d" % i: token_names[i] for i in range(n_txt)},
            "params": params, "outputs": {"crossattn": name_c, "vector": name_v}}


def make_base_pipeline(out, gen, enc):
    B, H, W = 2, 8, 8
    clip = clip_embedder(enc, gen)
    oc = openclip_embedder(enc, gen)
    sizes = [enc.ConcatTimestepEmbedderND(8) for _ in range(3)]
    keys = ["txt", "txt", "original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple"]
    cond = conditioner(enc, [clip, oc] + sizes, keys)
    tok_clip = make_tokens(gen, B, [5, 11], pad=EOT)  # HF CLIP pads with the end token
    tok_oc = make_tokens(gen, B, [5, 11], pad=0)      # open_clip pads with 0
    feed_tokens(enc, [clip, oc], [tok_clip, tok_oc])
    size, crop, target = (64, 48), (3, 5), (64, 64)
    batch = batch_for(keys, B, size, crop, target, None, 2)
    with torch.no_grad():
        # SDXL base demo: force_uc_zero_embeddings=["txt"] (scripts/demo/sampling.py run_txt2img)
        c, uc = cond.get_unconditional_conditioning(batch, batch_uc=dict(batch), force_uc_zero_embeddings=["txt"])
    unet_params = dict(adm_in_channels=c["vector"].shape[1], num_classes="sequential", use_checkpoint=False,
                       in_channels=4, out_channels=4, model_channels=MODEL_CHANNELS, attention_resolutions=[2],
                       num_res_blocks=0, channel_mult=[1, 1], num_head_channels=16, use_linear_in_transformer=True,
                       transformer_depth=[0, 1], context_dim=c["crossattn"].shape[2],
                       spatial_transformer_attn_type="softmax-xformers")
    unet, den, net = denoiser_and_unet(gen, unet_params)
    fs_state, decode = first_stage_decoder(gen)
    x_T = torch.randn(B, 4, H, W, generator=gen)
    denoise = lambda x, sigma, cc: den(net, x, sigma, cc)  # noqa: E731  (sgm.inference.helpers.do_sample)
    steps, scale = 4, 5.0
    sampler = sgm_sampling(SGM_ROOT, steps, scale)
    rec = record_steps(sampler)
    # DPM++ 2M and Euler ancestral (with the noise of every step given) over the same schedule
    from sgm.modules.diffusionmodules.sampling import DPMPP2MSampler, EulerAncestralSampler, HeunEDMSampler
    disc = {"target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"}
    guider = {"target": "sgm.modules.diffusionmodules.guiders.VanillaCFG", "params": {"scale": scale}}
    dpm = DPMPP2MSampler(num_steps=steps, discretization_config=disc, guider_config=guider, device="cpu")
    anc = EulerAncestralSampler(num_steps=steps, discretization_config=disc, guider_config=guider, device="cpu")
    heun = HeunEDMSampler(num_steps=steps, discretization_config=disc, guider_config=guider, device="cpu")
    anc_noise = torch.randn(steps, B, 4, H, W, generator=gen)
    drawn = iter(range(steps))
    anc.noise_sampler = lambda x: anc_noise[next(drawn)]
    with torch.no_grad():
        samples = sampler(denoise, x_T.clone(), cond=c, uc=uc)
        image = decode(samples, 0.13025)
        dpm_samples = dpm(denoise, x_T.clone(), cond=c, uc=uc)
        anc_samples = anc(denoise, x_T.clone(), cond=c, uc=uc)
        heun_samples = heun(denoise, x_T.clone(), cond=c, uc=uc)
    state = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    state["denoiser.sigmas"] = den.sigmas
    state.update(fs_state)
    for i, e in enumerate([clip, oc]):
        for k, v in e.state_dict().items():
            state["conditioner.embedders.%d.%s" % (i, k)] = v
    refiner = make_refiner(gen, enc, B, H, W, tok_oc, x_T, denoise, c, uc, scale)
    calls = [cond_call("c_crossattn", "c_vector", 2, ["tokens_clip", "tokens_openclip"], size, crop, target),
             cond_call("uc_crossattn", "uc_vector", 2, ["tokens_clip", "tokens_openclip"], size, crop, target,
                       zero_text=1),
             {"op": "sampler.sgm", "inputs": {"x_T": "x_T", "c_crossattn": "c_crossattn", "c_vector": "c_vector",
                                              "uc_crossattn": "uc_crossattn", "uc_vector": "uc_vector"},
              "params": {"sampler": "euler", "steps": steps, "guidance_scale": scale},
              "outputs": {"step_x": "step_x", "samples": "samples", "image": "image"}},
             {"op": "sampler.sgm", "inputs": {"x_T": "x_T", "c_crossattn": "c_crossattn", "c_vector": "c_vector",
                                              "uc_crossattn": "uc_crossattn", "uc_vector": "uc_vector"},
              "params": {"sampler": "dpmpp_2m", "steps": steps, "guidance_scale": scale},
              "outputs": {"samples": "dpmpp_2m_samples"}},
             {"op": "sampler.sgm", "inputs": {"x_T": "x_T", "noise": "euler_a_noise", "c_crossattn": "c_crossattn",
                                              "c_vector": "c_vector", "uc_crossattn": "uc_crossattn",
                                              "uc_vector": "uc_vector"},
              "params": {"sampler": "euler_a", "steps": steps, "guidance_scale": scale},
              "outputs": {"samples": "euler_a_samples"}},
             {"op": "sampler.sgm", "inputs": {"x_T": "x_T", "c_crossattn": "c_crossattn", "c_vector": "c_vector",
                                              "uc_crossattn": "uc_crossattn", "uc_vector": "uc_vector"},
              "params": {"sampler": "heun", "steps": steps, "guidance_scale": scale},
              "outputs": {"samples": "heun_samples"}}] + refiner["calls"]
    outputs = {"c_crossattn": c["crossattn"], "c_vector": c["vector"], "uc_crossattn": uc["crossattn"],
               "uc_vector": uc["vector"], "step_x": torch.stack(rec), "samples": samples, "image": image,
               "dpmpp_2m_samples": dpm_samples, "euler_a_samples": anc_samples, "heun_samples": heun_samples,
               **refiner["outputs"]}
    tols = {k: tolerance(v, None, forward="crossattn" in k or "vector" in k) for k, v in outputs.items()}
    inputs = {"tokens_clip": tok_clip, "tokens_openclip": tok_oc, "x_T": x_T, "euler_a_noise": anc_noise,
              **refiner["inputs"]}
    write_fixture(out, "sdxl_base_tiny",
                  "SDXL base and refiner shaped end to end with the official sgm classes: GeneralConditioner "
                  "(FrozenCLIPEmbedder layer hidden / layer_idx 1 of 2 layers, FrozenOpenCLIPEmbedder2 penultimate + "
                  "pooled, ConcatTimestepEmbedderND x3, outdim 8), the base demo's unconditional branch "
                  "(force_uc_zero_embeddings txt), EulerEDMSampler / DPMPP2MSampler / EulerAncestralSampler / HeunEDMSampler over "
                  "LegacyDDPMDiscretization with VanillaCFG 5.0 (4 steps), DiscreteDenoiser + EpsScaling, "
                  "decode_first_stage with scale_factor 0.13025; then base -> refiner (the sdxl_refiner_tiny fixture's model and its "
                  "conditioning rc_* / urc_*, stored here as inputs) with the demo's finish-denoising split "
                  "(Txt2NoisyDiscretizationWrapper / Img2ImgDiscretizationWrapper, strength 0.4 of 8 steps). Shrunk: "
                  "towers width 64 (2 layers, vocab 256), UNets 2 levels of 64 channels (2 per GroupNorm group, so "
                  "the timestep and vector embeddings reach the output), first stage f1 with 64 channels",
                  sgm_yaml(unet_params, BASE_EMB_YAML), state, inputs, outputs, calls, tols,
                  extra={"f32_vs_f64": "not rerun in float64 (the text towers mix dtypes); trajectory "
                                       "tolerances 1e-3 relative as the policy's sampler rule"})


def make_refiner(gen, enc, B, H, W, tok_oc, x_T, base_denoise, c, uc, scale):
    """The refiner demo (scripts/demo/sampling.py apply_refiner + streamlit_helpers.do_img2img with
    add_noise False) after a base run pruned by Txt2NoisyDiscretizationWrapper."""
    oc = openclip_embedder(enc, gen)
    sizes = [enc.ConcatTimestepEmbedderND(8) for _ in range(3)]
    keys = ["txt", "original_size_as_tuple", "crop_coords_top_left", "aesthetic_score"]
    cond = conditioner(enc, [oc] + sizes, keys)
    tok_empty = make_tokens(gen, B, [0, 0], pad=0)  # the negative prompt "": start, end, padding
    size = (H * 8, W * 8)  # apply_refiner: input.shape * 8 (here the latent is the image: f1)
    batch = batch_for(keys, B, size, (0, 0), None, 6.0, 1)
    batch_uc = batch_for(keys, B, size, (0, 0), None, 2.5, 1)
    with torch.no_grad():
        feed_tokens(enc, [oc], [tok_oc])
        rc = cond(batch)
        feed_tokens(enc, [oc], [tok_empty])
        ruc = cond(batch_uc)
    unet_params = dict(adm_in_channels=rc["vector"].shape[1], num_classes="sequential", use_checkpoint=False,
                       in_channels=4, out_channels=4, model_channels=MODEL_CHANNELS, attention_resolutions=[2], num_res_blocks=0,
                       channel_mult=[1, 1], num_head_channels=16, use_linear_in_transformer=True, transformer_depth=1,
                       context_dim=[rc["crossattn"].shape[2]], spatial_transformer_attn_type="softmax-xformers")
    unet, den, net = denoiser_and_unet(gen, unet_params)
    fs_state, decode = first_stage_decoder(gen)
    steps, strength = 8, 0.4
    base = sgm_sampling(SGM_ROOT, steps, scale, strength=strength, original_steps=steps)
    ref = sgm_sampling(SGM_ROOT, steps, scale, img2img_strength=strength)
    rec = record_steps(base)
    rec_r = record_steps(ref)
    with torch.no_grad():
        z = base(base_denoise, x_T.clone(), cond=c, uc=uc)
        sigmas = ref.discretization(ref.num_steps)
        noised_z = z / torch.sqrt(1.0 + sigmas[0] ** 2.0)  # do_img2img, add_noise False
        samples = ref(lambda x, sigma, cc: den(net, x, sigma, cc), noised_z, cond=rc, uc=ruc)
        image = decode(samples, 0.13025)
    state = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    state["denoiser.sigmas"] = den.sigmas
    state.update(fs_state)
    for k, v in oc.state_dict().items():
        state["conditioner.embedders.0.%s" % k] = v
    # The refiner is a fixture of its own (sdxl_refiner_tiny: its conditioner's goldens), used by
    # this one's hand-off: both 64-channel networks in one folder would pass the size budget.
    cond_calls = [cond_call("rc_crossattn", "rc_vector", 1, ["tokens_openclip"], size, (0, 0), None, aesthetic=6.0),
                  cond_call("urc_crossattn", "urc_vector", 1, ["tokens_empty"], size, (0, 0), None, aesthetic=2.5)]
    cond_out = {"rc_crossattn": rc["crossattn"], "rc_vector": rc["vector"], "urc_crossattn": ruc["crossattn"],
                "urc_vector": ruc["vector"]}
    write_fixture(OUT, REFINER, "SDXL refiner shaped (sgm GeneralConditioner: FrozenOpenCLIPEmbedder2 penultimate + "
                  "pooled, original size, crop, aesthetic score 6.0 / 2.5 on the encoded empty prompt as the refiner "
                  "demo does; UNet 2 levels, 64 channels, transformer_depth 1 as an int, context_dim a list; first "
                  "stage f1), used by sdxl_base_tiny's base -> refiner hand-off and sdxl_img_tiny's refiner img2img",
                  sgm_yaml(unet_params, REFINER_EMB_YAML), state,
                  {"tokens_openclip": tok_oc, "tokens_empty": tok_empty}, cond_out, cond_calls,
                  {k: tolerance(v, None) for k, v in cond_out.items()},
                  extra={"f32_vs_f64": "not rerun in float64 (the text tower mixes dtypes)"})
    calls = [{"op": "sampler.sgm", "inputs": {"x_T": "x_T", "c_crossattn": "c_crossattn", "c_vector": "c_vector",
                                              "uc_crossattn": "uc_crossattn", "uc_vector": "uc_vector",
                                              "rc_crossattn": "rc_crossattn", "rc_vector": "rc_vector",
                                              "urc_crossattn": "urc_crossattn", "urc_vector": "urc_vector"},
              "params": {"sampler": "euler", "steps": steps, "guidance_scale": scale,
                         "refiner": {"weights": "../%s/model.safetensors" % REFINER,
                                     "config": "../%s/config.yaml" % REFINER, "refiner_start": 1.0 - strength}},
              "outputs": {"step_x": "handoff_step_x", "samples": "handoff_samples", "image": "handoff_image"}}]
    return {"calls": calls, "inputs": cond_out,
            "outputs": {"handoff_step_x": torch.stack(rec + rec_r), "handoff_samples": samples, "handoff_image": image}}


SGM_ROOT = None
SGM = None
OUT = None
REFINER = "sdxl_refiner_tiny"


def main():
    global SGM_ROOT
    if len(sys.argv) < 2:
        sys.exit("usage: make_sdxl_goldens.py GENERATIVE_MODELS_CHECKOUT [OUT_DIR]")
    SGM_ROOT = os.path.abspath(sys.argv[1])
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                                             "fixtures")
    torch.manual_seed(0)
    global SGM, OUT
    OUT = out
    sgm = SGM = import_sgm(SGM_ROOT)
    base = dict(adm_in_channels=80, num_classes="sequential", use_checkpoint=False, in_channels=4, out_channels=4,
                model_channels=MODEL_CHANNELS, attention_resolutions=[4, 2], num_res_blocks=0, channel_mult=[1, 1, 1],
                num_head_channels=16, use_linear_in_transformer=True, transformer_depth=[0, 1, 2], context_dim=48,
                spatial_transformer_attn_type="softmax-xformers")
    make_unet_fixture(sgm, out, "unet_sdxl_base",
                      "sgm UNetModel shaped like sd_xl_base.yaml (3 levels, attention at ds 4 and 2, transformer_depth "
                      "[0,1,2], middle depth = last, num_classes sequential with adm_in_channels 80, linear "
                      "proj, num_head_channels 16), channels shrunk to 64 (2 per GroupNorm group), num_res_blocks 0 "
                      "(no input-side attention: 3.3 MiB more at 64 channels); the first stage (32 channels) is "
                      "not run", base, seed=1)
    refiner = dict(adm_in_channels=72, num_classes="sequential", use_checkpoint=False, in_channels=4, out_channels=4,
                   model_channels=MODEL_CHANNELS, attention_resolutions=[4, 2], num_res_blocks=0, channel_mult=[1, 1, 1, 1],
                   num_head_channels=16, use_linear_in_transformer=True, transformer_depth=2, context_dim=[40, 40],
                   spatial_transformer_attn_type="softmax-xformers")
    make_unet_fixture(sgm, out, "unet_sdxl_refiner",
                      "sgm UNetModel shaped like sd_xl_refiner.yaml (4 levels, attention at ds 4 and 2 only, "
                      "transformer_depth 2 as an int, context_dim as a list, num_classes sequential with "
                      "adm_in_channels 72), channels shrunk to 64 (2 per GroupNorm group), num_res_blocks 0; 16x16 "
                      "latents so the deepest level is 2x2; the first stage (32 channels) is not run", refiner, H=16, W=16, seed=2)
    enc = import_encoders()
    make_base_pipeline(out, torch.Generator().manual_seed(3), enc)


if __name__ == "__main__":
    main()
