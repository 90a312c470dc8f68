#!/usr/bin/env python3
"""make_sdxl_img_goldens.py - SDXL beyond text-to-image (issue #14): tests/fixtures/sdxl_img_tiny in
the ../shared/fixtures format, on the networks of tests/fixtures/sdxl_base_tiny (its weights are used
in place, `weights: ["../sdxl_base_tiny/model.safetensors"]`, the refiner of
tests/fixtures/sdxl_refiner_tiny through the op's `model` parameter; config.yaml is a copy) and their
conditioning tensors (c_*, uc_*, rc_*, urc_*, made there by sgm's GeneralConditioner).

1. LCM on SDXL, as diffusers 0.30.3 runs LCM-LoRA SDXL (its model card: StableDiffusionXLPipeline
   with LCMScheduler.from_config(pipe.scheduler.config), 4 steps, guidance_scale 1): the pipeline's
   denoising loop (latents = x_T * init_noise_sigma; per timestep scale_model_input, the UNet,
   classifier-free guidance when guidance_scale > 1 and the UNet has no time_cond_proj_dim,
   scheduler.step) with diffusers' own LCMScheduler built from stabilityai/stable-diffusion-xl-base-1.0's
   scheduler_config.json. The network is the OFFICIAL sgm UNetModel called as diffusers calls its
   converted UNet2DConditionModel (the same x, timestep, context and vector y; see
   make_sdxl_turbo_goldens.py). The scheduler's noise (randn_tensor) is replaced by stored rows.
   Calls (conformance op sampler.sgm, sampler "lcm"): 4 steps guidance 1; 4 steps guidance 2 (CFG).
   A third run, for a UNet with time_cond_proj_dim (an LCM-distilled SDXL UNet), is stored for
   tests/test_sdxl.c (a fixture model cannot carry the extra tensor without a second copy of the
   weights): diffusers' TimestepEmbedding adds cond_proj(condition) to the sinusoidal timestep
   embedding before linear_1; the golden wraps the sgm UNet's time_embed the same way with a
   random float16 cond_proj [model_channels, 16] (io: lcm_cond_proj) and feeds it the pipeline's
   get_guidance_scale_embedding(guidance_scale - 1); guidance 3, no unconditional branch. The
   UNet has two channels per GroupNorm group, so the time embedding reaches the output (the
   script prints and checks how much lcm3 moves when the guidance embedding is left out); the
   embedding itself is stored too (lcm3_time_embed: time_embed(t_emb + cond_proj(g)) at the four
   LCM timesteps, [4, 4 * model_channels]).

2. Image-to-image on SDXL base and refiner as Stability-AI generative-models' do_img2img
   (sgm/inference/helpers.py) runs it with the streamlit demo's Img2ImgDiscretizationWrapper
   (scripts/demo/discretization.py) and sgm's samplers: noised_z = z + noise * sigmas[0], divided by
   sqrt(1 + sigmas[0]^2) (the sampler multiplies it back), sampled over the pruned schedule. The
   lines of do_img2img after the encoder are repeated here in float32 (do_img2img itself runs under
   torch.autocast, which on the CPU would compute in bfloat16); z (the scaled first-stage latent,
   input z0) is random, the noise is x_T. Calls (op sampler.sgm with input z0 and params strength):
   base Euler 8 steps strength 0.6 (decoded too), base DPM++ 2M 6 steps strength 0.5, base Euler
   ancestral 8 steps strength 0.75 with stored noise rows (row k at step k), the refiner (model
   param) Euler 8 steps strength 0.3 with its aesthetic-score conditioning.

Tolerance: sampler trajectories 1e-3 * max(1, max|ref|), rtol 1e-3 (../shared/fixtures/README.md);
no float64 rerun (f32_vs_f64_max_err 0).

Reference code (nothing of it is committed here):
  https://github.com/Stability-AI/generative-models 0ad7de9a5cb53fd63d6d30a4f385485e72e08597
      (UNetModel, DiscreteDenoiser, EulerEDMSampler, DPMPP2MSampler, EulerAncestralSampler,
      Img2ImgDiscretizationWrapper, do_img2img)
  diffusers 0.30.3 from PyPI (LCMScheduler, the StableDiffusionXLPipeline loop and
      get_guidance_scale_embedding).

How to run (never needed to run the tests):
    git --git-dir=<generative-models clone> archive 0ad7de9a sgm scripts | tar -x -C /tmp/gm
    /tmp/ldvenv/bin/python tests/reference/make_sdxl_img_goldens.py /tmp/gm [OUT_DIR]
"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_sdxl_goldens as sdxl  # noqa: E402  (import_sgm, tolerance)
import make_sdxl_turbo_goldens as turbo  # noqa: E402  (load_unet)

NAME = "sdxl_img_tiny"
BASE = "sdxl_base_tiny"
# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json (the keys LCMScheduler has)
SDXL_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      prediction_type="epsilon", steps_offset=1, timestep_spacing="leading", clip_sample=False,
                      set_alpha_to_one=False)
COND_PROJ_DIM = 16


class EmbeddedGuidance(torch.nn.Module):
    """diffusers TimestepEmbedding with cond_proj: linear_1(sample + cond_proj(condition)) ..."""

    def __init__(self, time_embed, cond_proj):
        super().__init__()
        self.time_embed, self.cond_proj, self.condition = time_embed, cond_proj, None

    def forward(self, t_emb):
        return self.time_embed(t_emb + self.cond_proj(self.condition))


def lcm_run(unet, steps, x_T, c, uc, scale, noise, embedded=None):
    """The StableDiffusionXLPipeline loop with LCMScheduler; x after each step."""
    import diffusers.schedulers.scheduling_lcm as lcm
    from diffusers import LCMScheduler, StableDiffusionXLPipeline
    sched = LCMScheduler(**SDXL_SCHEDULER)
    sched.set_timesteps(steps)
    rows = iter(noise)
    plain = lcm.randn_tensor
    lcm.randn_tensor = lambda shape, **kw: next(rows).reshape(shape).clone()
    guided = embedded is None and scale > 1.0
    if embedded is not None:
        w = torch.tensor(scale - 1.0).repeat(x_T.shape[0])
        embedded.condition = StableDiffusionXLPipeline.get_guidance_scale_embedding(
            None, w, embedding_dim=COND_PROJ_DIM)
    try:
        x = x_T * sched.init_noise_sigma
        out = []
        with torch.no_grad():
            for t in sched.timesteps:
                xin = torch.cat([x, x]) if guided else x
                xin = sched.scale_model_input(xin, t)
                ctx = torch.cat([uc[0], c[0]]) if guided else c[0]
                y = torch.cat([uc[1], c[1]]) if guided else c[1]
                eps = unet(xin, t.expand(xin.shape[0]), context=ctx, y=y)
                if guided:
                    e_u, e_c = eps.chunk(2)
                    eps = e_u + scale * (e_c - e_u)
                x = sched.step(eps, t, x, return_dict=False)[0]
                out.append(x.clone())
    finally:
        lcm.randn_tensor = plain
    return torch.stack(out), [int(t) for t in sched.timesteps]


def denoiser(weights):
    from safetensors.torch import load_file
    from sgm.modules.diffusionmodules.denoiser import DiscreteDenoiser
    den = DiscreteDenoiser(num_idx=1000, scaling_config={
        "target": "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling"},
        discretization_config={"target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"})
    with torch.no_grad():
        den.sigmas.copy_(load_file(weights)["denoiser.sigmas"].float())
    return den


def decoder(weights, cfg_path):
    """decode_first_stage of the fixture's first stage (AutoencodingEngineLegacy.decode)."""
    import yaml
    from safetensors.torch import load_file
    from sgm.modules.diffusionmodules.model import Decoder
    with open(cfg_path) as f:
        cfg = yaml.safe_load(f)["model"]["params"]
    dec = Decoder(**cfg["first_stage_config"]["params"]["ddconfig"]).eval()
    pqc = torch.nn.Conv2d(4, 4, 1)
    state = load_file(weights)
    dec.load_state_dict({k[len("first_stage_model.decoder."):]: v.float() for k, v in state.items()
                         if k.startswith("first_stage_model.decoder.")})
    pqc.load_state_dict({k[len("first_stage_model.post_quant_conv."):]: v.float() for k, v in state.items()
                         if k.startswith("first_stage_model.post_quant_conv.")})
    return lambda z: dec(pqc(z / cfg["scale_factor"]))


def img2img(sampler, den, net, z, noise, c, uc, record=True):
    """do_img2img after the encoder (skip_encode), in float32; x after each step (record)."""
    rec = sdxl.record_steps(sampler) if record else [z]
    with torch.no_grad():
        sigmas = sampler.discretization(sampler.num_steps)
        sigma = sigmas[0]
        noised_z = z + noise * sigma
        noised_z = noised_z / torch.sqrt(1.0 + sigmas[0] ** 2.0)
        samples = sampler(lambda x, s, cc: den(net, x, s, cc), noised_z, cond=c, uc=uc)
    return samples, torch.stack(rec), len(sigmas) - 1


def main():
    from safetensors.torch import load_file
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    root = os.path.abspath(sys.argv[1])
    sgm = sdxl.import_sgm(root)
    from sgm.modules.diffusionmodules.sampling import DPMPP2MSampler, EulerAncestralSampler
    from sgm.modules.diffusionmodules.wrappers import OpenAIWrapper
    sdxl.SGM_ROOT = root
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "..", "fixtures")
    base_dir = os.path.join(out, BASE)
    io = load_file(os.path.join(base_dir, "io.safetensors"))
    c, uc = (io["c_crossattn"], io["c_vector"]), (io["uc_crossattn"], io["uc_vector"])
    rc, ruc = (io["rc_crossattn"], io["rc_vector"]), (io["urc_crossattn"], io["urc_vector"])
    cd = lambda a: {"crossattn": a[0], "vector": a[1]}  # noqa: E731
    gen = torch.Generator().manual_seed(1414)
    B = c[0].shape[0]
    x_T = torch.randn((B, 4, 8, 8), generator=gen)
    noise8 = torch.randn((8, B, 4, 8, 8), generator=gen)
    z0 = 0.13025 * 4.0 * torch.randn((B, 4, 8, 8), generator=gen)  # a latent of typical scale
    mc = sdxl.MODEL_CHANNELS
    cond_proj = torch.nn.Linear(COND_PROJ_DIM, mc, bias=False)
    with torch.no_grad():
        cond_proj.weight.copy_((torch.randn(mc, COND_PROJ_DIM, generator=gen) / 4.0).half().float())

    # ---- 1. LCM
    unet = turbo.load_unet(sgm, base_dir)
    lcm1, t1 = lcm_run(unet, 4, x_T, c, None, 1.0, noise8)
    lcm2, _ = lcm_run(unet, 4, x_T, c, uc, 2.0, noise8)
    plain_embed = unet.time_embed
    unet.time_embed = EmbeddedGuidance(plain_embed, cond_proj)
    lcm3, _ = lcm_run(unet, 4, x_T, c, uc, 3.0, noise8, embedded=unet.time_embed)
    # lcm1 is the same run without the guidance embedding (guidance 1, no CFG branch)
    moved = float((lcm3 - lcm1).abs().max() / lcm1.abs().max())
    print("LCM guidance embedding: relative change of the trajectory", moved)
    assert moved > 1e-2
    with torch.no_grad():
        t_emb = sgm.openaimodel.timestep_embedding(torch.tensor(t1), mc, repeat_only=False)
        unet.time_embed.condition = unet.time_embed.condition[:1].expand(4, -1)
        time_embed3 = unet.time_embed(t_emb)
        plain3 = plain_embed(t_emb)
    unet.time_embed = plain_embed
    effect = float((time_embed3 - plain3).abs().max() / time_embed3.abs().max())
    print("LCM timesteps", t1, "guidance embedding effect on time_embed (relative)", effect)
    assert effect > 0.05
    assert t1 == [999, 759, 499, 259]

    # ---- 2. img2img
    den, net = denoiser(os.path.join(base_dir, "model.safetensors")), OpenAIWrapper(unet, compile_model=False)
    decode = decoder(os.path.join(base_dir, "model.safetensors"), os.path.join(base_dir, "config.yaml"))
    eul = sdxl.sgm_sampling(root, 8, 5.0, img2img_strength=0.6)
    i_eul, i_eul_steps, n_eul = img2img(eul, den, net, z0, x_T, cd(c), cd(uc))
    with torch.no_grad():
        i_eul_image = decode(i_eul)
    disc = {"target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"}
    guider = {"target": "sgm.modules.diffusionmodules.guiders.VanillaCFG", "params": {"scale": 5.0}}
    sys.path.insert(0, os.path.join(root, "scripts", "demo"))
    import discretization as demo_disc
    dpm = DPMPP2MSampler(num_steps=6, discretization_config=disc, guider_config=guider, device="cpu")
    dpm.discretization = demo_disc.Img2ImgDiscretizationWrapper(dpm.discretization, strength=0.5)
    i_dpm, _, n_dpm = img2img(dpm, den, net, z0, x_T, cd(c), cd(uc), record=False)
    anc = EulerAncestralSampler(num_steps=8, discretization_config=disc, guider_config=guider, device="cpu")
    anc.discretization = demo_disc.Img2ImgDiscretizationWrapper(anc.discretization, strength=0.75)
    n_anc = len(anc.discretization(8)) - 1
    drawn = iter(range(8 - n_anc, 8))  # the C sampler's noise row k belongs to step k of the full run
    anc.noise_sampler = lambda x: noise8[next(drawn)]
    i_anc, _, _ = img2img(anc, den, net, z0, x_T, cd(c), cd(uc))
    import yaml
    refiner_dir = os.path.join(out, sdxl.REFINER)
    with open(os.path.join(refiner_dir, "config.yaml")) as f:
        rparams = dict(yaml.safe_load(f)["model"]["params"]["network_config"]["params"])
    r_unet = sgm.openaimodel.UNetModel(**rparams).eval()
    rstate = load_file(os.path.join(refiner_dir, "model.safetensors"))
    pre = "model.diffusion_model."
    r_unet.load_state_dict({k[len(pre):]: v.float() for k, v in rstate.items() if k.startswith(pre)})
    r_den, r_net = denoiser(os.path.join(refiner_dir, "model.safetensors")), OpenAIWrapper(r_unet, compile_model=False)
    ref = sdxl.sgm_sampling(root, 8, 5.0, img2img_strength=0.3)
    i_ref, _, n_ref = img2img(ref, r_den, r_net, z0, x_T, cd(rc), cd(ruc))
    print("img2img steps run", n_eul, n_dpm, n_anc, n_ref)
    assert (n_eul, n_dpm, n_anc, n_ref) == (4, 2, 5, 1)  # int(strength * (steps + 1)) - 1

    inputs = {"x_T": x_T, "noise": noise8, "z0": z0, "lcm_cond_proj": cond_proj.weight.detach().clone(),
              "c_crossattn": c[0], "c_vector": c[1], "uc_crossattn": uc[0], "uc_vector": uc[1],
              "rc_crossattn": rc[0], "rc_vector": rc[1], "urc_crossattn": ruc[0], "urc_vector": ruc[1]}
    outputs = {"lcm1_step_x": lcm1, "lcm1_samples": lcm1[-1], "lcm2_cfg_samples": lcm2[-1],
               "lcm3_embedded_step_x": lcm3, "lcm3_embedded_samples": lcm3[-1], "lcm3_time_embed": time_embed3,
               "i2i_euler_step_x": i_eul_steps, "i2i_euler_samples": i_eul, "i2i_euler_image": i_eul_image,
               "i2i_dpmpp_2m_samples": i_dpm, "i2i_euler_a_samples": i_anc, "i2i_refiner_samples": i_ref}
    tol = {k: sdxl.tolerance(v, None, forward=False) for k, v in outputs.items()}
    conds = {"c_crossattn": "c_crossattn", "c_vector": "c_vector"}
    uconds = {"uc_crossattn": "uc_crossattn", "uc_vector": "uc_vector"}
    rconds = {"c_crossattn": "rc_crossattn", "c_vector": "rc_vector", "uc_crossattn": "urc_crossattn",
              "uc_vector": "urc_vector"}
    refiner = {"weights": "../%s/model.safetensors" % sdxl.REFINER, "config": "../%s/config.yaml" % sdxl.REFINER}
    calls = [
        {"op": "sampler.sgm", "inputs": {"x_T": "x_T", "noise": "noise", **conds},
         "params": {"sampler": "lcm", "steps": 4, "guidance_scale": 1.0, "lcm_original_steps": 50},
         "outputs": {"step_x": "lcm1_step_x", "samples": "lcm1_samples"}},
        {"op": "sampler.sgm", "inputs": {"x_T": "x_T", "noise": "noise", **conds, **uconds},
         "params": {"sampler": "lcm", "steps": 4, "guidance_scale": 2.0, "lcm_original_steps": 50},
         "outputs": {"samples": "lcm2_cfg_samples"}},
        {"op": "sampler.sgm", "inputs": {"x_T": "x_T", "z0": "z0", **conds, **uconds},
         "params": {"sampler": "euler", "steps": 8, "guidance_scale": 5.0, "strength": 0.6},
         "outputs": {"step_x": "i2i_euler_step_x", "samples": "i2i_euler_samples", "image": "i2i_euler_image"}},
        {"op": "sampler.sgm", "inputs": {"x_T": "x_T", "z0": "z0", **conds, **uconds},
         "params": {"sampler": "dpmpp_2m", "steps": 6, "guidance_scale": 5.0, "strength": 0.5},
         "outputs": {"samples": "i2i_dpmpp_2m_samples"}},
        {"op": "sampler.sgm", "inputs": {"x_T": "x_T", "z0": "z0", "noise": "noise", **conds, **uconds},
         "params": {"sampler": "euler_a", "steps": 8, "guidance_scale": 5.0, "strength": 0.75},
         "outputs": {"samples": "i2i_euler_a_samples"}},
        {"op": "sampler.sgm", "inputs": {"x_T": "x_T", "z0": "z0", **rconds},
         "params": {"sampler": "euler", "steps": 8, "guidance_scale": 5.0, "strength": 0.3, "model": refiner},
         "outputs": {"samples": "i2i_refiner_samples"}},
    ]
    description = ("SDXL beyond text-to-image on the sdxl_base_tiny networks and conditioning: LCM as diffusers "
                       "0.30.3 runs LCM-LoRA SDXL (StableDiffusionXLPipeline loop, LCMScheduler from SDXL base's "
                       "scheduler config, stored noise rows) with guidance 1 and with classifier-free guidance 2, "
                       "and (lcm3_*, checked by tests/test_sdxl.c with lcm_cond_proj added to the UNet) an "
                       "LCM-distilled UNet's guidance embedding, guidance 3; image-to-image as generative-models' "
                       "do_img2img with the demo's Img2ImgDiscretizationWrapper: Euler 8 steps strength 0.6, "
                       "DPM++ 2M 6 steps strength 0.5, Euler ancestral 8 steps strength 0.75 (stored noise rows), "
                       "and the refiner as an img2img model, Euler 8 steps strength 0.3")
    turbo.write_sampling_fixture(out, NAME, base_dir, description, calls, inputs, outputs, tol)


if __name__ == "__main__":
    main()
