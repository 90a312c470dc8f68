#!/usr/bin/python3
"""sdxl_compare.py - a full-size SDXL base UNet: the official sgm module next to libldm (issue #14).

Builds the SDXL base UNet with the OFFICIAL sgm UNetModel (Stability-AI/generative-models, the
network_config of configs/inference/sd_xl_base.yaml read from the checkout: 320 channels, mult
1,2,4, transformers at ds 2 and 4 with depths 2 and 10, 2048-wide context, adm_in_channels 2816,
64-channel heads, linear projections; use_checkpoint off, which changes no number) with seeded
random weights, and checks and times it against libldm. Nothing here is a test the suite runs;
the check writes a fixture that the standard conformance runner checks.

    sdxl_compare.py write --gm GM --out DIR
        DIR/unet_sdxl_base_full/model.safetensors  an SDXL-base-shaped single file in the sgm
            layout, every tensor float16 (6.9 GB): model.diffusion_model.* (the sgm module's own
            names and shapes, 2.57G parameters), conditioner.embedders.0.transformer.text_model.*
            (CLIP ViT-L/14, 12 layers), conditioner.embedders.1.model.* (OpenCLIP ViT-bigG/14 text
            tower: 32 layers, width 1280, text_projection, logit_scale), first_stage_model.* (the
            KL-f8 VAE, ch 128, mult 1,2,4,4); streamed to the file one tensor at a time. Values:
            uniform with variance 1/fan_in for matrices and kernels (zero_module layers too), norm
            gains 1 +- 0.1, biases +- 0.02, as bench/torch_compare.py draws them (numpy seed 2816).
        DIR/unet_sdxl_base_full/config.yaml  the official sd_xl_base.yaml, unchanged.

    sdxl_compare.py reference --gm GM --out DIR [--size 32] [--batch 2] [--threads 2]
        The official forward on a small input (x [B,4,size,size] latents, timesteps [999, 17, ...],
        random context [B,77,2048] and y [B,2816]) in float32 from the float16
        values, and again in float64 for the tolerance policy of ../shared/fixtures/README.md
        (atol = max(1e-4 max(1, max|ref|), 20 |f32 - f64|), rtol 1e-4). The parameters stay
        float16 in memory and each layer is widened just for its own call (a forward pre-hook;
        exact, since the values are float16 anyway), so the check needs about 7 GB instead of
        10.3 GB (float32) or 20.6 GB (float64). Writes io.safetensors and case.json (op
        unet.forward) next to the model: `build/tests/conformance DIR/unet_sdxl_base_full` checks it.

    sdxl_compare.py torch-step --gm GM --out DIR [--size 1024] [--threads 2]
        PyTorch's guided step: the official module in float32 (the float16 file widened at load:
        PyTorch 1.13 has no fast float16 CPU kernels; 10.3 GB of weights), one forward at batch 2
        (the classifier-free-guidance batch [uncond; cond]) on a latent of size/8, after a warm-up
        at 8x8. Prints `RESULT wall=S cpu=S maxrss_kb=K` and saves the output (DIR/step-torch-SIZE.npy).

    sdxl_compare.py flops --gm GM --out DIR [--size 1024]
        The counted GFLOP of that step (2 per multiply-add of every convolution, matrix product and
        both attention products, as build/bench/bench counts): the official module run with hooks
        at 8x8 and 16x16 latents, scaled to the size part by part (self-attention with the square
        of the pixel count). `RESULT gflop=G ...`.

    sdxl_compare.py libldm-step --out DIR [--size 1024] [--threads 2] [--lib build/libldm.so.0]
        The same step with libldm (Python binding: ldm_unet_forward at batch 2 on the same input,
        which is what ldm_model_apply_sdxl runs for a guided step), float16 weights in the mapped
        file; LDM_LOW_MEMORY=1 in the environment selects the low-memory mode. Same RESULT line,
        and the largest difference to DIR/step-torch-SIZE.npy when that exists.

GM is a checkout of Stability-AI/generative-models (commit 0ad7de9a5cb53fd63d6d30a4f385485e72e08597
here; `git archive` of the fetched repository, never committed). Needs Debian's python3-torch
(1.13), numpy, safetensors, einops and PyYAML (the /tmp/ldvenv of bench/README.md); the sgm import goes through
tests/reference/make_sdxl_goldens.py (its torch 1.13 adaptations: sgm's attention through a
documented scaled_dot_product_attention, package __init__ files skipped). bench/sdxl_bench.sh runs
everything in order, one process at a time. Timing only.
"""
import argparse
import json
import os
import resource
import struct
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = "unet_sdxl_base_full"
SEED = 2816


def fixture_dir(out):
    return os.path.join(out, FIXTURE)


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def maxrss_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ---------------------------------------------------------------- the official module


def goldens():
    sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
    import make_sdxl_goldens  # noqa: E402  (import_sgm, tolerance, dtype_name, REF_COMMIT)
    return make_sdxl_goldens


def unet_params(gm):
    """network_config.params of the official sd_xl_base.yaml (use_checkpoint off)."""
    import yaml
    with open(os.path.join(gm, "configs", "inference", "sd_xl_base.yaml")) as f:
        cfg = yaml.safe_load(f)
    p = dict(cfg["model"]["params"]["network_config"]["params"])
    p["use_checkpoint"] = False
    return p


def build_unet(gm):
    """The sgm UNetModel without PyTorch's initialisation (every value is set afterwards; the
    float32 storage of the parameters is never touched, so it takes no memory until replaced)."""
    import torch
    g = goldens()
    sgm = g.import_sgm(os.path.abspath(gm))
    plain = {c: c.reset_parameters for c in (torch.nn.Linear, torch.nn.Conv2d)}
    for c in plain:
        c.reset_parameters = lambda self: None
    try:
        unet = sgm.openaimodel.UNetModel(**unet_params(gm)).eval()
    finally:
        for c, f in plain.items():
            c.reset_parameters = f
    return g, unet


def read_f16(path):
    """name -> float16 array of a safetensors file, read (not mapped: mapped pages would count in
    the process's resident size next to the copies) one tensor at a time."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        for name, h in header.items():
            if name == "__metadata__":
                continue
            if h["dtype"] != "F16":
                raise SystemExit("%s: %s is %s, expected F16" % (path, name, h["dtype"]))
            begin, end = h["data_offsets"]
            f.seek(base + begin)
            yield name, np.frombuffer(f.read(end - begin), dtype=np.float16).reshape(h["shape"])


def load_weights(unet, path, dtype):
    """Replaces every parameter by the file's float16 value in dtype (float16: kept narrow)."""
    import torch
    params = dict(unet.named_parameters())
    if any(True for _ in unet.buffers()):
        raise SystemExit("the UNet has buffers; this script expects parameters only")
    prefix, n = "model.diffusion_model.", 0
    for name, a in read_f16(path):
        if name.startswith(prefix):
            p = params.pop(name[len(prefix):])
            if tuple(p.shape) != a.shape:
                raise SystemExit("%s: shape %s in the file, %s in the module" % (name, a.shape, tuple(p.shape)))
            p.data = torch.from_numpy(a.copy()).to(dtype)
            n += p.numel()
    if params:
        raise SystemExit("not in %s: %s" % (path, ", ".join(sorted(params))))
    return n


def widen_per_layer(unet, dtype_box):
    """Parameters stay float16; each module widens its own to dtype_box[0] for its call only."""
    def pre(m, _inputs):
        for p in m.parameters(recurse=False):
            p.data = p.data.to(dtype_box[0])

    def post(m, _inputs, _output):
        for p in m.parameters(recurse=False):
            p.data = p.data.half()

    for m in unet.modules():
        if any(True for _ in m.parameters(recurse=False)):
            m.register_forward_pre_hook(pre)
            m.register_forward_hook(post)


# ---------------------------------------------------------------- the checkpoint


def tower_and_vae_shapes():
    sys.path.insert(0, HERE)
    import torch_compare  # noqa: E402  (vae_shapes, clip_shapes, random_tensor)
    import turbo_torch  # noqa: E402  (openclip_shapes)
    s = dict(torch_compare.vae_shapes())
    for k, v in torch_compare.clip_shapes().items():
        s[k.replace("cond_stage_model.", "conditioner.embedders.0.", 1)] = v
    for k, v in turbo_torch.openclip_shapes(width=1280, layers=32).items():
        s[k.replace("cond_stage_model.", "conditioner.embedders.1.", 1)] = v
    s["conditioner.embedders.1.model.logit_scale"] = ()
    return s, torch_compare.random_tensor


def write_checkpoint(gm, out):
    _, unet = build_unet(gm)
    shapes = {"model.diffusion_model." + k: tuple(v.shape) for k, v in unet.named_parameters()}
    n_unet = sum(int(np.prod(v)) for v in shapes.values())
    del unet
    more, random_tensor = tower_and_vae_shapes()
    shapes.update(more)
    d = fixture_dir(out)
    os.makedirs(d, exist_ok=True)
    header, offset = {}, 0
    for name, shape in shapes.items():
        nbytes = 2 * int(np.prod(shape))
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    path = os.path.join(d, "model.safetensors")
    rng = np.random.default_rng(SEED)
    with open(path + ".part", "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape in shapes.items():
            f.write(np.ascontiguousarray(random_tensor(name, shape, rng).astype(np.float16)).tobytes())
    os.replace(path + ".part", path)
    with open(os.path.join(gm, "configs", "inference", "sd_xl_base.yaml")) as src:
        text = src.read()
    with open(os.path.join(d, "config.yaml"), "w") as dst:
        dst.write(text)
    total = sum(int(np.prod(v)) for v in shapes.values())
    print("wrote %s: %.3fG parameters (UNet %.3fG), float16, %.2f GB" % (path, total / 1e9, n_unet / 1e9,
                                                                          os.path.getsize(path) / 1e9))


# ---------------------------------------------------------------- inputs


def inputs(batch, lat, seed=1234):
    """x [B,4,lat,lat], timesteps, context [B,77,2048], y [B,2816]: numpy, float32 (no torch needed)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 4, lat, lat)).astype(np.float32)
    t = np.array(([999, 17] * batch)[:batch], dtype=np.int64)
    ctx = rng.standard_normal((batch, 77, 2048)).astype(np.float32)
    y = rng.standard_normal((batch, 2816)).astype(np.float32)
    return x, t, ctx, y


# ---------------------------------------------------------------- (a) the check


def reference(a):
    import torch
    torch.set_num_threads(a.threads)
    g, unet = build_unet(a.gm)
    d = fixture_dir(a.out)
    load_weights(unet, os.path.join(d, "model.safetensors"), torch.float16)
    box = [torch.float32]
    widen_per_layer(unet, box)
    x, t, ctx, y = (torch.from_numpy(v) for v in inputs(a.batch, a.size))
    with torch.no_grad():
        t0 = time.perf_counter()
        ref = unet(x, timesteps=t, context=ctx, y=y)
        print("float32 forward: %.1f s" % (time.perf_counter() - t0), flush=True)
        box[0] = torch.float64
        g.F64["on"] = True
        t0 = time.perf_counter()
        ref64 = unet(x.double(), timesteps=t, context=ctx.double(), y=y.double())
        g.F64["on"] = False
        print("float64 forward: %.1f s" % (time.perf_counter() - t0), flush=True)
    from safetensors.torch import save_file
    tensors = {"x": x, "timesteps": t, "context": ctx, "y": y, "out": ref.float().contiguous()}
    save_file(tensors, os.path.join(d, "io.safetensors"))
    tol = g.tolerance(ref, ref64)
    case = {
        "kind": "sdxl",
        "name": FIXTURE,
        "description": "the full-size SDXL base UNet (sgm UNetModel with network_config of the official "
                       "sd_xl_base.yaml, 2.57G parameters), seeded random float16 weights (bench/sdxl_compare.py "
                       "write), batch %d at %dx%d latents; made on demand, never committed" % (a.batch, a.size,
                                                                                               a.size),
        "reference": {"repo": g.REF_REPO, "commit": g.REF_COMMIT, "torch": torch.__version__},
        "weights": ["model.safetensors"],
        "weights_dtype": "F16 (every tensor); expected outputs computed in float32 from these F16 values",
        "calls": [{"op": "unet.forward", "inputs": {"x": "x", "timesteps": "timesteps", "context": "context",
                                                    "y": "y"}, "outputs": {"out": "out"}}],
        "inputs": {k: {"shape": list(v.shape), "dtype": g.dtype_name(v)} for k, v in tensors.items() if k != "out"},
        "outputs": {"out": {"shape": list(ref.shape), "dtype": "F32"}},
        "atol": tol["atol"], "rtol": tol["rtol"], "tolerances": {"out": tol},
    }
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
    print("wrote %s: max|ref| %.4g, f32 vs f64 %.3g, atol %.3g, rtol %g; peak RSS %.2f GB" % (
        d, tol["max_abs"], tol["f32_vs_f64_max_err"], tol["atol"], tol["rtol"], maxrss_kb() * 1024 / 1e9))


# ---------------------------------------------------------------- (b) the guided step


def torch_step(a):
    import torch
    torch.set_num_threads(a.threads)
    _, unet = build_unet(a.gm)
    n = load_weights(unet, os.path.join(fixture_dir(a.out), "model.safetensors"), torch.float32)
    print("torch %s, %d threads, MKL-DNN %s; official UNetModel float32, %.3fG parameters" % (
        torch.__version__, torch.get_num_threads(), torch.backends.mkldnn.is_available(), n / 1e9), flush=True)
    with torch.no_grad():
        small = [torch.from_numpy(v) for v in inputs(2, 8, seed=1)]
        unet(small[0], timesteps=small[1], context=small[2], y=small[3])
        x, t, ctx, y = (torch.from_numpy(v) for v in inputs(2, a.size // 8))
        t[:] = 999  # a guided step: both halves at the same timestep
        c0, t0 = cpu_seconds(), time.perf_counter()
        out = unet(x, timesteps=t, context=ctx, y=y)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    np.save(os.path.join(a.out, "step-torch-%d.npy" % a.size), out.numpy())
    print("RESULT wall=%.2f cpu=%.2f maxrss_kb=%d finite=%d" % (wall, cpu, maxrss_kb(),
                                                                 int(torch.isfinite(out).all())), flush=True)


def count_flops(a):
    """Counted GFLOP of the guided step at --size (2 per multiply-add of every convolution, matrix
    product and both attention products, as build/bench/bench counts them): the official module run
    with hooks at 8x8 and 16x16 latents, each part scaled to the size: the products' pixel-free
    part (embeddings, the context's projections) kept, the rest and cross-attention with the pixel
    count, self-attention with its square (exact for sizes that are multiples of 128)."""
    import torch
    torch.set_num_threads(a.threads)
    _, unet = build_unet(a.gm)
    load_weights(unet, os.path.join(fixture_dir(a.out), "model.safetensors"), torch.float16)
    widen_per_layer(unet, [torch.float32])
    count = {"linear": 0, "self": 0, "cross": 0}

    def hook(m, _inputs, out):
        if isinstance(m, torch.nn.Conv2d):
            count["linear"] += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            count["linear"] += 2 * out.numel() * m.in_features

    for m in unet.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(hook)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted_sdpa(q, k, v, *args, **kw):
        n = 4 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1]
        count["self" if q.shape[-2] == k.shape[-2] else "cross"] += n
        return sdpa(q, k, v, *args, **kw)

    torch.nn.functional.scaled_dot_product_attention = counted_sdpa

    def run(lat):
        for k in count:
            count[k] = 0
        x, t, ctx, y = (torch.from_numpy(v) for v in inputs(2, lat))
        with torch.no_grad():
            unet(x, timesteps=t, context=ctx, y=y)
        return dict(count)

    # products: a part independent of the pixels (time and vector embeddings, the context's k and
    # v projections) plus a part proportional to them; two sizes separate the two
    c8, c16 = run(8), run(16)
    per_pixel = (c16["linear"] - c8["linear"]) / (16 * 16 - 8 * 8)
    fixed = c8["linear"] - per_pixel * 8 * 8
    lat = a.size // 8
    r = (lat / 16) ** 2
    products = fixed + per_pixel * lat * lat
    total = products + c16["cross"] * r + c16["self"] * r * r
    print("RESULT gflop=%.1f convs_and_projections=%.1f self_attention=%.1f cross_attention=%.1f" % (
        total / 1e9, products / 1e9, c16["self"] * r * r / 1e9, c16["cross"] * r / 1e9))


def libldm_step(a):
    os.environ["LDM_LIBRARY"] = os.path.abspath(a.lib)
    sys.path.insert(0, os.path.join(HERE, "..", "bindings", "python"))
    import libldm as ldm  # noqa: E402  (the binding, found through LDM_LIBRARY)
    low = os.environ.get("LDM_LOW_MEMORY", "0") not in ("", "0")
    model = ldm.Model.load(os.path.join(fixture_dir(a.out), "model.safetensors"), threads=a.threads)
    net = model.unet()
    print("libldm %s, %d threads, %s mode; float16 weights in the mapped file, float32 compute" % (
        a.lib, a.threads, "low-memory" if low else "default"), flush=True)

    def run(x, t, ctx, y):
        out = net.forward(ldm.Tensor.frombuffer(x, x.shape), [int(v) for v in t],
                          ldm.Tensor.frombuffer(ctx, ctx.shape), ldm.Tensor.frombuffer(y, y.shape))
        return np.frombuffer(out.tobytes(), dtype=np.float32).reshape(x.shape).copy()

    run(*inputs(2, 8, seed=1))  # creates the network (reads and checks every weight)
    x, t, ctx, y = inputs(2, a.size // 8)
    t[:] = 999
    c0, t0 = cpu_seconds(), time.perf_counter()
    got = run(x, t, ctx, y)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    ref_path = os.path.join(a.out, "step-torch-%d.npy" % a.size)
    diff = ""
    if os.path.exists(ref_path):
        ref = np.load(ref_path)
        err = float(np.abs(got - ref).max())
        diff = " max_abs_diff=%.3g max_abs_ref=%.4g" % (err, float(np.abs(ref).max()))
    print("RESULT wall=%.2f cpu=%.2f maxrss_kb=%d finite=%d%s" % (wall, cpu, maxrss_kb(),
                                                                   int(np.isfinite(got).all()), diff), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("write", "reference", "torch-step", "libldm-step", "flops"))
    ap.add_argument("--gm", default="/tmp/gm", help="a generative-models checkout")
    ap.add_argument("--out", default="/tmp/ldm-sdxl")
    ap.add_argument("--size", type=int, default=None, help="latent size (reference, default 32) or "
                                                           "image size (steps, default 1024)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lib", default="build/libldm.so.0")
    a = ap.parse_args()
    if a.what == "write":
        write_checkpoint(a.gm, a.out)
    elif a.what == "reference":
        a.size = a.size or 32
        reference(a)
    elif a.what == "torch-step":
        a.size = a.size or 1024
        torch_step(a)
    elif a.what == "flops":
        a.size = a.size or 1024
        count_flops(a)
    else:
        a.size = a.size or 1024
        libldm_step(a)


if __name__ == "__main__":
    main()
