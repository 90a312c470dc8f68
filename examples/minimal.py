"""minimal.py - the smallest libldm host in Python: load a checkpoint (or the built-in demo
model), generate one image, write it as PNG.

    python3 minimal.py [MODEL.safetensors|demo] [PROMPT] [OUT.png]

Needs the `libldm` package (pip install bindings/python, or PYTHONPATH=bindings/python) and
libldm.so.0 ($LDM_LIBRARY, or installed)."""
import sys

import libldm

path = sys.argv[1] if len(sys.argv) > 1 else "demo"
prompt = sys.argv[2] if len(sys.argv) > 2 else "a watercolor painting of a lighthouse"
out = sys.argv[3] if len(sys.argv) > 3 else "minimal.png"
demo = path == "demo"
try:
    with (libldm.Model.load_builtin("demo") if demo else libldm.Model.load(path)) as model:
        # the demo model is class-conditional (ImageNet-style ids); real text models take the prompt
        image = model.generate(prompt=prompt, class_label=979 if demo else -1, steps=20, seed=42)
    libldm.write_png(out, image)
except libldm.LdmError as e:
    sys.exit("minimal: %s" % e)
print("minimal: libldm %s wrote %s" % (libldm.version(), out))
