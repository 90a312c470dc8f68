"""Layout-to-image conditioning tokens (ldm_layout_tokens_from_json)."""
import ctypes
import json

from . import _api
from .errors import check
from .tensor import result

_lib = _api.lib


def layout_tokens(layouts, no_object_classes=300):
    """Ids [n_layouts, 92] int64 for the layout2img model's BERT conditioner.

    `layouts`: JSON text, or Python data (one layout dict or a list of them) of the form
    {"objects": [[category_no, x0, y0, w, h, flags], ...], "crop": None | [x0, y0, w, h],
    "flip": False} with coordinates relative to the image."""
    text = layouts if isinstance(layouts, (str, bytes)) else json.dumps(layouts)
    data = text.encode("utf-8") if isinstance(text, str) else text
    out = ctypes.c_void_p()
    check(_lib.ldm_layout_tokens_from_json(data, len(data), _api.integer(no_object_classes, "no_object_classes"), ctypes.byref(out)),
          "ldm_layout_tokens_from_json")
    return result(out.value)
