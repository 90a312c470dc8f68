#!/usr/bin/env python3
"""make_sdxl_goldens.py - SDXL goldens under tests/fixtures/ (issue #14), made with the OFFICIAL
Stability-AI generative-models code (the `sgm` package), in the ../shared/fixtures format
(config.yaml + model.safetensors + io.safetensors + case.json per directory).

Fixtures (random weights, every zero_module layer re-randomised so no path hides; channel counts
shrunk, structure kept; weights stored float16, the reference computed in float32 from the
float16-rounded values, like the shared cond_* fixtures):

  unet_sdxl_base     sgm UNetModel shaped like sd_xl_base.yaml: 3 levels, attention_resolutions
                     [4, 2], transformer_depth [0, 1, 2] (middle = last = 2),
                     num_classes: sequential + adm_in_channels (label_emb.0.0 / .0.2),
                     use_linear_in_transformer, num_head_channels, context_dim;
                     op unet.forward(x, timesteps, context, y) with y the F32 vector.
  unet_sdxl_refiner  the same for sd_xl_refiner.yaml: 4 levels, transformer_depth 2 (an int),
                     context_dim given as a list, no attention at the deepest level.

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


def write_fixture(out, name, description, config_yaml, state, inputs, outputs, calls, tolerances, extra=None):
    from safetensors.torch import save_file
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
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

def unet_config_yaml(p):
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
    return "\n".join(lines) + "\n" + FIRST_STAGE_YAML + CONDITIONER_YAML_UNUSED


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
                  {"out": tolerance(ref, ref64)})


SGM_ROOT = None


def main():
    global SGM_ROOT
    if len(sys.argv) < 2:
        sys.exit("usage: make_sdxl_goldens.py GENERATIVE_MODELS_CHECKOUT [OUT_DIR]")
    SGM_ROOT = os.path.abspath(sys.argv[1])
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                                             "fixtures")
    torch.manual_seed(0)
    sgm = import_sgm(SGM_ROOT)
    base = dict(adm_in_channels=80, num_classes="sequential", use_checkpoint=False, in_channels=4, out_channels=4,
                model_channels=32, attention_resolutions=[4, 2], num_res_blocks=1, channel_mult=[1, 1, 1],
                num_head_channels=16, use_linear_in_transformer=True, transformer_depth=[0, 1, 2], context_dim=48,
                spatial_transformer_attn_type="softmax-xformers")
    make_unet_fixture(sgm, out, "unet_sdxl_base",
                      "sgm UNetModel shaped like sd_xl_base.yaml (3 levels, attention at ds 4 and 2, transformer_depth "
                      "[0,1,2], middle depth = last, num_classes sequential with adm_in_channels 80, linear "
                      "proj, num_head_channels 16), channels shrunk to 32", base, seed=1)
    refiner = dict(adm_in_channels=72, num_classes="sequential", use_checkpoint=False, in_channels=4, out_channels=4,
                   model_channels=32, attention_resolutions=[4, 2], num_res_blocks=1, channel_mult=[1, 1, 1, 1],
                   num_head_channels=16, use_linear_in_transformer=True, transformer_depth=2, context_dim=[40, 40],
                   spatial_transformer_attn_type="softmax-xformers")
    make_unet_fixture(sgm, out, "unet_sdxl_refiner",
                      "sgm UNetModel shaped like sd_xl_refiner.yaml (4 levels, attention at ds 4 and 2 only, "
                      "transformer_depth 2 as an int, context_dim as a list, num_classes sequential with "
                      "adm_in_channels 72), channels shrunk to 32; 16x16 latents so the deepest level is 2x2 (a 1x1 "
                      "GroupNorm of one channel per group is ill-conditioned)", refiner, H=16, W=16, seed=2)


if __name__ == "__main__":
    main()
