#!/usr/bin/env python3
"""train_torch.py - training throughput of the OFFICIAL latent-diffusion code (PyTorch) on the glyph
model, for the side-by-side of bench/train_bench.sh (issue #13). A timing tool: it prints numbers
and never fails on them.

    train_torch.py --which ae|ldm [--steps N] [--warmup W] [--threads T] [--data DIR]
                   [--first-stage AE.safetensors] [--config YAML] [--ref DIR] [--taming DIR]
                   [--disc-pass 0|1] [--seed S]

What runs is the reference's own classes and methods, built from the glyph configs
(examples/glyphs/autoencoder.yaml, examples/glyphs/ldm.yaml), with the training loop that
pytorch_lightning would run around them written out (Lightning itself is not installed):

  ae   ldm.models.autoencoder.AutoencoderKL with ldm.modules.losses.LPIPSWithDiscriminator (global
       step < disc_start). One step = training_step(batch, k, optimizer_idx=0) (the L1 + KL loss;
       the loss also runs taming's NLayerDiscriminator on the reconstruction and
       calculate_adaptive_weight's two autograd.grad calls, as the reference does, although both
       are multiplied by 0 before disc_start), backward, the Adam of configure_optimizers
       (betas 0.5, 0.9, lr = base_learning_rate x batch). With --disc-pass 1 (default), also the
       optimizer_idx 1 pass that Lightning runs for the second optimiser on every batch (the AE
       forward again and the discriminator on real and fake images, loss x disc_factor 0, its
       Adam step). Like Lightning's toggle_optimizer, the other optimiser's parameters have
       requires_grad False during each pass. libldm trains the same L1 + KL loss without the
       discriminator (docs/training.md, "Not yet"); --disc-pass 0 leaves out the second pass,
       not the discriminator of the first (that is in the reference's generator loss).
  ldm  ldm.models.diffusion.ddpm.LatentDiffusion (UNetModel, ClassEmbedder trainable, frozen
       AutoencoderKL). One step = on_train_batch_start (first step only: scale_by_std's 1/std of
       the first batch's latents), training_step (get_input: the first-stage encode under
       torch.no_grad + posterior sample x scale_factor; forward: t uniform in [0, 1000),
       get_learned_conditioning, p_losses: q_sample, apply_model, l2 eps loss), backward, the
       AdamW of configure_optimizers (UNet + cond stage), the LambdaLinearScheduler step, and
       on_train_batch_end (LitEma update of the UNet, decay 0.9999 with its warm-up). The
       ClassEmbedder of this commit has no ucg_rate: the batch's labels are replaced by the
       unconditional class (n_classes - 1) with that probability here, as libldm does.

The weights: random initialisation (the reference's own), except the LDM's first stage, which is
read from --first-stage (a libldm or reference AutoencoderKL .safetensors, keys encoder.*,
decoder.*, quant_conv.*, post_quant_conv.*) when given, random otherwise. The speed does not depend
on the weights (no data-dependent branches; dense float32 arithmetic), only scale_factor's value
does, which changes no timing.

Data: the PNG folder (labels.csv: file,label) loaded once into memory as uint8 (32x32, the glyph
set's size: no resize; other sizes are resized so the smaller side is the resolution and centre
cropped), batches taken from a seeded permutation (a new one per epoch), converted to float in
[-1, 1] per step (inside the timed step, as a DataLoader's collate would be outside; it is
negligible).

Timing: --warmup steps (default 3) untimed, then --steps timed one by one (time.perf_counter); it
prints the median and mean s/step, images/s = batch / median, and the peak RSS of the process
(resource.getrusage ru_maxrss: the Python interpreter, libtorch, the data and the training state)
and a RESULT line for train_bench.sh.

Reference: https://github.com/CompVis/latent-diffusion commit a506df5756472e2ebaf9078affdde2c4f1502cd4
(--ref: a directory holding its ldm/ package) and https://github.com/CompVis/taming-transformers
(the discriminator; --taming: a directory holding its taming/ package; latent-diffusion's
environment.yaml installs its master, commit 3ba01b241669f5ade541ce990f7650a3b8f65318 here).
Nothing of either is committed to libldm. Debian's python3-torch 1.13 with numpy, PIL and PyYAML,
plus einops (bench/README.md, "train_bench.sh"). Unused imports of the reference (omegaconf, clip,
kornia, torchvision, tqdm, pytorch_lightning, taming's LPIPS which downloads VGG weights and is
never called at perceptual_weight 0) are stubbed below; the numerics are the reference's own.
"""
import argparse
import copy
import csv
import json
import os
import resource
import statistics
import struct
import sys
import time
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


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
        import tqdm  # noqa: F401
    except ImportError:
        _module("tqdm", tqdm=lambda it=None, *a, **k: it)
    try:
        import torchvision.utils  # noqa: F401
    except ImportError:  # make_grid: log_images only
        tv = _module("torchvision")
        tv.utils = _module("torchvision.utils", make_grid=None)

    class LightningModule(torch.nn.Module):
        """What the reference's training code uses of pytorch_lightning.LightningModule."""
        global_step = 0
        current_epoch = 0
        _bench_optimizer = None

        @property
        def device(self):
            return torch.device("cpu")

        def log(self, *a, **k):
            pass

        def log_dict(self, *a, **k):
            pass

        def optimizers(self):
            return self._bench_optimizer

    pl = _module("pytorch_lightning", LightningModule=LightningModule)
    pl.utilities = _module("pytorch_lightning.utilities")
    pl.utilities.distributed = _module("pytorch_lightning.utilities.distributed", rank_zero_only=lambda f: f)

    class LPIPS(torch.nn.Module):  # never called: perceptual_weight 0 in the glyph config
        def forward(self, *a):
            raise RuntimeError("LPIPS stub called (perceptual_weight must be 0)")

    _module("taming.modules.losses.lpips", LPIPS=LPIPS)


# ------------------------------------------------------------------ files

def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dt = {"F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64}
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        if v["dtype"] == "BF16":
            u = np.frombuffer(data[a:b], dtype=np.uint16).astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(data[a:b], dtype=dt[v["dtype"]])
        out[k] = torch.from_numpy(arr.reshape(v["shape"]).astype(np.float32 if v["dtype"] != "I64" else np.int64))
    return out


def load_images(data_dir, size):
    from PIL import Image
    files, labels = [], []
    with open(os.path.join(data_dir, "labels.csv"), newline="") as f:
        for row in csv.DictReader(f):
            files.append(row["file"])
            labels.append(int(row["label"]))
    imgs = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, name in enumerate(files):
        im = Image.open(os.path.join(data_dir, name)).convert("RGB")
        if im.size != (size, size):
            w, h = im.size
            s = size / min(w, h)
            im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
            w, h = im.size
            l, t = (w - size) // 2, (h - size) // 2
            im = im.crop((l, t, l + size, t + size))
        imgs[i] = np.asarray(im)
    return torch.from_numpy(imgs), torch.tensor(labels, dtype=torch.int64)


class Batches:
    """Batches from a seeded permutation of the whole set, a new permutation per epoch."""

    def __init__(self, imgs, labels, batch, seed, uncond_class=None, drop_rate=0.0):
        self.imgs, self.labels, self.batch = imgs, labels, batch
        self.gen = torch.Generator().manual_seed(seed)
        self.perm, self.pos = torch.randperm(len(imgs), generator=self.gen), 0
        self.uncond_class, self.drop_rate = uncond_class, drop_rate

    def next(self):
        if self.pos + self.batch > len(self.perm):
            self.perm, self.pos = torch.randperm(len(self.imgs), generator=self.gen), 0
        idx = self.perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        x = self.imgs[idx].float() / 127.5 - 1.0  # NHWC in [-1, 1], as the reference's datasets give
        y = self.labels[idx].clone()
        if self.drop_rate > 0:
            y[torch.rand(len(y), generator=self.gen) < self.drop_rate] = self.uncond_class
        return {"image": x, "class_label": y}


# ------------------------------------------------------------------ models and steps

def read_config(path):
    import yaml
    with open(path) as f:
        return yaml.safe_load(f)


def n_params(params):
    return sum(p.numel() for p in params)


def toggle(all_opts, idx):
    """Lightning's toggle_optimizer: the parameters of the other optimisers stop requiring grad."""
    for i, o in enumerate(all_opts):
        for g in o.param_groups:
            for p in g["params"]:
                p.requires_grad_(i == idx)


def make_ae(cfg, disc_pass):
    from ldm.models.autoencoder import AutoencoderKL
    p = copy.deepcopy(cfg["model"]["params"])
    batch = int(cfg["data"]["params"]["batch_size"])
    m = AutoencoderKL(ddconfig=p["ddconfig"], lossconfig=p["lossconfig"], embed_dim=p["embed_dim"],
                      monitor=p.get("monitor"))
    m.learning_rate = float(cfg["model"]["base_learning_rate"]) * batch  # main.py --scale_lr, 1 GPU
    m.train()
    opts, _ = m.configure_optimizers()
    trained = n_params(p_ for g in opts[0].param_groups for p_ in g["params"])
    print("ae: AutoencoderKL %d trainable parameters (Adam), discriminator %d (pass 2 %s), batch %d, lr %g"
          % (trained, n_params(m.loss.discriminator.parameters()), "on" if disc_pass else "off", batch,
             m.learning_rate))

    def step(batch_dict, k):
        m.global_step = k
        toggle(opts, 0)
        loss = m.training_step(batch_dict, k, 0)
        opts[0].zero_grad()
        loss.backward()
        opts[0].step()
        if disc_pass:
            toggle(opts, 1)
            dloss = m.training_step(batch_dict, k, 1)
            opts[1].zero_grad()
            dloss.backward()
            opts[1].step()
        return float(loss)

    return step, batch, None, 0.0


def make_ldm(cfg, first_stage):
    from ldm.models.diffusion.ddpm import LatentDiffusion
    p = copy.deepcopy(cfg["model"]["params"])
    batch = int(cfg["data"]["params"]["batch_size"])
    p["first_stage_config"]["params"].pop("ckpt_path", None)  # torch.load of a .ckpt: loaded below
    cp = p["cond_stage_config"]["params"]
    drop = float(cp.pop("ucg_rate", 0.0))  # not an argument of this commit's ClassEmbedder
    n_classes = int(cp.get("n_classes", 1000))
    m = LatentDiffusion(**p)
    if first_stage and os.path.exists(first_stage):
        sd = read_safetensors(first_stage)
        fs = {k[len("first_stage_model."):] if k.startswith("first_stage_model.") else k: v for k, v in sd.items()}
        own = m.first_stage_model.state_dict()
        fs = {k: v for k, v in fs.items() if k in own}
        missing = [k for k in own if k not in fs]
        if missing:
            sys.exit("train_torch.py: %s lacks %d first-stage tensors (%s ...)" % (first_stage, len(missing), missing[0]))
        m.first_stage_model.load_state_dict(fs)
        print("ldm: first stage weights from %s" % first_stage)
    else:
        print("ldm: first stage weights random (%s); the speed does not depend on them"
              % ("no --first-stage" if not first_stage else first_stage + " not found"))
    m.learning_rate = float(cfg["model"]["base_learning_rate"]) * batch
    m.train()
    r = m.configure_optimizers()
    if isinstance(r, tuple):
        opt, sched = r[0][0], r[1][0]["scheduler"]
    else:
        opt, sched = r, None
    m._bench_optimizer = opt
    print("ldm: UNet %d + cond stage %d trainable parameters (AdamW), EMA %s, batch %d, lr %g, label drop %g"
          % (n_params(m.model.parameters()), n_params(m.cond_stage_model.parameters()),
             "on" if m.use_ema else "off", batch, m.learning_rate, drop))

    def step(batch_dict, k):
        m.global_step = k
        if k == 0:
            m.on_train_batch_start(batch_dict, 0, 0)
        loss = m.training_step(batch_dict, k)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        m.on_train_batch_end()
        return float(loss)

    return step, batch, n_classes - 1, drop


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--which", choices=["ae", "ldm"], required=True)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=os.path.join(REPO, "build", "glyphs-data"))
    ap.add_argument("--config", help="default examples/glyphs/autoencoder.yaml or ldm.yaml")
    ap.add_argument("--first-stage", help="AutoencoderKL .safetensors for the LDM (random if absent)")
    ap.add_argument("--ref", default=os.environ.get("LDM_REF", "/tmp/ld-ref"),
                    help="latent-diffusion checkout (a506df5), holding ldm/ (default $LDM_REF or /tmp/ld-ref)")
    ap.add_argument("--taming", default=os.environ.get("TAMING_REF", "/tmp/taming-ref"),
                    help="taming-transformers checkout, holding taming/ (default $TAMING_REF or /tmp/taming-ref)")
    ap.add_argument("--disc-pass", type=int, choices=[0, 1], default=1,
                    help="ae: also the discriminator's optimizer_idx 1 pass Lightning runs per batch (default 1)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    for d, pkg in ((a.ref, "ldm"), (a.taming, "taming")):
        if not os.path.isdir(os.path.join(d, pkg)):
            sys.exit("train_torch.py: no %s/ package in %s (bench/README.md says how to get it)" % (pkg, d))
        sys.path.insert(0, os.path.abspath(d))
    install_stubs()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg_path = a.config or os.path.join(REPO, "examples", "glyphs",
                                        "autoencoder.yaml" if a.which == "ae" else "ldm.yaml")
    cfg = read_config(cfg_path)
    if a.which == "ae":
        step, batch, uncond, drop = make_ae(cfg, a.disc_pass)
        size = int(cfg["model"]["params"]["ddconfig"]["resolution"])
    else:
        step, batch, uncond, drop = make_ldm(cfg, a.first_stage)
        size = int(cfg["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["resolution"])

    t0 = time.perf_counter()
    imgs, labels = load_images(a.data, size)
    print("data: %d images %dx%d from %s in %.1f s" % (len(imgs), size, size, a.data, time.perf_counter() - t0))
    batches = Batches(imgs, labels, batch, a.seed, uncond, drop)

    times, loss = [], float("nan")
    for k in range(a.warmup + a.steps):
        b = batches.next()
        t = time.perf_counter()
        loss = step(b, k)
        dt = time.perf_counter() - t
        if k >= a.warmup:
            times.append(dt)
        print("step %d/%d  loss %.5f  %.0f ms%s" % (k + 1, a.warmup + a.steps, loss, 1e3 * dt,
                                                     "  (warm-up)" if k < a.warmup else ""), flush=True)
    med = statistics.median(times)
    mean = statistics.fmean(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print("%s: PyTorch %s, %d threads, batch %d: median %.4f s/step (mean %.4f over %d steps), %.1f images/s, "
          "peak RSS %.0f MiB" % (a.which, torch.__version__, torch.get_num_threads(), batch, med, mean, len(times),
                                 batch / med, rss))
    print("RESULT engine=pytorch which=%s threads=%d batch=%d steps=%d median_s=%.6f img_s=%.3f peak_mib=%.0f"
          % (a.which, a.threads, batch, len(times), med, batch / med, rss))


if __name__ == "__main__":
    main()
