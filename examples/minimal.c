/* minimal.c - the smallest libldm host: load a checkpoint (or the built-in demo model), generate
 * one image, write it as PNG.    usage: minimal [MODEL.safetensors|demo] [PROMPT] [OUT.png]
 * Build against an installed libldm:  cc minimal.c $(pkg-config --cflags --libs ldm) */
#include <ldm.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "demo", *out = argc > 3 ? argv[3] : "minimal.png";
    int demo = !strcmp(path, "demo");
    ldm_model *model = NULL;
    ldm_tensor *image = NULL;
    ldm_generate_params gp;
    ldm_generate_params_init(&gp);
    gp.prompt = argc > 2 ? argv[2] : "a watercolor painting of a lighthouse";
    gp.class_label = demo ? 979 : -1; /* the demo model is class-conditional (ImageNet-style ids) */
    gp.steps = 20;
    gp.seed = 42;
    ldm_status st = demo ? ldm_model_load_builtin("demo", 0, NULL, &model) : ldm_model_load(path, NULL, &model);
    if (st == LDM_OK) st = ldm_generate(model, &gp, &image);
    if (st == LDM_OK) st = ldm_image_write_png(out, image, NULL, NULL, 0);
    if (st != LDM_OK) fprintf(stderr, "minimal: %s: %s\n", ldm_status_string(st), ldm_last_error());
    else printf("minimal: libldm %s wrote %s\n", ldm_version(), out);
    ldm_tensor_free(image);
    ldm_model_free(model);
    return st == LDM_OK ? 0 : 1;
}
