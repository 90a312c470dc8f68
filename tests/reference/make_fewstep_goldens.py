#!/usr/bin/env python3
"""make_fewstep_goldens.py - the goldens of the few-step samplers (issue #14): tests/fixtures/fewstep_sd1
in the ../shared/fixtures layout (config.yaml, model.safetensors, io.safetensors, case.json).

The model is a shrunk SD1-style LatentDiffusion (crossattn UNet from the OFFICIAL CompVis
openaimodel.UNetModel, one level, SpatialTransformer, context_dim 16, num_res_blocks 0; 64
channels, two per GroupNorm(32) group (at 32 every channel is normalised alone, hiding anything
added per channel before a GroupNorm); use_scale_shift_norm, the ResBlock form of LDM's LSUN /
CelebA models (SD's additive embedding is in lora_sd1, diffusers_lcm_sd1 and the SDXL fixtures);
KL first stage f1 without attention; a
ClassEmbedder as the cond stage so that the state dict is a complete LDM - the calls pass the
cross-attention context as a tensor) with seeded random weights, plus an LCM guidance embedding
`model.diffusion_model.time_embed.cond_proj.weight` [64, 32] (time_cond_proj_dim 32). Every
trajectory is made by the OFFICIAL diffusers schedulers and diffusers' own embedding code:

  - the UNet's time embedding is diffusers' TimestepEmbedding(cond_proj_dim=32) with linear_1 /
    linear_2 = time_embed.0 / time_embed.2 and cond_proj = the stored cond_proj weight, called as
    UNet2DConditionModel calls it (`self.time_embedding(t_emb, timestep_cond)`); the guidance
    embedding is LatentConsistencyModelPipeline.get_guidance_scale_embedding (w = guidance - 1),
    run from the installed diffusers source (the function is compiled from that file: importing
    the pipeline module needs transformers). Without a guidance the embedding is
    TimestepEmbedding(t_emb, None), i.e. the CompVis time_embed (asserted equal).
  - LCMScheduler (default config: original_inference_steps 50, timestep_scaling 10), the loop of
    LatentConsistencyModelPipeline (no CFG, latents = x_T, final = denoised) with the guidance
    embedding (call `sampler.lcm`, params guidance_embedding true), and the loop of
    StableDiffusionPipeline with LCMScheduler as LCM-LoRA runs it (CFG on the raw outputs, no
    guidance embedding);
  - EulerDiscreteScheduler and EulerAncestralDiscreteScheduler with timestep_spacing "trailing"
    (SD-Turbo / SDXL-Turbo model cards: 1-4 steps, guidance off), the StableDiffusionPipeline loop
    (latents = x_T * init_noise_sigma, scale_model_input, step).
  The schedulers get the checkpoint's alphas_cumprod (register_schedule's float64 numpy values
  stored float32, as every CompVis checkpoint carries them) in place of their own float32 cumprod,
  so both sides sample over the same numbers. Their noise (randn_tensor) is replaced by stored
  `noise` rows, which the C side injects with ldm_sampler_set_noise.

Network weights are stored F16 (the fixture stays under 1 MB); the references are computed in
float32 from the rounded values, as in the shared F16 fixtures. Tolerances follow ../shared/fixtures/README.md: forward op atol 1e-4*max(1,max|ref|) (rtol 1e-4),
sampler trajectories 1e-3*max(1,max|ref|) with rtol 1e-3; no float64 rerun
(f32_vs_f64_max_err 0).

Reference code (nothing of it is committed here):
  https://github.com/CompVis/latent-diffusion a506df5756472e2ebaf9078affdde2c4f1502cd4 (UNetModel,
      Encoder/Decoder, ClassEmbedder, make_beta_schedule)
  diffusers 0.30.3 from PyPI (the newest that runs on Debian's torch 1.13; LCMScheduler,
      Euler*DiscreteScheduler, TimestepEmbedding and get_guidance_scale_embedding are the same in
      huggingface/diffusers 58eb52c0803ea9af3abec60841c2a093bdf1f951, read for this work).

How to run (never needed to run the tests):
    git clone https://github.com/CompVis/latent-diffusion /tmp/ld-ref && git -C /tmp/ld-ref checkout a506df57
    /usr/bin/python3 -m venv --system-site-packages /tmp/ldvenv
    /tmp/ldvenv/bin/pip install einops diffusers==0.30.3 huggingface_hub==0.25.2
    /tmp/ldvenv/bin/python tests/reference/make_fewstep_goldens.py /tmp/ld-ref [OUT_DIR]
"""
import ast
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import golden_io as gio  # noqa: E402  (safetensors and case.json writers, tolerances, stored noise)
import make_train_goldens as mtg  # noqa: E402  (stubs, randomise)

REF_REPO = "CompVis/latent-diffusion"
REF_COMMIT = "a506df5756472e2ebaf9078affdde2c4f1502cd4"
COND_DIM = 32
MC = 64  # two channels per GroupNorm(32) group
CTX = 16

CONFIG_YAML = """model:
  base_learning_rate: 1.0e-04
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.00085
    linear_end: 0.012
    timesteps: 1000
    first_stage_key: jpg
    cond_stage_key: class_label
    image_size: 8
    channels: 4
    cond_stage_trainable: false
    conditioning_key: crossattn
    scale_factor: 0.18215
    use_ema: false
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: 8
        in_channels: 4
        out_channels: 4
        model_channels: 64
        attention_resolutions:
        - 1
        num_res_blocks: 0
        channel_mult:
        - 1
        num_heads: 2
        use_scale_shift_norm: true
        use_spatial_transformer: true
        transformer_depth: 1
        context_dim: 16
        legacy: false
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        ddconfig:
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
          attn_type: none
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity
    cond_stage_config:
      target: ldm.modules.encoders.modules.ClassEmbedder
      params:
        n_classes: 3
        embed_dim: 16
        key: class_label
"""


def guidance_embedding_fn():
    """LatentConsistencyModelPipeline.get_guidance_scale_embedding, compiled from the installed
    diffusers source (the module itself imports transformers)."""
    import diffusers
    path = os.path.join(os.path.dirname(diffusers.__file__), "pipelines", "latent_consistency_models",
                        "pipeline_latent_consistency_text2img.py")
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "LatentConsistencyModelPipeline":
            for f in node.body:
                if isinstance(f, ast.FunctionDef) and f.name == "get_guidance_scale_embedding":
                    ns = {"torch": torch}
                    exec(compile(ast.Module(body=[f], type_ignores=[]), path, "exec"), ns)
                    return lambda w, dim: ns["get_guidance_scale_embedding"](None, w, embedding_dim=dim)
    raise RuntimeError("get_guidance_scale_embedding not found in " + path)


def schedule_buffers(T=1000, start=0.00085, end=0.012):
    """DDPM.register_schedule (v_posterior 0) in float64 numpy, stored float32."""
    from ldm.modules.diffusionmodules.util import make_beta_schedule
    betas = make_beta_schedule("linear", T, linear_start=start, linear_end=end)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    acp = np.append(1.0, ac[:-1])
    pv = betas * (1.0 - acp) / (1.0 - ac)
    bufs = [("betas", betas), ("alphas_cumprod", ac), ("alphas_cumprod_prev", acp),
            ("sqrt_alphas_cumprod", np.sqrt(ac)), ("sqrt_one_minus_alphas_cumprod", np.sqrt(1.0 - ac)),
            ("log_one_minus_alphas_cumprod", np.log(1.0 - ac)), ("sqrt_recip_alphas_cumprod", np.sqrt(1.0 / ac)),
            ("sqrt_recipm1_alphas_cumprod", np.sqrt(1.0 / ac - 1)), ("posterior_variance", pv),
            ("posterior_log_variance_clipped", np.log(np.maximum(pv, 1e-20))),
            ("posterior_mean_coef1", betas * np.sqrt(acp) / (1.0 - ac)),
            ("posterior_mean_coef2", (1.0 - acp) * np.sqrt(alphas) / (1.0 - ac))]
    return [(n, np.asarray(v, dtype=np.float32)) for n, v in bufs]


class Model:
    """UNetModel with diffusers' TimestepEmbedding in place of time_embed, the KL decoder."""

    def __init__(self):
        from diffusers.models.embeddings import TimestepEmbedding
        from ldm.models.autoencoder import AutoencoderKL
        from ldm.modules.diffusionmodules.openaimodel import UNetModel
        from ldm.modules.encoders.modules import ClassEmbedder
        torch.manual_seed(0)
        unet = UNetModel(image_size=8, in_channels=4, out_channels=4, model_channels=MC, attention_resolutions=[1],
                         num_res_blocks=0, channel_mult=[1], num_heads=2, use_spatial_transformer=True,
                         transformer_depth=1, context_dim=CTX, legacy=False, use_scale_shift_norm=True)
        cond = ClassEmbedder(embed_dim=CTX, n_classes=3, key="class_label")
        parts = mtg.LDMParts(unet, cond)
        mtg.randomise(parts, torch.Generator().manual_seed(2024))
        ae = AutoencoderKL(ddconfig=dict(double_z=True, z_channels=4, resolution=8, in_channels=3, out_ch=3, ch=32,
                                         ch_mult=[1], num_res_blocks=0, attn_resolutions=[], dropout=0.0,
                                         attn_type="none"),
                           lossconfig={"target": "torch.nn.Identity"}, embed_dim=4)
        mtg.randomise(torch.nn.ModuleList([ae.encoder, ae.decoder, ae.quant_conv, ae.post_quant_conv]),
                      torch.Generator().manual_seed(2025))
        cond_proj = torch.nn.Linear(COND_DIM, MC, bias=False)
        mtg.randomise(cond_proj, torch.Generator().manual_seed(2026))
        with torch.no_grad():  # weights stored F16: the references use the rounded values
            for mod in (parts, ae, cond_proj):
                for p in mod.parameters():
                    p.copy_(p.half().float())

        def f16(v):
            return v.detach().half().numpy()
        self.state = [("model.diffusion_model." + k, f16(v)) for k, v in unet.state_dict().items()]
        self.state.append(("model.diffusion_model.time_embed.cond_proj.weight", f16(cond_proj.weight)))
        self.state += [("cond_stage_model." + k, f16(v)) for k, v in cond.state_dict().items()]
        self.state += [("first_stage_model." + k, f16(v)) for k, v in ae.state_dict().items()]
        self.state += schedule_buffers()
        te = TimestepEmbedding(MC, 4 * MC, cond_proj_dim=COND_DIM)
        with torch.no_grad():
            te.linear_1.weight.copy_(unet.time_embed[0].weight)
            te.linear_1.bias.copy_(unet.time_embed[0].bias)
            te.linear_2.weight.copy_(unet.time_embed[2].weight)
            te.linear_2.bias.copy_(unet.time_embed[2].bias)
            te.cond_proj.weight.copy_(cond_proj.weight)
        self.compvis_time_embed = unet.time_embed
        self.te = te
        self.condition = None
        outer = self

        class TimeEmbedding(torch.nn.Module):  # UNet2DConditionModel: time_embedding(t_emb, timestep_cond)
            def forward(self, t_emb):
                return outer.te(t_emb, outer.condition)

        unet.time_embed = TimeEmbedding()
        self.unet, self.ae = unet.eval(), ae.eval()
        self.gemb = guidance_embedding_fn()
        self.ac = torch.from_numpy(dict(schedule_buffers())["alphas_cumprod"])

    def w_embedding(self, guidance, B):
        """The LCM pipeline: w = guidance_scale - 1 repeated over the batch."""
        return self.gemb(torch.tensor(guidance - 1).repeat(B), COND_DIM)

    @torch.no_grad()
    def eps(self, x, t, ctx, guidance=None):
        """UNet(x, t, context [, timestep_cond = w embedding])."""
        self.condition = None if guidance is None else self.w_embedding(guidance, x.shape[0])
        tt = t if torch.is_tensor(t) and t.ndim == 1 else torch.full((x.shape[0],), float(t))
        return self.unet(x, tt, context=ctx)

    @torch.no_grad()
    def time_emb(self, t, guidance):
        from ldm.modules.diffusionmodules.util import timestep_embedding
        t_emb = timestep_embedding(t, MC, repeat_only=False)
        return self.te(t_emb, self.w_embedding(guidance, t.shape[0]) if guidance is not None else None)

    @torch.no_grad()
    def decode(self, z):
        return self.ae.decode(z / 0.18215)


def guided(m, x, t, c, uc, scale, w):
    if w is not None or uc is None or scale == 1.0:
        return m.eps(x, t, c, w)
    e = m.eps(torch.cat([x, x]), t, torch.cat([uc, c]))
    eu, ec = e.chunk(2)
    return eu + scale * (ec - eu)


def run_lcm(m, x_T, noise, c, uc, steps, scale, embedded):
    import diffusers.schedulers.scheduling_lcm as mod
    from diffusers import LCMScheduler
    s = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    s.alphas_cumprod = m.ac.clone()
    s.set_timesteps(steps)
    lat = x_T * s.init_noise_sigma
    xs, dens = [], []
    with gio.given_noise(mod, noise):
        for t in s.timesteps:
            out = guided(m, lat, t, c, uc, scale, scale if embedded else None)
            lat, den = s.step(out, t, lat, return_dict=False)
            xs.append(lat)
            dens.append(den)
    return s.timesteps.numpy().astype(np.int64), torch.stack(xs), torch.stack(dens), dens[-1]


def run_euler(m, x_T, noise, c, steps, ancestral):
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as mod
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
    cls = EulerAncestralDiscreteScheduler if ancestral else EulerDiscreteScheduler
    s = cls(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing",
            steps_offset=1)
    s.alphas_cumprod = m.ac.clone()
    s.set_timesteps(steps)
    lat = x_T * s.init_noise_sigma
    xs, x0s = [], []
    with gio.given_noise(mod, noise if noise is not None else []):
        for t in s.timesteps:
            out = m.eps(s.scale_model_input(lat, t), t, c)
            r = s.step(out, t, lat)
            lat = r.prev_sample
            xs.append(lat)
            x0s.append(r.pred_original_sample)
    return s.timesteps.numpy().astype(np.int64), s.sigmas.numpy(), torch.stack(xs), torch.stack(x0s), lat


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.path.insert(0, os.path.abspath(sys.argv[1]))
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "..", "fixtures")
    mtg.install_stubs()
    torch.set_num_threads(1)
    import diffusers
    m = Model()
    g = torch.Generator().manual_seed(77)
    x_T = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 77, CTX, generator=g)
    uctx = torch.randn(1, 77, CTX, generator=g)
    noise4 = torch.randn(4, 1, 4, 8, 8, generator=g)
    inputs = {"x_T": x_T, "context": ctx, "uncond_context": uctx, "noise": noise4}
    outputs, kinds, calls = {}, {}, []

    def add(name, value, kind):
        outputs[name] = value
        kinds[name] = kind

    # the guidance embedding itself (checked by tests/test_fewstep.c) and the UNet with it
    emb_t = torch.tensor([999.0, 259.0, 19.0, 0.0])
    emb_w = [8.5, 1.0, 4.0, 12.25]
    emb = torch.cat([m.time_emb(emb_t[i:i + 1], emb_w[i]) for i in range(4)])
    plain = m.te(__import__("ldm.modules.diffusionmodules.util", fromlist=["x"]).timestep_embedding(emb_t, MC), None)
    ref_plain = m.compvis_time_embed(__import__("ldm.modules.diffusionmodules.util", fromlist=["x"]).timestep_embedding(emb_t, MC))
    assert torch.equal(plain, ref_plain), "TimestepEmbedding without a condition must be CompVis time_embed"
    inputs["emb_t"] = emb_t
    inputs["emb_guidance"] = torch.tensor(emb_w)
    add("time_emb", emb, "op")
    x2 = torch.randn(2, 4, 8, 8, generator=g)
    ts2 = torch.tensor([999, 259])
    ctx2 = torch.randn(2, 77, CTX, generator=g)
    inputs.update({"apply_x": x2, "apply_t": ts2, "apply_context": ctx2})
    add("apply_out", m.eps(x2, ts2, ctx2, 8.5), "op")
    add("apply_out_plain", m.eps(x2, ts2, ctx2, None), "op")
    calls.append({"op": "ldm.apply_model_embedded_guidance",
                  "inputs": {"x": "apply_x", "timesteps": "apply_t", "context": "apply_context"},
                  "params": {"guidance_scale": 8.5}, "outputs": {"out": "apply_out"}})
    calls.append({"op": "ldm.apply_model", "inputs": {"x": "apply_x", "timesteps": "apply_t", "context": "apply_context"},
                  "params": {}, "outputs": {"out": "apply_out_plain"}})

    tensor_cond = {"type": "tensor", "name": "context"}
    tensor_uncond = {"type": "tensor", "name": "uncond_context"}

    def sampler_call(op, prefix, params, with_noise, extra_outputs=()):
        o = {k: prefix + k for k in ("step_timesteps", "step_x", "step_pred_x0", "samples") + tuple(extra_outputs)}
        i = {"x_T": "x_T"}
        if with_noise:
            i["noise"] = "noise"
        calls.append({"op": op, "inputs": i, "params": params, "outputs": o})

    # LCM with the guidance embedding (LatentConsistencyModelPipeline: 4 steps, guidance 8.5)
    ts, xs, dens, fin = run_lcm(m, x_T, noise4, ctx, None, 4, 8.5, True)
    B = 1
    add("lcmw_step_timesteps", np.repeat(ts[:, None], B, 1), "traj")
    add("lcmw_step_x", xs, "traj")
    add("lcmw_step_pred_x0", dens, "traj")
    add("lcmw_samples", fin, "traj")
    add("lcmw_image", m.decode(fin), "traj")
    sampler_call("sampler.lcm", "lcmw_", {"steps": 4, "guidance_scale": 8.5, "guidance_embedding": True,
                                          "cond": tensor_cond}, True, ("image",))
    # LCM-LoRA style: the scheduler in StableDiffusionPipeline, CFG 1.5 on the raw outputs, 3 steps
    ts, xs, dens, fin = run_lcm(m, x_T, noise4, ctx, uctx, 3, 1.5, False)
    add("lcmc_step_timesteps", np.repeat(ts[:, None], B, 1), "traj")
    add("lcmc_step_x", xs, "traj")
    add("lcmc_step_pred_x0", dens, "traj")
    add("lcmc_samples", fin, "traj")
    sampler_call("sampler.lcm", "lcmc_", {"steps": 3, "guidance_scale": 1.5, "guidance_embedding": False,
                                          "cond": tensor_cond, "uncond": tensor_uncond}, True)
    # SD-Turbo: Euler, trailing, 1 and 4 steps, no guidance; SDXL-Turbo's Euler ancestral, 4 steps
    for steps, prefix, anc in ((1, "eu1_", False), (4, "eu4_", False), (4, "eua4_", True)):
        ts, sig, xs, x0s, fin = run_euler(m, x_T, noise4 if anc else None, ctx, steps, anc)
        add(prefix + "step_timesteps", np.repeat(ts[:, None], B, 1), "traj")
        add(prefix + "sigmas", sig, "traj")
        add(prefix + "step_x", xs, "traj")
        add(prefix + "step_pred_x0", x0s, "traj")
        add(prefix + "samples", fin, "traj")
        sampler_call("sampler.euler_ancestral_trailing" if anc else "sampler.euler_trailing", prefix,
                     {"steps": steps, "guidance_scale": 1.0, "cond": tensor_cond}, anc, ("sigmas",))

    d = os.path.join(out, "fewstep_sd1")
    os.makedirs(d, exist_ok=True)
    gio.write_safetensors(os.path.join(d, "model.safetensors"), m.state)
    ins = [(k, gio.as_array(v)) for k, v in inputs.items()]
    outs = [(k, gio.as_array(v)) for k, v in outputs.items()]
    gio.write_safetensors(os.path.join(d, "io.safetensors"), ins + outs)
    with open(os.path.join(d, "config.yaml"), "w") as f:
        f.write(CONFIG_YAML)

    tols = {n: gio.tolerance(a, kinds[n]) for n, a in outs}
    case = {
        "kind": "ldm_sampling",
        "name": "fewstep_sd1",
        "description": "few-step sampling (issue #14) on a shrunk SD1-style model with an LCM guidance embedding "
                       "(time_cond_proj_dim 32): LCMScheduler with the embedding (4 steps, guidance 8.5) and with CFG "
                       "1.5 (LCM-LoRA style, 3 steps); Euler / Euler ancestral with trailing spacing (SD-Turbo / "
                       "SDXL-Turbo, 1 and 4 steps); the UNet with the guidance embedding; time_emb for "
                       "tests/test_fewstep.c. Cross-attention context given as tensors.",
        "reference": {"repo": REF_REPO, "commit": REF_COMMIT, "diffusers": diffusers.__version__,
                      "diffusers_source_read": "huggingface/diffusers 58eb52c0803ea9af3abec60841c2a093bdf1f951",
                      "torch": torch.__version__},
        "generator": "tests/reference/make_fewstep_goldens.py",
        "weights": ["model.safetensors"],
        "weights_dtype": "F16 for every network weight (model.diffusion_model.*, first_stage_model.*, "
                         "cond_stage_model.*), F32 schedule buffers; expected outputs computed from the F16 values",
        "calls": calls,
        "inputs": gio.spec(ins),
        "outputs": gio.spec(outs),
        **gio.tolerance_fields(tols),
    }
    gio.write_case(d, case, outs)


if __name__ == "__main__":
    main()
