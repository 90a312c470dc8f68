#!/usr/bin/env python3
"""make_taesd_goldens.py - goldens of the tiny autoencoders (TAESD / TAESDXL, issue #14) made with
the OFFICIAL code, so that the conformance runner can check lib/models/taesd.c without PyTorch.

What it makes (the ../shared/fixtures layout: io.safetensors + case.json per directory; the
weights file is named in each call's params, so the runner does not take it for an LDM model):

  tests/fixtures/taesd_sd_decoder  taesd.py `Decoder()` exactly as released (64 channels are
      fixed there), in the layout of the released taesd_decoder.pth / taesdxl_decoder.pth
      (`1.weight`, `3.conv.0.weight`, ...; TAESDXL has the same architecture), saved as
      taesd_decoder.safetensors. Op taesd.decode: z [1,4,8,8] (std 2.5, so the tanh clamp is
      exercised) -> image [1,3,64,64] = 2 * Decoder(z) - 1, the library's [-1,1] convention
      (diffusers' DecoderTiny returns exactly this).
  tests/fixtures/taesd_diffusers   diffusers' AutoencoderTiny layout (`encoder.layers.N.*`,
      `decoder.layers.N.*` in one file, as madebyollin/taesd's diffusion_pytorch_model.
      safetensors) built by diffusers' own EncoderTiny / DecoderTiny / AutoencoderTinyBlock code
      with block_out_channels 16 (a constructor option of AutoencoderTiny; the released models use
      64) to keep the file small. Ops: taesd.encode x [1,3,32,32] in [-1,1] -> z [1,4,4,4]
      (EncoderTiny: layers((x+1)/2)), taesd.decode z_in [1,4,8,8] -> image [1,3,64,64], and
      taesd.encode of that image -> z_back [1,4,8,8] (the round trip). The same encoder is also
      written in the taesd.py key layout as a PyTorch zip `taesd_encoder.pth` (torch.save of the
      state dict, like the released files) and encoded again -> z_pth (same values as z).

Weights are drawn normal with std sqrt(1 / fan_in) (biases N(0, 0.05)) so activations stay
O(1) through 30 ReLU convolutions, ROUNDED TO FLOAT16 FIRST and stored as F16; the outputs are
computed in float32 from the rounded values (as the shared fixtures' F16 cases). Each output is
rerun in float64 for f32_vs_f64_max_err; tolerance atol = max(1e-4 * max(1, max|ref|), 20 *
|f32 - f64|), rtol 1e-4 (../shared/fixtures/README.md).

The script also checks, at the released width of 64, that diffusers' DecoderTiny / EncoderTiny
with the taesd.py weights under the key mapping the library uses (decoder.layers.{i-1} =
taesd decoder {i}, since taesd's Clamp() is module 0 and diffusers applies it in forward();
encoder.layers.{i} = taesd encoder {i}) give 2 * Decoder(z) - 1 and Encoder((x + 1) / 2) to float
rounding: the two released layouts are the same network.

Scaling (what the library does with it, docs/models.md): TAESD's latents ARE the diffusion
model's latents (the VAE latent times scale_factor: taesd's README "TAESD's scale_factor for
latents is 1", diffusers' AutoencoderTiny scaling_factor 1.0), images are [0,1] at the network
(diffusers maps [-1,1] in and out, as here).

References (nothing of them is committed here):
  https://github.com/madebyollin/taesd commit 5cccb12dc72074a4be35680c3b108548a7c69978 (taesd.py)
  diffusers from pip (the goldens were made with the copy in /tmp/ldvenv: __version__ 0.30.3, its
      dist-info says 0.42.1; case.json records both; these three classes are the same in both
      versions): src/diffusers/models/autoencoders/vae.py EncoderTiny, DecoderTiny;
      src/diffusers/models/unets/unet_2d_blocks.py AutoencoderTinyBlock. diffusers does not
      import under torch 1.13, so the three classes' source is taken from the installed package
      with ast and executed with torch.nn and get_activation("relu") = nn.ReLU() (its result for
      "relu"); the layer construction and forward are diffusers' own.

How to run (never needed to run the tests): Debian's python3-torch (1.13), numpy, safetensors:
    git clone https://github.com/madebyollin/taesd /tmp/taesd-ref
    git -C /tmp/taesd-ref checkout 5cccb12dc72074a4be35680c3b108548a7c69978
    /usr/bin/python3 -m venv --system-site-packages /tmp/ldvenv
    /tmp/ldvenv/bin/pip install diffusers safetensors
    /tmp/ldvenv/bin/python tests/reference/make_taesd_goldens.py /tmp/taesd-ref [OUT_DIR]
OUT_DIR defaults to tests/fixtures next to this script.
"""
import ast
import importlib.metadata
import importlib.util
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

REF_REPO = "madebyollin/taesd"
REF_COMMIT = "5cccb12dc72074a4be35680c3b108548a7c69978"
DIFFUSERS_VERSION = None  # read from the installed package, recorded in case.json


def load_taesd(ref_dir):
    spec = importlib.util.spec_from_file_location("taesd_ref", os.path.join(ref_dir, "taesd.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_diffusers_tiny():
    """EncoderTiny, DecoderTiny, AutoencoderTinyBlock from the installed diffusers sources."""
    spec = importlib.util.find_spec("diffusers")
    root = os.path.dirname(spec.origin)
    ns = {"torch": torch, "nn": nn, "get_activation": lambda name: {"relu": nn.ReLU()}[name],
          "Optional": None, "Tuple": tuple, "Union": None}
    wanted = [("models/unets/unet_2d_blocks.py", "AutoencoderTinyBlock"),
              ("models/autoencoders/vae.py", "EncoderTiny"), ("models/autoencoders/vae.py", "DecoderTiny")]
    for rel, cls in wanted:
        src = open(os.path.join(root, rel)).read()
        node = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef) and n.name == cls)
        exec(compile(ast.Module(body=[node], type_ignores=[]), rel, "exec"), ns)
    global DIFFUSERS_VERSION
    version = open(os.path.join(root, "__init__.py")).read().split('__version__ = "')[1].split('"')[0]
    DIFFUSERS_VERSION = "%s (dist-info %s)" % (version, importlib.metadata.version("diffusers"))
    return ns["EncoderTiny"], ns["DecoderTiny"]


def diffusers_tiny(EncoderTiny, DecoderTiny, width):
    """AutoencoderTiny's encoder/decoder with its default block counts, as its constructor builds them."""
    m = nn.Module()
    m.encoder = EncoderTiny(in_channels=3, out_channels=4, num_blocks=(1, 3, 3, 3),
                            block_out_channels=(width,) * 4, act_fn="relu")
    m.decoder = DecoderTiny(in_channels=4, out_channels=3, num_blocks=(3, 3, 3, 1),
                            block_out_channels=(width,) * 4, upsampling_scaling_factor=2, act_fn="relu",
                            upsample_fn="nearest")
    return m


def randomize(module, gen):
    """Normal weights (std fan_in^-1/2), small biases, rounded to float16 (kept in float32)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight"):
                fan_in = p[0].numel()
                v = torch.randn(p.shape, generator=gen) * (1.0 / fan_in) ** 0.5
            else:
                v = torch.randn(p.shape, generator=gen) * 0.05
            p.copy_(v.half().float())


def run(module, x, dtype):
    m = module.to(dtype)
    with torch.no_grad():
        out = m(x.to(dtype))
    module.float()
    return out


def tolerance(ref32, ref64):
    err = float((ref32.double() - ref64).abs().max())
    mx = float(ref32.abs().max())
    return {"atol": float("%.3g" % max(1e-4 * max(1.0, mx), 20 * err)), "rtol": 1e-4,
            "max_abs": float("%.6g" % mx), "f32_vs_f64_max_err": float("%.3g" % err)}


def f16_state(sd):
    return {k: v.detach().half().contiguous() for k, v in sd.items()}


def spec(t):
    return {"shape": list(t.shape), "dtype": "F32"}


def write_case(out, name, description, calls, inputs, outputs, tols, extra):
    os.makedirs(out, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in {**inputs, **outputs}.items()},
              os.path.join(out, "io.safetensors"))
    case = {"kind": "tiny_autoencoder", "name": name, "description": description,
            "reference": {"repo": REF_REPO, "commit": REF_COMMIT, "diffusers": DIFFUSERS_VERSION},
            "weights_dtype": "F16", "calls": calls,
            "inputs": {k: spec(v) for k, v in inputs.items()},
            "outputs": {k: spec(v) for k, v in outputs.items()},
            "atol": max(t["atol"] for t in tols.values()), "rtol": 1e-4, "tolerances": tols, **extra}
    with open(os.path.join(out, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
        f.write("\n")


def check_layouts(taesd, EncoderTiny, DecoderTiny, gen):
    """At width 64: diffusers' classes with the taesd weights under the library's key mapping."""
    enc, dec = taesd.Encoder(4), taesd.Decoder(4)
    randomize(enc, gen)
    randomize(dec, gen)
    d = diffusers_tiny(EncoderTiny, DecoderTiny, 64)
    mapped = {}
    for k, v in enc.state_dict().items():
        mapped["encoder.layers." + k] = v
    for k, v in dec.state_dict().items():
        i, rest = k.split(".", 1)
        mapped["decoder.layers.%d.%s" % (int(i) - 1, rest)] = v
    d.load_state_dict(mapped, strict=True)
    z = torch.randn(1, 4, 8, 8, generator=gen) * 2.5
    x = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    with torch.no_grad():
        e1 = (d.decoder(z) - (dec(z) * 2 - 1)).abs().max()
        e2 = (d.encoder(x) - enc((x + 1) / 2)).abs().max()
    assert e1 < 1e-5 and e2 < 1e-5, (float(e1), float(e2))
    print("layout check at width 64: decoder %.2g, encoder %.2g" % (float(e1), float(e2)))


def make_sd_decoder(taesd, out, gen):
    dec = taesd.Decoder(4)
    randomize(dec, gen)
    z = torch.randn(1, 4, 8, 8, generator=gen) * 2.5
    img32 = run(dec, z, torch.float32) * 2 - 1
    img64 = run(dec, z, torch.float64) * 2 - 1
    os.makedirs(out, exist_ok=True)
    save_file(f16_state(dec.state_dict()), os.path.join(out, "taesd_decoder.safetensors"))
    calls = [{"op": "taesd.decode", "inputs": {"z": "z"}, "params": {"file": "taesd_decoder.safetensors"},
              "outputs": {"image": "image"}}]
    write_case(out, "taesd_sd_decoder",
               "taesd.py Decoder() (64 channels, 4 latent channels) in the released taesd_decoder.pth key "
               "layout, float16 weights; image = 2 * Decoder(z) - 1",
               calls, {"z": z}, {"image": img32}, {"image": tolerance(img32, img64)}, {})


def make_diffusers(EncoderTiny, DecoderTiny, out, gen):
    m = diffusers_tiny(EncoderTiny, DecoderTiny, 16)
    randomize(m, gen)
    x = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    z_in = torch.randn(1, 4, 8, 8, generator=gen) * 2.5
    res = {}
    for dt in (torch.float32, torch.float64):
        mm = m.to(dt)
        with torch.no_grad():
            zz = mm.encoder(x.to(dt))
            img = mm.decoder(z_in.to(dt))
            back = mm.encoder(img)
        res[dt] = (zz, img, back)
    m.float()
    (z32, img32, back32), (z64, img64, back64) = res[torch.float32], res[torch.float64]
    os.makedirs(out, exist_ok=True)
    save_file(f16_state(m.state_dict()), os.path.join(out, "diffusion_pytorch_model.safetensors"))
    taesd_keys = {k[len("encoder.layers."):]: v.detach().half().clone()
                  for k, v in m.state_dict().items() if k.startswith("encoder.layers.")}
    torch.save(taesd_keys, os.path.join(out, "taesd_encoder.pth"))
    f = "diffusion_pytorch_model.safetensors"
    calls = [
        {"op": "taesd.encode", "inputs": {"x": "x"}, "params": {"file": f}, "outputs": {"z": "z"}},
        {"op": "taesd.decode", "inputs": {"z": "z_in"}, "params": {"file": f}, "outputs": {"image": "image"}},
        {"op": "taesd.encode", "inputs": {"x": "image"}, "params": {"file": f}, "outputs": {"z": "z_back"}},
        {"op": "taesd.encode", "inputs": {"x": "x"}, "params": {"file": "taesd_encoder.pth"},
         "outputs": {"z": "z_pth"}},
    ]
    outputs = {"z": z32, "image": img32, "z_back": back32, "z_pth": z32.clone()}
    tols = {"z": tolerance(z32, z64), "image": tolerance(img32, img64), "z_back": tolerance(back32, back64),
            "z_pth": tolerance(z32, z64)}
    write_case(out, "taesd_diffusers",
               "diffusers AutoencoderTiny layout (encoder.layers.*, decoder.layers.*; block_out_channels 16), "
               "float16 weights; encode [-1,1] images, decode to [-1,1], round trip; the encoder again from "
               "taesd_encoder.pth (taesd.py key layout, PyTorch zip)",
               calls, {"x": x, "z_in": z_in}, outputs, tols, {})


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: make_taesd_goldens.py TAESD_REPO_DIR [OUT_DIR]")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "fixtures")
    taesd = load_taesd(sys.argv[1])
    EncoderTiny, DecoderTiny = load_diffusers_tiny()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(20261207)
    check_layouts(taesd, EncoderTiny, DecoderTiny, gen)
    make_sd_decoder(taesd, os.path.join(out, "taesd_sd_decoder"), gen)
    make_diffusers(EncoderTiny, DecoderTiny, os.path.join(out, "taesd_diffusers"), gen)
    print("written under", out)


if __name__ == "__main__":
    np.random.seed(0)
    main()
