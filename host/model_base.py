"""What every model architecture shares: the host's float operations, the ternary linear layer,
vocabularies, the loaded-model container and the reading of ternary weights from a file.

Each architecture's module (:mod:`tritium.host.models` for the MatMul-free LM,
:mod:`tritium.host.bitnet` for BitNet b1.58) builds on this one and registers its runtime class
in :data:`RUNTIMES`; this module imports neither, so the architectures do not import each other.
"""

import dataclasses
import pathlib

import numpy as np

from ..sim import golden
from ..sim.golden import TritiumValueError
from .formats import MAX_PARAM, ModelFileError, finite_f32

__all__ = ["F32", "rmsnorm", "sigmoid", "silu", "TernaryLinear", "ByteVocab", "TokenListVocab", "TernaryModel",
           "RUNTIMES", "scale_value", "ternary_weights"]

F32 = np.float32

#: architecture name (``TernaryModel.arch``) -> the class :meth:`TernaryModel.bind` builds, called
#: as ``cls(model, runner)``; filled by each architecture's module when it is imported.
RUNTIMES = {}


# -- host-side float semantics (docs/arithmetic.md, "Host arithmetic") --------------------------

def rmsnorm(x, w, eps):
    """``x / sqrt(mean(x^2) + eps) * w`` over the last axis, float32."""
    x = np.asarray(x, F32)
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True, dtype=F32) + F32(eps)) * w).astype(F32)


def sigmoid(x):
    return (F32(1) / (F32(1) + np.exp(-np.asarray(x, F32)))).astype(F32)


def silu(x):
    x = np.asarray(x, F32)
    return (x * sigmoid(x)).astype(F32)


@dataclasses.dataclass
class TernaryLinear:
    """A BitLinear: ternary ``wq`` (M x K int8) with ``s_w`` (effective weight ``wq / s_w``),
    and the RMSNorm weight it applies to its input first (MatMul-free) or ``None``."""
    name: str
    wq: np.ndarray
    s_w: float
    norm: np.ndarray | None = None
    norm_eps: float = 1e-6

    def __call__(self, runner, x):
        x = np.asarray(x, F32)
        if self.norm is not None:
            x = rmsnorm(x, self.norm, self.norm_eps)
        xq, s_x = golden.quantize_activations(x)
        return golden.dequantize(runner.matvec(self.name, xq), s_x, self.s_w)


class ByteVocab:
    """Byte-level vocabulary: token ``i`` is byte ``i``; text is UTF-8."""

    def encode(self, raw):
        return list(raw)

    def decode_text(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")

    def piece(self, tok, decoder):
        return decoder.decode(bytes([tok]))

    def piece_flush(self, decoder):
        return decoder.decode(b"", final=True)


class TokenListVocab:
    """A vocabulary known only as a list of token strings (GGUF ``tokenizer.ggml.tokens``), or
    not at all: output is decoded (SentencePiece ``\u2581`` as space, ``<0xNN>`` as a byte);
    prompts must be given as token ids, since no tokenizer model is available offline."""

    def __init__(self, tokens=None):
        self.tokens = tokens

    def encode(self, raw):
        raise TritiumValueError("this model's tokenizer is not available offline: give the prompt as --prompt-ids")

    def _bytes(self, tok):
        if not self.tokens or not 0 <= tok < len(self.tokens):
            return f"[{tok}]".encode()
        t = self.tokens[tok]
        if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            return bytes([int(t[3:5], 16)])
        return t.replace("\u2581", " ").encode("utf-8")

    def decode_text(self, ids):
        return b"".join(self._bytes(t) for t in ids).decode("utf-8", errors="replace")

    def piece(self, tok, decoder):
        return decoder.decode(self._bytes(tok))

    def piece_flush(self, decoder):
        return decoder.decode(b"", final=True)


class TernaryModel:
    """A loaded model: ``arch``, ``config``, host float tensors and :class:`TernaryLinear` s.
    Nothing here touches a device; :meth:`bind` makes a runnable model."""

    def __init__(self, arch, config, floats, linears, *, source, info=None, tokenizer=None, vocab_size=None):
        self.arch, self.config, self.floats, self.linears = arch, config, floats, linears
        self.source, self.info = str(source), info or {}
        self.vocab_size = vocab_size or config.vocab
        self.tokenizer = tokenizer or (ByteVocab() if self.vocab_size == 256 else TokenListVocab())

    def describe(self):
        return f"{self.arch} {self.config.describe()} ({pathlib.Path(self.source).name})"

    @property
    def ternary_params(self):
        return sum(l.wq.size for l in self.linears.values())

    @property
    def float_params(self):
        return sum(a.size for a in self.floats.values()) + sum(
            l.norm.size for l in self.linears.values() if l.norm is not None)

    def bind(self, runner):
        """Load every ternary matrix onto ``runner``'s device; returns the runnable model, built
        by the architecture's class in :data:`RUNTIMES`. Raises :class:`TritiumValueError` for an
        architecture with no runtime (before anything is written)."""
        runtime = RUNTIMES.get(self.arch)
        if runtime is None:
            raise TritiumValueError(f"no runtime for architecture {self.arch!r}; known: {sorted(RUNTIMES)}")
        runner.load({n: l.wq for n, l in self.linears.items()})
        return runtime(self, runner)


def scale_value(arr, name, source):
    """The one value of a scale tensor: positive, within 2**-32 .. 2**32."""
    if np.size(arr) != 1:
        raise ModelFileError(f"{source}: {name} must be one positive number, got {np.size(arr)} values")
    value = finite_f32(arr, name, source).ravel()[0]
    if not 1 / MAX_PARAM <= value <= MAX_PARAM:
        raise ModelFileError(f"{source}: {name} must be one positive number between 2**-32 and 2**32, got {value}")
    return float(value)


def ternary_weights(tensors, name, m, k, source):
    """``(wq, s_w)`` for ``name`` (``.weight``): packed uint8 with ``.weight_scale``, or latent
    floats ternarized with absmean."""
    w = tensors.get(name + ".weight")
    if w is None:
        raise ModelFileError(f"{source}: tensor {name}.weight is missing")
    if w.dtype == np.uint8:
        if m % 4:
            raise ModelFileError(f"{source}: packed {name}.weight needs rows a multiple of 4, the model says {m}")
        if w.shape != (m // 4, k):
            raise ModelFileError(f"{source}: {name}.weight is packed {w.shape}, expected {(m // 4, k)} for a {m}x{k} matrix")
        if name + ".weight_scale" not in tensors:
            raise ModelFileError(f"{source}: packed {name}.weight has no {name}.weight_scale")
        try:
            wq = golden.unpack_bitnet_hf(w)
        except TritiumValueError as e:
            raise ModelFileError(f"{source}: {name}.weight: {e}") from None
        return wq, scale_value(tensors[name + ".weight_scale"], name + ".weight_scale", source)
    if w.shape != (m, k):
        raise ModelFileError(f"{source}: {name}.weight has shape {w.shape}, expected {(m, k)}")
    try:
        wq, s_w = golden.quantize_weights(finite_f32(w, name + ".weight", source))
    except TritiumValueError as e:
        raise ModelFileError(f"{source}: {name}.weight: {e}") from None
    return wq, float(s_w)
