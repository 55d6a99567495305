"""Ternary language models on the accelerator: every BitLinear runs on the device, the rest on the host.

A model is loaded from a file into a :class:`TernaryModel` (host tensors plus the ternary
matrices), then bound to a :class:`MatrixRunner` -- an :class:`~tritium.host.accelerator.Accelerator`
whose weight memory receives every ternary matrix once. Per token only int8 activations go to
the device and exact integer products come back; norms, the recurrence or attention,
activations, embedding and sampling run in numpy float32 (semantics: ``docs/arithmetic.md``).

Architectures: ``mmfreelm`` (MatMul-free LM: MLGRU token mixer, GLU channel mixer; the shipped
model) and ``bitnet`` (BitNet b1.58: attention with RoPE and sub-norms, relu² or SiLU-gated
FFN), from the formats in :func:`load_model`.
"""

import dataclasses
import json
import pathlib

import numpy as np

from ..sim import golden
from ..sim.golden import TritiumValueError
from .formats import ModelFileError, read_safetensors, write_safetensors

__all__ = ["ROOT", "DEFAULT_MODEL", "MMFreeConfig", "ModelTooLarge", "TernaryModel", "MatrixRunner",
           "MMFreeLM", "export_mmfree", "load_model", "rmsnorm", "silu", "sigmoid"]

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "tritium-mmfree-3x128.safetensors"
F32 = np.float32


class ModelTooLarge(TritiumValueError):
    """The model's ternary weights do not fit the device's weight memory or engine limits."""


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


# -- the device side ------------------------------------------------------------------------------

class MatrixRunner:
    """Ternary matrices resident on an accelerator, multiplied by int8 vectors.

    ``load(mats)`` checks that every matrix fits the engine (rows, K) and that all of them fit
    the weight memory together -- raising :class:`ModelTooLarge` with the numbers before anything
    is written -- then writes each once. Matrices are named by the device's slots; a model with
    more matrices than slots re-binds slots (one short SET_SLOT frame; the weights stay put).
    ``matvec(name, xq)`` returns the exact int64 product. Counters: ``products``,
    ``engine_cycles`` (the cycle model of :func:`tritium.hw.engine.product_cycles`, checked
    against the RTL) and the accelerator's ``link_bytes``.
    """

    def __init__(self, accelerator, *, label=None):
        self.acc = accelerator
        self.params = accelerator.params
        self.label = label or "the device"
        self.mats = {}
        self.products = self.engine_cycles = 0
        self._bound = {}     # slot -> name
        self._slot_of = {}   # name -> slot
        self._clock = 0
        self._lru = {}

    def plan(self, shapes):
        """Check ``{name: (M, K)}`` against the engine; returns ``{name: (base, M, K)}``."""
        p = self.params
        total, layout = 0, {}
        for name, (m, k) in shapes.items():
            if k > p.max_k or m > p.max_rows:
                raise ModelTooLarge(f"matrix {name} is {m}x{k}, but {self.label} takes at most K = {p.max_k} "
                                    f"and {p.max_rows} rows per product")
            layout[name] = (total, m, k)
            total += p.words_for(m, k)
        if total > p.weight_depth:
            trits = sum(m * k for m, k in shapes.values())
            raise ModelTooLarge(f"the model's {len(shapes)} ternary matrices ({trits:,} trits) need {total:,} weight "
                                f"words, but {self.label} has {p.weight_depth:,} ({p.capacity_trits:,} trits, "
                                f"{p.lanes} lanes x {p.trits} trits per word): {total / p.weight_depth:.1f}x too large")
        return layout

    def load(self, mats):
        """Write ``{name: ternary int8 M x K}`` to the device (all or nothing checked first)."""
        layout = self.plan({n: w.shape for n, w in mats.items()})
        self.acc.reset()
        self.mats, self._bound, self._slot_of, self._lru = {}, {}, {}, {}
        for name, w in mats.items():
            base, m, k = layout[name]
            self.acc.write_matrix(w, base)
            self.mats[name] = (base, m, k)
        for name in list(self.mats)[:self.acc.info["slots"]]:  # name what fits now: no binds per token
            self._slot(name)
        self.weight_words = sum(self.params.words_for(m, k) for _, m, k in self.mats.values())

    def _slot(self, name):
        slot = self._slot_of.get(name)
        if slot is None:
            free = [s for s in range(self.acc.info["slots"]) if s not in self._bound]
            slot = free[0] if free else min(self._bound, key=lambda s: self._lru[s])
            if slot in self._bound:
                del self._slot_of[self._bound[slot]]
            base, m, k = self.mats[name]
            self.acc.bind(slot, base, m, k)
            self._bound[slot], self._slot_of[name] = name, slot
        self._clock += 1
        self._lru[slot] = self._clock
        return slot

    def matvec(self, name, xq):
        if name not in self.mats:
            raise TritiumValueError(f"matrix {name!r} is not loaded on the device")
        from ..hw.engine import product_cycles
        _, m, k = self.mats[name]
        y = self.acc.matvec(self._slot(name), xq)
        self.products += 1
        self.engine_cycles += product_cycles(self.params, m, k)
        return y


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
        return golden.dequantize(runner.matvec(self.name, xq), s_x[0], self.s_w)


# -- MatMul-free LM ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MMFreeConfig:
    """MatMul-free LM shape. The shipped model: byte vocabulary, hidden 128, 3 layers, GLU 256
    (the released code would give 512 for hidden 128; 256 keeps every ternary weight on the
    UP5K: 524,288 trits = its four SPRAMs)."""
    vocab: int = 256
    hidden: int = 128
    layers: int = 3
    intermediate: int = 256
    eps: float = 1e-6

    def as_dict(self):
        return dataclasses.asdict(self)

    def metadata(self):
        return {"architecture": "mmfreelm", "config": json.dumps(self.as_dict())}

    def describe(self):
        return f"{self.layers}x{self.hidden}, GLU {self.intermediate}, vocab {self.vocab}"

    def projections(self):
        """``[(name, M, K)]`` of every ternary matrix, in execution order."""
        h, i = self.hidden, self.intermediate
        out = []
        for l in range(self.layers):
            p = f"model.layers.{l}."
            out += [(p + f"attn.{n}_proj", h, h) for n in "ifgo"]
            out += [(p + "mlp.gate_proj", 2 * i, h), (p + "mlp.down_proj", h, i)]
        return out + [("lm_head", self.vocab, h)]


def _mmfree_host_names(cfg):
    """``{name: shape}`` of the float tensors the host uses directly (the BitLinears' own norm
    weights, ``<projection>.norm.weight``, travel with their :class:`TernaryLinear`)."""
    names = {"model.embeddings.weight": (cfg.vocab, cfg.hidden), "model.norm.weight": (cfg.hidden,),
             "model.lower_bounds": (cfg.layers, cfg.hidden)}
    for l in range(cfg.layers):
        p = f"model.layers.{l}."
        names.update({p + "attn_norm.weight": (cfg.hidden,), p + "mlp_norm.weight": (cfg.hidden,),
                      p + "attn.g_norm.weight": (cfg.hidden,)})
    return names


def export_mmfree(latent, cfg, path, *, training=None):
    """Ternarize a latent MatMul-free state dict (``{name: float array}``, released key names)
    and write the shipped format: safetensors, each projection ``<name>.weight`` as HF BitNet
    packed uint8 ``[M/4, K]`` with ``<name>.weight_scale`` (float32 ``s_w``), everything else
    float32; metadata ``architecture``, ``config`` and ``training`` (JSON)."""
    out = {}
    for name, shape in _mmfree_host_names(cfg).items():
        out[name] = np.asarray(latent[name], F32).reshape(shape)
    for name, m, k in cfg.projections():
        wq, s_w = golden.quantize_weights(np.asarray(latent[name + ".weight"], F32).reshape(m, k))
        out[name + ".weight"] = golden.pack_bitnet_hf(wq)
        out[name + ".weight_scale"] = np.array([s_w], F32)
        out[name + ".norm.weight"] = np.asarray(latent[name + ".norm.weight"], F32).reshape(k)
    meta = cfg.metadata()
    if training is not None:
        meta["training"] = json.dumps({k: v for k, v in training.items() if k != "curve"})
    return write_safetensors(path, out, meta)


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
        """Load every ternary matrix onto ``runner``'s device; returns the runnable model."""
        runner.load({n: l.wq for n, l in self.linears.items()})
        if self.arch == "mmfreelm":
            return MMFreeLM(self, runner)
        from .bitnet import BitNetLM
        return BitNetLM(self, runner)


def _scalar(arr, name, source):
    arr = np.asarray(arr, F32).ravel()
    if arr.size != 1 or not np.isfinite(arr[0]) or arr[0] <= 0:
        raise ModelFileError(f"{source}: {name} must be one positive finite number, got {arr[:4]}")
    return float(arr[0])


def _ternary(tensors, name, m, k, source):
    """``(wq, s_w)`` for ``name`` (``.weight``): packed uint8 with ``.weight_scale``, or latent
    floats ternarized with absmean."""
    w = tensors.get(name + ".weight")
    if w is None:
        raise ModelFileError(f"{source}: tensor {name}.weight is missing")
    if w.dtype == np.uint8:
        if w.shape != (m // 4, k):
            raise ModelFileError(f"{source}: {name}.weight is packed {w.shape}, expected {(m // 4, k)} for a {m}x{k} matrix")
        if name + ".weight_scale" not in tensors:
            raise ModelFileError(f"{source}: packed {name}.weight has no {name}.weight_scale")
        try:
            wq = golden.unpack_bitnet_hf(w)
        except TritiumValueError as e:
            raise ModelFileError(f"{source}: {name}.weight: {e}") from None
        return wq, _scalar(tensors[name + ".weight_scale"], name + ".weight_scale", source)
    if w.shape != (m, k):
        raise ModelFileError(f"{source}: {name}.weight has shape {w.shape}, expected {(m, k)}")
    try:
        wq, s_w = golden.quantize_weights(w)
    except TritiumValueError as e:
        raise ModelFileError(f"{source}: {name}.weight: {e}") from None
    return wq, float(s_w)


def _load_mmfree(tensors, cfg, source, info):
    floats = {}
    for name, shape in _mmfree_host_names(cfg).items():
        if name not in tensors:
            raise ModelFileError(f"{source}: tensor {name} is missing")
        arr = np.asarray(tensors[name], F32)
        if arr.shape != shape:
            raise ModelFileError(f"{source}: tensor {name} has shape {arr.shape}, expected {shape}")
        floats[name] = arr
    linears = {}
    for name, m, k in cfg.projections():
        wq, s_w = _ternary(tensors, name, m, k, source)
        norm = tensors.get(name + ".norm.weight")
        if norm is None or np.shape(norm) != (k,):
            raise ModelFileError(f"{source}: tensor {name}.norm.weight is missing or not of shape ({k},)")
        linears[name] = TernaryLinear(name, wq, s_w, np.asarray(norm, F32), cfg.eps)
    return TernaryModel("mmfreelm", cfg, floats, linears, source=source, info=info)


def _mmfree_config_from(tensors, meta, source):
    if "config" in meta:
        try:
            return MMFreeConfig(**json.loads(meta["config"]))
        except (TypeError, ValueError) as e:
            raise ModelFileError(f"{source}: bad 'config' metadata ({e})") from None
    # a released checkpoint: read the shape off the tensors
    try:
        vocab, hidden = tensors["model.embeddings.weight"].shape
        layers = tensors["model.lower_bounds"].shape[0]
        down = tensors["model.layers.0.mlp.down_proj.weight"]
        inter = down.shape[1]
    except (KeyError, ValueError, IndexError) as e:
        raise ModelFileError(f"{source}: not a MatMul-free checkpoint (missing or odd tensor: {e})") from None
    return MMFreeConfig(vocab=int(vocab), hidden=int(hidden), layers=int(layers), intermediate=int(inter))


def load_model(path):
    """Read a model file into a :class:`TernaryModel`.

    * ``.safetensors`` with ``model.lower_bounds``: a MatMul-free LM -- the shipped packed format
      (:func:`export_mmfree`) or a released latent checkpoint (ternarized here with absmean);
    * ``.safetensors`` with ``self_attn`` tensors: Hugging Face BitNet b1.58 (packed uint8 plus
      ``weight_scale``), its ``config.json`` beside it;
    * ``.gguf``: llama.cpp's ``bitnet`` architecture, ternary tensors TQ1_0 / TQ2_0 (or float).
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    if path.suffix == ".gguf":
        from .bitnet import load_gguf
        return load_gguf(path)
    if path.suffix != ".safetensors":
        raise ModelFileError(f"{path}: unknown model format (expected .safetensors or .gguf)")
    tensors, meta = read_safetensors(path)
    if "model.lower_bounds" in tensors or meta.get("architecture") == "mmfreelm":
        info = json.loads(meta["training"]) if "training" in meta else {}
        return _load_mmfree(tensors, _mmfree_config_from(tensors, meta, path), path, info)
    if any(".self_attn." in n for n in tensors):
        from .bitnet import load_hf
        return load_hf(path, tensors)
    raise ModelFileError(f"{path}: neither a MatMul-free LM (model.lower_bounds) nor a BitNet "
                         "(model.layers.N.self_attn.*) checkpoint")


class MMFreeLM:
    """The MatMul-free LM, one token at a time; state: one float32 vector per layer.

    ``step(token)`` -> float32 logits (vocab). 6 products per layer plus ``lm_head`` per token.
    """

    def __init__(self, model, runner):
        self.model, self.cfg, self.runner = model, model.config, runner
        f = model.floats
        lb = np.exp(f["model.lower_bounds"] - f["model.lower_bounds"].max(0))
        lb = (lb / lb.sum(0)).astype(F32)
        self.lower_bounds = (np.cumsum(lb, 0) - lb[0]).astype(F32)
        self.L = model.linears
        self.reset()

    def reset(self):
        self.state = np.zeros((self.cfg.layers, self.cfg.hidden), F32)

    def step(self, token):
        cfg, f, L, run = self.cfg, self.model.floats, self.L, self.runner
        h = f["model.embeddings.weight"][int(token)].astype(F32)
        for l in range(cfg.layers):
            p = f"model.layers.{l}."
            x = rmsnorm(h, f[p + "attn_norm.weight"], cfg.eps)
            fg = sigmoid(L[p + "attn.f_proj"](run, x))
            lb = self.lower_bounds[l]
            fg = (lb + (F32(1) - lb) * fg).astype(F32)
            c = silu(L[p + "attn.i_proj"](run, x)) * (F32(1) - fg)
            self.state[l] = fg * self.state[l] + c
            o = rmsnorm(L[p + "attn.g_proj"](run, x), f[p + "attn.g_norm.weight"], cfg.eps) * silu(self.state[l])
            h = h + L[p + "attn.o_proj"](run, o)
            x = rmsnorm(h, f[p + "mlp_norm.weight"], cfg.eps)
            g, u = np.split(L[p + "mlp.gate_proj"](run, x), 2)
            h = h + L[p + "mlp.down_proj"](run, silu(g) * u)
        return L["lm_head"](run, rmsnorm(h, f["model.norm.weight"], cfg.eps))
