#!/usr/bin/env python3
"""make-seeds.py SHARED OUT - seed corpora for the libFuzzer harnesses (tests/fuzz/fuzz_*.c),
generated from the fixtures in SHARED (the shared/ folder) into OUT/<harness>/.

Nothing here is committed: the seeds are derived from the fixtures each time. Checkpoints are
shrunk (every dimension cut to at most 2, names, dtypes and structure kept) so that the fuzzer
mutates headers and tables instead of megabytes of weights. Standard library only."""
import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile
import zlib
from collections import OrderedDict

DTYPE_SIZE = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def put(out, harness, data, tag=""):
    """Writes one seed, named by its hash (libFuzzer's convention)."""
    d = os.path.join(out, harness)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16] + (("-" + tag) if tag else "")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


# ---------------------------------------------------------------- safetensors

def shrink_safetensors(raw):
    """Every tensor cut to dims <= 2 (its first bytes kept), offsets rewritten."""
    hlen = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + hlen])
    data = raw[8 + hlen:]
    new_header, blob = OrderedDict(), bytearray()
    if "__metadata__" in header:
        new_header["__metadata__"] = header["__metadata__"]
    for name, e in header.items():
        if name == "__metadata__":
            continue
        shape = [min(d, 2) for d in e["shape"]]
        n = numel(shape) * DTYPE_SIZE[e["dtype"]]
        b, end = e["data_offsets"]
        chunk = data[b:b + n]
        chunk += bytes(n - len(chunk))
        new_header[name] = {"dtype": e["dtype"], "shape": shape, "data_offsets": [len(blob), len(blob) + n]}
        blob += chunk
    text = json.dumps(new_header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + bytes(blob), text


# ---------------------------------------------------------------- PyTorch checkpoints

class FakeStorageType:
    """Stands for torch.FloatStorage & co. while re-pickling."""


def fake_torch():
    """Minimal stand-ins for the torch globals a checkpoint names, registered in sys.modules so
    that pickle can both resolve and re-emit them (no torch needed)."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for cls in ["FloatStorage", "HalfStorage", "BFloat16Storage", "DoubleStorage", "LongStorage", "IntStorage",
                "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage"]:
        t = type(cls, (FakeStorageType,), {"__module__": "torch"})
        setattr(torch, cls, t)

    class Tensor:
        def __init__(self, fn, args):
            self.fn, self.args = fn, args

        def __reduce__(self):
            return (self.fn, self.args)

    def _rebuild_tensor_v2(*args):
        return Tensor(_rebuild_tensor_v2, args)

    def _rebuild_parameter(*args):
        return Tensor(_rebuild_parameter, args)

    for fn in (_rebuild_tensor_v2, _rebuild_parameter):
        fn.__module__, fn.__qualname__ = "torch._utils", fn.__name__
    utils._rebuild_tensor_v2, utils._rebuild_parameter = _rebuild_tensor_v2, _rebuild_parameter
    torch._utils = utils
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    return Tensor


def shrink_ckpt(raw):
    """Re-pickles data.pkl with every tensor cut to dims <= 2 (contiguous, offset 0) and its
    storage cut to match; returns (zip bytes stored, zip bytes deflated, new data.pkl)."""
    Tensor = fake_torch()
    zin = zipfile.ZipFile(io.BytesIO(raw))
    pkl_name = [n for n in zin.namelist() if n.endswith("/data.pkl")][0]
    archive = pkl_name.split("/")[0]

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            return ("pid",) + tuple(pid[1:])

    obj = Unpickler(io.BytesIO(zin.read(pkl_name))).load()
    storages = {}

    def fix(v):
        if isinstance(v, Tensor):
            if v.fn.__name__ == "_rebuild_parameter":
                return Tensor(v.fn, (fix(v.args[0]),) + tuple(v.args[1:]))
            storage, offset, size, stride = v.args[:4]
            _, typ, key, loc, n = storage
            size = tuple(min(d, 2) for d in size)
            stride, acc = [], 1
            for d in reversed(size):
                stride.insert(0, acc)
                acc *= d
            elem = {"Float": 4, "Half": 2, "BFloat16": 2, "Double": 8, "Long": 8, "Int": 4, "Short": 2,
                    "Char": 1, "Byte": 1, "Bool": 1}[typ.__name__[:-len("Storage")]]
            old = zin.read(archive + "/data/" + key)
            start = offset * elem
            storages[key] = old[start:start + max(1, numel(size)) * elem]
            st = ("pid", typ, key, loc, max(1, numel(size)))
            return Tensor(v.fn, (st, 0, size, tuple(stride)) + tuple(v.args[4:]))
        if isinstance(v, dict):
            new = type(v)() if isinstance(v, OrderedDict) else {}
            for k, x in v.items():
                new[k] = fix(x)
            if hasattr(v, "_metadata"):
                new._metadata = v._metadata
            return new
        if isinstance(v, (list, tuple)):
            return type(v)(fix(x) for x in v)
        return v

    obj = fix(obj)

    class Pickler(pickle.Pickler):
        def persistent_id(self, v):
            if isinstance(v, tuple) and len(v) == 5 and v[0] == "pid":
                return ("storage",) + v[1:]
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    pkl = buf.getvalue()
    zips = []
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        zb = io.BytesIO()
        with zipfile.ZipFile(zb, "w", method) as z:
            z.writestr(archive + "/data.pkl", pkl)
            for name in zin.namelist():
                rest = name[len(archive) + 1:]
                if rest.startswith("data/") and rest[5:] in storages:
                    z.writestr(name, storages[rest[5:]])
                elif not rest.startswith("data/") and rest != "data.pkl":
                    z.writestr(name, zin.read(name))
        zips.append(zb.getvalue())
    return zips[0], zips[1], pkl, zin.read(pkl_name)


# ---------------------------------------------------------------- PNG

def png(width, height, color_type, bit_depth, pixels_per_row, palette=None, interlace=0):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace)
    raw = b"".join(b"\0" + pixels_per_row(y) for y in range(height))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if palette:
        out += chunk(b"PLTE", palette)
    out += chunk(b"tEXt", b"prompt\0a seed") + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return out


def png_seeds():
    w, h = 5, 3
    seeds = [
        png(w, h, 0, 8, lambda y: bytes((x * 40 + y) & 255 for x in range(w))),
        png(w, h, 2, 8, lambda y: bytes((x * 3 + c + y * 7) & 255 for x in range(w) for c in range(3))),
        png(w, h, 6, 8, lambda y: bytes((x * 5 + c) & 255 for x in range(w) for c in range(4))),
        png(w, h, 4, 8, lambda y: bytes((x + c) & 255 for x in range(w) for c in range(2))),
        png(w, h, 3, 8, lambda y: bytes((x + y) % 4 for x in range(w)), palette=bytes(range(12))),
        png(w, h, 2, 16, lambda y: bytes((x + c) & 255 for x in range(w) for c in range(6))),
        png(w, h, 0, 1, lambda y: bytes([0b10100000])),
        png(w, h, 2, 8, lambda y: bytes((x * 3 + c) & 255 for x in range(w) for c in range(3)), interlace=1),
    ]
    return seeds + png_length_bombs()


# Issue #12: an ancillary chunk whose length field claims 2^31-1 bytes right after IHDR, followed by
# what would be IDAT and IEND (89 bytes). libpng buffered such chunks whole: 2 GB allocated and
# zeroed per read before the reader skipped them (tests/test_hostile.c png_ancillary_chunk_bombs).
PNG_BOMB_TYPES = (b"tEXt", b"zTXt", b"iTXt", b"sPLT", b"pCAL", b"sCAL", b"iCCP", b"eXIf", b"prVt")


def png_length_bombs():
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
    tail = chunk(b"IDAT", zlib.compress(bytes(16 * 49))) + chunk(b"IEND", b"")
    return [head + struct.pack(">I", 0x7FFFFFFF) + kind + b"Comment\0" + tail for kind in PNG_BOMB_TYPES]


# ---------------------------------------------------------------- main

def main():
    if len(sys.argv) != 3:
        sys.exit("usage: make-seeds.py SHARED OUT")
    shared, out = sys.argv[1], sys.argv[2]
    fx = os.path.join(shared, "fixtures")
    for name in sorted(os.listdir(fx)):
        d = os.path.join(fx, name)
        if not os.path.isdir(d):
            continue
        for f in ("model.safetensors", "io.safetensors"):
            p = os.path.join(d, f)
            if os.path.exists(p):
                small, header = shrink_safetensors(open(p, "rb").read())
                put(out, "fuzz_safetensors", small, name)
                put(out, "fuzz_json", header, name)
        p = os.path.join(d, "model.ckpt")
        if os.path.exists(p):
            stored, deflated, pkl, orig_pkl = shrink_ckpt(open(p, "rb").read())
            for h in ("fuzz_ckpt", "fuzz_zip"):
                put(out, h, stored, name)
                put(out, h, deflated, name + "-deflated")
            put(out, "fuzz_pickle", pkl, name)
            put(out, "fuzz_pickle", orig_pkl, name + "-orig")
        p = os.path.join(d, "config.yaml")
        if os.path.exists(p):
            put(out, "fuzz_config", open(p, "rb").read(), name)
        p = os.path.join(d, "case.json")
        if os.path.exists(p):
            text = open(p, "rb").read()
            put(out, "fuzz_json", text, name)
            case = json.loads(text)
            for call in case.get("calls", []):
                params = call.get("params", {})
                if "layouts" in params:
                    for i, lay in enumerate(params["layouts"]):
                        put(out, "fuzz_layout", bytes([i]) + json.dumps(lay).encode(), name)
                    put(out, "fuzz_layout", b"\x03" + json.dumps(params["layouts"]).encode(), name + "-all")
                if "prompts" in params:
                    h = "fuzz_bert_tokenizer" if "bert" in call["op"] else "fuzz_clip_tokenizer"
                    for i, pr in enumerate(params["prompts"]):
                        put(out, h, bytes([(i * 2 + (1 if "openclip" in call["op"] else 0)) & 255]) +
                            pr.encode("utf-8", "surrogatepass"), name)
    for i, s in enumerate(png_seeds()):
        for mode in range(3):
            put(out, "fuzz_png", bytes([mode]) + s, "png%d" % i)
    # vocabularies: small but loadable BERT vocabularies (plain and gzip), the head of the CLIP file
    vocab = os.path.join(shared, "vocab")
    bert = open(os.path.join(vocab, "bert-base-uncased-vocab.txt"), "rb").read().split(b"\n")
    small = b"\n".join(bert[:120] + bert[1000:1100] + bert[2000:2100] + [b"##s", b"##ing"]) + b"\n"
    put(out, "fuzz_bert_vocab", small, "small")
    put(out, "fuzz_bert_vocab", gzip.compress(small), "small-gz")
    clip = gzip.open(os.path.join(vocab, "bpe_simple_vocab_16e6.txt.gz")).read().split(b"\n")
    for n in (1, 4, 40):
        put(out, "fuzz_clip_vocab", b"\x00" + b"\n".join(clip[:n]) + b"\n", "head%d" % n)
        put(out, "fuzz_clip_vocab", b"\x02" + b"\n".join(clip[:n]) + b"\n", "head%d-openclip" % n)
    put(out, "fuzz_clip_vocab", b"\x01" + gzip.compress(b"\n".join(clip[:50])), "gz-short")
    # prompt syntax: the prompts of the project's own prompt goldens (tests/fixtures/prompt_parse)
    own = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "prompt_parse", "case.json")
    if os.path.exists(own):
        for i, pr in enumerate(json.load(open(own, encoding="utf-8"))["calls"][0]["params"]["prompts"]):
            put(out, "fuzz_prompt", bytes([(i * 37) & 255]) + pr.encode("utf-8"), "prompt%d" % i)
    for h in ("fuzz_json", "fuzz_layout", "fuzz_config", "fuzz_clip_tokenizer", "fuzz_bert_tokenizer", "fuzz_prompt"):
        put(out, h, b"\x00", "minimal")


if __name__ == "__main__":
    main()
