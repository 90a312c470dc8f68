"""Tokenizer: prompts to token ids, standalone (a model's conditioner tokenizes by itself)."""
import ctypes

from . import _api
from ._handle import _Owned
from .errors import check
from .tensor import result

_lib = _api.lib


class Tokenizer(_Owned):
    """Tokenizer(kind, vocab_path): kind "clip" (SD 1.x, HF CLIPTokenizer semantics), "openclip"
    (SD 2.x, open_clip.tokenize) or "bert" (bert-base-uncased WordPiece); vocab_path is
    bpe_simple_vocab_16e6.txt.gz or vocab.txt. A context manager; close() frees it early."""

    _what = "tokenizer"
    _free = "ldm_tokenizer_free"

    def __init__(self, kind, vocab_path):
        try:
            k = _api.TOKENIZERS[kind]
        except KeyError:
            raise ValueError("tokenizer kind %r: expected one of %s" % (kind, ", ".join(_api.TOKENIZERS))) from None
        out = ctypes.c_void_p()
        check(_lib.ldm_tokenizer_load(k, _api.path_bytes(vocab_path), ctypes.byref(out)), "ldm_tokenizer_load")
        super().__init__(out.value)
        self.kind = kind

    def encode(self, prompts, context_length=77):
        """A prompt or a list of prompts -> ids [n_prompts, context_length] int64."""
        if isinstance(prompts, str):
            prompts = [prompts]
        arr, n = _api.strings(prompts)
        out = ctypes.c_void_p()
        check(self._call(_lib.ldm_tokenizer_encode, arr, n, _api.integer(context_length, "context_length"), ctypes.byref(out)),
              "ldm_tokenizer_encode")
        return result(out.value)

    def encode_prompt(self, prompt, context_length=77, emphasis=True, comma_backtrack=True):
        """One prompt with webui's syntax and length rules (docs/prompts.md) -> (ids, weights): ids
        [n_chunks, context_length] int64 (each chunk wrapped in start/end tokens and padded),
        weights [n_chunks, context_length] float32 (1 for start/end/padding)."""
        ids, weights = ctypes.c_void_p(), ctypes.c_void_p()
        flags = _api.prompt_flags(emphasis, comma_backtrack)
        status = self._call(_lib.ldm_tokenizer_encode_prompt, prompt.encode("utf-8"),
                            _api.integer(context_length, "context_length"), flags, ctypes.byref(ids),
                            ctypes.byref(weights))
        check(status, "ldm_tokenizer_encode_prompt")
        return result(ids.value), result(weights.value)
