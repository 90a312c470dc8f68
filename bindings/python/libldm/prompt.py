"""Prompt syntax: how the library reads a prompt (webui's emphasis syntax, docs/prompts.md)."""
import ctypes

from . import _api
from .errors import check

_lib = _api.lib


def parse_prompt(prompt, emphasis=True):
    """The runs of equal weight of a prompt, as AUTOMATIC1111's parse_prompt_attention returns
    them: a list of (text, weight) tuples, neighbouring runs of equal weight merged; a BREAK is
    ("BREAK", -1.0). emphasis=False: the whole prompt as one run of weight 1."""
    out = ctypes.c_void_p()
    check(_lib.ldm_prompt_parse(prompt.encode("utf-8"), _api.prompt_flags(emphasis), ctypes.byref(out)),
          "ldm_prompt_parse")
    try:
        return [(_lib.ldm_prompt_runs_text(out, i).decode("utf-8"), _lib.ldm_prompt_runs_weight(out, i))
                for i in range(_lib.ldm_prompt_runs_count(out))]
    finally:
        _lib.ldm_prompt_runs_free(out)
