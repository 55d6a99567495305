"""BitNet b1.58 checkpoints on the accelerator: Hugging Face packed safetensors and llama.cpp GGUF.

The seven projections of every layer (q, k, v, o, gate, up, down) are BitLinears on the
device (activations quantized per token, int8 absmax, no norm inside the BitLinear); on the
host: embedding, RMSNorms (input, post-attention, the attention and FFN sub-norms, final),
RoPE, grouped-query attention with a float32 KV cache, the FFN activation, and the float
``lm_head`` (tied to the embedding unless the file has its own).

* Hugging Face ``BitNetForCausalLM``: RoPE rotates halves (``rotate_half``); FFN ``relu(g)^2 * u``
  (``hidden_act = "relu2"``) or SiLU-gated (``"silu"``).
* GGUF, ``general.architecture`` ``bitnet`` (llama.cpp: SiLU-gated FFN) or ``bitnet-25`` /
  ``bitnet-b1.58`` (BitNet 2B-4T: relu²). q/k rows are in Hugging Face order (neither llama.cpp's
  nor bitnet.cpp's BitNet converter permutes them) and RoPE rotates halves, as llama.cpp does
  (its NEOX mode) and as for Hugging Face. Ternary tensors TQ1_0 / TQ2_0, or float tensors
  holding effective weights (ternary times one scale; other floats are ternarized with
  absmean); an optional ``<tensor>.scale`` multiplies that projection's output.
"""

import dataclasses
import json
import pathlib
import warnings

import numpy as np

from ..sim import golden
from ..sim.golden import TritiumValueError
from .formats import ModelFileError, finite_f32, read_gguf
from .model_base import F32, RUNTIMES, TernaryLinear, TernaryModel, TokenListVocab, rmsnorm, silu, ternary_weights

__all__ = ["BitNetConfig", "BitNetLM", "load_hf", "load_gguf", "GGUF_ARCHS"]

#: GGUF architecture -> FFN activation
GGUF_ARCHS = {"bitnet": "silu", "bitnet-25": "relu2", "bitnet-b1.58": "relu2"}
PROJ = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class BitNetConfig:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    eps: float = 1e-5
    rope_theta: float = 500000.0
    act: str = "relu2"
    max_context: int = 4096

    def __post_init__(self):
        if self.hidden % self.heads or self.heads % self.kv_heads or (self.hidden // self.heads) % 2:
            raise ModelFileError(f"inconsistent BitNet shape: hidden {self.hidden}, {self.heads} heads, "
                                 f"{self.kv_heads} KV heads (need an even head size and heads divisible by KV heads)")
        if self.act not in ("relu2", "silu"):
            raise ModelFileError(f"unknown BitNet FFN activation {self.act!r} (relu2 or silu)")

    @property
    def head_dim(self):
        return self.hidden // self.heads

    def describe(self):
        return (f"{self.layers}x{self.hidden}, {self.heads}/{self.kv_heads} heads, FFN {self.intermediate} {self.act}, "
                f"vocab {self.vocab}")

    def projections(self):
        h, kv, i = self.hidden, self.kv_heads * self.head_dim, self.intermediate
        shapes = {"q": (h, h), "k": (kv, h), "v": (kv, h), "o": (h, h), "gate": (i, h), "up": (i, h), "down": (h, i)}
        return [(f"blk.{l}.{p}", *shapes[p]) for l in range(self.layers) for p in PROJ]


def _check(arr, shape, name, source):
    """``arr`` as float32 if it has ``shape`` and only finite values within
    :data:`~tritium.host.formats.MAX_PARAM`; otherwise :class:`ModelFileError`."""
    if arr is None:
        raise ModelFileError(f"{source}: tensor {name} is missing")
    if np.shape(arr) != tuple(shape):
        raise ModelFileError(f"{source}: tensor {name} has shape {np.shape(arr)}, expected {tuple(shape)}")
    return finite_f32(arr, name, source)


def _bitnet_config(source, **values):
    """A :class:`BitNetConfig` from values read from a file, each checked first: sizes positive
    integers, ``eps`` in (0, 1), ``rope_theta`` finite and at least 1, ``act`` a string."""
    for key in ("vocab", "hidden", "layers", "heads", "kv_heads", "intermediate", "max_context"):
        v = values[key]
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ModelFileError(f"{source}: BitNet {key} must be a positive integer, got {v!r:.40}")
        values[key] = int(v)
    eps, theta = values["eps"], values["rope_theta"]
    if not (isinstance(eps, (int, float)) and 0 < eps < 1):
        raise ModelFileError(f"{source}: BitNet RMSNorm eps must be a number in (0, 1), got {eps!r:.40}")
    if not (isinstance(theta, (int, float)) and 1 <= theta < float("inf")):
        raise ModelFileError(f"{source}: BitNet RoPE theta must be a finite number >= 1, got {theta!r:.40}")
    if not isinstance(values["act"], str):
        raise ModelFileError(f"{source}: BitNet FFN activation must be a string, got {values['act']!r:.40}")
    try:
        return BitNetConfig(**values)
    except ModelFileError as e:
        raise ModelFileError(f"{source}: {e}") from None


def _warn_zero(linears, source):
    for name, lin in linears.items():
        if not lin.wq.any():
            warnings.warn(f"{source}: projection {name} is all zeros (a known broken upload? microsoft/BitNet#608)",
                          RuntimeWarning, stacklevel=3)


def load_hf(path, tensors):
    """A Hugging Face BitNet b1.58 checkpoint (``config.json`` beside the safetensors file)."""
    path = pathlib.Path(path)
    cfg_path = path.parent / "config.json"
    if not cfg_path.is_file():
        raise ModelFileError(f"{path}: a BitNet checkpoint needs its config.json beside it ({cfg_path} is missing)")
    try:
        c = json.loads(cfg_path.read_text())
        cfg = _bitnet_config(cfg_path, vocab=int(c["vocab_size"]), hidden=int(c["hidden_size"]),
                             layers=int(c["num_hidden_layers"]), heads=int(c["num_attention_heads"]),
                             kv_heads=int(c.get("num_key_value_heads", c["num_attention_heads"])),
                             intermediate=int(c["intermediate_size"]), eps=float(c.get("rms_norm_eps", 1e-5)),
                             rope_theta=float(c.get("rope_theta", 500000.0)), act=c.get("hidden_act", "relu2"),
                             max_context=int(c.get("max_position_embeddings", 4096)))
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as e:  # bad JSON, int(inf), ...
        raise ModelFileError(f"{cfg_path}: not a usable BitNet config ({type(e).__name__}: {str(e)[:200]})") from None
    h = cfg.hidden
    floats = {"embed": _check(tensors.get("model.embed_tokens.weight"), (cfg.vocab, h), "model.embed_tokens.weight", path),
              "norm": _check(tensors.get("model.norm.weight"), (h,), "model.norm.weight", path)}
    floats["lm_head"] = _check(tensors["lm_head.weight"], (cfg.vocab, h), "lm_head.weight", path) \
        if "lm_head.weight" in tensors else floats["embed"]
    linears = {}
    for l in range(cfg.layers):
        p = f"model.layers.{l}."
        for key, name in (("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm")):
            floats[f"blk.{l}.{name}"] = _check(tensors.get(p + key + ".weight"), (h,), p + key + ".weight", path)
        floats[f"blk.{l}.attn_sub_norm"] = _check(tensors.get(p + "self_attn.attn_sub_norm.weight"), (h,),
                                                  p + "self_attn.attn_sub_norm.weight", path)
        floats[f"blk.{l}.ffn_sub_norm"] = _check(tensors.get(p + "mlp.ffn_sub_norm.weight"), (cfg.intermediate,),
                                                 p + "mlp.ffn_sub_norm.weight", path)
    for name, m, k in cfg.projections():
        l, proj = name.split(".")[1:]
        key = f"model.layers.{l}." + ("self_attn." if proj in "qkvo" else "mlp.") + f"{proj}_proj"
        wq, s_w = ternary_weights(tensors, key, m, k, path)
        linears[name] = TernaryLinear(name, wq, s_w)
    _warn_zero(linears, path)
    return TernaryModel("bitnet", cfg, floats, linears, source=path)


def _gguf_ternary(name, kind, arr, source):
    """``(wq, s_w)`` from dequantized GGUF values, which are effective weights (llama.cpp multiplies
    by them as they are). TQ1_0 / TQ2_0: every block must share one scale. Float tensors that are
    ternary times one scale (what llama.cpp's BitNet converter writes) keep their trits and that
    scale; other float tensors are ternarized with absmean."""
    mags = np.abs(arr[arr != 0])
    if mags.size == 0:
        return np.zeros(arr.shape, np.int8), 1.0
    lo, hi = float(mags.min()), float(mags.max())
    if kind in ("TQ1_0", "TQ2_0"):
        if hi - lo > 1e-3 * hi:
            raise ModelFileError(f"{source}: tensor {name} ({kind}) has block scales from {lo:g} to {hi:g}; the "
                                 "accelerator rescales once per tensor, so every block must share one scale")
        return np.sign(arr).astype(np.int8), 1.0 / hi
    if hi - lo <= 1e-6 * hi:  # already ternary: absmean would shrink it by the fraction of non-zeros
        return np.sign(arr).astype(np.int8), 1.0 / hi
    wq, s_w = golden.quantize_weights(arr)
    return wq, float(s_w)


def load_gguf(path):
    """A llama.cpp ``bitnet`` GGUF (see the module docstring)."""
    path = pathlib.Path(path)
    tensors, fields = read_gguf(path)
    arch = fields.get("general.architecture")
    if not isinstance(arch, str) or arch not in GGUF_ARCHS:
        raise ModelFileError(f"{path}: GGUF architecture {arch!r:.60} is not supported "
                             f"(known: {', '.join(GGUF_ARCHS)}; "
                             "the shipped MatMul-free LM is a .safetensors file)")

    def field(key, default=None):
        v = fields.get(f"{arch}.{key}", default)
        if v is None:
            raise ModelFileError(f"{path}: GGUF metadata {arch}.{key} is missing")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not abs(v) < float("inf"):
            raise ModelFileError(f"{path}: GGUF metadata {arch}.{key} must be a finite number, got {v!r:.40}")
        return v

    emb = tensors.get("token_embd.weight")
    if emb is None:
        raise ModelFileError(f"{path}: tensor token_embd.weight is missing")
    heads = int(field("attention.head_count"))
    cfg = _bitnet_config(path, vocab=emb[1].shape[0], hidden=int(field("embedding_length")),
                         layers=int(field("block_count")), heads=heads,
                         kv_heads=int(field("attention.head_count_kv", heads)),
                         intermediate=int(field("feed_forward_length")),
                         eps=float(field("attention.layer_norm_rms_epsilon", 1e-5)),
                         rope_theta=float(field("rope.freq_base", 10000.0)), act=GGUF_ARCHS[arch],
                         max_context=int(field("context_length", 4096)))
    h = cfg.hidden

    def get(name, shape):
        t = tensors.get(name)
        return _check(None if t is None else t[1], shape, name, path)

    floats = {"embed": get("token_embd.weight", (cfg.vocab, h)), "norm": get("output_norm.weight", (h,))}
    floats["lm_head"] = get("output.weight", (cfg.vocab, h)) if "output.weight" in tensors else floats["embed"]
    for l in range(cfg.layers):
        for n, size in (("attn_norm", h), ("ffn_norm", h), ("attn_sub_norm", h), ("ffn_sub_norm", cfg.intermediate)):
            floats[f"blk.{l}.{n}"] = get(f"blk.{l}.{n}.weight", (size,))
    gg = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output", "gate": "ffn_gate", "up": "ffn_up",
          "down": "ffn_down"}
    linears = {}
    for name, m, k in cfg.projections():
        l, proj = name.split(".")[1:]
        tname = f"blk.{l}.{gg[proj]}"
        kind = tensors.get(tname + ".weight", ("?", None))[0]
        wq, s_w = _gguf_ternary(tname, kind, get(tname + ".weight", (m, k)), path)
        if tname + ".scale" in tensors:
            scale = get(tname + ".scale", (1,)).ravel()[0] if tensors[tname + ".scale"][1].size == 1 else None
            if scale is None or not 2.0 ** -32 <= scale <= 2.0 ** 32:
                raise ModelFileError(f"{path}: {tname}.scale must be one positive number (2**-32 to 2**32)")
            s_w = s_w / float(scale)
        linears[name] = TernaryLinear(name, wq, s_w)
    _warn_zero(linears, path)
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is not None and not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
        raise ModelFileError(f"{path}: GGUF metadata tokenizer.ggml.tokens must be a list of strings")
    vocab = TokenListVocab(tokens)
    return TernaryModel("bitnet", cfg, floats, linears, source=path, tokenizer=vocab, vocab_size=cfg.vocab)


class BitNetLM:
    """BitNet b1.58, one token at a time, with a float32 KV cache (``reset()`` clears it).
    ``step(token)`` -> float32 logits; 7 products per layer on the device."""

    def __init__(self, model, runner):
        self.model, self.cfg, self.runner, self.f, self.L = model, model.config, runner, model.floats, model.linears
        d = self.cfg.head_dim
        self.inv_freq = (1.0 / (self.cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))).astype(F32)
        self.reset()

    def reset(self):
        self.pos = 0
        self.cache = [([], []) for _ in range(self.cfg.layers)]

    def _rope(self, x):
        """Rotate each head of ``x`` ([heads, d]) by the current position: element ``i`` pairs
        with ``i + d/2`` (Hugging Face ``rotate_half``, llama.cpp's NEOX mode), angle
        ``pos * rope_theta**(-2i/d)``."""
        ang = (F32(self.pos) * self.inv_freq).astype(F32)
        cos, sin = np.cos(ang), np.sin(ang)
        a, b = x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], 1).astype(F32)

    def step(self, token):
        cfg, f, L, run = self.cfg, self.f, self.L, self.runner
        if self.pos >= cfg.max_context:
            raise TritiumValueError(f"context of {cfg.max_context} tokens is full")
        if not 0 <= int(token) < cfg.vocab:
            raise TritiumValueError(f"token id {token} is outside the vocabulary (0..{cfg.vocab - 1})")
        d, nh, nkv = cfg.head_dim, cfg.heads, cfg.kv_heads
        h = f["embed"][int(token)].astype(F32)
        for l in range(cfg.layers):
            p = f"blk.{l}."
            x = rmsnorm(h, f[p + "attn_norm"], cfg.eps)
            q = self._rope(L[p + "q"](run, x).reshape(nh, d))
            k = self._rope(L[p + "k"](run, x).reshape(nkv, d))
            v = L[p + "v"](run, x).reshape(nkv, d)
            ks, vs = self.cache[l]
            ks.append(k)
            vs.append(v)
            K, V = np.stack(ks, 1), np.stack(vs, 1)                 # [nkv, T, d]
            rep = nh // nkv
            K, V = np.repeat(K, rep, 0), np.repeat(V, rep, 0)        # [nh, T, d]
            s = np.einsum("hd,htd->ht", q, K).astype(F32) / F32(np.sqrt(d))
            s = np.exp(s - s.max(1, keepdims=True))
            a = (np.einsum("ht,htd->hd", s / s.sum(1, keepdims=True), V)).astype(F32).reshape(-1)
            h = h + L[p + "o"](run, rmsnorm(a, f[p + "attn_sub_norm"], cfg.eps))
            x = rmsnorm(h, f[p + "ffn_norm"], cfg.eps)
            g, u = L[p + "gate"](run, x), L[p + "up"](run, x)
            act = np.square(np.maximum(g, 0)) if cfg.act == "relu2" else silu(g)
            h = h + L[p + "down"](run, rmsnorm((act * u).astype(F32), f[p + "ffn_sub_norm"], cfg.eps))
        self.pos += 1
        return (f["lm_head"] @ rmsnorm(h, f["norm"], cfg.eps)).astype(F32)


RUNTIMES["bitnet"] = BitNetLM
