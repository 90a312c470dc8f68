"""golden_io.py - what golden scripts write the same way: tensors as safetensors
(make_train_goldens.py, make_fewstep_goldens.py, make_diffusers_goldens.py), and for the two that
run diffusers the case.json of the ../shared/fixtures layout, its tolerance policy and the stored
noise the schedulers draw. Imported by those scripts; runs nothing itself. Needs numpy (torch only
for the noise rows).
"""
import json
import os
import struct

import numpy as np

SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64", np.dtype(np.float16): "F16"}


def write_safetensors(path, tensors):
    """tensors: list of (name, np.ndarray float32/int64/float16), written in the given order."""
    header, blobs, off = {}, [], 0
    for name, a in tensors:
        a = np.ascontiguousarray(a)
        dt = SAFETENSORS_DTYPES[a.dtype]
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def as_array(v):
    """A tensor or array as stored in io.safetensors: int64 for integers, float32 otherwise."""
    a = v.detach().numpy() if hasattr(v, "detach") else np.asarray(v)
    return a.astype(np.int64) if a.dtype.kind in "iu" else a.astype(np.float32)


def spec(lst):
    """case.json's "inputs"/"outputs": name -> shape and dtype of each (name, array)."""
    return {n: {"shape": list(a.shape), "dtype": "I64" if a.dtype == np.int64 else "F32"} for n, a in lst}


def tolerance(a, kind):
    """The policy for an output computed in float32 from the stored weights: integers exact; an
    op ("op") atol 1e-4 * max(1, max|ref|), rtol 1e-4; a trajectory 1e-3 both."""
    if a.dtype == np.int64:
        return {"atol": 0, "rtol": 0, "exact": True}
    mx = float(np.max(np.abs(a))) if a.size else 0.0
    f, r = (1e-4, 1e-4) if kind == "op" else (1e-3, 1e-3)
    return {"atol": float("%.3g" % (f * max(1.0, mx))), "rtol": r, "max_abs": float("%.6g" % mx),
            "f32_vs_f64_max_err": 0.0}


def tolerance_fields(tols):
    """case.json's closing "atol", "rtol" (the loosest) and "tolerances" (per output)."""
    return {
        "atol": max(t["atol"] for t in tols.values()),
        "rtol": max(t["rtol"] for t in tols.values()),
        "tolerances": tols,
    }


def write_case(d, case, outs):
    """<d>/case.json, then a summary of the fixture folder (size, outputs) on stdout."""
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
        f.write("\n")
    size = 0
    for root, _, files in os.walk(d):
        size += sum(os.path.getsize(os.path.join(root, x)) for x in files)
    print("%s: %d outputs, %.2f MB" % (d, len(outs), size / 1e6))
    for n, a in outs:
        print("  %-24s %-16s max|ref| %.4g" % (n, a.shape, float(np.max(np.abs(a)))))


class given_noise:
    """A scheduler module's randn_tensor returns the stored rows, one per call."""

    def __init__(self, module, rows):
        self.module, self.rows, self.k = module, rows, 0

    def __enter__(self):
        self.orig = self.module.randn_tensor

        def randn(shape, **kw):
            r = self.rows[self.k]
            self.k += 1
            assert tuple(r.shape) == tuple(shape), (r.shape, shape)
            return r.clone()
        self.module.randn_tensor = randn
        return self

    def __exit__(self, *a):
        self.module.randn_tensor = self.orig
