"""minimal.py - the smallest libldm host in Python: load a checkpoint (or the built-in demo
model), generate one image, write it as PNG.

    python3 minimal.py [MODEL.safetensors|demo] [PROMPT] [OUT.png]

Needs the `ldm` package (pip install bindings/python, or PYTHONPATH=bindings/python) and
libldm.so.0 ($LDM_LIBRARY, or installed)."""
import sys

import ldm

path = sys.argv[1] if len(sys.argv) > 1 else "demo"
prompt = sys.argv[2] if len(sys.argv) > 2 else "a watercolor painting of a lighthouse"
out = sys.argv[3] if len(sys.argv) > 3 else "minimal.png"
demo = path == "demo"
try:
    with (ldm.Model.load_builtin("demo") if demo else ldm.Model.load(path)) as model:
        # the demo model is class-conditional (ImageNet-style ids); real text models take the prompt
        image = model.generate(prompt=prompt, class_label=979 if demo else -1, steps=20, seed=42)
    ldm.write_png(out, image)
except ldm.LdmError as e:
    sys.exit("minimal: %s" % e)
print("minimal: libldm %s wrote %s" % (ldm.version(), out))
