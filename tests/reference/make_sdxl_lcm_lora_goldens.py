#!/usr/bin/env python3
"""make_sdxl_lcm_lora_goldens.py - LCM-LoRA SDXL's key naming merged as diffusers merges it (issue #14):
tests/fixtures/lora_sdxl_lcm in the ../shared/fixtures format, on the network of
tests/fixtures/sdxl_base_tiny (its weights are used in place, `weights:
["../sdxl_base_tiny/model.safetensors"]`; config.yaml is a copy).

latent-consistency/lcm-lora-sdxl's pytorch_lora_weights.safetensors names its factors the kohya way
over diffusers' module paths (lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q
.lora_down.weight / .lora_up.weight / .alpha, 3x3 convolutions with a 3x3 down and a 1x1 up). The
golden:
  1. the fixture's sgm UNet converted to diffusers' UNet2DConditionModel by diffusers' own
     single-file code (create_unet_diffusers_config_from_ldm, convert_ldm_unet_checkpoint; the
     config patched where it recognises SDXL only by the released widths: addition_embed_type
     "text_time", addition_time_embed_dim = the fixture's size embedding width), checked to give
     the sgm UNet's output;
  2. a LoRA file in that naming (random float16 factors, alpha != rank) over every module kind
     LCM-LoRA SDXL touches: attention q/k/v/out, proj_in/proj_out, the feed-forward, ResNet conv1 /
     conv2 / time_emb_proj, the up- and downsampler convolutions;
  3. diffusers 0.30.3's StableDiffusionXLPipeline.load_lora_weights + fuse_lora(lora_scale 0.7)
     (its kohya -> PEFT conversion and PEFT's merge), then the fused UNet's forward on x, t, the
     context and added_cond_kwargs {text_embeds, time_ids}; y for the sgm-side call is
     [text_embeds, sgm's sinusoidal embedding of the time ids] (what the converted add_embedding sees).
Calls: unet.forward (out_base), lora.add multiplier 0.7, unet.forward (out_lora), lora.clear,
unet.forward (out_base again).

Tolerance: ../shared/fixtures/README.md's op rule, atol 1e-4 * max(1, max|ref|), rtol 1e-4; no
float64 rerun (f32_vs_f64_max_err 0).

Reference code (nothing of it is committed here):
  https://github.com/Stability-AI/generative-models 0ad7de9a5cb53fd63d6d30a4f385485e72e08597 (UNetModel)
  diffusers 0.30.3 from PyPI (single_file_utils, UNet2DConditionModel, StableDiffusionXLPipeline's
      LoRA loader), peft 0.12.0 and accelerate 0.33.0 (its backend)

How to run (never needed to run the tests):
    git --git-dir=<generative-models clone> archive 0ad7de9a sgm scripts | tar -x -C /tmp/gm
    /tmp/ldvenv/bin/pip install --no-deps --target /tmp/peft-py peft==0.12.0 accelerate==0.33.0
    PYTHONPATH=/tmp/peft-py /tmp/ldvenv/bin/python tests/reference/make_sdxl_lcm_lora_goldens.py /tmp/gm [OUT_DIR]
"""
import json
import math
import os
import re
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_sdxl_goldens as sdxl  # noqa: E402  (import_sgm, tolerance)
import make_sdxl_turbo_goldens as turbo  # noqa: E402  (load_unet)

NAME = "lora_sdxl_lcm"
BASE = "sdxl_base_tiny"
SIZE_DIM = 8  # the fixture's ConcatTimestepEmbedderND outdim
MULTIPLIER = 0.7
# the module kinds LCM-LoRA SDXL's file covers (diffusers paths)
TARGETS = re.compile(r"(attn[12]\.(to_q|to_k|to_v|to_out\.0)|proj_in|proj_out|ff\.net\.0\.proj|ff\.net\.2|"
                     r"resnets\.\d+\.(conv1|conv2|time_emb_proj)|(up|down)samplers\.0\.conv)$")


def diffusers_unet(base_dir):
    import yaml
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm
    from safetensors.torch import load_file
    with open(os.path.join(base_dir, "config.yaml")) as f:
        original = yaml.safe_load(f)
    state = {k: v.float() for k, v in load_file(os.path.join(base_dir, "model.safetensors")).items()
             if k.startswith("model.diffusion_model.")}
    cfg = create_unet_diffusers_config_from_ldm(original, state)
    # SDXL is recognised by its released context widths (2048, 1280) only
    params = original["model"]["params"]["network_config"]["params"]
    cfg.update(class_embed_type=None, addition_embed_type="text_time", addition_time_embed_dim=SIZE_DIM,
               projection_class_embeddings_input_dim=params["adm_in_channels"])
    converted = convert_ldm_unet_checkpoint(state, cfg)
    unet = UNet2DConditionModel(**cfg).eval()
    missing, unexpected = unet.load_state_dict(converted, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return unet


def lora_file(path, unet, gen, rank=4, alpha=3.0):
    """kohya keys over diffusers paths, float16 factors; conv LoRA: 3x3 down, 1x1 up."""
    from safetensors.torch import save_file
    out = {}
    for name, mod in unet.named_modules():
        if not TARGETS.search(name):
            continue
        w = mod.weight
        key = "lora_unet_" + name.replace(".", "_")
        if w.ndim == 4:
            down = torch.randn(rank, w.shape[1], w.shape[2], w.shape[3], generator=gen)
            up = torch.randn(w.shape[0], rank, 1, 1, generator=gen)
        else:
            down = torch.randn(rank, w.shape[1], generator=gen)
            up = torch.randn(w.shape[0], rank, generator=gen)
        out[key + ".lora_down.weight"] = (down / math.sqrt(down[0].numel())).half()
        out[key + ".lora_up.weight"] = (up * 0.2 / math.sqrt(rank)).half()
        out[key + ".alpha"] = torch.tensor(alpha).half()
    save_file(out, path)
    return len(out) // 3


def main():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from safetensors.torch import load_file, save_file
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sgm = sdxl.import_sgm(os.path.abspath(sys.argv[1]))
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "..", "fixtures")
    base_dir = os.path.join(out, BASE)
    net = turbo.load_unet(sgm, base_dir)
    unet = diffusers_unet(base_dir)
    io = load_file(os.path.join(base_dir, "io.safetensors"))
    gen = torch.Generator().manual_seed(4242)
    B = 2
    x = torch.randn(B, 4, 8, 8, generator=gen)
    t = torch.tensor([801, 45], dtype=torch.int64)
    ctx = io["c_crossattn"]
    pooled = io["c_vector"][:, : io["c_vector"].shape[1] - 6 * SIZE_DIM]
    time_ids = torch.tensor([[64.0, 48.0, 3.0, 5.0, 64.0, 64.0]]).repeat(B, 1)  # the fixture's size/crop/target
    y = torch.cat([pooled, sgm.openaimodel.timestep_embedding(time_ids.flatten(), SIZE_DIM).reshape(B, -1)], 1)
    assert float((y - io["c_vector"]).abs().max()) < 1e-5  # the same vector sgm's conditioner made
    added = {"text_embeds": pooled, "time_ids": time_ids}
    with torch.no_grad():
        base_sgm = net(x, t, context=ctx, y=y)
        base = unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
    conv_err = float((base - base_sgm).abs().max())
    print("diffusers' conversion vs the sgm UNet: max |diff| %.3g" % conv_err)
    assert conv_err < 1e-4

    d = os.path.join(out, NAME)
    os.makedirs(d, exist_ok=True)
    n_mod = lora_file(os.path.join(d, "lora_lcm_sdxl.safetensors"), unet, gen)
    vae = AutoencoderKL(block_out_channels=[32], down_block_types=["DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D"], latent_channels=4)  # unused
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                     tokenizer_2=None, unet=unet, scheduler=EulerDiscreteScheduler())
    before = {n: m.weight.detach().clone() for n, m in unet.named_modules() if TARGETS.search(n)}
    pipe.load_lora_weights(d, weight_name="lora_lcm_sdxl.safetensors")
    pipe.fuse_lora(components=["unet"], lora_scale=MULTIPLIER)
    after = {n: m for n, m in unet.named_modules()}
    unchanged = [n for n, w in before.items()
                 if torch.equal(getattr(after[n], "base_layer", after[n]).weight.detach(), w)]
    assert not unchanged, "diffusers left these modules unmerged: %s" % unchanged
    with torch.no_grad():
        merged = unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
    moved = float((merged - base).abs().max() / base.abs().max())
    print("%d modules; the LoRA moves the output by %.3g (relative)" % (n_mod, moved))
    assert moved > 0.05

    inputs = {"x": x, "timesteps": t, "context": ctx, "y": y}
    outputs = {"out_base": base_sgm, "out_lora": merged}
    tol = {k: sdxl.tolerance(v, None) for k, v in outputs.items()}
    fwd = {"op": "unet.forward", "inputs": {"x": "x", "timesteps": "timesteps", "context": "context", "y": "y"}}
    calls = [dict(fwd, outputs={"out": "out_base"}),
             {"op": "lora.add", "params": {"file": "lora_lcm_sdxl.safetensors", "multiplier": MULTIPLIER}},
             dict(fwd, outputs={"out": "out_lora"}),
             {"op": "lora.clear"},
             dict(fwd, outputs={"out": "out_base"})]
    shutil.copyfile(os.path.join(base_dir, "config.yaml"), os.path.join(d, "config.yaml"))
    save_file({k: v.contiguous().clone() for k, v in {**inputs, **outputs}.items()}, os.path.join(d, "io.safetensors"))
    case = {
        "kind": "lora",
        "name": NAME,
        "description": "LCM-LoRA SDXL's key naming (kohya lora_unet_ keys over diffusers paths, .alpha, 3x3 conv "
                       "factors) on the sdxl_base_tiny UNet, merged as diffusers 0.30.3 merges it "
                       "(StableDiffusionXLPipeline.load_lora_weights + fuse_lora, lora_scale %g) on the UNet "
                       "converted by diffusers' single-file code; %d modules: attention q/k/v/out, proj_in/out, "
                       "feed-forward, ResNet conv1/conv2/time_emb_proj, up/downsampler convolutions"
                       % (MULTIPLIER, n_mod),
        "reference": {"repo": sdxl.REF_REPO, "commit": sdxl.REF_COMMIT, "diffusers": "0.30.3", "peft": "0.12.0",
                      "torch": torch.__version__},
        "weights": ["../%s/model.safetensors" % BASE],
        "lora_files": ["lora_lcm_sdxl.safetensors"],
        "weights_dtype": "F16 (every tensor); expected outputs computed in float32 from these F16 values",
        "calls": calls,
        "inputs": {k: {"shape": list(v.shape), "dtype": "I64" if v.dtype == torch.int64 else "F32"}
                   for k, v in inputs.items()},
        "outputs": {k: {"shape": list(v.shape), "dtype": "F32"} for k, v in outputs.items()},
        "atol": max(v["atol"] for v in tol.values()),
        "rtol": max(v["rtol"] for v in tol.values()),
        "tolerances": tol,
    }
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
    print("%s: %d bytes" % (d, sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))))


if __name__ == "__main__":
    main()
