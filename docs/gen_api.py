#!/usr/bin/env python3
"""Generates docs/api.md from include/ldm.h: the header's own comments are the reference.

    python3 docs/gen_api.py [include/ldm.h] > docs/api.md
    python3 docs/gen_api.py --check        # exit 1 if docs/api.md is stale or misses a function

Every section of the header (`/* ---- name */`) becomes a heading; every declaration (function,
typedef, enum, struct, macro group) is shown with the comment written above or beside it.
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PREAMBLE = """# libldm API reference

Generated from `include/ldm.h` by `docs/gen_api.py` (do not edit by hand; `make check` fails when
this file is stale). Conventions that hold for every call:

- **Status and errors.** Every call that can fail returns an `ldm_status`; on failure
  `ldm_last_error()` (thread-local) says what failed and where.
- **Ownership.** Handles from `*_load` / `*_create` are freed with the matching `*_free`. Handles
  obtained from a model (`ldm_model_autoencoder`, `ldm_model_unet`, `ldm_model_conditioner`) belong
  to the model. A tensor returned through `ldm_tensor **out` belongs to the caller and is released
  with `ldm_tensor_free()`; `ldm_tensor_wrap()` views caller memory without taking it.
- **Parameter structs** carry `struct_size`: fill them with their `*_params_init()` first.
- **Thread safety.** Different models may be used from different threads at once. One model and
  the handles obtained from it are used by one thread at a time, except `ldm_model_interrupt()`,
  which any thread (or a signal handler) may call. Tokenizers are read-only after loading and may
  be shared. The library never prints, aborts or exits.
"""


def strip_comment(text):
    lines = []
    for line in text.splitlines():
        line = line.strip()
        line = re.sub(r"^/\*+ ?", "", line)
        line = re.sub(r"\*+/$", "", line)
        line = re.sub(r"^\* ?", "", line)
        lines.append(line.rstrip())
    return "\n".join(lines).strip()


def parse(header):
    """Yields ("section", title) and ("item", comment, code) in header order."""
    text = open(header).read()
    body = text.split('extern "C" {', 1)[-1]
    pos = 0
    pending = ""
    items = []
    token = re.compile(r"/\*.*?\*/|#[^\n]*(?:\\\n[^\n]*)*|[^;{}/#]*(?:\{[^{}]*\}[^;{}/#]*)?;|\s+|.", re.S)
    while pos < len(body):
        m = token.match(body, pos)
        chunk = m.group(0)
        pos = m.end()
        if chunk.isspace() or chunk in ("}", "{"):
            continue
        if chunk.startswith("/*"):
            sec = re.match(r"/\* -{8,} (.*?) \*/", chunk)
            if sec:
                items.append(("section", sec.group(1)))
                pending = ""
            else:
                pending = (pending + "\n" + strip_comment(chunk)).strip()
            continue
        if chunk.startswith("#"):
            if re.match(r"#\s*define (LDM_(VERSION|MAX_DIMS)|ldm_)", chunk):
                items.append(("item", pending, chunk.strip()))
            pending = ""
            continue
        code = chunk.strip()
        if code and code != ";":
            items.append(("item", pending, code))
        pending = ""
    return items


def render(items):
    out = [PREAMBLE]
    for it in items:
        if it[0] == "section":
            out.append("\n## %s\n" % (it[1][0].upper() + it[1][1:]))
            continue
        _, comment, code = it
        code = re.sub(r"LDM_API ", "", code)
        out.append("```c\n%s\n```\n" % code)
        if comment:
            out.append(comment + "\n")
    return "\n".join(out).rstrip() + "\n"


def exported(header):
    return set(re.findall(r"LDM_API[^;(]*?\b(ldm_\w+)\s*\(", open(header).read()))


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    header = args[0] if args else os.path.join(ROOT, "include", "ldm.h")
    doc = render(parse(header))
    if "--check" not in sys.argv:
        sys.stdout.write(doc)
        return 0
    path = os.path.join(HERE, "api.md")
    current = open(path).read() if os.path.exists(path) else ""
    missing = sorted(f for f in exported(header) if f not in current)
    ok = current == doc and not missing
    if missing:
        print("api-doc: functions missing from docs/api.md: " + ", ".join(missing))
    if current != doc:
        print("api-doc: docs/api.md is stale: run python3 docs/gen_api.py > docs/api.md")
    print("api-doc: %d passed, %d failed" % (1 if ok else 0, 0 if ok else 1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
