#!/usr/bin/python3
"""turbo_torch.py - SD-Turbo-sized random checkpoints, and the diffusers pipeline that samples them.

SD-Turbo is the SD 2.1-base architecture (OpenCLIP ViT-H/14 text tower, penultimate layer; UNet
320 channels, mult 1,2,4,4, head channels 64, linear transformer projections, 1024-wide context;
eps prediction; 512x512) sampled in one step. This script writes such a model with seeded random
weights so that libldm and PyTorch can be timed on the same file without a download, and runs the
reference pipeline on it (issue #14). Timing only; nothing here is a test.

    turbo_torch.py write --out DIR
        DIR/sd21base-f16.safetensors  the CompVis single-file layout of v2-1_512-ema-pruned /
                                      sd_turbo.safetensors (model.diffusion_model.*,
                                      first_stage_model.*, cond_stage_model.model.*), float16,
                                      2.6 GB; values uniform with variance 1/fan_in (norm gains
                                      1 +- 0.1, small biases) as bench/torch_compare.py draws them
        DIR/taesd-f16.safetensors     a TAESD (diffusers AutoencoderTiny with its default config,
                                      the released taesd architecture, encoder and decoder) with
                                      PyTorch's default initialisation under torch.manual_seed(0),
                                      float16, in AutoencoderTiny's layout (encoder.layers.*,
                                      decoder.layers.*) as madebyollin/taesd ships it for diffusers
        DIR/tokenizer/                vocab.json + merges.txt of the CLIP BPE (from LDM_VOCAB's
                                      bpe_simple_vocab_16e6.txt.gz, built as openai/CLIP does)

    turbo_torch.py libldm --out DIR --vae full|tiny [--threads 2] [--pictures 3] [--lib build/libldm.so.0]
        The same pictures with libldm through its Python binding (Model.load, set_tiny_autoencoder,
        generate with --turbo's settings: euler_a, trailing, 1 step, guidance 1 = off), timed
        and summarised the same way (the binding's conversion of the image to numpy included).

    turbo_torch.py run --out DIR --vae full|tiny [--threads 2] [--pictures 3] [--size 512]
        Builds diffusers' modules from their SD 2.1-base configs, loads the single file's weights
        through diffusers' own CompVis->diffusers conversion (convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint, convert_open_clip_checkpoint; strict load_state_dict), and
        times StableDiffusionPipeline with EulerAncestralDiscreteScheduler (timestep_spacing
        "trailing", scaled_linear 0.00085..0.012, epsilon), 1 step, guidance_scale 0 (no
        classifier-free guidance), decoding with AutoencoderKL (--vae full) or the TAESD file as
        AutoencoderTiny (--vae tiny). Computes in float32: the float16 weights are widened at load
        (PyTorch 1.13 has no fast float16 on a CPU). Prints one line per picture (the first, a
        warm-up included in nothing else, is reported apart) and a summary line
        `RESULT load=S first=S median=S cpu_median=S` (median over pictures 2..N; cpu: process
        CPU seconds, every thread) that bench/turbo_bench.sh parses.

Needs Debian's python3-torch (1.13) with diffusers 0.30.3 and transformers (the /tmp/ldvenv venv
of bench/README.md: `pip install diffusers==0.30.3 transformers==4.39.3`).
"""
import argparse
import gzip
import json
import math
import os
import statistics
import struct
import sys
import time

import numpy as np

# ---------------------------------------------------------------- CompVis names and shapes


def unet_shapes(mc=320, mult=(1, 2, 4, 4), nrb=2, attn_ds=(1, 2, 4), ctx=1024, emb_mult=4):
    """model.diffusion_model.* of openaimodel.UNetModel with use_linear_in_transformer (SD 2.x)."""
    s, emb = {}, emb_mult * mc

    def lin(n, cin, cout, bias=True):
        s[n + ".weight"] = (cout, cin)
        if bias:
            s[n + ".bias"] = (cout,)

    def conv(n, cin, cout, k=3):
        s[n + ".weight"], s[n + ".bias"] = (cout, cin, k, k), (cout,)

    def norm(n, c):
        s[n + ".weight"], s[n + ".bias"] = (c,), (c,)

    def res(n, cin, cout):
        norm(n + ".in_layers.0", cin), conv(n + ".in_layers.2", cin, cout), lin(n + ".emb_layers.1", emb, cout)
        norm(n + ".out_layers.0", cout), conv(n + ".out_layers.3", cout, cout)
        if cin != cout:
            conv(n + ".skip_connection", cin, cout, 1)

    def transformer(n, c):
        norm(n + ".norm", c), lin(n + ".proj_in", c, c), lin(n + ".proj_out", c, c)
        b = n + ".transformer_blocks.0."
        for a, kv in (("attn1", c), ("attn2", ctx)):
            lin(b + a + ".to_q", c, c, False), lin(b + a + ".to_k", kv, c, False), lin(b + a + ".to_v", kv, c, False)
            lin(b + a + ".to_out.0", c, c)
        lin(b + "ff.net.0.proj", c, 8 * c), lin(b + "ff.net.2", 4 * c, c)
        for k in (1, 2, 3):
            norm(b + "norm%d" % k, c)

    lin("time_embed.0", mc, emb), lin("time_embed.2", emb, emb)
    conv("input_blocks.0.0", 4, mc)
    chans, ch, ds, blk = [mc], mc, 1, 1
    for level, m in enumerate(mult):
        for _ in range(nrb):
            res("input_blocks.%d.0" % blk, ch, m * mc)
            ch = m * mc
            if ds in attn_ds:
                transformer("input_blocks.%d.1" % blk, ch)
            chans.append(ch)
            blk += 1
        if level != len(mult) - 1:
            conv("input_blocks.%d.0.op" % blk, ch, ch)
            chans.append(ch)
            blk, ds = blk + 1, ds * 2
    res("middle_block.0", ch, ch), transformer("middle_block.1", ch), res("middle_block.2", ch, ch)
    blk = 0
    for level, m in list(enumerate(mult))[::-1]:
        for i in range(nrb + 1):
            res("output_blocks.%d.0" % blk, ch + chans.pop(), m * mc)
            ch, sub = m * mc, 1
            if ds in attn_ds:
                transformer("output_blocks.%d.1" % blk, ch)
                sub = 2
            if level and i == nrb:
                conv("output_blocks.%d.%d.conv" % (blk, sub), ch, ch)
                ds //= 2
            blk += 1
    norm("out.0", ch), conv("out.2", ch, 4)
    return {"model.diffusion_model." + k: v for k, v in s.items()}


def openclip_shapes(width=1024, layers=24, vocab=49408, ctx=77):
    """cond_stage_model.model.* of FrozenOpenCLIPEmbedder (ViT-H/14 text tower; the visual tower
    is not in SD 2.x checkpoints)."""
    p, s = "cond_stage_model.model.", {}
    s[p + "token_embedding.weight"] = (vocab, width)
    s[p + "positional_embedding"] = (ctx, width)
    for i in range(layers):
        q = p + "transformer.resblocks.%d." % i
        s[q + "attn.in_proj_weight"], s[q + "attn.in_proj_bias"] = (3 * width, width), (3 * width,)
        s[q + "attn.out_proj.weight"], s[q + "attn.out_proj.bias"] = (width, width), (width,)
        for n in ("ln_1", "ln_2"):
            s[q + n + ".weight"], s[q + n + ".bias"] = (width,), (width,)
        s[q + "mlp.c_fc.weight"], s[q + "mlp.c_fc.bias"] = (4 * width, width), (4 * width,)
        s[q + "mlp.c_proj.weight"], s[q + "mlp.c_proj.bias"] = (width, 4 * width), (width,)
    s[p + "ln_final.weight"], s[p + "ln_final.bias"] = (width,), (width,)
    s[p + "text_projection"] = (width, width)
    return s


def import_torch_compare():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_compare  # noqa: E402  (vae_shapes, random_tensor, write_safetensors)
    return torch_compare


# ---------------------------------------------------------------- write


def write_tokenizer(vocab_gz, out):
    """CLIPTokenizer files from the BPE merges, the vocabulary built as openai/CLIP does."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode
    merges = gzip.open(vocab_gz).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    v = list(bytes_to_unicode().values())
    v = v + [x + "</w>" for x in v] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(v)}, f)
    with open(os.path.join(out, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


def write_sd21(path):
    tc = import_torch_compare()
    rng = np.random.default_rng(21)
    shapes = {}
    shapes.update(unet_shapes())
    shapes.update(tc.vae_shapes())
    shapes.update(openclip_shapes())
    tensors = {k: tc.random_tensor(k, shape, rng).astype(np.float16) for k, shape in shapes.items()}
    tc.write_safetensors(path, tensors)
    return sum(a.size for a in tensors.values())


def write_taesd(path):
    import torch
    from diffusers import AutoencoderTiny
    from safetensors.torch import save_file
    torch.manual_seed(0)
    tiny = AutoencoderTiny()
    sd = {k: v.detach().half().contiguous() for k, v in tiny.state_dict().items()}
    save_file(sd, path)
    return sum(v.numel() for v in sd.values())


# ---------------------------------------------------------------- run


class no_init:
    """Modules built without their random initialisation (torch.nn.init.* do nothing): every
    parameter is loaded from the checkpoint next, so "load" times the loading, not a seeded
    draw of 1.3G numbers (what transformers' no_init_weights does for from_pretrained)."""
    NAMES = ("kaiming_uniform_", "kaiming_normal_", "uniform_", "normal_", "trunc_normal_", "zeros_", "ones_",
             "constant_", "xavier_uniform_", "xavier_normal_")

    def __enter__(self):
        import torch
        self.saved = {n: getattr(torch.nn.init, n) for n in self.NAMES}
        for n in self.NAMES:
            setattr(torch.nn.init, n, lambda t, *a, **k: t)

    def __exit__(self, *exc):
        import torch
        for n, f in self.saved.items():
            setattr(torch.nn.init, n, f)


def build_pipeline(out, vae_kind):
    with no_init():
        return build_pipeline_modules(out, vae_kind)


def build_pipeline_modules(out, vae_kind):
    import torch
    from diffusers import (AutoencoderKL, AutoencoderTiny, EulerAncestralDiscreteScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
                                                     convert_open_clip_checkpoint)
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = os.path.join(out, "sd21base-f16.safetensors")

    def part(prefix):  # one component's float16 tensors (load_state_dict widens them into the float32 modules)
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}

    unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                                use_linear_projection=True)
    unet.load_state_dict(convert_ldm_unet_checkpoint(part("model.diffusion_model."), unet.config), strict=True)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                                        num_hidden_layers=23, num_attention_heads=16, max_position_embeddings=77,
                                        hidden_act="gelu", projection_dim=512, bos_token_id=49406,
                                        eos_token_id=49407, pad_token_id=1))
    missing, unexpected = text.load_state_dict(convert_open_clip_checkpoint(text, part("cond_stage_model.")),
                                               strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    if vae_kind == "full":
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                            layers_per_block=2, latent_channels=4, sample_size=512, scaling_factor=0.18215)
        vae.load_state_dict(convert_ldm_vae_checkpoint(part("first_stage_model."), vae.config), strict=True)
    else:
        vae = AutoencoderTiny()
        vae.load_state_dict(load_file(os.path.join(out, "taesd-f16.safetensors")), strict=True)
    tok = CLIPTokenizer(os.path.join(out, "tokenizer", "vocab.json"), os.path.join(out, "tokenizer", "merges.txt"),
                        pad_token="!", model_max_length=77)
    sched = EulerAncestralDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                            beta_schedule="scaled_linear", prediction_type="epsilon",
                                            timestep_spacing="trailing", steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.float32)


def run(a):
    import torch
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    pipe = build_pipeline(a.out, a.vae)
    t_load = time.perf_counter() - t0
    print("torch %s, %d threads, MKL-DNN %s, float32; vae %s; load %.2f s" % (
        torch.__version__, torch.get_num_threads(), torch.backends.mkldnn.is_available(), a.vae, t_load), flush=True)
    with torch.no_grad():
        def picture(k):
            g = torch.Generator().manual_seed(1 + k)
            return pipe("a photo of a cat", num_inference_steps=1, guidance_scale=0.0, height=a.size, width=a.size,
                        generator=g, output_type="np").images
        timed_pictures(picture, a.pictures, t_load)


def timed_pictures(picture, n, t_load):
    """Wall and process CPU seconds (every thread) of n pictures; the summary line's median is
    over pictures 2..n (the first one pays for first-touch memory and lazy set-up)."""
    walls, cpus = [], []
    for k in range(n):
        t1, c1 = time.perf_counter(), time.process_time()
        img = np.asarray(picture(k))
        walls.append(time.perf_counter() - t1)
        cpus.append(time.process_time() - c1)
        print("picture %d: %.3f s, cpu %.3f s (%s, finite %s)" % (k + 1, walls[-1], cpus[-1], img.shape,
                                                                  bool(np.isfinite(img).all())), flush=True)
    later = slice(1, None) if n > 1 else slice(0, None)
    print("RESULT load=%.3f first=%.3f median=%.3f cpu_median=%.3f" % (
        t_load, walls[0], statistics.median(walls[later]), statistics.median(cpus[later])), flush=True)


def run_libldm(a):
    """The same pictures with libldm through its Python binding (ldm_generate: --turbo's settings)."""
    os.environ["LDM_LIBRARY"] = os.path.abspath(a.lib)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bindings", "python"))
    import libldm as ldm  # noqa: E402  (the binding, found through LDM_LIBRARY)
    t0 = time.perf_counter()
    model = ldm.Model.load(os.path.join(a.out, "sd21base-f16.safetensors"), vocab=a.vocab, threads=a.threads)
    if a.vae == "tiny":
        model.set_tiny_autoencoder(os.path.join(a.out, "taesd-f16.safetensors"))
    t_load = time.perf_counter() - t0
    print("libldm %s, %d threads, float16 weights in place, float32 compute; vae %s; load %.2f s" % (
        a.lib, a.threads, a.vae, t_load), flush=True)

    def picture(k):
        img = model.generate(prompt="a photo of a cat", sampler="euler_a", timestep_spacing="trailing", steps=1,
                             guidance_scale=1.0, seed=1 + k, width=a.size, height=a.size, vae=a.vae)
        if isinstance(img, np.ndarray):
            return img
        return np.frombuffer(img.tobytes(), dtype=np.float32).reshape(tuple(img.shape))
    timed_pictures(picture, a.pictures, t_load)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("write", "run", "libldm"))
    ap.add_argument("--lib", default="build/libldm.so.0")
    ap.add_argument("--out", default="/tmp/ldm-turbo")
    # write: the BPE file the tokenizer files are built from; libldm: libldm's --vocab (file or folder)
    ap.add_argument("--vocab", default=os.path.join(os.environ.get("LDM_VOCAB", "/work/shared/vocab"),
                                                    "bpe_simple_vocab_16e6.txt.gz"))
    ap.add_argument("--vae", choices=("full", "tiny"), default="full")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pictures", type=int, default=3)
    ap.add_argument("--size", type=int, default=512)
    a = ap.parse_args()
    if a.what == "write":
        os.makedirs(a.out, exist_ok=True)
        write_tokenizer(a.vocab, os.path.join(a.out, "tokenizer"))
        n = write_sd21(os.path.join(a.out, "sd21base-f16.safetensors"))
        print("wrote %s: %.0fM parameters, float16" % (os.path.join(a.out, "sd21base-f16.safetensors"), n / 1e6))
        n = write_taesd(os.path.join(a.out, "taesd-f16.safetensors"))
        print("wrote %s: %.2fM parameters, float16" % (os.path.join(a.out, "taesd-f16.safetensors"), n / 1e6))
    elif a.what == "libldm":
        run_libldm(a)
    else:
        run(a)


if __name__ == "__main__":
    main()
