"""Test helpers: repository paths, the shared fixtures, a tiny safetensors reader and the fixture
tolerance check. Test code only: the binding itself never reads safetensors."""
import array
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
SHARED = os.environ.get("LDM_SHARED", os.path.join(REPO, "..", "shared"))
FIXTURES = os.path.join(SHARED, "fixtures")

_FORMATS = {"F32": "f", "I64": "q"}


def fixture_dir(name):
    """The fixture's directory, or None when the shared fixtures are absent."""
    d = os.path.join(FIXTURES, name)
    return d if os.path.isfile(os.path.join(d, "case.json")) else None


def read_safetensors(path):
    """{name: (dtype "F32"/"I64", shape tuple, array.array of the values)} for F32/I64 tensors.

    The format: u64 little-endian header length, a JSON header {name: {dtype, shape,
    data_offsets [begin, end)}} (plus "__metadata__"), then the data, offsets relative to it."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] not in _FORMATS:
            continue
        begin, end = info["data_offsets"]
        values = array.array(_FORMATS[info["dtype"]])
        values.frombytes(blob[base + begin:base + end])
        if struct.pack("=H", 1) != struct.pack("<H", 1):
            values.byteswap()  # the file is little-endian
        out[name] = (info["dtype"], tuple(info["shape"]), values)
    return out


def as_buffer(entry):
    """A fixture tensor as a shaped memoryview (what a caller without NumPy would pass)."""
    dtype, shape, values = entry
    return memoryview(values).cast("B").cast(_FORMATS[dtype], shape)


def flat_values(x):
    """The values of a binding result (NumPy array or libldm.Tensor) as a flat list."""
    if hasattr(x, "ravel"):
        return [float(v) for v in x.ravel()]
    out = []

    def walk(v):
        if isinstance(v, list):
            for e in v:
                walk(e)
        else:
            out.append(v)
    walk(x.tolist())
    return out


def shape_of(x):
    return tuple(int(d) for d in x.shape)


def compare(testcase, name, got, expected, tolerance):
    """Fixture rule: |got - ref| <= atol + rtol * |ref| everywhere (exact for integer outputs)."""
    dtype, shape, ref = expected
    testcase.assertEqual(shape_of(got), shape, "%s: shape" % name)
    vals = flat_values(got)
    if tolerance.get("exact") or dtype == "I64":
        testcase.assertEqual([int(v) for v in vals], list(ref), "%s: values" % name)
        return
    atol, rtol = tolerance["atol"], tolerance["rtol"]
    worst = max(range(len(ref)), key=lambda i: abs(vals[i] - ref[i]) - (atol + rtol * abs(ref[i])))
    excess = abs(vals[worst] - ref[worst]) - (atol + rtol * abs(ref[worst]))
    testcase.assertLessEqual(excess, 0.0, "%s: element %d is %r, reference %r (atol %g, rtol %g)"
                             % (name, worst, vals[worst], ref[worst], atol, rtol))


def load_case(d):
    with open(os.path.join(d, "case.json"), encoding="utf-8") as f:
        return json.load(f)
