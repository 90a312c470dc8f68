#!/usr/bin/env python3
"""make_sdxl_turbo_goldens.py - SDXL-Turbo sampling goldens (issue #14): tests/fixtures/sdxl_turbo_tiny
in the ../shared/fixtures format, on the network of tests/fixtures/sdxl_base_tiny (its weights are
used in place, `weights: ["../sdxl_base_tiny/model.safetensors"]`; config.yaml is a copy).

SDXL-Turbo is SDXL base's architecture sampled as its model card does with diffusers: the
StableDiffusionXLPipeline loop (latents = x_T * init_noise_sigma; per timestep
scale_model_input, the UNet, scheduler.step) with the model's scheduler, an
EulerAncestralDiscreteScheduler with the settings of stabilityai/sdxl-turbo's
scheduler_config.json (scaled_linear betas 0.00085 .. 0.012 over 1000 steps, epsilon prediction,
timestep_spacing "trailing"), 1 step and guidance off (guidance_scale 0.0 in diffusers). Here:

  - the network is the OFFICIAL sgm UNetModel (generative-models) with the fixture's float16
    weights, called as diffusers calls its converted UNet2DConditionModel: x, the timestep, the
    cross-attention context and the vector y = [pooled text embedding, add_time_ids embedding]
    (diffusers' text_time embedding is the same sinusoidal embedding in the same order as sgm's
    ConcatTimestepEmbedderND vector, so sgm's conditioning tensors are fed unchanged);
  - the conditioning is the sdxl_base_tiny golden's (c_crossattn / c_vector, uc_* for the guided
    call), made by sgm's GeneralConditioner;
  - the scheduler and the loop are diffusers 0.30.3's own (the scheduler computes its float32
    alphas_cumprod itself, as for the real model); its ancestral noise (randn_tensor) is replaced
    by stored rows that the C side injects with ldm_sampler_set_noise.

Calls (conformance op sampler.sgm with params.spacing "trailing"):
  euler_a, 1 step, no guidance  (the model card's settings)
  euler_a, 4 steps, no guidance (999, 749, 499, 249; with ancestral noise)
  euler,   2 steps, guidance 2  (999, 499; classifier-free guidance as the pipeline combines it)

Tolerance: sampler trajectories 1e-3 * max(1, max|ref|), rtol 1e-3 (../shared/fixtures/README.md);
no float64 rerun (f32_vs_f64_max_err 0).

Reference code (nothing of it is committed here):
  https://github.com/Stability-AI/generative-models 0ad7de9a5cb53fd63d6d30a4f385485e72e08597 (UNetModel)
  diffusers 0.30.3 from PyPI (EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, the
      StableDiffusionXLPipeline loop).

How to run (never needed to run the tests):
    git --git-dir=<generative-models clone> archive 0ad7de9a sgm | tar -x -C /tmp/gm
    /usr/bin/python3 -m venv --system-site-packages /tmp/ldvenv
    /tmp/ldvenv/bin/pip install einops omegaconf safetensors diffusers==0.30.3 huggingface_hub==0.25.2
    /tmp/ldvenv/bin/python tests/reference/make_sdxl_turbo_goldens.py /tmp/gm [OUT_DIR]
"""
import json
import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_sdxl_goldens as sdxl  # noqa: E402  (import_sgm, tolerance)

NAME = "sdxl_turbo_tiny"
BASE = "sdxl_base_tiny"
# stabilityai/sdxl-turbo scheduler/scheduler_config.json
TURBO_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                       prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1)


def load_unet(sgm, base_dir):
    import yaml
    from safetensors.torch import load_file
    with open(os.path.join(base_dir, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    params = dict(cfg["model"]["params"]["network_config"]["params"])
    unet = sgm.openaimodel.UNetModel(**params).eval()
    state = load_file(os.path.join(base_dir, "model.safetensors"))
    prefix = "model.diffusion_model."
    unet.load_state_dict({k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)})
    return unet


def run(unet, scheduler_cls, steps, x_T, c, uc, scale, noise=None):
    """The StableDiffusionXLPipeline denoising loop with the Turbo scheduler; x after each step."""
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ea
    sched = scheduler_cls(**TURBO_SCHEDULER)
    sched.set_timesteps(steps)
    rows = iter(noise if noise is not None else [])
    plain = ea.randn_tensor
    # (the last step draws noise too, times sigma_up = 0: zeros when no rows are given)
    ea.randn_tensor = lambda shape, **kw: next(rows, torch.zeros(shape)).reshape(shape).clone()
    try:
        x = x_T * sched.init_noise_sigma
        out = []
        with torch.no_grad():
            for t in sched.timesteps:
                guided = uc is not None and scale > 1.0
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
        ea.randn_tensor = plain
    return torch.stack(out), [float(t) for t in sched.timesteps]


def write_sampling_fixture(out, name, base_dir, description, calls, inputs, outputs, tol):
    """<out>/<name>: a sampling fixture on the sdxl_base_tiny networks (its config.yaml copied, its
    weights referenced): io.safetensors with the inputs and expected outputs, case.json."""
    from safetensors.torch import save_file
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    shutil.copyfile(os.path.join(base_dir, "config.yaml"), os.path.join(d, "config.yaml"))
    save_file({k: v.contiguous().clone() for k, v in {**inputs, **outputs}.items()}, os.path.join(d, "io.safetensors"))
    case = {
        "kind": "sdxl",
        "name": name,
        "description": description,
        "reference": {"repo": sdxl.REF_REPO, "commit": sdxl.REF_COMMIT, "diffusers": "0.30.3",
                      "torch": torch.__version__},
        "weights": ["../%s/model.safetensors" % BASE],
        "weights_dtype": "F16 (every tensor); expected outputs computed in float32 from these F16 values",
        "calls": calls,
        "inputs": {k: {"shape": list(v.shape), "dtype": "F32"} for k, v in inputs.items()},
        "outputs": {k: {"shape": list(v.shape), "dtype": "F32"} for k, v in outputs.items()},
        "atol": max(t["atol"] for t in tol.values()),
        "rtol": max(t["rtol"] for t in tol.values()),
        "tolerances": tol,
    }
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
    print("%s: %d bytes" % (d, sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))))


def main():
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
    from safetensors.torch import load_file
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sgm = sdxl.import_sgm(os.path.abspath(sys.argv[1]))
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "..", "fixtures")
    base_dir = os.path.join(out, BASE)
    unet = load_unet(sgm, base_dir)
    io = load_file(os.path.join(base_dir, "io.safetensors"))
    c, uc = (io["c_crossattn"], io["c_vector"]), (io["uc_crossattn"], io["uc_vector"])
    gen = torch.Generator().manual_seed(2024)
    B = c[0].shape[0]
    x_T = torch.randn((B, 4, 8, 8), generator=gen)
    noise4 = torch.randn((4, B, 4, 8, 8), generator=gen)
    one, t1 = run(unet, EulerAncestralDiscreteScheduler, 1, x_T, c, None, 1.0)
    four, t4 = run(unet, EulerAncestralDiscreteScheduler, 4, x_T, c, None, 1.0, noise4)
    two, t2 = run(unet, EulerDiscreteScheduler, 2, x_T, c, uc, 2.0)
    print("timesteps", t1, t4, t2)
    assert t1 == [999.0] and t4 == [999.0, 749.0, 499.0, 249.0] and t2 == [999.0, 499.0]
    inputs = {"x_T": x_T, "c_crossattn": c[0], "c_vector": c[1], "uc_crossattn": uc[0], "uc_vector": uc[1],
              "euler_a_noise": noise4}
    outputs = {"turbo1_samples": one[-1], "turbo4_step_x": four, "turbo4_samples": four[-1],
               "euler2_cfg_samples": two[-1]}
    tol = {k: sdxl.tolerance(v, None, forward=False) for k, v in outputs.items()}
    conds = {"c_crossattn": "c_crossattn", "c_vector": "c_vector"}
    uconds = {"uc_crossattn": "uc_crossattn", "uc_vector": "uc_vector"}
    calls = [
        {"op": "sampler.sgm", "inputs": {"x_T": "x_T", **conds},
         "params": {"sampler": "euler_a", "steps": 1, "guidance_scale": 1.0, "spacing": "trailing"},
         "outputs": {"samples": "turbo1_samples"}},
        {"op": "sampler.sgm", "inputs": {"x_T": "x_T", "noise": "euler_a_noise", **conds},
         "params": {"sampler": "euler_a", "steps": 4, "guidance_scale": 1.0, "spacing": "trailing"},
         "outputs": {"step_x": "turbo4_step_x", "samples": "turbo4_samples"}},
        {"op": "sampler.sgm", "inputs": {"x_T": "x_T", **conds, **uconds},
         "params": {"sampler": "euler", "steps": 2, "guidance_scale": 2.0, "spacing": "trailing"},
         "outputs": {"samples": "euler2_cfg_samples"}},
    ]
    description = ("SDXL-Turbo sampling as its model card runs it with diffusers 0.30.3 (StableDiffusionXLPipeline "
                       "loop, EulerAncestralDiscreteScheduler / EulerDiscreteScheduler with sdxl-turbo's scheduler "
                       "config: scaled_linear 0.00085..0.012, epsilon, timestep_spacing trailing) over the official "
                       "sgm UNetModel with the sdxl_base_tiny weights and conditioning: euler_a 1 step (the card's "
                       "setting), euler_a 4 steps with stored ancestral noise, euler 2 steps with guidance 2")
    write_sampling_fixture(out, NAME, base_dir, description, calls, inputs, outputs, tol)


if __name__ == "__main__":
    main()
