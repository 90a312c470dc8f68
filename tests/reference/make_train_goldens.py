#!/usr/bin/env python3
"""make_train_goldens.py - the training goldens of tests/golden/train_* (issue #13), made with the
OFFICIAL latent-diffusion modules, so that tests/test_train_goldens.c can check the C training
code (lib/train: tape, nets, losses, AdamW) against PyTorch without needing PyTorch.

What it makes (the ../shared/fixtures layout: model.safetensors, io.safetensors, case.json,
config.yaml per directory):

  tests/golden/train_unet  openaimodel.UNetModel (SpatialTransformer at ds 1 and 2, context from a
      ClassEmbedder = LatentDiffusion's cond_stage_model, cond_stage_trainable) with EVERY parameter
      re-randomised (the zero_module layers too, so no path is hidden); one batch (x_t, t, labels,
      noise); loss = LatentDiffusion.p_losses' simple term with the defaults (l2, logvar 0,
      l_simple_weight 1, original_elbo_weight 0) = mse(eps_pred, noise); io holds the loss, every
      parameter's gradient (grad.<name>) and the parameters after 3 steps of
      torch.optim.AdamW(params, lr=1e-3) (LatentDiffusion.configure_optimizers: model +
      cond_stage_model parameters, torch defaults betas (0.9, 0.999), eps 1e-8, weight_decay
      1e-2), each step recomputing the loss on the same batch (after3.<name>).
  tests/golden/train_ae    AutoencoderKL (Encoder/Decoder/quant_conv/post_quant_conv; the class
      itself, with pytorch_lightning stubbed) trained by its training_step (optimizer_idx 0) with
      LPIPSWithDiscriminator (contperceptual.py) at perceptual_weight 0, logvar_init 0, kl_weight
      0.1, global_step 0 < disc_start (no GAN term): loss = sum|x - xrec| / B + kl_weight * KL / B,
      z = posterior.sample() with the noise given (torch.randn replaced by the stored tensor);
      gradients of every parameter, parameters after 3 steps of the model's own
      configure_optimizers() Adam (lr 1e-3, betas (0.5, 0.9)).

  tests/golden/train_lora   the train_unet UNetModel on one level, base weights frozen, with LoRA adapters as
      kohya-ss/sd-scripts networks/lora.py (commit 48d368fa557731ad0488c07304dfeba8c07910eb)
      LoRAModule builds and applies them (rewritten small below: every Linear / 1x1 Conv2d of the
      SpatialTransformers, forward = org(x) + up(down(x)) * alpha / r; rank 4, alpha 2); lora_up
      random; context a random [B, 3, 32] tensor; the eps loss, every adapter's gradient and the
      adapters after 3 AdamW steps over them alone. GOLDENS=train_lora makes only this one.

Each golden is also rerun in float64 (same code; the UNet's float32 casts in GroupNorm32 and
h.type(self.dtype) made float64, the timestep embedding still computed in float32 as the code
does) to state f32_vs_f64_max_err per tensor, and tolerances follow
../shared/fixtures/README.md: atol = max(1e-4 * max(1, max|ref|), 20 * |f32 - f64|) for the loss;
for gradients (small numbers) relative to the tensor's own scale, atol = max(1e-4 * max|ref|,
20 * |f32 - f64|), rtol 1e-3; for the parameters after 3 steps atol = max(1e-5 * max(1,
max|ref|), 20 * |f32 - f64|) (an Adam step moves a parameter by ~lr = 1e-3). Deliberately small
nets (GroupNorm(32) forces 32 channels, so num_res_blocks 0).

Reference: https://github.com/CompVis/latent-diffusion commit
a506df5756472e2ebaf9078affdde2c4f1502cd4 (nothing of it is committed here).

How to run (never needed to run the tests): Debian's python3-torch (1.13) and numpy, plus einops:
    git clone https://github.com/CompVis/latent-diffusion /tmp/ld-ref
    git -C /tmp/ld-ref checkout a506df5756472e2ebaf9078affdde2c4f1502cd4
    /usr/bin/python3 -m venv --system-site-packages /tmp/ldvenv && /tmp/ldvenv/bin/pip install einops
    /tmp/ldvenv/bin/python tests/reference/make_train_goldens.py /tmp/ld-ref [OUT_DIR [NAME ...]]
OUT_DIR defaults to tests/golden next to this script. NAMEs (or GOLDENS=name,name in the
environment) select goldens to remake: train_unet, train_ae, train_lora, train_unet_attn,
train_unet_attn_neworder, train_ldm_vq, train_unet_noconv; none given: all. Imports of the reference that the used
classes do not need at run time (omegaconf, clip, kornia, PIL, pytorch_lightning, taming's
quantizer, LPIPS and discriminator) are stubbed below; the numerics are the reference's own.
"""
import copy
import json
import os
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_io import write_safetensors  # noqa: E402

REF_REPO = "CompVis/latent-diffusion"
REF_COMMIT = "a506df5756472e2ebaf9078affdde2c4f1502cd4"


# ------------------------------------------------------------------ stubs for unused imports

def _module(name, **attrs):
    m = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(m, k, v)
    sys.modules[name] = m
    return m


def install_stubs():
    lc = _module("omegaconf.listconfig", ListConfig=type("ListConfig", (list,), {}))
    _module("omegaconf", listconfig=lc, OmegaConf=None)
    _module("clip")
    _module("kornia")
    try:
        import PIL  # noqa: F401  (ldm.util imports it for log images only)
    except ImportError:
        _module("PIL", Image=None, ImageDraw=None, ImageFont=None)

    class LightningModule(torch.nn.Module):  # what AutoencoderKL uses of it
        global_step = 0

        def log(self, *a, **k):
            pass

        def log_dict(self, *a, **k):
            pass

    _module("pytorch_lightning", LightningModule=LightningModule)
    # taming: AutoencoderKL's module imports the VQ quantizer (unused by KL); contperceptual.py does
    # `from taming.modules.losses.vqperceptual import *`. LPIPS is never called with
    # perceptual_weight 0; the discriminator's term is multiplied by disc_factor 0 before
    # disc_start (adopt_weight is taming's, verbatim).
    _module("taming")
    _module("taming.modules")
    _module("taming.modules.vqvae")
    _module("taming.modules.vqvae.quantize", VectorQuantizer2=None)
    _module("taming.modules.losses")

    class LPIPS(torch.nn.Module):
        def forward(self, *a):
            raise RuntimeError("LPIPS stub called (perceptual_weight must be 0)")

    class NLayerDiscriminator(torch.nn.Module):
        def __init__(self, input_nc=3, ndf=64, n_layers=3, use_actnorm=False):
            super().__init__()
            self.conv = torch.nn.Conv2d(input_nc, 1, 4, 2, 1)

        def forward(self, x):
            return self.conv(x)

    def adopt_weight(weight, global_step, threshold=0, value=0.):
        if global_step < threshold:
            weight = value
        return weight

    def hinge_d_loss(logits_real, logits_fake):
        return 0.5 * (torch.mean(torch.relu(1. - logits_real)) + torch.mean(torch.relu(1. + logits_fake)))

    _module("taming.modules.losses.vqperceptual", LPIPS=LPIPS, NLayerDiscriminator=NLayerDiscriminator,
            weights_init=lambda m: None, adopt_weight=adopt_weight, hinge_d_loss=hinge_d_loss,
            vanilla_d_loss=hinge_d_loss, torch=torch, nn=torch.nn)


# ------------------------------------------------------------------ files

def tol_entry(ref32, ref64, kind):
    ref = np.asarray(ref32, dtype=np.float64)
    err = float(np.max(np.abs(ref - np.asarray(ref64, dtype=np.float64)))) if ref.size else 0.0
    mx = float(np.max(np.abs(ref))) if ref.size else 0.0
    if kind == "loss":
        atol, rtol = max(1e-4 * max(1.0, mx), 20 * err), 1e-4
    elif kind == "grad":
        atol, rtol = max(1e-4 * mx, 20 * err, 1e-12), 1e-3
    else:  # parameters after the optimiser steps
        atol, rtol = max(1e-5 * max(1.0, mx), 20 * err), 1e-5
    return {"atol": float("%.3g" % atol), "rtol": rtol, "max_abs": float("%.6g" % mx),
            "f32_vs_f64_max_err": float("%.3g" % err)}


def write_golden(out, name, description, config_yaml, weights, inputs, outputs, kinds, outputs64, calls, extra):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    write_safetensors(os.path.join(d, "model.safetensors"), weights)
    write_safetensors(os.path.join(d, "io.safetensors"), list(inputs) + list(outputs))
    with open(os.path.join(d, "config.yaml"), "w") as f:
        f.write(config_yaml)

    def spec(lst):
        return {n: {"shape": list(a.shape), "dtype": "I64" if a.dtype == np.int64 else "F32"} for n, a in lst}

    tols = {n: tol_entry(a, outputs64[n], kinds[n]) for n, a in outputs}
    case = {
        "kind": "train",
        "name": name,
        "description": description,
        "reference": {"repo": REF_REPO, "commit": REF_COMMIT, "torch": torch.__version__},
        "generator": "tests/reference/make_train_goldens.py",
        "weights": ["model.safetensors"],
        "calls": calls,
        "inputs": spec(inputs),
        "outputs": spec(outputs),
        "atol": max(t["atol"] for t in tols.values()),
        "rtol": max(t["rtol"] for t in tols.values()),
        "tolerances": tols,
    }
    case.update(extra)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
    print("%s: %d tensors, %d parameters, %.2f MB" % (d, len(outputs), sum(a.size for _, a in weights), size / 1e6))


def randomise(module, gen):
    """Every parameter gets random values of a size that keeps activations O(1): weights
    U(-1,1)/sqrt(fan_in), biases 0.1 U(-1,1), norm gammas 1 + 0.2 U(-1,1), betas 0.2 U(-1,1),
    embedding tables N(0,1). Zero-initialised layers (zero_module) are randomised as well."""
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for _, m in module.named_modules():
            for pn, p in m.named_parameters(recurse=False):
                u = torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1
                if isinstance(m, torch.nn.Embedding):
                    v = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                elif isinstance(m, norms):
                    v = (1.0 if pn == "weight" else 0.0) + 0.2 * u
                elif p.ndim >= 2:
                    v = u / np.sqrt(p[0].numel())
                else:
                    v = 0.1 * u
                p.copy_(v.to(p.dtype))


def np32(t):
    return t.detach().to(torch.float32).cpu().numpy().astype(np.float32)


# ------------------------------------------------------------------ train_unet

UNET = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1, 2],
            num_res_blocks=0, channel_mult=[1, 2], num_head_channels=16, use_spatial_transformer=True,
            transformer_depth=1, context_dim=32, legacy=False)
N_CLASSES = 10

UNET_YAML = """model:
  base_learning_rate: 1.0e-03
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.0015
    linear_end: 0.0195
    timesteps: 1000
    first_stage_key: image
    cond_stage_key: class_label
    image_size: 8
    channels: 4
    cond_stage_trainable: true
    conditioning_key: crossattn
    use_ema: false
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: 8
        in_channels: 4
        out_channels: 4
        model_channels: 32
        attention_resolutions:
        - 1
        - 2
        num_res_blocks: 0
        channel_mult:
        - 1
        - 2
        num_head_channels: 16
        use_spatial_transformer: true
        transformer_depth: 1
        context_dim: 32
        legacy: false
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        ddconfig:
          attn_type: none
          double_z: true
          z_channels: 4
          resolution: 8
          in_channels: 3
          out_ch: 3
          ch: 32
          ch_mult:
          - 1
          num_res_blocks: 0
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity
    cond_stage_config:
      target: ldm.modules.encoders.modules.ClassEmbedder
      params:
        n_classes: 10
        embed_dim: 32
        key: class_label
"""


class LDMParts(torch.nn.Module):
    """The trained parts of LatentDiffusion under their state-dict names: model.diffusion_model
    (DiffusionWrapper) and cond_stage_model."""

    def __init__(self, unet, cond):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.diffusion_model = unet
        self.cond_stage_model = cond


def make_unet_model():
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from ldm.modules.encoders.modules import ClassEmbedder
    torch.manual_seed(0)
    m = LDMParts(UNetModel(**UNET), ClassEmbedder(embed_dim=32, n_classes=N_CLASSES, key="class_label"))
    randomise(m, torch.Generator().manual_seed(1234))
    return m


class float64_unet:
    """The code switched to float64 for the rerun of a .double() copy: UNetModel casts h to
    self.dtype and GroupNorm32 computes in float32; both follow the input's dtype here
    (timestep_embedding stays float32 as the code computes it, then widened)."""

    def __enter__(self):
        import ldm.modules.diffusionmodules.openaimodel as oam
        import ldm.modules.diffusionmodules.util as dmu
        self.oam, self.dmu = oam, dmu
        self.te, self.gn = oam.timestep_embedding, dmu.GroupNorm32.forward
        oam.timestep_embedding = lambda *a, **k: self.te(*a, **k).double()
        dmu.GroupNorm32.forward = lambda mod, x: torch.nn.GroupNorm.forward(mod, x)

    def __exit__(self, *a):
        self.oam.timestep_embedding, self.dmu.GroupNorm32.forward = self.te, self.gn


def unet_loss(m, batch):
    """LatentDiffusion.p_losses after q_sample, with the defaults: get_loss(l2, mean=False)
    .mean([1,2,3]); loss = l_simple_weight * (loss_simple / exp(logvar_t) + logvar_t).mean()
    with logvar = zeros (learn_logvar False); original_elbo_weight 0 adds nothing."""
    dt = next(m.parameters()).dtype
    c = m.cond_stage_model({"class_label": batch["labels"]})  # get_learned_conditioning: [B,1,D]
    x = batch["x_t"].to(dt)
    out = m.model.diffusion_model(x, batch["t"], context=torch.cat([c], 1))  # DiffusionWrapper crossattn
    target = batch["noise"].to(dt)
    loss_simple = torch.nn.functional.mse_loss(target, out, reduction="none").mean([1, 2, 3])
    logvar_t = torch.zeros(1000, dtype=dt)[batch["t"]]
    loss = loss_simple / torch.exp(logvar_t) + logvar_t
    return 1.0 * loss.mean(), out


def run_unet(m, batch, steps=3):
    params = list(m.model.parameters()) + list(m.cond_stage_model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    names = [n for n, _ in m.named_parameters()]
    loss, out = unet_loss(m, batch)
    opt.zero_grad()
    loss.backward()
    res = {"loss": loss.detach().reshape(1), "eps": out.detach()}
    for n, p in m.named_parameters():
        res["grad." + n] = p.grad.detach().clone()
    opt.step()
    for _ in range(steps - 1):
        loss, _ = unet_loss(m, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p in m.named_parameters():
        res["after3." + n] = p.detach().clone()
    return names, res


def make_train_unet(out):
    m = make_unet_model()
    g = torch.Generator().manual_seed(99)
    B = 2
    batch = {"x_t": torch.randn(B, 4, 8, 8, generator=g), "noise": torch.randn(B, 4, 8, 8, generator=g),
             "t": torch.tensor([17, 942], dtype=torch.int64), "labels": torch.tensor([3, 7], dtype=torch.int64)}
    weights = [(n, np32(p)) for n, p in m.state_dict().items()]
    m64 = copy.deepcopy(m).double()
    m64.model.diffusion_model.dtype = torch.float64
    names, r32 = run_unet(m, batch)
    with float64_unet():
        _, r64 = run_unet(m64, batch)
    order = ["loss", "eps"] + ["grad." + n for n in names] + ["after3." + n for n in names]
    outputs = [(k, np32(r32[k])) for k in order]
    outputs64 = {k: r64[k].detach().numpy() for k in order}
    kinds = {k: ("loss" if k in ("loss", "eps") else k.split(".")[0].replace("after3", "param")) for k in order}
    inputs = [("x_t", np32(batch["x_t"])), ("timesteps", batch["t"].numpy()), ("labels", batch["labels"].numpy()),
              ("noise", np32(batch["noise"]))]
    calls = [{"op": "train.diffusion_step",
              "inputs": {"x_t": "x_t", "timesteps": "timesteps", "class_label": "labels", "noise": "noise"},
              "params": {"loss": "l2 eps (mse_loss(eps, noise), p_losses defaults)", "optimizer": "AdamW",
                         "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-2, "steps": 3,
                         "trained": ["model.diffusion_model.", "cond_stage_model."]},
              "outputs": {"loss": "loss", "eps": "eps", "grad.<name>": "gradient of every parameter at the "
                          "weights of model.safetensors", "after3.<name>": "every parameter after 3 steps"}}]
    write_golden(out, "train_unet",
                 "UNetModel (model_channels 32, channel_mult 1,2, num_res_blocks 0, SpatialTransformer at ds 1,2 "
                 "+ mid, num_head_channels 16) with context = ClassEmbedder(labels) (cond_stage_trainable); every "
                 "parameter random (zero_module layers too); eps-prediction loss, gradients, 3 AdamW steps",
                 UNET_YAML, weights, inputs, outputs, kinds, outputs64, calls, {})


# ------------------------------------------------------------------ train_lora

LORA_RANK, LORA_ALPHA = 4, 2.0
# train_unet's UNet on one level (SpatialTransformers in the middle and output block 0): < 1 MB
LORA_UNET = dict(UNET, channel_mult=[1], attention_resolutions=[1])
LORA_YAML = UNET_YAML.replace("""        attention_resolutions:
        - 1
        - 2
""", """        attention_resolutions:
        - 1
""").replace("""        channel_mult:
        - 1
        - 2
""", """        channel_mult:
        - 1
""")
assert LORA_YAML.count("- 2") == 0
KOHYA_REPO = "kohya-ss/sd-scripts"
KOHYA_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"


class LoRAModule(torch.nn.Module):
    """A small rewrite of kohya-ss/sd-scripts networks/lora.py LoRAModule (commit 48d368f, lines
    25-121) with its training defaults: lora_down = Linear(in, r, bias=False) or, for a Conv2d,
    Conv2d(in, r, kernel, stride, padding, bias=False); lora_up = Linear(r, out, bias=False) /
    Conv2d(r, out, 1, bias=False); kaiming_uniform_(down, a=sqrt 5), zeros_(up); scale = alpha / r;
    apply_to() replaces org_module.forward by forward(x) = org_forward(x) + lora_up(lora_down(x))
    * multiplier * scale (multiplier 1; dropout, rank_dropout and module_dropout None)."""

    def __init__(self, org_module, rank, alpha):
        super().__init__()
        if isinstance(org_module, torch.nn.Conv2d):
            self.lora_down = torch.nn.Conv2d(org_module.in_channels, rank, org_module.kernel_size,
                                             org_module.stride, org_module.padding, bias=False)
            self.lora_up = torch.nn.Conv2d(rank, org_module.out_channels, (1, 1), (1, 1), bias=False)
        else:
            self.lora_down = torch.nn.Linear(org_module.in_features, rank, bias=False)
            self.lora_up = torch.nn.Linear(rank, org_module.out_features, bias=False)
        self.scale = alpha / rank
        torch.nn.init.kaiming_uniform_(self.lora_down.weight, a=np.sqrt(5))
        torch.nn.init.zeros_(self.lora_up.weight)
        self.org_forward = org_module.forward
        org_module.forward = self.forward

    def forward(self, x):
        return self.org_forward(x) + self.lora_up(self.lora_down(x)) * 1.0 * self.scale


def add_lora(unet, rank, alpha):
    """LoRANetwork.create_modules for the UNet with UNET_TARGET_REPLACE_MODULE: every Linear and
    1x1 Conv2d inside each SpatialTransformer (kohya's Transformer2DModel in diffusers naming).
    Returns {CompVis module path: LoRAModule}."""
    loras = {}
    for name, module in unet.named_modules():
        if module.__class__.__name__ != "SpatialTransformer":
            continue
        for child_name, child in module.named_modules():
            is_linear = isinstance(child, torch.nn.Linear)
            is_conv1x1 = isinstance(child, torch.nn.Conv2d) and child.kernel_size == (1, 1)
            if is_linear or is_conv1x1:
                loras[name + "." + child_name] = LoRAModule(child, rank, alpha)
    return loras


def lora_loss(m, batch):
    """p_losses' simple term as unet_loss, with the context given (several tokens, so to_k/to_v of
    the cross-attention get gradients)."""
    dt = next(m.parameters()).dtype
    out = m.model.diffusion_model(batch["x_t"].to(dt), batch["t"], context=batch["context"].to(dt))
    loss_simple = torch.nn.functional.mse_loss(batch["noise"].to(dt), out, reduction="none").mean([1, 2, 3])
    return loss_simple.mean(), out


def run_lora(m, loras, batch, steps=3):
    for p in m.parameters():
        p.requires_grad_(False)
    named = [("lora.model.diffusion_model.%s.%s.weight" % (path, w), getattr(l, w).weight)
             for path, l in loras.items() for w in ("lora_down", "lora_up")]
    for _, p in named:
        p.requires_grad_(True)
    opt = torch.optim.AdamW([p for _, p in named], lr=1e-3)
    loss, out = lora_loss(m, batch)
    opt.zero_grad()
    loss.backward()
    res = {"loss": loss.detach().reshape(1), "eps": out.detach()}
    for n, p in named:
        res["grad." + n] = p.grad.detach().clone()
    opt.step()
    for _ in range(steps - 1):
        loss, _ = lora_loss(m, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p in named:
        res["after3." + n] = p.detach().clone()
    return [n for n, _ in named], res


def make_train_lora(out):
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    torch.manual_seed(0)
    unet = UNetModel(**LORA_UNET)
    randomise(unet, torch.Generator().manual_seed(4321))
    base = [("model.diffusion_model." + n, np32(p)) for n, p in unet.state_dict().items()]
    torch.manual_seed(5)
    m = torch.nn.Module()
    m.model = torch.nn.Module()
    m.model.diffusion_model = unet
    loras = add_lora(unet, LORA_RANK, LORA_ALPHA)
    m.loras = torch.nn.ModuleDict({k.replace(".", "_"): v for k, v in loras.items()})  # so .double() reaches them
    for mod in unet.modules():  # BasicTransformerBlock(checkpoint=True) recomputes through its own
        if hasattr(mod, "checkpoint"):  # parameters() only, which the adapters are not: off (same numbers)
            mod.checkpoint = False
    with torch.no_grad():  # lora_up random too, else it hides lora_down's gradient
        g = torch.Generator().manual_seed(77)
        for l in loras.values():
            l.lora_up.weight.copy_(0.3 * (torch.rand(l.lora_up.weight.shape, generator=g) * 2 - 1))
    weights = base + [("lora.model.diffusion_model.%s.%s.weight" % (path, w), np32(getattr(l, w).weight))
                      for path, l in loras.items() for w in ("lora_down", "lora_up")]
    g = torch.Generator().manual_seed(98)
    B = 2
    batch = {"x_t": torch.randn(B, 4, 8, 8, generator=g), "noise": torch.randn(B, 4, 8, 8, generator=g),
             "t": torch.tensor([17, 942], dtype=torch.int64), "context": torch.randn(B, 3, 32, generator=g)}
    m64 = copy.deepcopy(m).double()
    m64.model.diffusion_model.dtype = torch.float64
    loras64 = {path: m64.loras[path.replace(".", "_")] for path in loras}
    for path, l in loras64.items():  # the copies' forwards are bound to the copied modules
        assert m64.model.diffusion_model.get_submodule(path).forward.__self__ is l
    names, r32 = run_lora(m, loras, batch)
    with float64_unet():
        _, r64 = run_lora(m64, loras64, batch)
    order = ["loss", "eps"] + ["grad." + n for n in names] + ["after3." + n for n in names]
    outputs = [(k, np32(r32[k])) for k in order]
    outputs64 = {k: r64[k].detach().numpy() for k in order}
    kinds = {k: ("loss" if k in ("loss", "eps") else k.split(".")[0].replace("after3", "param")) for k in order}
    inputs = [("x_t", np32(batch["x_t"])), ("timesteps", batch["t"].numpy()), ("context", np32(batch["context"])),
              ("noise", np32(batch["noise"]))]
    calls = [{"op": "train.lora_step",
              "inputs": {"x_t": "x_t", "timesteps": "timesteps", "context": "context", "noise": "noise"},
              "params": {"loss": "l2 eps (mse_loss(eps, noise))", "optimizer": "AdamW", "lr": 1e-3,
                         "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-2, "steps": 3,
                         "rank": LORA_RANK, "alpha": LORA_ALPHA, "trained": ["lora."],
                         "frozen": ["model.diffusion_model."]},
              "outputs": {"loss": "loss", "eps": "eps", "grad.<name>": "gradient of every adapter parameter",
                          "after3.<name>": "every adapter parameter after 3 steps"}}]
    write_golden(out, "train_lora",
                 "the train_unet UNetModel on one level (channel_mult 1; random weights, frozen) with kohya "
                 "LoRAModule adapters (rank 4, alpha 2) on every Linear / 1x1 Conv2d of its SpatialTransformers, "
                 "lora_up random; context given (3 tokens); eps loss, adapter gradients, 3 AdamW steps over the "
                 "adapters",
                 LORA_YAML, weights, inputs, outputs, kinds, outputs64, calls,
                 {"lora_reference": {"repo": KOHYA_REPO, "commit": KOHYA_COMMIT, "file": "networks/lora.py",
                                     "lines": "25-121 (LoRAModule), 945-1010 (create_modules)"}})


# ------------------------------------------------------------------ train_ae

DDCONFIG = dict(double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1],
                num_res_blocks=0, attn_resolutions=[8], dropout=0.0)
EMBED_DIM = 3
KL_WEIGHT = 0.1
AE_LR = 1e-3

AE_YAML = """model:
  base_learning_rate: 1.0e-03
  target: ldm.models.autoencoder.AutoencoderKL
  params:
    embed_dim: 3
    monitor: val/rec_loss
    ddconfig:
      double_z: true
      z_channels: 4
      resolution: 16
      in_channels: 3
      out_ch: 3
      ch: 32
      ch_mult:
      - 1
      - 1
      num_res_blocks: 0
      attn_resolutions:
      - 8
      dropout: 0.0
    lossconfig:
      target: ldm.modules.losses.LPIPSWithDiscriminator
      params:
        disc_start: 50001
        kl_weight: 0.1
        disc_weight: 0.5
        perceptual_weight: 0.0
"""


def make_ae_model():
    from ldm.models.autoencoder import AutoencoderKL
    torch.manual_seed(0)
    lossconfig = {"target": "ldm.modules.losses.LPIPSWithDiscriminator",
                  "params": {"disc_start": 50001, "kl_weight": KL_WEIGHT, "disc_weight": 0.5,
                             "perceptual_weight": 0.0}}
    m = AutoencoderKL(ddconfig=dict(DDCONFIG), lossconfig=lossconfig, embed_dim=EMBED_DIM)
    m.learning_rate = AE_LR
    randomise(torch.nn.ModuleList([m.encoder, m.decoder, m.quant_conv, m.post_quant_conv]),
              torch.Generator().manual_seed(4321))
    return m


class given_randn:
    """posterior.sample() draws torch.randn(mean.shape): return the stored noise instead."""

    def __init__(self, noise):
        self.noise, self.orig = noise, torch.randn

    def __enter__(self):
        def randn(*shape, **kw):
            shp = tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else tuple(shape)
            assert shp == tuple(self.noise.shape), (shp, self.noise.shape)
            return self.noise.clone()
        torch.randn = randn

    def __exit__(self, *a):
        torch.randn = self.orig


def run_ae(m, x_nhwc, noise, steps=3):
    opt_ae, _ = m.configure_optimizers()[0]
    names = [n for n, _ in m.named_parameters() if not n.startswith("loss.")]
    batch = {"image": x_nhwc}
    res = {}
    for step in range(steps):
        with given_randn(noise):
            loss = m.training_step(batch, 0, 0)
        opt_ae.zero_grad()
        loss.backward()
        if step == 0:
            res["loss"] = loss.detach().reshape(1)
            for n, p in m.named_parameters():
                if not n.startswith("loss."):
                    res["grad." + n] = p.grad.detach().clone()
        opt_ae.step()
    for n, p in m.named_parameters():
        if not n.startswith("loss."):
            res["after3." + n] = p.detach().clone()
    return names, res


def make_train_ae(out):
    m = make_ae_model()
    g = torch.Generator().manual_seed(77)
    B = 2
    x = torch.rand(B, 3, 16, 16, generator=g) * 2 - 1
    noise = torch.randn(B, EMBED_DIM, 8, 8, generator=g)
    weights = [(n, np32(p)) for n, p in m.state_dict().items() if not n.startswith("loss.")]
    m64 = copy.deepcopy(m).double()
    m64.get_input = lambda batch, k: batch[k].permute(0, 3, 1, 2).contiguous()  # without its .float()
    # moments and xrec of the first forward (for diagnosis)
    with torch.no_grad(), given_randn(noise):
        xrec0, post0 = m(x)
    with torch.no_grad(), given_randn(noise.double()):
        xrec0_64, post0_64 = m64(x.double())
    names, r32 = run_ae(m, x.permute(0, 2, 3, 1).contiguous(), noise)
    _, r64 = run_ae(m64, x.permute(0, 2, 3, 1).contiguous().double(), noise.double())
    r32["moments"], r32["xrec"] = post0.parameters, xrec0
    r64["moments"], r64["xrec"] = post0_64.parameters, xrec0_64
    order = ["loss", "moments", "xrec"] + ["grad." + n for n in names] + ["after3." + n for n in names]
    outputs = [(k, np32(r32[k])) for k in order]
    outputs64 = {k: r64[k].detach().numpy() for k in order}
    kinds = {k: ("loss" if k in ("loss", "moments", "xrec") else k.split(".")[0].replace("after3", "param"))
             for k in order}
    inputs = [("x", np32(x)), ("noise", np32(noise))]
    calls = [{"op": "train.autoencoder_step", "inputs": {"x": "x", "noise": "noise"},
              "params": {"loss": "sum|x - xrec| / B + kl_weight * KL / B (LPIPSWithDiscriminator, "
                         "perceptual_weight 0, logvar 0, before disc_start)", "kl_weight": KL_WEIGHT,
                         "optimizer": "Adam", "lr": AE_LR, "betas": [0.5, 0.9], "eps": 1e-8, "weight_decay": 0.0,
                         "steps": 3},
              "outputs": {"loss": "loss", "moments": "moments", "xrec": "xrec",
                          "grad.<name>": "gradient of every parameter at the weights of model.safetensors",
                          "after3.<name>": "every parameter after 3 steps"}}]
    write_golden(out, "train_ae",
                 "AutoencoderKL (ch 32, ch_mult 1,1, num_res_blocks 0 (decoder: 1 block per level), attn_resolutions [8] at resolution 16, "
                 "z_channels 4, embed_dim 3) 16x16 -> 8x8, every parameter random; training_step loss "
                 "(L1 + 0.1 KL through posterior.sample() with the given noise), gradients, 3 Adam(0.5, 0.9) steps",
                 AE_YAML, weights, inputs, outputs, kinds, outputs64, calls, {})


# ------------------------------------------------------------------ train_unet_attn*

def install_ddpm_stubs():
    """ddpm.py's imports that p_losses and register_schedule do not use."""
    pl = sys.modules["pytorch_lightning"]
    pl.utilities = _module("pytorch_lightning.utilities")
    _module("pytorch_lightning.utilities.distributed", rank_zero_only=lambda f: f)
    if "tqdm" not in sys.modules:
        try:
            import tqdm  # noqa: F401
        except ImportError:
            _module("tqdm", tqdm=lambda x, **k: x)
    try:
        import torchvision.utils  # noqa: F401
    except ImportError:
        _module("torchvision")
        _module("torchvision.utils", make_grid=None)


# AttentionBlock UNets (use_spatial_transformer false) with label_emb (num_classes) and the
# LatentDiffusion loss with its vlb term. Two variants: QKVAttentionLegacy with num_heads,
# resblock_updown, eps, learn_logvar; QKVAttention (use_new_attention_order) with
# num_head_channels, use_scale_shift_norm, x0 parameterization, fixed logvar.
ATTN_VARIANTS = {
    "train_unet_attn": dict(
        unet=dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1, 2],
                  num_res_blocks=0, channel_mult=[1, 1], num_heads=2, use_spatial_transformer=False,
                  resblock_updown=True, num_classes=10, legacy=True, dropout=0.0, use_checkpoint=True),
        loss=dict(parameterization="eps", l_simple_weight=0.7, original_elbo_weight=0.5, learn_logvar=True,
                  logvar_init=0.3),
        after3=True),
    "train_unet_attn_neworder": dict(
        unet=dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1],
                  num_res_blocks=0, channel_mult=[1, 1], num_head_channels=16, use_spatial_transformer=False,
                  use_new_attention_order=True, use_scale_shift_norm=True, num_classes=10, legacy=False,
                  dropout=0.0),
        loss=dict(parameterization="x0", l_simple_weight=1.0, original_elbo_weight=2.0, learn_logvar=False,
                  logvar_init=-0.4),
        after3=False),
}


def attn_yaml(v):
    u, lo = v["unet"], v["loss"]
    lines = ["model:", "  base_learning_rate: 1.0e-03", "  target: ldm.models.diffusion.ddpm.LatentDiffusion",
             "  params:", "    linear_start: 0.0015", "    linear_end: 0.0195", "    timesteps: 1000",
             "    first_stage_key: image", "    cond_stage_key: class_label", "    image_size: 8",
             "    channels: 4", "    use_ema: false"]
    for k in ("parameterization", "l_simple_weight", "original_elbo_weight", "learn_logvar", "logvar_init"):
        val = lo[k]
        lines.append("    %s: %s" % (k, str(val).lower() if isinstance(val, bool) else val))
    lines += ["    unet_config:", "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel", "      params:"]
    for k, val in u.items():
        if isinstance(val, list):
            lines.append("        %s:" % k)
            lines += ["        - %d" % x for x in val]
        else:
            lines.append("        %s: %s" % (k, str(val).lower() if isinstance(val, bool) else val))
    lines += ["    first_stage_config:", "      target: ldm.models.autoencoder.AutoencoderKL", "      params:",
              "        embed_dim: 4", "        ddconfig:", "          attn_type: none", "          double_z: true",
              "          z_channels: 4", "          resolution: 16", "          in_channels: 3", "          out_ch: 3",
              "          ch: 32", "          ch_mult:", "          - 1", "          - 2", "          num_res_blocks: 0",
              "          attn_resolutions: []", "          dropout: 0.0", "        lossconfig:",
              "          target: torch.nn.Identity", "    cond_stage_config: __is_unconditional__", ""]
    return "\n".join(lines)


class AttnLDM(torch.nn.Module):
    """What LatentDiffusion.p_losses reads of self (the reference's own methods bound below): the
    UNet under model.diffusion_model, register_schedule's buffers, logvar (a Parameter when
    learn_logvar), l_simple_weight, original_elbo_weight; apply_model passes the class labels as
    y (DiffusionWrapper 'adm')."""

    def __init__(self, unet, lo):
        from ldm.models.diffusion.ddpm import DDPM
        super().__init__()
        self.model = torch.nn.Module()
        self.model.diffusion_model = unet
        self.parameterization, self.loss_type, self.v_posterior = lo["parameterization"], "l2", 0.0
        self.l_simple_weight, self.original_elbo_weight = lo["l_simple_weight"], lo["original_elbo_weight"]
        self.learn_logvar = lo["learn_logvar"]
        self.logvar = torch.full(fill_value=lo["logvar_init"], size=(1000,))
        if self.learn_logvar:
            self.logvar = torch.nn.Parameter(self.logvar, requires_grad=True)
        DDPM.register_schedule(self, linear_start=0.0015, linear_end=0.0195, timesteps=1000)

    def apply_model(self, x, t, cond):
        return self.model.diffusion_model(x, t, y=cond)

    device = torch.device("cpu")

    def q_sample(self, *a, **k):
        from ldm.models.diffusion.ddpm import DDPM
        return DDPM.q_sample(self, *a, **k)

    def get_loss(self, *a, **k):
        from ldm.models.diffusion.ddpm import DDPM
        return DDPM.get_loss(self, *a, **k)

    def p_losses(self, *a, **k):
        from ldm.models.diffusion.ddpm import LatentDiffusion
        return LatentDiffusion.p_losses(self, *a, **k)


def run_attn(m, batch, steps):
    params = list(m.model.parameters()) + ([m.logvar] if m.learn_logvar else [])  # configure_optimizers
    opt = torch.optim.AdamW(params, lr=1e-3)
    dt = next(m.parameters()).dtype
    x0, noise = batch["x0"].to(dt), batch["noise"].to(dt)
    captured = {}
    orig_apply = m.apply_model

    def apply_model(x, t, cond):
        out = orig_apply(x, t, cond)
        captured["out"] = out
        return out
    m.apply_model = apply_model
    res = {}
    for step in range(steps):
        loss, ld = m.p_losses(x0, batch["labels"], batch["t"], noise=noise)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            res["loss"] = loss.detach().reshape(1)
            res["loss_vlb"] = ld["train/loss_vlb"].detach().reshape(1)
            res["out"] = captured["out"].detach()
            for n, p in m.named_parameters():
                res["grad." + n] = p.grad.detach().clone()
        opt.step()
    for n, p in m.named_parameters():
        res["after3." + n] = p.detach().clone()
    m.apply_model = orig_apply
    return [n for n, _ in m.named_parameters()], res


def make_train_unet_attn(out, name, v):
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    torch.manual_seed(0)
    m = AttnLDM(UNetModel(**v["unet"]), v["loss"])
    randomise(m.model, torch.Generator().manual_seed(2468))
    m.train()
    g = torch.Generator().manual_seed(135)
    B = 2
    batch = {"x0": torch.randn(B, 4, 8, 8, generator=g), "noise": torch.randn(B, 4, 8, 8, generator=g),
             "t": torch.tensor([3, 871], dtype=torch.int64), "labels": torch.tensor([4, 9], dtype=torch.int64)}
    weights = [(n, np32(p)) for n, p in m.named_parameters()]
    m64 = copy.deepcopy(m).double()
    m64.model.diffusion_model.dtype = torch.float64
    steps = 3 if v["after3"] else 1
    names, r32 = run_attn(m, batch, steps)
    with float64_unet():
        _, r64 = run_attn(m64, batch, steps)
    order = ["loss", "loss_vlb", "out"] + ["grad." + n for n in names]
    if v["after3"]:
        order += ["after3." + n for n in names]
    outputs = [(k, np32(r32[k])) for k in order]
    outputs64 = {k: r64[k].detach().numpy() for k in order}
    kinds = {k: ("loss" if k in ("loss", "loss_vlb", "out") else k.split(".")[0].replace("after3", "param"))
             for k in order}
    outputs.append(("lvlb_weights", np32(m.lvlb_weights)))
    outputs64["lvlb_weights"] = m.lvlb_weights.double().numpy()
    kinds["lvlb_weights"] = "loss"
    inputs = [("x0", np32(batch["x0"])), ("timesteps", batch["t"].numpy()), ("labels", batch["labels"].numpy()),
              ("noise", np32(batch["noise"]))]
    lo = v["loss"]
    calls = [{"op": "train.diffusion_step",
              "inputs": {"x0": "x0", "timesteps": "timesteps", "y": "labels", "noise": "noise"},
              "params": dict(lo, loss="LatentDiffusion.p_losses (q_sample, l2, logvar, lvlb_weights)",
                             optimizer="AdamW", lr=1e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=1e-2,
                             steps=steps, linear_start=0.0015, linear_end=0.0195, timesteps=1000,
                             trained=["model.diffusion_model."] + (["logvar"] if lo["learn_logvar"] else [])),
              "outputs": {"loss": "loss", "loss_vlb": "train/loss_vlb", "out": "the UNet output",
                          "lvlb_weights": "register_schedule's lvlb_weights",
                          "grad.<name>": "gradient of every parameter at the weights of model.safetensors",
                          "after3.<name>": "every parameter after 3 steps (train_unet_attn only)"}}]
    write_golden(out, name,
                 "UNetModel with legacy AttentionBlocks (use_spatial_transformer false) and label_emb "
                 "(num_classes 10, y = labels): %s; LatentDiffusion.p_losses with %s; every parameter random"
                 % (json.dumps(v["unet"]), json.dumps(lo)),
                 attn_yaml(v), weights, inputs, outputs, kinds, outputs64, calls, {})


# ------------------------------------------------------------------ train_ldm_vq

VQ_DDCONFIG = dict(double_z=False, z_channels=3, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1, 1],
                   num_res_blocks=0, attn_resolutions=[], dropout=0.0)
VQ_UNET = dict(image_size=4, in_channels=3, out_channels=3, model_channels=32, attention_resolutions=[1],
               num_res_blocks=0, channel_mult=[1], num_head_channels=16, use_spatial_transformer=True,
               transformer_depth=1, context_dim=32, legacy=False)
VQ_SCALE = 0.8

VQ_YAML = """model:
  base_learning_rate: 1.0e-03
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.0015
    linear_end: 0.0195
    timesteps: 1000
    first_stage_key: image
    cond_stage_key: class_label
    image_size: 4
    channels: 3
    cond_stage_trainable: true
    conditioning_key: crossattn
    scale_factor: 0.8
    use_ema: false
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: 4
        in_channels: 3
        out_channels: 3
        model_channels: 32
        attention_resolutions:
        - 1
        num_res_blocks: 0
        channel_mult:
        - 1
        num_head_channels: 16
        use_spatial_transformer: true
        transformer_depth: 1
        context_dim: 32
        legacy: false
    first_stage_config:
      target: ldm.models.autoencoder.VQModelInterface
      params:
        embed_dim: 3
        n_embed: 16
        ddconfig:
          double_z: false
          z_channels: 3
          resolution: 16
          in_channels: 3
          out_ch: 3
          ch: 32
          ch_mult:
          - 1
          - 1
          - 1
          num_res_blocks: 0
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity
    cond_stage_config:
      target: ldm.modules.encoders.modules.ClassEmbedder
      params:
        n_classes: 10
        embed_dim: 32
        key: class_label
"""


class CodebookOnly(torch.nn.Module):
    """taming's VectorQuantizer2 as far as LatentDiffusion's training reads it: its codebook
    parameter quantize.embedding.weight (saved with the first stage, used at sampling time).
    encode_first_stage of a VQModelInterface never quantises, so it is never called here."""

    def __init__(self, n_e, e_dim, beta=0.25, remap=None, sane_index_shape=False):
        super().__init__()
        self.embedding = torch.nn.Embedding(n_e, e_dim)

    def forward(self, z):
        raise RuntimeError("the quantizer is not part of the training step")


class VQLDM(torch.nn.Module):
    """The parts of LatentDiffusion that its training step on a VQ first stage reads, with the
    reference's own methods bound below: first_stage_model (VQModelInterface, frozen),
    model.diffusion_model, cond_stage_model (ClassEmbedder, trainable), scale_factor, the schedule
    buffers; apply_model routes the context as DiffusionWrapper 'crossattn' does."""

    def __init__(self, fs, unet, cond):
        from ldm.models.diffusion.ddpm import DDPM
        super().__init__()
        self.first_stage_model = fs
        self.model = torch.nn.Module()
        self.model.diffusion_model = unet
        self.cond_stage_model = cond
        self.scale_factor = VQ_SCALE
        self.parameterization, self.loss_type, self.v_posterior = "eps", "l2", 0.0
        self.l_simple_weight, self.original_elbo_weight, self.learn_logvar = 1.0, 0.0, False
        self.logvar = torch.zeros(1000)
        DDPM.register_schedule(self, linear_start=0.0015, linear_end=0.0195, timesteps=1000)

    device = torch.device("cpu")

    def apply_model(self, x, t, cond):
        return self.model.diffusion_model(x, t, context=torch.cat([cond], 1))

    def encode_first_stage(self, *a):
        from ldm.models.diffusion.ddpm import LatentDiffusion
        return LatentDiffusion.encode_first_stage(self, *a)

    def get_first_stage_encoding(self, *a):
        from ldm.models.diffusion.ddpm import LatentDiffusion
        return LatentDiffusion.get_first_stage_encoding(self, *a)

    def q_sample(self, *a, **k):
        from ldm.models.diffusion.ddpm import DDPM
        return DDPM.q_sample(self, *a, **k)

    def get_loss(self, *a, **k):
        from ldm.models.diffusion.ddpm import DDPM
        return DDPM.get_loss(self, *a, **k)

    def p_losses(self, *a, **k):
        from ldm.models.diffusion.ddpm import LatentDiffusion
        return LatentDiffusion.p_losses(self, *a, **k)


def make_vq_model():
    import ldm.models.autoencoder as ae
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from ldm.modules.encoders.modules import ClassEmbedder
    ae.VectorQuantizer = CodebookOnly
    torch.manual_seed(0)
    fs = ae.VQModelInterface(embed_dim=3, n_embed=16, ddconfig=dict(VQ_DDCONFIG),
                             lossconfig={"target": "torch.nn.Identity"})
    m = VQLDM(fs, UNetModel(**VQ_UNET), ClassEmbedder(embed_dim=32, n_classes=N_CLASSES, key="class_label"))
    randomise(m, torch.Generator().manual_seed(9753))
    fs.eval()  # LatentDiffusion.instantiate_first_stage: eval, train = disabled_train, no grad
    for p in fs.parameters():
        p.requires_grad = False
    return m


def run_vq(m, batch):
    """LatentDiffusion.shared_step: get_input's encode_first_stage + get_first_stage_encoding
    (under no_grad, as get_input), get_learned_conditioning, p_losses (eps, l2, logvar 0)."""
    dt = next(m.parameters()).dtype
    with torch.no_grad():
        h = m.encode_first_stage(batch["x"].to(dt))
        z = m.get_first_stage_encoding(h).detach()
    captured = {}
    orig = m.apply_model

    def apply_model(x, t, cond):
        captured["out"] = orig(x, t, cond)
        return captured["out"]
    m.apply_model = apply_model
    c = m.cond_stage_model({"class_label": batch["labels"]})
    loss, _ = m.p_losses(z, c, batch["t"], noise=batch["noise"].to(dt))
    m.apply_model = orig
    trained = [(n, p) for n, p in m.named_parameters() if not n.startswith("first_stage_model.")]
    for _, p in trained:
        p.grad = None
    loss.backward()
    res = {"h": h, "z": z, "loss": loss.detach().reshape(1), "eps": captured["out"].detach()}
    for n, p in trained:
        res["grad." + n] = p.grad.detach().clone()
    return [n for n, _ in trained], res


def make_train_ldm_vq(out):
    m = make_vq_model()
    m.train()
    m.first_stage_model.eval()
    g = torch.Generator().manual_seed(246)
    B = 2
    batch = {"x": torch.rand(B, 3, 16, 16, generator=g) * 2 - 1, "noise": torch.randn(B, 3, 4, 4, generator=g),
             "t": torch.tensor([17, 640], dtype=torch.int64), "labels": torch.tensor([3, 7], dtype=torch.int64)}
    weights = [(n, np32(p)) for n, p in m.state_dict().items()
               if n.startswith(("first_stage_model.", "model.", "cond_stage_model."))]
    m64 = copy.deepcopy(m).double()
    m64.model.diffusion_model.dtype = torch.float64
    names, r32 = run_vq(m, batch)
    with float64_unet():
        _, r64 = run_vq(m64, batch)
    order = ["h", "z", "loss", "eps"] + ["grad." + n for n in names]
    outputs = [(k, np32(r32[k])) for k in order]
    outputs64 = {k: r64[k].detach().numpy() for k in order}
    kinds = {k: ("grad" if k.startswith("grad.") else "loss") for k in order}
    inputs = [("x", np32(batch["x"])), ("timesteps", batch["t"].numpy()), ("labels", batch["labels"].numpy()),
              ("noise", np32(batch["noise"]))]
    calls = [{"op": "train.ldm_vq_step",
              "inputs": {"x": "x", "timesteps": "timesteps", "labels": "labels", "noise": "noise"},
              "params": {"scale_factor": VQ_SCALE, "loss": "LatentDiffusion.p_losses (eps, l2, logvar 0)",
                         "first_stage": "VQModelInterface.encode (pre-quantisation h), frozen",
                         "trained": ["model.diffusion_model.", "cond_stage_model."]},
              "outputs": {"h": "encode_first_stage(x)", "z": "get_first_stage_encoding(h) = scale_factor * h",
                          "loss": "loss", "eps": "the UNet output",
                          "grad.<name>": "gradient of every trained parameter"}}]
    write_golden(out, "train_ldm_vq",
                 "LatentDiffusion on a VQModelInterface first stage (f4: ch 32, ch_mult 1,1,1, embed_dim 3, "
                 "n_embed 16, 16x16 -> 4x4) with scale_factor 0.8; UNetModel %s with context = ClassEmbedder"
                 "(labels); encode_first_stage, get_first_stage_encoding, p_losses; every parameter random"
                 % json.dumps(VQ_UNET), VQ_YAML, weights, inputs, outputs, kinds, outputs64, calls, {})


# ------------------------------------------------------------------ train_unet_noconv

NOCONV_UNET = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[],
                   num_res_blocks=0, channel_mult=[1, 1, 1], num_heads=2, use_spatial_transformer=False,
                   conv_resample=False, legacy=True)


def run_noconv(m, batch):
    """L = sum(r * UNetModel(x, t)): the output, d L / d x (through every AvgPool2d and nearest
    Upsample) and every parameter's gradient."""
    dt = next(m.parameters()).dtype
    x = batch["x"].to(dt).clone().requires_grad_(True)
    for p in m.parameters():
        p.grad = None
    out = m(x, batch["t"])
    (out * batch["r"].to(dt)).sum().backward()
    res = {"out": out.detach(), "grad.x": x.grad.detach()}
    for n, p in m.named_parameters():
        res["grad.model.diffusion_model." + n] = p.grad.detach().clone()
    return ["model.diffusion_model." + n for n, _ in m.named_parameters()], res


def make_train_unet_noconv(out):
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    torch.manual_seed(0)
    m = UNetModel(**NOCONV_UNET)
    assert not any(".op." in n or ".conv." in n for n, _ in m.named_parameters()), \
        "conv_resample=False leaves Downsample (op) and Upsample (conv) without weights"
    randomise(m, torch.Generator().manual_seed(8642))
    g = torch.Generator().manual_seed(531)
    B = 2
    batch = {"x": torch.randn(B, 4, 8, 8, generator=g), "t": torch.tensor([5, 733], dtype=torch.int64),
             "r": torch.randn(B, 4, 8, 8, generator=g)}
    weights = [("model.diffusion_model." + n, np32(p)) for n, p in m.named_parameters()]
    m64 = copy.deepcopy(m).double()
    m64.dtype = torch.float64
    names, r32 = run_noconv(m, batch)
    with float64_unet():
        _, r64 = run_noconv(m64, batch)
    order = ["out", "grad.x"] + ["grad." + n for n in names]
    outputs = [(k, np32(r32[k])) for k in order]
    outputs64 = {k: r64[k].detach().numpy() for k in order}
    kinds = {k: ("loss" if k == "out" else "grad") for k in order}
    inputs = [("x", np32(batch["x"])), ("timesteps", batch["t"].numpy()), ("r", np32(batch["r"]))]
    calls = [{"op": "train.unet_grad", "inputs": {"x": "x", "timesteps": "timesteps", "r": "r"},
              "params": {"loss": "sum(r * UNetModel(x, timesteps))"},
              "outputs": {"out": "UNetModel(x, timesteps)", "grad.x": "d loss / d x",
                          "grad.<name>": "gradient of every parameter"}}]
    yaml = attn_yaml({"unet": NOCONV_UNET, "loss": dict(parameterization="eps", l_simple_weight=1.0,
                                                         original_elbo_weight=0.0, learn_logvar=False,
                                                         logvar_init=0.0)})
    yaml = yaml.replace("    cond_stage_key: class_label\n", "").replace("attention_resolutions:\n",
                                                                             "attention_resolutions: []\n")
    write_golden(out, "train_unet_noconv",
                 "UNetModel with conv_resample=False (Downsample = AvgPool2d(2, 2), Upsample = nearest x2, no "
                 "weights): %s; output and gradients of sum(r * out); every parameter random" % json.dumps(NOCONV_UNET),
                 yaml, weights, inputs, outputs, kinds, outputs64, calls, {})


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.path.insert(0, os.path.abspath(sys.argv[1]))
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden")
    install_stubs()
    torch.set_num_threads(1)
    # optional golden names: after OUT_DIR, or GOLDENS=a,b (both may be given); none: all of them
    only = set(sys.argv[3:]) | {n for n in os.environ.get("GOLDENS", "").split(",") if n}
    known = {"train_unet", "train_ae", "train_lora", "train_ldm_vq", "train_unet_noconv"} | set(ATTN_VARIANTS)
    if only - known:
        sys.exit("unknown golden(s) %s; known: %s" % (", ".join(sorted(only - known)), ", ".join(sorted(known))))
    if not only or "train_unet" in only:
        make_train_unet(out)
    if not only or "train_ae" in only:
        make_train_ae(out)
    if not only or "train_lora" in only:
        make_train_lora(out)
    install_ddpm_stubs()
    for name, v in ATTN_VARIANTS.items():
        if not only or name in only:
            make_train_unet_attn(out, name, v)
    if not only or "train_ldm_vq" in only:
        make_train_ldm_vq(out)
    if not only or "train_unet_noconv" in only:
        make_train_unet_noconv(out)


if __name__ == "__main__":
    main()
