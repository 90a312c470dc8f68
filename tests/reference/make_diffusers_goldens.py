#!/usr/bin/env python3
"""make_diffusers_goldens.py - the goldens of loading a diffusers folder (issue #14):
tests/fixtures/diffusers_lcm_sd1 in the ../shared/fixtures layout, except that the weights are a
diffusers pipeline folder `model/` (model_index.json, unet/, vae/, text_encoder/, scheduler/)
written by diffusers' own save_pretrained, which the conformance runner loads through the folder
path (case.json "weights": ["model"]; no config.yaml: the architecture comes from the folder's
config.json files).

The pipeline is a shrunk SD1-style LatentConsistencyModelPipeline with seeded random weights:
  - UNet2DConditionModel with time_cond_proj_dim 256 (the LCM guidance embedding, as in
    SimianLuo/LCM_Dreamshaper_v7), two levels of 64 channels (CrossAttnDownBlock2D, DownBlock2D;
    layers_per_block 0 to keep the fixture small: the levels still hold a downsampler, the up
    blocks one ResBlock each, a transformer at level 0 and in the middle), cross_attention_dim 32,
    attention_head_dim 2, two levels of 64 channels so that GroupNorm(32) has two per group (at 32
    it normalises every channel alone and cancels the additive timestep embedding, and with it
    the guidance embedding under test; SD's 320 channels have 10 per group), SD's default
    (additive) resnet_time_scale_shift;
  - AutoencoderKL with two levels of 64 channels (layers_per_block 0: decoder levels of one
    ResBlock, reversed numbering, up/downsamplers, mid attention), scaling_factor 0.18215;
  - transformers CLIPTextModel (width 32, 2 layers, 2 heads, vocab 1000, quick_gelu);
  - LCMScheduler with SD's scaled_linear 0.00085..0.012.
Every weight is stored F16 (`save_pretrained(variant="fp16")`; the VAE's file is then renamed to
the plain diffusion_pytorch_model.safetensors so both spellings are read); the references are
computed in float32 by the modules that `DiffusionPipeline.from_pretrained` reads back from the
saved folder, i.e. from the F16-rounded values.

Calls: the text encoder's last hidden state on token ids; the UNet with the guidance embedding
(LatentConsistencyModelPipeline.get_guidance_scale_embedding, w = 8.5 - 1) and without; the VAE
decode and encode; and the pipeline itself (4 steps, guidance 8.5, fixed latents and prompt
embeddings = the text encoder's output, output_type latent) with LCMScheduler's step noise
(randn_tensor) replaced by stored rows, recording latents and denoised after each step through
callback_on_step_end; the image is vae.decode(denoised / scaling_factor). The scheduler uses its
own float32 alphas_cumprod (libldm computes them in float64 from the same config: equal to ~1e-7).

Tolerances follow ../shared/fixtures/README.md: forward ops atol 1e-4*max(1,max|ref|) (rtol 1e-4),
the trajectory 1e-3*max(1,max|ref|) with rtol 1e-3; no float64 rerun (f32_vs_f64_max_err 0).

Reference code (nothing of it is committed here): diffusers 0.30.3 and transformers 4.39.3 from
PyPI (the newest diffusers that runs on Debian's torch 1.13); huggingface/diffusers
11f1a54e2672364e79dbf43ee307d250f33afc50 scripts/convert_diffusers_to_original_stable_diffusion.py
read for the name tables.

How to run (never needed to run the tests):
    /usr/bin/python3 -m venv --system-site-packages /tmp/ldvenv
    /tmp/ldvenv/bin/pip install diffusers==0.30.3 transformers==4.39.3 huggingface_hub==0.25.2
    /tmp/ldvenv/bin/python tests/reference/make_diffusers_goldens.py [OUT_DIR]
"""
import os
import shutil
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import golden_io as gio  # noqa: E402  (safetensors and case.json writers, tolerances, stored noise)
import make_train_goldens as mtg  # noqa: E402  (randomise)

NAME = "diffusers_lcm_sd1"
WIDTH = 32
# UNet and VAE widths: GroupNorm(32) with two channels per group. At 32 channels every channel is
# normalised alone, which cancels anything added per channel before a GroupNorm (the additive
# timestep embedding, conv biases); 64 keeps SD's default resnet_time_scale_shift ("default").
CH = 64
COND_DIM = 256
SF = 0.18215


def build(tmp):
    from diffusers import AutoencoderKL, LatentConsistencyModelPipeline, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(CH, CH), layers_per_block=0,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=WIDTH,
                                attention_head_dim=2, time_cond_proj_dim=COND_DIM)
    vae = AutoencoderKL(block_out_channels=(CH, CH), layers_per_block=0,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, sample_size=16, scaling_factor=SF)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, vocab_size=1000, max_position_embeddings=77,
                                        hidden_act="quick_gelu"))
    for i, mod in enumerate((unet, vae, text)):
        mtg.randomise(mod, torch.Generator().manual_seed(3030 + i))
    sched = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = LatentConsistencyModelPipeline(vae=vae, text_encoder=text, tokenizer=None, unet=unet, scheduler=sched,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16)
    pipe.save_pretrained(tmp, safe_serialization=True, variant="fp16")
    back = LatentConsistencyModelPipeline.from_pretrained(tmp, variant="fp16", torch_dtype=torch.float32,
                                                          safety_checker=None, feature_extractor=None,
                                                          tokenizer=None, requires_safety_checker=False)
    return back.to(torch.float32)


class Fixture:
    """Inputs, expected outputs and calls of one fixture, written in the shared layout."""

    def __init__(self, name):
        self.name, self.inputs, self.outputs, self.kinds, self.calls = name, {}, {}, {}, []

    def add(self, name, value, kind):
        self.outputs[name] = value
        self.kinds[name] = kind

    def write(self, d, description):
        import diffusers
        import transformers

        ins = [(k, gio.as_array(v)) for k, v in self.inputs.items()]
        outs = [(k, gio.as_array(v)) for k, v in self.outputs.items()]
        gio.write_safetensors(os.path.join(d, "io.safetensors"), ins + outs)
        tols = {n: gio.tolerance(a, self.kinds[n]) for n, a in outs}
        case = {
            "kind": "ldm_sampling",
            "name": self.name,
            "description": description,
            "reference": {"diffusers": diffusers.__version__, "transformers": transformers.__version__,
                          "diffusers_source_read": "huggingface/diffusers 11f1a54e2672364e79dbf43ee307d250f33afc50",
                          "torch": torch.__version__},
            "generator": "tests/reference/make_diffusers_goldens.py",
            "weights": ["model"],
            "weights_dtype": "F16 for every weight (save_pretrained variant fp16); expected outputs computed in "
                             "float32 from the F16 values",
            "calls": self.calls,
            "inputs": gio.spec(ins),
            "outputs": gio.spec(outs),
            **gio.tolerance_fields(tols),
        }
        gio.write_case(d, case, outs)


def fresh_dir(out, name):
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d, os.path.join(d, "model")


@torch.no_grad()
def lcm_sd1(out):
    d, folder = fresh_dir(out, NAME)
    pipe = build(folder)
    unet, vae, text = pipe.unet, pipe.vae, pipe.text_encoder
    g = torch.Generator().manual_seed(99)
    fx = Fixture(NAME)
    inputs, add, calls = fx.inputs, fx.add, fx.calls
    # text encoder: last_hidden_state (after final_layer_norm) on ids, 0-padded
    tokens = torch.zeros(2, 77, dtype=torch.int64)
    tokens[0, :9] = torch.tensor([0, 17, 301, 999, 5, 44, 640, 2, 998])
    tokens[1, :] = torch.randint(0, 1000, (77,), generator=g)
    inputs["tokens"] = tokens
    add("c", text(tokens)[0], "op")
    calls.append({"op": "cond.clip_text", "inputs": {"tokens": "tokens"}, "params": {}, "outputs": {"c": "c"}})
    # UNet with and without the guidance embedding
    x2 = torch.randn(2, 4, 8, 8, generator=g)
    t2 = torch.tensor([999, 259])
    ctx2 = torch.randn(2, 77, WIDTH, generator=g)
    inputs.update({"apply_x": x2, "apply_t": t2, "apply_context": ctx2})
    w = pipe.get_guidance_scale_embedding(torch.tensor(8.5 - 1).repeat(2), embedding_dim=COND_DIM)
    add("apply_out", unet(x2, t2, encoder_hidden_states=ctx2, timestep_cond=w).sample, "op")
    add("apply_out_plain", unet(x2, t2, encoder_hidden_states=ctx2).sample, "op")
    io = {"x": "apply_x", "timesteps": "apply_t", "context": "apply_context"}
    calls.append({"op": "ldm.apply_model_embedded_guidance", "inputs": io, "params": {"guidance_scale": 8.5},
                  "outputs": {"out": "apply_out"}})
    calls.append({"op": "ldm.apply_model", "inputs": io, "params": {}, "outputs": {"out": "apply_out_plain"}})
    # VAE: decode(z) and encode(x) (posterior moments)
    z = torch.randn(1, 4, 8, 8, generator=g)
    inputs["z"] = z
    add("decoded", vae.decode(z).sample, "op")
    calls.append({"op": "autoencoder_kl.decode", "inputs": {"z": "z"}, "params": {}, "outputs": {"image": "decoded"}})
    x = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    inputs["x"] = x
    post = vae.encode(x).latent_dist
    add("moments", post.parameters, "op")
    add("mean", post.mean, "op")
    add("std", post.std, "op")
    calls.append({"op": "autoencoder_kl.encode", "inputs": {"x": "x"}, "params": {},
                  "outputs": {"moments": "moments", "mean": "mean", "std": "std"}})
    # the pipeline: 4 LCM steps, guidance 8.5 through the embedding, prompt = tokens[0]
    x_T = torch.randn(1, 4, 8, 8, generator=g)
    noise = torch.randn(4, 1, 4, 8, 8, generator=g)
    inputs.update({"x_T": x_T, "noise": noise})
    prompt = text(tokens[:1])[0]
    add("prompt_c", prompt, "op")
    calls.append({"op": "cond.clip_text", "inputs": {"tokens": "prompt_tokens"}, "params": {},
                  "outputs": {"c": "prompt_c"}})
    inputs["prompt_tokens"] = tokens[:1]
    steps = {"t": [], "latents": [], "denoised": []}

    def on_step(p, i, t, kw):
        steps["t"].append(int(t))
        steps["latents"].append(kw["latents"].clone())
        steps["denoised"].append(kw["denoised"].clone())
        return {}
    import diffusers.schedulers.scheduling_lcm as lcm_module
    with gio.given_noise(lcm_module, noise):
        res = pipe(prompt_embeds=prompt, latents=x_T.clone(), num_inference_steps=4, guidance_scale=8.5,
                   height=16, width=16, output_type="latent", callback_on_step_end=on_step,
                   callback_on_step_end_tensor_inputs=["latents", "denoised"])
    fin = res.images
    assert torch.equal(fin, steps["denoised"][-1])
    add("lcm_step_timesteps", np.array(steps["t"], dtype=np.int64)[:, None], "traj")
    add("lcm_step_x", torch.stack(steps["latents"]), "traj")
    add("lcm_step_pred_x0", torch.stack(steps["denoised"]), "traj")
    add("lcm_samples", fin, "traj")
    add("lcm_image", vae.decode(fin / SF).sample, "traj")
    calls.append({"op": "sampler.lcm", "inputs": {"x_T": "x_T", "noise": "noise"},
                  "params": {"steps": 4, "guidance_scale": 8.5, "guidance_embedding": True,
                             "cond": {"type": "tensor", "name": "prompt_c"}},
                  "outputs": {k: "lcm_" + k for k in ("step_timesteps", "step_x", "step_pred_x0", "samples", "image")}})

    vae_dir = os.path.join(folder, "vae")
    os.rename(os.path.join(vae_dir, "diffusion_pytorch_model.fp16.safetensors"),
              os.path.join(vae_dir, "diffusion_pytorch_model.safetensors"))

    fx.write(d, "a diffusers folder (LatentConsistencyModelPipeline.save_pretrained, F16) loaded through its path: "
                "shrunk SD1-style UNet2DConditionModel with time_cond_proj_dim 256 (LCM guidance embedding), "
                "AutoencoderKL, CLIPTextModel, LCMScheduler. Text encoder on ids, UNet with and without the "
                "embedding, VAE decode/encode, the pipeline's 4-step LCM trajectory.")


SD2_NAME = "diffusers_sd2_v"


def build_sd2(tmp):
    """A shrunk SD 2.x-style StableDiffusionPipeline: v-prediction, the open_clip text tower in
    transformers' layout (gelu, the penultimate block already dropped), linear transformer
    projections, per-level attention_head_dim (level 0 has no attention), trailing Euler. As in the
    LCM fixture: 64-channel levels (layers_per_block 0 needs equal widths; two channels per
    GroupNorm group); resnet_time_scale_shift "scale_shift" here (the LCM fixture has SD's
    default), so that both ResnetBlock2D forms are checked."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(CH, CH), layers_per_block=0,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=WIDTH,
                                attention_head_dim=[1, 2], use_linear_projection=True,
                                resnet_time_scale_shift="scale_shift")
    vae = AutoencoderKL(block_out_channels=(CH,), layers_per_block=0, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, sample_size=8, scaling_factor=SF)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=3,
                                        num_attention_heads=2, vocab_size=1000, max_position_embeddings=77,
                                        hidden_act="gelu", projection_dim=WIDTH))
    for i, mod in enumerate((unet, vae, text)):
        mtg.randomise(mod, torch.Generator().manual_seed(4040 + i))
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   prediction_type="v_prediction", timestep_spacing="trailing", steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=None, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16)
    pipe.save_pretrained(tmp, safe_serialization=True)
    back = StableDiffusionPipeline.from_pretrained(tmp, torch_dtype=torch.float32, safety_checker=None,
                                                   feature_extractor=None, tokenizer=None,
                                                   requires_safety_checker=False)
    return back.to(torch.float32)


@torch.no_grad()
def sd2_v(out):
    d, folder = fresh_dir(out, SD2_NAME)
    pipe = build_sd2(folder)
    unet, vae, text = pipe.unet, pipe.vae, pipe.text_encoder
    g = torch.Generator().manual_seed(7)
    fx = Fixture(SD2_NAME)
    tokens = torch.zeros(2, 77, dtype=torch.int64)  # open_clip pads with 0
    tokens[0, :6] = torch.tensor([1, 17, 301, 999, 5, 998])
    tokens[1, :] = torch.randint(0, 1000, (77,), generator=g)
    fx.inputs["tokens"] = tokens
    fx.add("c", text(tokens)[0], "op")
    fx.calls.append({"op": "cond.openclip_text", "inputs": {"tokens": "tokens"}, "params": {}, "outputs": {"c": "c"}})
    x2 = torch.randn(2, 4, 8, 8, generator=g)
    t2 = torch.tensor([999, 301])
    ctx2 = torch.randn(2, 77, WIDTH, generator=g)
    fx.inputs.update({"apply_x": x2, "apply_t": t2, "apply_context": ctx2})
    fx.add("apply_out", unet(x2, t2, encoder_hidden_states=ctx2).sample, "op")
    fx.calls.append({"op": "ldm.apply_model", "inputs": {"x": "apply_x", "timesteps": "apply_t",
                                                         "context": "apply_context"},
                     "params": {}, "outputs": {"out": "apply_out"}})
    # the pipeline: Euler (trailing spacing, v-prediction), 3 steps, no guidance, prompt = tokens[0]
    x_T = torch.randn(1, 4, 8, 8, generator=g)
    fx.inputs.update({"x_T": x_T, "prompt_tokens": tokens[:1]})
    prompt = text(tokens[:1])[0]
    fx.add("prompt_c", prompt, "op")
    fx.calls.append({"op": "cond.openclip_text", "inputs": {"tokens": "prompt_tokens"}, "params": {},
                     "outputs": {"c": "prompt_c"}})
    steps = {"t": [], "latents": []}

    def on_step(p, i, t, kw):
        steps["t"].append(int(t))
        steps["latents"].append(kw["latents"].clone())
        return {}
    res = pipe(prompt_embeds=prompt, latents=x_T.clone(), num_inference_steps=3, guidance_scale=1.0, height=8,
               width=8, output_type="latent", callback_on_step_end=on_step,
               callback_on_step_end_tensor_inputs=["latents"])
    fin = res.images
    fx.add("eu_step_timesteps", np.array(steps["t"], dtype=np.int64)[:, None], "traj")
    fx.add("eu_step_x", torch.stack(steps["latents"]), "traj")
    fx.add("eu_samples", fin, "traj")
    fx.add("eu_image", vae.decode(fin / SF).sample, "traj")
    fx.calls.append({"op": "sampler.euler_trailing", "inputs": {"x_T": "x_T"},
                     "params": {"steps": 3, "guidance_scale": 1.0, "cond": {"type": "tensor", "name": "prompt_c"}},
                     "outputs": {k: "eu_" + k for k in ("step_timesteps", "step_x", "samples", "image")}})
    fx.write(d, "an SD 2.x-style diffusers folder (StableDiffusionPipeline.save_pretrained, F16) loaded through its "
                "path: v-prediction (scheduler_config.json prediction_type), the open_clip text tower in "
                "transformers' CLIPTextModel layout (gelu; q/k/v stacked into in_proj by the loader), linear "
                "transformer projections, per-level attention_head_dim. Text encoder on 0-padded ids, UNet output "
                "(v), the pipeline's 3-step Euler trajectory with trailing spacing, no guidance.")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "fixtures")
    torch.set_num_threads(1)
    lcm_sd1(out)
    sd2_v(out)


if __name__ == "__main__":
    main()
