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
import importlib.resources
import json
import pathlib

import numpy as np

from ..sim import golden
from ..sim.cost import product_cycles
from ..sim.golden import TritiumValueError
from .formats import ModelFileError, finite_f32, read_safetensors, write_safetensors
# the parts every architecture shares (re-exported: they were defined here)
from .model_base import (F32, RUNTIMES, ByteVocab, TernaryLinear, TernaryModel, TokenListVocab, rmsnorm,
                         scale_value as _scalar, sigmoid, silu, ternary_weights as _ternary)
from .bitnet import load_gguf, load_hf

__all__ = ["DEFAULT_MODEL", "MMFreeConfig", "ModelTooLarge", "TernaryModel", "MatrixRunner",
           "MMFreeLM", "export_mmfree", "load_model", "rmsnorm", "silu", "sigmoid"]

#: the shipped model, package data of ``tritium`` (``tritium/models/``); a file on disk wherever the
#: package is installed as files (a wheel, an editable install or a source checkout)
DEFAULT_MODEL = pathlib.Path(str(importlib.resources.files("tritium").joinpath(
    "models", "tritium-mmfree-3x128.safetensors")))


class ModelTooLarge(TritiumValueError):
    """The model's ternary weights do not fit the device's weight memory or engine limits."""


# -- the device side ------------------------------------------------------------------------------

class MatrixRunner:
    """Ternary matrices resident on an accelerator, multiplied by int8 vectors.

    ``load(mats)`` checks that every matrix fits the engine (rows, K) and that all of them fit
    the weight memory together -- raising :class:`ModelTooLarge` with the numbers before anything
    is written -- then writes each once. Matrices are named by the device's slots; a model with
    more matrices than slots re-binds slots (one short SET_SLOT frame; the weights stay put).
    ``matvec(name, xq)`` returns the exact int64 product. Counters: ``products``,
    ``engine_cycles`` (the cost model's :func:`tritium.sim.cost.product_cycles`, checked against
    the RTL) and the accelerator's ``link_bytes``.
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
        _, m, k = self.mats[name]
        y = self.acc.matvec(self._slot(name), xq)
        self.products += 1
        self.engine_cycles += product_cycles(self.params, m, k)
        return y


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


def _load_mmfree(tensors, cfg, source, info):
    floats = {}
    for name, shape in _mmfree_host_names(cfg).items():
        if name not in tensors:
            raise ModelFileError(f"{source}: tensor {name} is missing")
        if np.shape(tensors[name]) != shape:
            raise ModelFileError(f"{source}: tensor {name} has shape {np.shape(tensors[name])}, expected {shape}")
        floats[name] = finite_f32(tensors[name], name, source)
    linears = {}
    for name, m, k in cfg.projections():
        wq, s_w = _ternary(tensors, name, m, k, source)
        norm = tensors.get(name + ".norm.weight")
        if norm is None or np.shape(norm) != (k,):
            raise ModelFileError(f"{source}: tensor {name}.norm.weight is missing or not of shape ({k},)")
        linears[name] = TernaryLinear(name, wq, s_w, finite_f32(norm, name + ".norm.weight", source), cfg.eps)
    return TernaryModel("mmfreelm", cfg, floats, linears, source=source, info=info)


def _mmfree_config_from(tensors, meta, source):
    """The :class:`MMFreeConfig` of a file: its ``config`` metadata (JSON), or read off the
    tensors' shapes (a released checkpoint). Sizes must be positive integers, ``eps`` in (0, 1),
    and the layer count no larger than the number of tensors in the file."""
    if "config" in meta:
        try:
            c = json.loads(meta["config"])
        except (ValueError, RecursionError) as e:
            raise ModelFileError(f"{source}: 'config' metadata is not JSON "
                                 f"({type(e).__name__}: {str(e)[:200]})") from None
        if not isinstance(c, dict) or not set(c) <= {f.name for f in dataclasses.fields(MMFreeConfig)}:
            raise ModelFileError(f"{source}: 'config' metadata must be a JSON object with keys from "
                                 f"{', '.join(f.name for f in dataclasses.fields(MMFreeConfig))}, got {c!r:.200}")
    else:  # a released checkpoint: read the shape off the tensors
        try:
            vocab, hidden = tensors["model.embeddings.weight"].shape
            layers = tensors["model.lower_bounds"].shape[0]
            inter = tensors["model.layers.0.mlp.down_proj.weight"].shape[1]
        except (KeyError, ValueError, IndexError) as e:
            raise ModelFileError(f"{source}: not a MatMul-free checkpoint (missing or odd tensor: {e})") from None
        c = {"vocab": vocab, "hidden": hidden, "layers": layers, "intermediate": inter}
    for key in ("vocab", "hidden", "layers", "intermediate"):
        v = c.get(key, getattr(MMFreeConfig, key))
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ModelFileError(f"{source}: MatMul-free config {key} must be a positive integer, got {v!r:.40}")
        c[key] = int(v)
    eps = c.get("eps", MMFreeConfig.eps)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise ModelFileError(f"{source}: MatMul-free config eps must be a number in (0, 1), got {eps!r:.40}")
    if c["layers"] > len(tensors):  # every layer has tensors of its own: bounds the loops over layers
        raise ModelFileError(f"{source}: config says {c['layers']} layers, but the file holds {len(tensors)} tensors")
    return MMFreeConfig(**c)


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
        return load_gguf(path)
    if path.suffix != ".safetensors":
        raise ModelFileError(f"{path}: unknown model format (expected .safetensors or .gguf)")
    tensors, meta = read_safetensors(path)
    if "model.lower_bounds" in tensors or meta.get("architecture") == "mmfreelm":
        try:
            info = json.loads(meta["training"]) if "training" in meta else {}
        except (ValueError, RecursionError) as e:
            raise ModelFileError(f"{path}: 'training' metadata is not JSON "
                                 f"({type(e).__name__}: {str(e)[:200]})") from None
        if not isinstance(info, dict):
            raise ModelFileError(f"{path}: 'training' metadata must be a JSON object")
        return _load_mmfree(tensors, _mmfree_config_from(tensors, meta, path), path, info)
    if any(".self_attn." in n for n in tensors):
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

    def reset(self, batch=()):
        """Zero the state; ``batch`` (a shape) runs that many independent sequences at once
        (``step`` then takes a token array of that shape; the runner must take batched inputs)."""
        self.state = np.zeros((self.cfg.layers,) + tuple(batch) + (self.cfg.hidden,), F32)

    def step(self, token):
        cfg, f, L, run = self.cfg, self.model.floats, self.L, self.runner
        h = f["model.embeddings.weight"][np.asarray(token, np.int64)].astype(F32)
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
            g, u = np.split(L[p + "mlp.gate_proj"](run, x), 2, axis=-1)
            h = h + L[p + "mlp.down_proj"](run, silu(g) * u)
        return L["lm_head"](run, rmsnorm(h, f["model.norm.weight"], cfg.eps))


RUNTIMES["mmfreelm"] = MMFreeLM
