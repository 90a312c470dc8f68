/* help.c - `ldm --help` and `ldm COMMAND --help`: each option once, with its default, tagged with
 * the commands that take it, so the general and the per-command help cannot disagree. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

enum { GEN = 1, I2I = 2, INP = 4, UP = 8, INFO = 16, TRAIN = 32, RUN = GEN | I2I | INP | UP, ALL = RUN | INFO };

static const struct {
    const char *name;
    unsigned bit;
    const char *synopsis, *about;
} commands[] = {
    {"generate", GEN, "ldm generate [options]",
     "text-, class- or unconditional generation; --seg labels.png for semantic synthesis,\n"
     "--layout boxes.json for layout-to-image"},
    {"img2img", I2I, "ldm img2img --init IMAGE.png [options]",
     "image-to-image: the init image noised to --strength of the schedule, then denoised"},
    {"inpaint", INP, "ldm inpaint --init IMAGE.png --mask MASK.png [options]",
     "repaints the white part of the mask (inpainting models, or any model by mask blending)"},
    {"upscale", UP, "ldm upscale --init LOW_RES.png [options]",
     "super-resolution with an LDM-BSR model (output = input size x the first stage's factor, 4)"},
    {"info", INFO, "ldm info MODEL [--config FILE]    |    ldm info --cpu",
     "architecture, parameter counts and dtypes of a checkpoint, and which config was used;\n"
     "--cpu: the CPU's vector features and the kernel family used (LDM_CPU=auto|generic|avx2|\n"
     "avx2+fma|avx512|neon forces one; one this CPU lacks runs generic); with a MODEL,\n"
     "--cpu FAMILY loads it with that family and prints the same"},
    {"train", TRAIN, "ldm train CONFIG --data DIR --out DIR [--steps N | --minutes M] [options]",
     "trains an AutoencoderKL or a LatentDiffusion model from its YAML config (the reference's\n"
     "format) on a folder of PNGs with labels.csv (docs/training.md)"},
};

/* Option lines, 26 columns of flags; the defaults are stated in each line. */
static const struct {
    unsigned commands;
    const char *text;
} options[] = {
    {RUN, "  --model FILE            checkpoint, .safetensors or .ckpt, or builtin:NAME (glyphs, demo, sd15, sd21-v,\n"
          "                          cin256-v2; all but glyphs are untrained) (default: $LDM_MODEL, else\n"
          "                          builtin:glyphs, the glyph model trained by libldm: --class 0-61 = A-Z a-z 0-9)\n"},
    {ALL, "  --config FILE           the model's original YAML config (default: <checkpoint without extension>.yaml,\n"
          "                          then config.yaml beside the checkpoint, else the architecture is detected\n"
          "                          from tensor names)\n"},
    {GEN | I2I | INP, "  --vocab PATH            tokenizer vocabulary file or folder (default: $LDM_VOCAB, then a file of the\n"
                      "                          usual name next to the checkpoint)\n"},
    {GEN | I2I | INP, "  --prompt TEXT           text models: the prompt (default \"\")\n"
                      "  --negative-prompt TEXT  text models: the unconditional prompt of guidance (default \"\")\n"
                      "                          Both use webui's syntax: (word:1.3), (word), [word], \\( \\), BREAK, and\n"
                      "                          prompts longer than 75 tokens (docs/prompts.md)\n"
                      "  --plain-prompt          text models: the prompts are plain text, cut at 75 tokens\n"},
    {GEN | I2I | INP, "  --class N[,M,...]       class-conditional models: the class, 0 .. n_classes-1 (default: an\n"
                      "                          unconditional sample, made with the unconditional class); a list makes\n"
                      "                          one image per class (seed N+k for the k-th), side by side in one PNG\n"},
    {GEN | I2I | INP, "  --uncond-class N|none|auto\n"
                      "                          class models: the class that means \"no class\", the unconditional branch of\n"
                      "                          guidance (default auto: the extra class n_classes-1, like cin256-v2's 1000,\n"
                      "                          unless the config's ClassEmbedder sets ucg_rate: 0; none: the model has none,\n"
                      "                          so --class is needed and guidance is off)\n"},
    {GEN, "  --seg FILE.png          semantic synthesis: a label map (gray values = class ids)\n"
          "  --layout FILE.json      layout-to-image: boxes (docs/tasks/layout-to-image.md)\n"
          "  --layout-classes N      object classes of the layout model's token builder (default 300)\n"},
    {I2I | INP | UP, "  --init FILE.png         the input image (required)\n"},
    {INP, "  --mask FILE.png         the mask, white = repaint (required)\n"},
    {I2I | INP, "  --strength F            fraction of the schedule re-run, 0.001 .. 1 (default 0.75 for img2img; 1 for\n"
                "                          inpaint: the masked part from pure noise; inpainting models ignore it)\n"},
    {RUN, "  --sampler NAME          ddim (default), plms, ddpm, euler, euler_a, heun, dpmpp_2m, dpmpp_2m_karras,\n"
          "                          lcm (Latent Consistency Models and LCM-LoRA; docs/few-step.md)\n"
          "                          (SDXL: euler, euler_a, heun, dpmpp_2m over sgm's noise levels, ddim runs\n"
          "                          euler; lcm as diffusers' LCMScheduler: LCM-LoRA SDXL)\n"},
    {RUN, "  --spacing NAME          euler, euler_a, heun, dpmpp_2m: default (k-diffusion) or trailing (diffusers'\n"
          "                          \"trailing\": 999, 749, 499, 249 for 4 steps; SD-Turbo / SDXL-Turbo)\n"
          "  --turbo                 SD-Turbo / SDXL-Turbo settings (the weights cannot tell): --sampler euler_a\n"
          "                          --spacing trailing --steps 1 --cfg-scale 1 unless given (1 to 4 steps);\n"
          "                          on an SDXL model also 512 for a width or height not given (512 x 512)\n"
          "  --lcm-original-steps N  lcm: the distillation's schedule, 1 .. 10000 (default 50)\n"},
    {RUN, "  --steps N               sampler steps, 1 .. 10000 (default 50); with T the model's training timesteps\n"
          "                          (1000 for the CompVis and SD models):\n"
          "                          ddim, plms: evenly spaced timesteps 1 + k * (T/N rounded down): N of them\n"
          "                            when N divides T, more otherwise (6 -> 7, 400 -> 500); plms evaluates\n"
          "                            the model once more;\n"
          "                          euler, euler_a, heun, dpmpp_2m: N noise levels evenly spaced in timestep from\n"
          "                            T-1 to 0 (dpmpp_2m_karras: Karras spacing); heun evaluates 2N-1 times;\n"
          "                          lcm (default N = 4): N of the --lcm-original-steps timesteps (4 of 50: 999,\n"
          "                            759, 499, 259); --turbo: default N = 1;\n"
          "                          ddpm: NOT respaced: the last N consecutive training timesteps N-1, ..., 1, 0,\n"
          "                            started from pure noise, so only N >= T (e.g. --steps 1000) runs the whole\n"
          "                            chain; fewer steps leave noise in the image\n"},
    {I2I | INP, "                          img2img and mask blending run the last max(1, int(strength * N)) of them\n"
                "                          (SDXL img2img: sgm's rule, the last int(strength * (N + 1)) - 1 of them)\n"},
    {RUN, "  --cfg-scale F           classifier-free guidance scale, 0 .. 100; 1 = off (default 0 = the model's\n"
          "                          default: 7.5 for text models, 3 for class models with an unconditional\n"
          "                          class, off otherwise; lcm: off, or 8.5 fed to an LCM-distilled UNet's\n"
          "                          guidance embedding, which runs no unconditional branch)\n"},
    {RUN, "  --eta F                 DDIM noise, 0 .. 10 (default 0; plms needs 0)\n"},
    {RUN, "  --seed N                0 .. 18446744073709551615 (default: random, printed); recorded in the PNG\n"},
    {GEN, "  --refiner FILE          SDXL: a refiner checkpoint that finishes the run (sd_xl_refiner_1.0); its config\n"
          "                          from --refiner-config, else found beside it like --config\n"
          "  --refiner-start F       SDXL: fraction of the steps the base runs before the refiner, 0 .. 1\n"
          "                          (default 0.8; sgm demo rule, ldm_sdxl_base_steps)\n"},
    {RUN, "  --batch N               images, 1 .. 64 (default 1); image k is generated on its own with seed N+k\n"
          "                          (wrapping past the largest seed), so any one is re-made alone with the\n"
          "                          seed recorded in its PNG\n"},
    {GEN, "  --width N --height N    output size in pixels, 8 .. 16384, multiples of the model's factor (default:\n"
          "                          the training size)\n"},
    {RUN, "  --vae-tile N            decode in tiles of N latent pixels, -1 .. 4096 (default 0: automatic; -1: never)\n"},
    {RUN, "  --taesd FILE            tiny autoencoder (TAESD: taesd_decoder.pth for SD 1.x/2.x, taesdxl_* for SDXL,\n"
          "                          .pth or .safetensors, or diffusers' AutoencoderTiny file holding both parts):\n"
          "                          decode with it (about 9x faster, softer detail) and preview with it\n"},
    {I2I | INP, "  --taesd-encoder FILE    its encoder (taesd_encoder.pth) for the init image, unless --taesd holds both\n"},
    {RUN, "  --vae full|tiny         which autoencoder makes the image (default: tiny with --taesd, else full;\n"
          "                          --taesd FILE --vae full keeps TAESD for the previews only)\n"},
    {RUN, "  --preview FILE.png      rewrite FILE.png with the current prediction every --preview-every steps:\n"
          "                          decoded by TAESD with --taesd, else a rough linear latent-to-RGB map at\n"
          "                          latent size (SD latents), else by the model's own decoder\n"},
    {RUN, "  --preview-every N       steps between previews, 1 .. 10000 (default 1)\n"},
    {RUN, "  --weights auto|ema|raw  EMA or trained weights (default auto: EMA when the checkpoint has them)\n"},
    {RUN, "  --lora FILE[:WEIGHT]    merge a LoRA (kohya/webui or diffusers/PEFT .safetensors, .pt/.ckpt) with\n"
          "                          WEIGHT (default 1); repeatable, up to 16, applied in order (docs/lora.md)\n"},
    {RUN, "  --threads N             0 .. 1024 (default 0: all online CPUs)\n"},
    {ALL, "  --cpu FAMILY            kernel family: auto, avx512, avx2+fma, avx2, neon, generic (default\n"
          "                          auto: LDM_CPU, else the best the CPU has); an error when the CPU or build\n"
          "                          lacks it\n"},
    {ALL, "  --compute f32|bf16      arithmetic (default f32); bf16 needs avx512_bf16 and its kernels are not\n"
          "                          written yet, so it fails with a message saying which (docs/performance.md)\n"},
    {ALL, "  --max-memory SIZE       refuse any single allocation above SIZE: bytes, or with K, M or G (powers of\n"
          "                          1024), model loading and input images included (default 0: no cap)\n"},
    {RUN, "  --low-memory            keep little resident: weights dropped after each layer, no scratch cache\n"
          "                          (slower, same images; same as LDM_LOW_MEMORY=1, docs/performance.md)\n"},
    {RUN, "  -o, --output FILE.png   (default out.png; with --batch N also FILE-1.png ... FILE-<N-1>.png)\n"},
    {TRAIN, "  --data DIR              PNG images and labels.csv (file,label per line; docs/training-data.md)\n"
            "  --out DIR               checkpoints: last.safetensors, config.yaml, last.state.safetensors (created)\n"
            "  --steps N               optimiser steps (default: lightning.trainer.max_steps of the config)\n"
            "  --minutes M             stop after M minutes (default: no time limit); a limit is required\n"
            "  --first-stage FILE      LatentDiffusion: the trained autoencoder (default: the config's\n"
            "                          first_stage_config.params.ckpt_path)\n"
            "  --init FILE             fine-tune: start from this checkpoint's weights (default: from scratch)\n"
            "  --resume                continue the run in --out (weights, optimiser, EMA, step)\n"
            "  --batch N               batch size (default: data.params.batch_size)\n"
            "  --lr F                  learning rate (default: base_learning_rate x batch x accumulation, as main.py)\n"
            "  --cond-drop P           share of class labels replaced by the unconditional class, or of captions\n"
            "                          replaced by \"\" (default: the ClassEmbedder's ucg_rate / ucg_training's p, else 0)\n"
            "  --save-every N          checkpoint every N steps (default: at the end, and on Ctrl-C)\n"
            "  --log-every N           a progress line every N steps when stderr is not a terminal (default 50)\n"
            "  --seed N                initialisation, data order and noise (default 23)\n"
            "  --threads N             (default: all online CPUs)\n"
            "  --memory-budget MB      recompute UNet blocks in backward once the step's activations exceed MB\n"
            "                          (activation checkpointing; the config's use_checkpoint recomputes all)\n"
            "  --export FILE           at the end, also write the sampling weights (EMA-only) to FILE\n"
            "  --half                  with --export: float16\n"
            "  --lora-rank R           LoRA fine-tuning (needs --init or --resume): rank-R adapters on the UNet's\n"
            "                          SpatialTransformer layers, base frozen; --export writes a kohya LoRA file\n"
            "                          (float16 unless --lora-float32) (default: the config's lora.rank, none)\n"
            "  --lora-alpha A          LoRA scale alpha / rank (default: the config's lora.alpha, else 1; 0 = rank)\n"
            "  --lora-float32          with --export of a LoRA run: float32 adapters\n"
            "  --vocab PATH            caption-conditioned models: the tokenizer vocabulary (file or folder;\n"
            "                          default $LDM_VOCAB, then the text encoder checkpoint's folder)\n"},
    {ALL | TRAIN, "  -q, --quiet             print nothing but errors (no progress bar, seed, config, warnings, 'wrote')\n"},
    {ALL | TRAIN, "  -h, --help              these options (ldm help COMMAND: one command's)\n"},
};

static void print_options(FILE *f, unsigned commands_mask)
{
    for (size_t i = 0; i < sizeof options / sizeof options[0]; i++)
        if (options[i].commands & commands_mask) fputs(options[i].text, f);
}

void cli_usage(FILE *f)
{
    fputs("usage: ldm COMMAND [options]    (ldm COMMAND --help: that command's options)\n\ncommands:\n", f);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        fprintf(f, "  %-10s ", commands[i].name);
        for (const char *s = commands[i].about; *s; s++) /* continuation lines under the first */
            if (*s == '\n')
                fputs("\n             ", f);
            else
                fputc(*s, f);
        fputc('\n', f);
    }
    fputs("\noptions:\n", f);
    print_options(f, ALL);
}

static int find_command(const char *command)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(commands[i].name, command)) return (int)i;
    return -1;
}

int cli_is_command(const char *command) { return find_command(command) >= 0; }

int cli_command_usage(FILE *f, const char *command)
{
    int i = find_command(command);
    if (i < 0) return -1;
    fprintf(f, "usage: %s\n%s\n\noptions:\n", commands[i].synopsis, commands[i].about);
    print_options(f, commands[i].bit);
    return 0;
}
