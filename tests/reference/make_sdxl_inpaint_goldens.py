#!/usr/bin/env python3
"""make_sdxl_inpaint_goldens.py - SDXL inpainting (issue #14): tests/fixtures/sdxl_inpaint_tiny in the
../shared/fixtures format, on the network of tests/fixtures/sdxl_base_tiny (its weights are used in
place, `weights: ["../sdxl_base_tiny/model.safetensors"]`; config.yaml is a copy) and its
conditioning tensors (c_*, uc_*, made there by sgm's GeneralConditioner).

Inpainting with an ordinary (4-channel) SDXL UNet is what diffusers 0.30.3's
StableDiffusionXLInpaintPipeline does: the last int(strength * steps) timesteps run
(get_timesteps); at strength 1 the run starts from pure noise (x_T * init_noise_sigma), below it
from the image latent noised with the same noise to the first remaining timestep (add_noise);
after every scheduler step the region to keep (mask 0) is replaced by the image latent noised
with that noise to the next timestep (the image latent itself after the last step); no pixel
composite (the pipeline has none without padding_mask_crop).

Here the pipeline's own __call__ runs, with:
  - the OFFICIAL sgm UNetModel (generative-models) with the fixture's float16 weights, wrapped to
    be called as diffusers calls its UNet2DConditionModel: x, the timestep, encoder_hidden_states
    and added_cond_kwargs {text_embeds, time_ids}; the wrapper builds sgm's vector y =
    [text_embeds, sinusoidal embedding (sgm's timestep_embedding, 8 per value) of the six size
    ids] and checks it equals the sdxl_base_tiny golden's c_vector / uc_vector;
  - the conditioning of sdxl_base_tiny given as prompt_embeds / pooled_prompt_embeds (the first
    32 values of the vector) and the negative ones, original size (64, 48), crop (3, 5), target
    (64, 64) as there;
  - the image given as a 4-channel latent (the pipeline then uses it as the image latent z0,
    input z0, a random latent of typical scale) and a binary mask at the latent size (the
    fixture's first stage has factor 1, so pixel and latent sizes agree); output_type "latent";
  - the pipeline's noise (randn_tensor in the pipeline module) is the stored x_T, the ancestral
    and LCM schedulers' noise stored rows (row k at step k of the full run);
  - schedulers: diffusers' EulerDiscreteScheduler / EulerAncestralDiscreteScheduler with SDXL
    base's scheduler_config.json but timestep_spacing "trailing" (the spacing libldm implements;
    SDXL base's own "leading" spacing is not implemented in libldm), and LCMScheduler with SDXL
    base's config (LCM-LoRA SDXL inpainting).
The latents after every step come from the pipeline's callback_on_step_end (after the blend).

Calls (conformance op sampler.sgm with inputs z0 and mask and params first_step, the step the
pipeline's get_timesteps starts at):
  euler trailing 4 steps, guidance 5, strength 1    (pure noise start)
  euler trailing 8 steps, guidance 5, strength 0.6  (starts at step 4)
  euler_a trailing 4 steps, guidance 5, strength 0.75, stored noise rows
  lcm 4 steps, guidance 1, strength 1, stored noise rows
and, for tests/test_sdxl.c (a fixture model cannot carry the replaced tensor without a second copy of
the weights), the 9-channel inpainting UNet (diffusers/stable-diffusion-xl-1.0-inpainting-0.1's kind:
the pipeline feeds it [x, mask, masked_image_latents] and blends nothing): the fixture base with a
random float16 9-channel input convolution (io inpaint9_conv_in), masked_image_latents given
(masked_z), Euler trailing 4 steps strength 1 and 8 steps strength 0.75 (inpaint9_*).

Tolerance: sampler trajectories 1e-3 * max(1, max|ref|), rtol 1e-3 (../shared/fixtures/README.md);
no float64 rerun (f32_vs_f64_max_err 0).

Reference code (nothing of it is committed here):
  https://github.com/Stability-AI/generative-models 0ad7de9a5cb53fd63d6d30a4f385485e72e08597 (UNetModel)
  diffusers 0.30.3 from PyPI (StableDiffusionXLInpaintPipeline, EulerDiscreteScheduler,
      EulerAncestralDiscreteScheduler, LCMScheduler, AutoencoderKL for the config only)

How to run (never needed to run the tests):
    git --git-dir=<generative-models clone> archive 0ad7de9a sgm scripts | tar -x -C /tmp/gm
    /tmp/ldvenv/bin/pip install --no-deps --target /tmp/peft-py peft==0.12.0 accelerate==0.33.0
    PYTHONPATH=/tmp/peft-py /tmp/ldvenv/bin/python tests/reference/make_sdxl_inpaint_goldens.py /tmp/gm [OUT_DIR]
(without accelerate, diffusers 0.30.3's pipeline has no _execution_device when its modules are
replaced as here).
"""
import os
import sys
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_sdxl_goldens as sdxl  # noqa: E402  (import_sgm, tolerance, MODEL_CHANNELS)
import make_sdxl_turbo_goldens as turbo  # noqa: E402  (load_unet)

NAME = "sdxl_inpaint_tiny"
BASE = "sdxl_base_tiny"
# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json, spacing trailing
EULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
             prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1, interpolation_type="linear",
             use_karras_sigmas=False)
EULER_A = {k: v for k, v in EULER.items() if k not in ("interpolation_type", "use_karras_sigmas")}
LCM = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
           prediction_type="epsilon", steps_offset=1, timestep_spacing="leading", clip_sample=False,
           set_alpha_to_one=False)
SIZE, CROP, TARGET = (64, 48), (3, 5), (64, 64)  # the sdxl_base_tiny conditioning's
SIZE_DIM = 8  # ConcatTimestepEmbedderND outdim of the fixture


class SgmAsDiffusersUNet(torch.nn.Module):
    """The sgm UNetModel called the way the pipeline calls UNet2DConditionModel."""

    def __init__(self, unet, sgm, pooled_dim, expect_y):
        super().__init__()
        self.unet, self.sgm, self.expect_y = unet, sgm, expect_y
        self.config = types.SimpleNamespace(in_channels=unet.in_channels, time_cond_proj_dim=None, sample_size=8,
                                            addition_time_embed_dim=SIZE_DIM)
        self.add_embedding = types.SimpleNamespace(
            linear_1=types.SimpleNamespace(in_features=pooled_dim + 6 * SIZE_DIM))

    @property
    def dtype(self):
        return torch.float32

    def forward(self, sample, timestep, encoder_hidden_states=None, timestep_cond=None, cross_attention_kwargs=None,
                added_cond_kwargs=None, return_dict=False):
        assert timestep_cond is None
        ids = added_cond_kwargs["time_ids"]
        emb = self.sgm.openaimodel.timestep_embedding(ids.flatten(), SIZE_DIM).reshape(ids.shape[0], -1)
        y = torch.cat([added_cond_kwargs["text_embeds"], emb], dim=1)
        err = float((y - self.expect_y).abs().max())
        assert err < 1e-5, "the vector y differs from sgm's conditioner by %g" % err
        t = torch.as_tensor(timestep).reshape(-1).expand(sample.shape[0])
        return (self.unet(sample, t, context=encoder_hidden_states, y=y),)


def pipeline(unet, scheduler):
    from diffusers import AutoencoderKL, StableDiffusionXLInpaintPipeline
    vae = AutoencoderKL(block_out_channels=[32], down_block_types=["DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D"], latent_channels=4)  # config only (factor 1)
    return StableDiffusionXLInpaintPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                            tokenizer_2=None, unet=unet, scheduler=scheduler,
                                            requires_aesthetics_score=False, force_zeros_for_empty_prompt=True,
                                            add_watermarker=False)


def run(unet_for, scheduler, steps, strength, scale, x_T, z0, mask, c, uc, rows=None, masked_z=None):
    """The pipeline's __call__; the latents after each step (after the blend)."""
    import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint as inp
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ea
    import diffusers.schedulers.scheduling_lcm as lcm
    pooled = c[1].shape[1] - 6 * SIZE_DIM
    guided = scale > 1.0
    unet = unet_for(torch.cat([uc[1], c[1]]) if guided else c[1])
    pipe = pipeline(unet, scheduler)
    drawn = []
    plain = (inp.randn_tensor, ea.randn_tensor, lcm.randn_tensor)
    inp.randn_tensor = lambda shape, **kw: x_T.clone()
    # the schedulers' own noise: row k belongs to step k of the full run of `steps`
    first = [None]

    def step_noise(shape, **kw):
        k = first[0] + len(drawn)
        drawn.append(k)
        return rows[k].reshape(shape).clone() if rows is not None else torch.zeros(shape)
    ea.randn_tensor = lcm.randn_tensor = step_noise
    seen = []

    def on_step(p, i, t, kw):
        seen.append(kw["latents"].clone())
        return {}
    try:
        n_run = min(int(steps * strength), steps)
        first[0] = steps - n_run
        with torch.no_grad():
            out = pipe(image=z0, mask_image=mask, height=z0.shape[2], width=z0.shape[3], strength=strength,
                       num_inference_steps=steps, guidance_scale=scale, prompt_embeds=c[0],
                       pooled_prompt_embeds=c[1][:, :pooled], negative_prompt_embeds=uc[0],
                       negative_pooled_prompt_embeds=uc[1][:, :pooled], original_size=SIZE,
                       crops_coords_top_left=CROP, target_size=TARGET, output_type="latent",
                       masked_image_latents=masked_z,
                       callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"]).images
    finally:
        inp.randn_tensor, ea.randn_tensor, lcm.randn_tensor = plain
    assert len(seen) == n_run and torch.equal(seen[-1], out)
    return torch.stack(seen), first[0], [int(t) for t in pipe.scheduler.timesteps]


def nine_channel_unet(sgm, base_dir, conv_in9):
    import yaml
    from safetensors.torch import load_file
    with open(os.path.join(base_dir, "config.yaml")) as f:
        params = dict(yaml.safe_load(f)["model"]["params"]["network_config"]["params"], in_channels=9)
    unet = sgm.openaimodel.UNetModel(**params).eval()
    state = load_file(os.path.join(base_dir, "model.safetensors"))
    pre = "model.diffusion_model."
    sd = {k[len(pre):]: v.float() for k, v in state.items() if k.startswith(pre)}
    sd["input_blocks.0.0.weight"] = conv_in9
    unet.load_state_dict(sd)
    return unet


def main():
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, LCMScheduler
    from safetensors.torch import load_file
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sgm = sdxl.import_sgm(os.path.abspath(sys.argv[1]))
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "..", "fixtures")
    base_dir = os.path.join(out, BASE)
    net = turbo.load_unet(sgm, base_dir)
    io = load_file(os.path.join(base_dir, "io.safetensors"))
    c, uc = (io["c_crossattn"], io["c_vector"]), (io["uc_crossattn"], io["uc_vector"])
    B = c[0].shape[0]
    gen = torch.Generator().manual_seed(7031)
    x_T = torch.randn((B, 4, 8, 8), generator=gen)
    rows = torch.randn((8, B, 4, 8, 8), generator=gen)
    z0 = 0.13025 * 4.0 * torch.randn((B, 4, 8, 8), generator=gen)
    mask = torch.zeros(B, 1, 8, 8)
    mask[0, :, 2:6, 1:5] = 1.0  # a square hole
    mask[1, :, :, 4:] = 1.0     # the right half
    unet_for = lambda y: SgmAsDiffusersUNet(net, sgm, c[1].shape[1] - 6 * SIZE_DIM, y)  # noqa: E731

    eul1, f1, t1 = run(unet_for, EulerDiscreteScheduler(**EULER), 4, 1.0, 5.0, x_T, z0, mask, c, uc)
    eul6, f6, t6 = run(unet_for, EulerDiscreteScheduler(**EULER), 8, 0.6, 5.0, x_T, z0, mask, c, uc)
    anc, fa, _ = run(unet_for, EulerAncestralDiscreteScheduler(**EULER_A), 4, 0.75, 5.0, x_T, z0, mask, c, uc, rows)
    lcm, fl, tl = run(unet_for, LCMScheduler(**LCM), 4, 1.0, 1.0, x_T, z0, mask, c, uc, rows)
    # the 9-channel inpainting UNet (diffusers/stable-diffusion-xl-1.0-inpainting-0.1's kind): the
    # base network with a random 9-channel input convolution, fed [x, mask, masked-image latent]
    conv_in9 = (torch.randn(sdxl.MODEL_CHANNELS, 9, 3, 3, generator=gen) / 9.0).half().float()
    masked_z = 0.13025 * 4.0 * torch.randn((B, 4, 8, 8), generator=gen) * (1 - mask)
    net9 = nine_channel_unet(sgm, base_dir, conv_in9)
    unet9_for = lambda y: SgmAsDiffusersUNet(net9, sgm, c[1].shape[1] - 6 * SIZE_DIM, y)  # noqa: E731
    in9, f9, _ = run(unet9_for, EulerDiscreteScheduler(**EULER), 4, 1.0, 5.0, x_T, z0, mask, c, uc, masked_z=masked_z)
    in9b, f9b, _ = run(unet9_for, EulerDiscreteScheduler(**EULER), 8, 0.75, 5.0, x_T, z0, mask, c, uc,
                       masked_z=masked_z)
    assert (f9, f9b) == (0, 2)
    print("timesteps", t1, t6, tl, "first steps", f1, f6, fa, fl)
    assert (f1, f6, fa, fl) == (0, 4, 1, 0) and t1 == [999, 749, 499, 249] and tl == [999, 759, 499, 259]
    keep = (1 - mask).bool().expand_as(z0)
    assert torch.equal(eul1[-1][keep], z0[keep])  # the kept region ends as the image latent

    inputs = {"x_T": x_T, "noise": rows, "z0": z0, "mask": mask, "c_crossattn": c[0], "c_vector": c[1],
              "uc_crossattn": uc[0], "uc_vector": uc[1], "inpaint9_conv_in": conv_in9, "masked_z": masked_z}
    outputs = {"inpaint_euler_step_x": eul1, "inpaint_euler_samples": eul1[-1],
               "inpaint_euler_s06_samples": eul6[-1], "inpaint_euler_a_samples": anc[-1],
               "inpaint_lcm_step_x": lcm, "inpaint_lcm_samples": lcm[-1],
               "inpaint9_euler_step_x": in9, "inpaint9_euler_samples": in9[-1],
               "inpaint9_euler_s075_samples": in9b[-1]}
    tol = {k: sdxl.tolerance(v, None, forward=False) for k, v in outputs.items()}
    conds = {"c_crossattn": "c_crossattn", "c_vector": "c_vector"}
    uconds = {"uc_crossattn": "uc_crossattn", "uc_vector": "uc_vector"}
    blend = {"x_T": "x_T", "z0": "z0", "mask": "mask"}
    calls = [
        {"op": "sampler.sgm", "inputs": {**blend, **conds, **uconds},
         "params": {"sampler": "euler", "steps": 4, "guidance_scale": 5.0, "spacing": "trailing", "first_step": f1},
         "outputs": {"step_x": "inpaint_euler_step_x", "samples": "inpaint_euler_samples"}},
        {"op": "sampler.sgm", "inputs": {**blend, **conds, **uconds},
         "params": {"sampler": "euler", "steps": 8, "guidance_scale": 5.0, "spacing": "trailing", "first_step": f6},
         "outputs": {"samples": "inpaint_euler_s06_samples"}},
        {"op": "sampler.sgm", "inputs": {**blend, "noise": "noise", **conds, **uconds},
         "params": {"sampler": "euler_a", "steps": 4, "guidance_scale": 5.0, "spacing": "trailing", "first_step": fa},
         "outputs": {"samples": "inpaint_euler_a_samples"}},
        {"op": "sampler.sgm", "inputs": {**blend, "noise": "noise", **conds},
         "params": {"sampler": "lcm", "steps": 4, "guidance_scale": 1.0, "lcm_original_steps": 50, "first_step": fl},
         "outputs": {"step_x": "inpaint_lcm_step_x", "samples": "inpaint_lcm_samples"}},
    ]
    description = ("SDXL inpainting with a 4-channel UNet as diffusers 0.30.3's StableDiffusionXLInpaintPipeline "
                       "runs it (its __call__: get_timesteps, pure noise at strength 1 else add_noise of the image "
                       "latent, mask blending with the same noise after every step, no composite) over the official "
                       "sgm UNetModel with the sdxl_base_tiny weights and conditioning; the image given as the "
                       "latent z0, a binary mask at the latent size: Euler trailing 4 steps strength 1 and 8 steps "
                       "strength 0.6, Euler ancestral trailing 4 steps strength 0.75, LCM 4 steps guidance 1; "
                       "guidance 5 elsewhere. inpaint9_* (checked by tests/test_sdxl.c, the network being the base "
                       "with inpaint9_conv_in as its 9-channel input convolution): the 9-channel inpainting UNet fed "
                       "[x, mask, masked_z] (masked_image_latents), Euler trailing 4 steps strength 1 and 8 steps "
                       "strength 0.75")
    turbo.write_sampling_fixture(out, NAME, base_dir, description, calls, inputs, outputs, tol)


if __name__ == "__main__":
    main()
