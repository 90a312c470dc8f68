#!/usr/bin/python3
"""torch_compare.py - the Stable Diffusion 1.x UNet in PyTorch next to libldm.

Builds the SD1.5 UNet (CompVis ldm.modules.diffusionmodules.openaimodel.UNetModel with
configs/stable-diffusion/v1-inference.yaml: 320 channels, mult 1,2,4,4, 2 ResBlocks per level,
SpatialTransformers at 64/32/16 with 8 heads and 768-wide context) in plain PyTorch with the
reference's parameter names and attention formulation (einsum + softmax, as the reference runs on
a CPU with PyTorch 1.13), seeded random weights. It writes those weights into an SD1.5-shaped
safetensors checkpoint (plus random VAE and CLIP weights so that libldm recognises the model),
loads that checkpoint with libldm through the Python binding, runs both UNets on the same batch-2
input (the classifier-free-guidance batch) and prints both times, their ratio and how far the two
outputs are apart. Timing only; nothing here is a test.

Usage, from the repository root after `make BUILD=build` (the shared library must exist):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 bench/torch_compare.py \\
        --size 512 --threads 2 --lib build/libldm.so.0

    --size PIXELS        image size (latent = size / 8), default 512
    --threads N          threads for both (torch.set_num_threads and libldm's pool), default 2
    --repeat N           timed runs each, the best is printed (default 1)
    --checkpoint PATH    where to write the checkpoint (default /tmp/ldm-torch-compare.safetensors)
    --dtype f32|f16      storage of the written UNet weights (default f32; with f16 both sides
                         compute with the f16-rounded values)
    --write-only         write the checkpoint and stop (a real-size f16 SD1.5 file for memory
                         measurements: --dtype f16 --write-only)

Needs Debian's python3-torch (apt-get install python3-torch; PyTorch 1.13) and numpy; run it
with /usr/bin/python3, which is the interpreter those packages install into.
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------- the UNet (reference names)


def norm32(ch, eps=1e-5):
    return nn.GroupNorm(32, ch, eps=eps)


class ResBlock(nn.Module):
    def __init__(self, ch, out, emb=1280):
        super().__init__()
        self.in_layers = nn.Sequential(norm32(ch), nn.SiLU(), nn.Conv2d(ch, out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, out))
        self.out_layers = nn.Sequential(norm32(out), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if ch == out else nn.Conv2d(ch, out, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    def __init__(self, dim, ctx_dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(ctx_dim, dim, bias=False)
        self.to_v = nn.Linear(ctx_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x, context=None):
        h = self.heads
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        b, n, d = q.shape
        q, k, v = (t.reshape(b, t.shape[1], h, d // h).permute(0, 2, 1, 3).reshape(b * h, t.shape[1], d // h)
                   for t in (q, k, v))
        sim = torch.einsum("b i d, b j d -> b i j", q, k) * self.scale
        out = torch.einsum("b i j, b j d -> b i d", sim.softmax(dim=-1), v)
        out = out.reshape(b, h, n, d // h).permute(0, 2, 1, 3).reshape(b, n, d)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim, out):
        super().__init__()
        self.proj = nn.Linear(dim, out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, heads, ctx_dim):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, ctx_dim, heads)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, ch, heads=8, ctx_dim=768):
        super().__init__()
        self.norm = norm32(ch, eps=1e-6)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(ch, heads, ctx_dim)])
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x, context):
        b, c, hh, ww = x.shape
        h = self.proj_in(self.norm(x))
        h = h.reshape(b, c, hh * ww).transpose(1, 2)
        for blk in self.transformer_blocks:
            h = blk(h, context)
        h = h.transpose(1, 2).reshape(b, c, hh, ww)
        return self.proj_out(h) + x


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Step(nn.ModuleList):
    """TimestepEmbedSequential: ResBlocks take emb, transformers take context."""

    def forward(self, x, emb, context):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    def __init__(self, mc=320, mult=(1, 2, 4, 4), nrb=2, attn_ds=(1, 2, 4)):
        super().__init__()
        self.mc = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, 4 * mc), nn.SiLU(), nn.Linear(4 * mc, 4 * mc))
        self.input_blocks = nn.ModuleList([Step([nn.Conv2d(4, mc, 3, padding=1)])])
        chans, ch, ds = [mc], mc, 1
        for level, m in enumerate(mult):
            for _ in range(nrb):
                layers = [ResBlock(ch, m * mc)]
                ch = m * mc
                if ds in attn_ds:
                    layers.append(SpatialTransformer(ch))
                self.input_blocks.append(Step(layers))
                chans.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(Step([Downsample(ch)]))
                chans.append(ch)
                ds *= 2
        self.middle_block = Step([ResBlock(ch, ch), SpatialTransformer(ch), ResBlock(ch, ch)])
        self.output_blocks = nn.ModuleList()
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(nrb + 1):
                layers = [ResBlock(ch + chans.pop(), m * mc)]
                ch = m * mc
                if ds in attn_ds:
                    layers.append(SpatialTransformer(ch))
                if level and i == nrb:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Step(layers))
        self.out = nn.Sequential(norm32(ch), nn.SiLU(), nn.Conv2d(ch, 4, 3, padding=1))

    def timestep_embedding(self, t):
        half = self.mc // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, x, t, context):
        emb = self.time_embed(self.timestep_embedding(t))
        hs, h = [], x
        for blk in self.input_blocks:
            h = blk(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for blk in self.output_blocks:
            h = blk(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)


# ---------------------------------------------------------------- the rest of an SD1 checkpoint

def vae_shapes():
    """first_stage_model.* of AutoencoderKL (kl-f8: ch 128, mult 1,2,4,4, 2 ResnetBlocks)."""
    s = {}

    def conv(n, cin, cout, k=3):
        s[n + ".weight"], s[n + ".bias"] = (cout, cin, k, k), (cout,)

    def norm(n, c):
        s[n + ".weight"], s[n + ".bias"] = (c,), (c,)

    def res(n, cin, cout):
        norm(n + ".norm1", cin), conv(n + ".conv1", cin, cout), norm(n + ".norm2", cout), conv(n + ".conv2", cout, cout)
        if cin != cout:
            conv(n + ".nin_shortcut", cin, cout, 1)

    def attn(n, c):
        norm(n + ".norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(n + "." + p, c, c, 1)

    mult, ch = (1, 2, 4, 4), 128
    conv("encoder.conv_in", 3, ch)
    cin = ch
    for i, m in enumerate(mult):
        for j in range(2):
            res("encoder.down.%d.block.%d" % (i, j), cin, ch * m)
            cin = ch * m
        if i != 3:
            conv("encoder.down.%d.downsample.conv" % i, cin, cin)
    res("encoder.mid.block_1", 512, 512), attn("encoder.mid.attn_1", 512), res("encoder.mid.block_2", 512, 512)
    norm("encoder.norm_out", 512), conv("encoder.conv_out", 512, 8)
    conv("decoder.conv_in", 4, 512)
    res("decoder.mid.block_1", 512, 512), attn("decoder.mid.attn_1", 512), res("decoder.mid.block_2", 512, 512)
    cin = 512
    for i in reversed(range(4)):
        for j in range(3):
            res("decoder.up.%d.block.%d" % (i, j), cin, ch * mult[i])
            cin = ch * mult[i]
        if i:
            conv("decoder.up.%d.upsample.conv" % i, cin, cin)
    norm("decoder.norm_out", 128), conv("decoder.conv_out", 128, 3)
    conv("quant_conv", 8, 8, 1), conv("post_quant_conv", 4, 4, 1)
    return {"first_stage_model." + k: v for k, v in s.items()}


def clip_shapes():
    """cond_stage_model.* of FrozenCLIPEmbedder (HF CLIPTextModel ViT-L/14: 768 wide, 12 layers)."""
    p, s = "cond_stage_model.transformer.text_model.", {}
    s[p + "embeddings.token_embedding.weight"] = (49408, 768)
    s[p + "embeddings.position_embedding.weight"] = (77, 768)
    for i in range(12):
        q = p + "encoder.layers.%d." % i
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s[q + "self_attn.%s.weight" % n], s[q + "self_attn.%s.bias" % n] = (768, 768), (768,)
        for n in ("layer_norm1", "layer_norm2"):
            s[q + n + ".weight"], s[q + n + ".bias"] = (768,), (768,)
        s[q + "mlp.fc1.weight"], s[q + "mlp.fc1.bias"] = (3072, 768), (3072,)
        s[q + "mlp.fc2.weight"], s[q + "mlp.fc2.bias"] = (768, 3072), (768,)
    s[p + "final_layer_norm.weight"], s[p + "final_layer_norm.bias"] = (768,), (768,)
    return s


def random_tensor(name, shape, rng):
    """Uniform with variance 1/fan_in for matrices, 1 + noise for norm gains, small biases."""
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return rng.uniform(-1, 1, size=shape).astype(np.float32) * np.float32(math.sqrt(3.0 / fan_in))
    if name.endswith("weight"):
        return (1 + 0.1 * rng.uniform(-1, 1, size=shape)).astype(np.float32)
    return (0.02 * rng.uniform(-1, 1, size=shape)).astype(np.float32)


def write_safetensors(path, tensors):
    """tensors: name -> numpy array (float32 or float16); the format's header + raw bytes."""
    header, offset = {}, 0
    for name, a in tensors.items():
        n = a.nbytes
        header[name] = {"dtype": "F16" if a.dtype == np.float16 else "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a).tobytes())


def write_checkpoint(path, unet, dtype):
    np_dtype = np.float16 if dtype == "f16" else np.float32
    tensors = {}
    for k, v in unet.state_dict().items():
        tensors["model.diffusion_model." + k] = v.detach().numpy().astype(np_dtype)
    rng = np.random.default_rng(1)
    for k, shape in list(vae_shapes().items()) + list(clip_shapes().items()):
        tensors[k] = random_tensor(k, shape, rng).astype(np.float16)  # real SD checkpoints ship these in f16 too
    write_safetensors(path, tensors)
    return sum(a.size for a in tensors.values())


# ---------------------------------------------------------------- timing


def best_of(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--lib", default="build/libldm.so.0")
    ap.add_argument("--checkpoint", default="/tmp/ldm-torch-compare.safetensors")
    ap.add_argument("--dtype", choices=("f32", "f16"), default="f32")
    ap.add_argument("--write-only", action="store_true")
    a = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    unet = UNet().eval()
    if a.dtype == "f16":  # both sides compute with the f16-rounded weights
        with torch.no_grad():
            for p in unet.parameters():
                p.copy_(p.half().float())
    n = write_checkpoint(a.checkpoint, unet, a.dtype)
    print("wrote %s: %.0fM parameters, UNet %s" % (a.checkpoint, n / 1e6, a.dtype))
    if a.write_only:
        return

    os.environ["LDM_LIBRARY"] = os.path.abspath(a.lib)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bindings", "python"))
    import libldm as ldm  # noqa: E402  (the binding, found through LDM_LIBRARY)

    lat = a.size // 8
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(2, 4, lat, lat, generator=g)
    ctx = torch.randn(2, 77, 768, generator=g)
    t = torch.tensor([999, 500])
    small = (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([999, 500]), ctx)

    print("torch %s, %d threads, OPENBLAS_CORETYPE=%s, OPENBLAS_L2_SIZE=%s, MKL-DNN %s" % (
        torch.__version__, torch.get_num_threads(), os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
        os.environ.get("OPENBLAS_L2_SIZE", "(unset)"), torch.backends.mkldnn.is_available()))
    with torch.no_grad():
        unet(*small)  # warm-up
        t_torch, ref = best_of(lambda: unet(x, t, ctx), a.repeat)
    print("torch UNet forward, batch 2, latent %dx%d: %.3f s" % (lat, lat, t_torch))

    model = ldm.Model.load(a.checkpoint, threads=a.threads)
    net = model.unet()

    def run_ldm(xx, tt, cc):
        out = net.forward(ldm.Tensor.frombuffer(xx.numpy(), xx.shape), [int(v) for v in tt],
                          ldm.Tensor.frombuffer(cc.numpy(), cc.shape))
        return torch.from_numpy(np.frombuffer(out.tobytes(), dtype=np.float32).reshape(xx.shape).copy())

    run_ldm(*small)  # warm-up: creates the network
    t_ldm, got = best_of(lambda: run_ldm(x, t, ctx), a.repeat)
    print("libldm UNet forward, batch 2, latent %dx%d: %.3f s" % (lat, lat, t_ldm))
    err = (got - ref).abs().max().item() / max(1.0, ref.abs().max().item())
    print("ratio torch / libldm: %.2fx;  max |libldm - torch| / max(1, max |torch|) = %.2e" % (t_torch / t_ldm, err))


if __name__ == "__main__":
    main()
