"""The on-chip LM step: a MatMul-free LM compiled to an integer image and a vector program.

:func:`compile_mmfree` turns a loaded MatMul-free model (:class:`tritium.host.models.TernaryModel`)
into an :class:`LMImage`: every float parameter converted once to the fixed-point formats of
:mod:`tritium.sim.golden` (block-floating-point constant vectors, an int8 embedding with per-row
scales, the rescale constants of every BitLinear), the ternary matrices as they are, and a
*program* -- a list of :class:`Op` s, each one vector-unit instruction (or a product on the
ternary engine) whose arithmetic is one function of the golden model. Nothing in the program is
specific to one shape: the compiler emits it from the model's config.

:class:`IntegerLM` runs the program (:meth:`IntegerLM.step`, one token; any leading batch axes)
and :func:`choose_token` picks the next token from the integer logits with the on-chip rule
(greedy, or temperature / top-k sampling from the xorshift32 generator). Together they are the
specification that the gateware's sequencer and vector unit match bit for bit; the float runtime
(:class:`tritium.host.models.MMFreeLM`) stays the reference for quality. The rules in prose:
``docs/arithmetic.md``, "The on-chip LM step".
"""

import dataclasses
import math

import numpy as np

from . import golden
from .golden import TritiumValueError

__all__ = ["Op", "LMImage", "compile_mmfree", "execute", "NumpyRunner", "IntegerLM", "choose_token", "rng_seed",
           "SamplingParams", "defer_products", "CONST_BITS", "VECTOR_ALIGN", "OPCODES", "REDUCTIONS", "ELEMENTWISE", "READS_A", "READS_B", "READS_C"]

#: Width of the constant vectors' mantissas (norm weights, lower bounds): block floating point.
CONST_BITS = 8
#: Width of the embedding's values (per-row absmax, round half to even).
EMBED_BITS = 8
#: The compiler starts every vector buffer and constant vector at a multiple of this (the widest
#: vector unit's lanes, :data:`tritium.hw.vector.LANES`): speed only, never results.
VECTOR_ALIGN = 8

#: The vector program's instructions and what each computes (``docs/arithmetic.md``). ``a``,
#: ``b`` and ``dst`` are vector-memory addresses, ``c`` a constant-memory address, ``n`` the
#: element count; ``red`` makes an elementwise instruction also reduce what it writes.
OPCODES = {
    "embed":    "vmem[dst:dst+n] = embedding row of the token, Q16.16",
    "mulc":     "dst = mul_const(a, cmem[c:c+n], shift)",
    "mul":      "dst = mul_fix(a, b)",
    "add":      "dst = add_fix(a, b)",
    "sigmoid":  "dst = sigmoid_fix(a)",
    "silu":     "dst = silu_fix(a)",
    "rsub":     "dst = sat32(1.0 - a)",
    "fgate":    "dst = sat32(lb + shift_round((1.0 - lb) * a, 16)), lb = clamp(shift_round(cmem[c:c+n], shift - 16), 0, 1.0)",
    "quant":    "engine activations = quantize_fix(a, M); when imm != 0, also G = rescale_gain(M, SS, imm, shift)",
    "matvec":   "dst = ternary matrix number c times the engine activations (exact); when imm != 0, rescale_fix of that by G",
    "gain":     "G = rescale_gain(M, SS, imm, shift)",
    "rescale":  "dst = rescale_fix(a, G)",
    "sfgate":   "dst = fgate of sigmoid_fix(a): sat32(lb + shift_round((1.0 - lb) * sigmoid_fix(a), 16)), lb as fgate's",
    "mulr":     "dst = mul_fix(a, sat32(1.0 - b))",
}
#: Reductions an elementwise instruction (only those) can fold into its pass: into the scalar register
#: ``M`` (``max_abs``) or ``SS`` (``sum_squares``) of the values it writes.
REDUCTIONS = {0: None, 1: "M", 2: "SS"}
RED_MAX, RED_SUMSQ = 1, 2
ELEMENTWISE = ("mulc", "mul", "add", "sigmoid", "silu", "rsub", "fgate", "rescale", "sfgate", "mulr")
#: The instructions that read the vector at ``a``, the vector at ``b``, and the constants at ``c``
#: (a device checks those ranges: the golden device and the gateware both take them from here).
READS_A = ("mulc", "mul", "add", "sigmoid", "silu", "rsub", "fgate", "quant", "rescale", "sfgate", "mulr")
READS_B = ("mul", "add", "mulr")
READS_C = ("mulc", "fgate", "sfgate")


@dataclasses.dataclass(frozen=True)
class Op:
    """One instruction of the vector program: ``code`` (a key of :data:`OPCODES`) and its
    fields (all integers; unused ones 0)."""
    code: str
    dst: int = 0
    a: int = 0
    b: int = 0
    n: int = 0
    c: int = 0
    shift: int = 0
    imm: int = 0
    red: int = 0


@dataclasses.dataclass
class LMImage:
    """A model compiled for the on-chip step.

    ``program`` (list of :class:`Op`); ``vmem_words`` (vector memory size) and ``vectors``
    (``{name: (address, length)}``, for reading results); ``cmem`` (int8 constant mantissas,
    flat) with ``consts`` (``{name: (address, length, shift)}``); ``matrices`` (ternary int8
    ``M x K``, in the order the program's ``matvec`` numbers them) and ``matrix_names``;
    ``embed`` (int8 ``vocab x hidden``) with ``embed_scale`` (``(16-bit mantissas, shift)``);
    ``reset_program`` (what makes a fresh sequence: zeroes the per-layer state) and ``program``
    (one token step) are what a device runs."""
    config: object
    program: list
    vmem_words: int
    vectors: dict
    cmem: np.ndarray
    consts: dict
    matrices: list
    matrix_names: list
    embed: np.ndarray
    embed_scale: tuple
    reset_program: list = dataclasses.field(default_factory=list)

    def embed_row(self, tokens):
        """The ``embed`` instruction's values for ``tokens`` (any shape): the int8 row times its
        16-bit scale mantissa, ``e8 * m`` (exact, below 2**22 in magnitude); the program's next
        instruction (``mulc`` by ones at the scale's shift) makes it Q16.16."""
        tokens = np.asarray(tokens, np.int64)
        m, _ = self.embed_scale
        return self.embed[tokens].astype(np.int64) * m[tokens][..., None]

    def cost(self):
        """Per token: ``ops`` (instructions), ``products`` (ternary products), ``rows`` (their
        output rows) and ``vector_elements`` (elements streamed by the vector instructions: the
        vector unit's cycles at one element per cycle, before overlap with the engine)."""
        mv = [op for op in self.program if op.code == "matvec"]
        # (the reset program runs once per sequence, not per token)
        return {"ops": len(self.program), "products": len(mv), "rows": sum(op.n for op in mv),
                "vector_elements": sum(op.n for op in self.program if op.code != "matvec")}


def _gain_constant(k, s_w):
    """``C = 2**(16 - SUMSQ_SHIFT) * sqrt(K) / (127 * s_w)`` as a 16-bit mantissa and shift: the
    BitLinear's rescale is ``acc * max * C / isqrt(sumsq)`` (``docs/arithmetic.md``)."""
    c = 2.0 ** (golden.FIX_FRAC - golden.SUMSQ_SHIFT) * math.sqrt(k) / (127.0 * float(s_w))
    shift = golden.RSQRT_NORM_BITS - int(math.floor(math.log2(c))) - 1
    m = int(round(c * 2.0 ** shift))
    if m >= 1 << golden.RSQRT_NORM_BITS:
        m, shift = int(round(c * 2.0 ** (shift - 1))), shift - 1
    return m, shift


def _spans(op):
    """The vector-memory ranges ``op`` reads and the one it writes (``(start, end)`` pairs)."""
    reads = [(getattr(op, f), getattr(op, f) + op.n) for f, codes in (("a", READS_A), ("b", READS_B))
             if op.code in codes]
    return reads, (op.dst, op.dst + op.n)


def defer_products(program):
    """``program`` with each ``matvec`` moved past the elementwise instructions right after it
    that neither read nor write its result: the engine holds the product's tiles meanwhile, and
    the vector unit works while the engine computes. The results are those of ``program``
    exactly: an elementwise instruction touches neither the engine's activations nor ``G``
    (which only ``quant`` and ``gain`` set), and the moved ``matvec`` stops before any
    instruction that is not elementwise (the device refuses those between a ``quant`` and its
    ``matvec``) and before any that reads or writes its destination."""
    out, i = list(program), 0
    while i < len(out):
        mv = out[i]
        if mv.code == "matvec":
            j = i + 1
            while j < len(out) and out[j].code in ELEMENTWISE:
                reads, write = _spans(out[j])
                if any(lo < mv.dst + mv.n and mv.dst < hi for lo, hi in reads + [write]):
                    break
                j += 1
            out.insert(j - 1, out.pop(i))
            i = j - 1
        i += 1
    return out


def compile_mmfree(model, *, const_bits=CONST_BITS, embed_bits=EMBED_BITS):
    """Compile a loaded MatMul-free :class:`~tritium.host.models.TernaryModel` to an :class:`LMImage`."""
    if model.arch != "mmfreelm":
        raise TritiumValueError(f"the on-chip step runs MatMul-free LMs; this model is {model.arch}")
    cfg, f, L = model.config, model.floats, model.linears
    H, I = cfg.hidden, cfg.intermediate
    for n in (H, I):
        if n > golden.MAX_VECTOR:
            raise TritiumValueError(f"vectors of {n} elements; the on-chip step takes at most {golden.MAX_VECTOR}")
    # Vector memory: buffers whose lifetimes never overlap share words. `u` (each BitLinear's
    # weighted input, read once by `quant`) doubles as `d` (the GLU product, rewritten in place
    # into `u`); one area holds the mixer's f / i / g / scratch, then the GLU's gate output, then
    # the logits. Every buffer and constant vector starts at a multiple of VECTOR_ALIGN, so a
    # vector unit of up to that many lanes streams each instruction that many elements a cycle
    # (``even``; results never depend on it).
    even = lambda n: -(-n // VECTOR_ALIGN) * VECTOR_ALIGN
    vectors, top = {}, 0
    for name, n in [("h", H)] + [(f"s{l}", H) for l in range(cfg.layers)] + [("v", H), ("u", max(H, I))]:
        vectors[name] = (top, n)
        top += even(n)
    vectors["d"] = (vectors["u"][0], I)
    for i, name in enumerate(("yf", "yi", "yg", "t")):
        vectors[name] = (top + i * even(H), H)
    vectors["y2"], vectors["logits"] = (top, 2 * I), (top, cfg.vocab)
    top += max(4 * even(H), 2 * I, cfg.vocab)
    A = {name: addr for name, (addr, _) in vectors.items()}
    consts, cwords, mats, names, prog = {}, [], [], [], []

    def const(name, values):
        m, shift = golden.bfp_constant(np.asarray(values, np.float32), const_bits)
        consts[name] = (sum(len(w) for w in cwords), len(m), shift)
        cwords.append(np.concatenate([m, np.zeros(even(len(m)) - len(m), m.dtype)]))
        return consts[name]

    def mulc(dst, src, name, values, n, red=0):
        c, _, shift = const(name, values)
        prog.append(Op("mulc", A[dst], A[src], n=n, c=c, shift=shift, red=red))

    def bitlinear(name, src, dst, k, m):
        """``dst = BL_name(src)``: its norm weight, absmax quantization, product, rescale; the
        gain uses ``SS``, the sum of squares of ``src`` taken when ``src`` was written."""
        lin = L[name]
        mulc("u", src, name + ".norm", lin.norm, k, RED_MAX)
        cm, cs = _gain_constant(k, lin.s_w)
        # quant's c names the matrix its activations go to (the sequencer starts that product);
        # quant also takes the gain (imm, shift: computed while the engine works), and matvec
        # rescales the products as they arrive (imm = 1): `gain` + `rescale` folded in
        prog.extend([Op("quant", a=A["u"], n=k, c=len(mats), imm=cm, shift=cs),
                     Op("matvec", A[dst], n=m, c=len(mats), imm=1)])
        mats.append(lin.wq)
        names.append(name)

    lb = np.exp(f["model.lower_bounds"] - f["model.lower_bounds"].max(0))
    lb = lb / lb.sum(0)
    lb = np.cumsum(lb, 0) - lb[0]
    emb = np.asarray(f["model.embeddings.weight"], np.float32)
    d = np.max(np.abs(emb), axis=1) / ((1 << (embed_bits - 1)) - 1)
    e8 = np.clip(np.round(emb / np.where(d > 0, d, 1)[:, None]), -127, 127).astype(np.int8)
    scale = golden.bfp_constant(d * golden.FIX_ONE, 16)
    # ones: `mulc` by them is a rounding shift (the embedding's scale; shift 63 zeroes a vector)
    consts["ones"] = (sum(len(w) for w in cwords), max(H, I), 0)
    cwords.append(np.ones(even(max(H, I)), np.int64))
    reset = [Op("mulc", A[f"s{l}"], A[f"s{l}"], n=H, c=consts["ones"][0], shift=63) for l in range(cfg.layers)]
    prog += [Op("embed", A["h"], n=H), Op("mulc", A["h"], A["h"], n=H, c=consts["ones"][0], shift=int(scale[1]))]
    for l in range(cfg.layers):
        p, s = f"model.layers.{l}.", f"s{l}"
        # token mixer (MLGRU): v = h * attn_norm; its RMS scale cancels in every quantizer
        mulc("v", "h", p + "attn_norm", f[p + "attn_norm.weight"], H, RED_SUMSQ)
        for g, dst in (("f", "yf"), ("i", "yi"), ("g", "yg")):
            bitlinear(p + f"attn.{g}_proj", "v", dst, H, H)
        c, _, shift = const(p + "lower_bound", lb[l])
        prog += [Op("sfgate", A["yf"], A["yf"], n=H, c=c, shift=shift),             # f = fgate(sigmoid(f))
                 Op("silu", A["yi"], A["yi"], n=H),
                 Op("mulr", A["yi"], A["yi"], A["yf"], n=H),                         # c = silu(i)(1-f)
                 Op("mul", A[s], A[s], A["yf"], n=H), Op("add", A[s], A[s], A["yi"], n=H),
                 Op("silu", A["t"], A[s], n=H), Op("mul", A["t"], A["yg"], A["t"], n=H)]
        mulc("t", "t", p + "attn.g_norm", f[p + "attn.g_norm.weight"], H, RED_SUMSQ)
        bitlinear(p + "attn.o_proj", "t", "yf", H, H)
        prog.append(Op("add", A["h"], A["h"], A["yf"], n=H))
        # channel mixer (GLU)
        mulc("v", "h", p + "mlp_norm", f[p + "mlp_norm.weight"], H, RED_SUMSQ)
        bitlinear(p + "mlp.gate_proj", "v", "y2", H, 2 * I)
        prog += [Op("silu", A["d"], A["y2"], n=I), Op("mul", A["d"], A["d"], A["y2"] + I, n=I, red=RED_SUMSQ)]
        bitlinear(p + "mlp.down_proj", "d", "yf", I, H)
        prog.append(Op("add", A["h"], A["h"], A["yf"], n=H))
    mulc("v", "h", "model.norm", f["model.norm.weight"], H, RED_SUMSQ)
    bitlinear("lm_head", "v", "logits", H, cfg.vocab)

    # each product's tiles wait in the engine while the vector unit runs the independent
    # elementwise work after it (the mixer's next weighted input, its gates)
    prog = defer_products(prog)
    return LMImage(cfg, prog, top, vectors, np.concatenate(cwords).astype(np.int8), consts, mats, names, e8, scale,
                   reset)


def execute(op, vmem, regs, cmem, *, embed_row=None, matvec=None):
    """Run one instruction on a batch: ``vmem`` (int64, ``batch + (words,)``, changed in place),
    ``regs`` (``{"M", "SS", "G", "XQ"}``, per batch element), ``cmem`` (the constants).
    ``embed_row()`` gives the ``embed`` values, ``matvec(index, xq)`` the exact products."""
    c = op.code
    a = vmem[..., op.a:op.a + op.n]
    if c == "embed":
        out = embed_row()
    elif c == "mulc":
        out = golden.mul_const(a, cmem[op.c:op.c + op.n].astype(np.int64), op.shift)
    elif c == "mul":
        out = golden.mul_fix(a, vmem[..., op.b:op.b + op.n])
    elif c == "add":
        out = golden.add_fix(a, vmem[..., op.b:op.b + op.n])
    elif c == "sigmoid":
        out = golden.sigmoid_fix(a)
    elif c == "silu":
        out = golden.silu_fix(a)
    elif c == "rsub":
        out = golden.sat32(golden.FIX_ONE - a)
    elif c in ("fgate", "sfgate"):   # a lower bound lies in [0, 1]: the constant is clamped there
        lb = np.clip(golden.shift_round(cmem[op.c:op.c + op.n].astype(np.int64), op.shift - golden.FIX_FRAC),
                     0, golden.FIX_ONE)
        x = golden.sigmoid_fix(a) if c == "sfgate" else a
        out = golden.sat32(lb + golden.shift_round((golden.FIX_ONE - lb) * x, golden.FIX_FRAC))
    elif c == "mulr":
        out = golden.mul_fix(a, golden.sat32(golden.FIX_ONE - vmem[..., op.b:op.b + op.n]))
    elif c == "quant":
        regs["XQ"] = golden.quantize_fix(a, regs["M"])
        if op.imm:
            regs["G"] = golden.rescale_gain(regs["M"], regs["SS"], op.imm, op.shift)
        return
    elif c == "matvec":
        out = matvec(op.c, regs["XQ"])
        if op.imm:
            out = golden.rescale_fix(out, *regs["G"])
    elif c == "gain":
        regs["G"] = golden.rescale_gain(regs["M"], regs["SS"], op.imm, op.shift)
        return
    elif c == "rescale":
        out = golden.rescale_fix(a, *regs["G"])
    else:
        raise TritiumValueError(f"unknown instruction {c!r}")
    vmem[..., op.dst:op.dst + op.n] = out
    if op.red == RED_MAX:
        regs["M"] = golden.max_abs(out)
    elif op.red == RED_SUMSQ:
        regs["SS"] = golden.sum_squares(out)


class NumpyRunner:
    """Exact ternary products in numpy for a batch: ``matvec(name, xq[..., K]) -> int64[..., M]``
    (float32 products are exact here: every sum stays below 2**24)."""

    def __init__(self, mats):
        self._w = {n: np.ascontiguousarray(np.asarray(w).T, np.float32) for n, w in mats.items()}
        self.products = 0

    def matvec(self, name, xq):
        self.products += 1
        return np.rint(np.asarray(xq, np.float32) @ self._w[name]).astype(np.int64)


class IntegerLM:
    """Runs an :class:`LMImage`'s program: ``step(tokens)`` -> int32 logits (Q16.16), for a
    token array of any shape (a batch of independent sequences). State: one Q16.16 vector per
    layer, zero after :meth:`reset`. ``matvec(name, xq)`` computes the ternary products (default:
    exact numpy); ``trace(op, vmem, regs)`` is called after every instruction."""

    def __init__(self, image, *, batch=(), matvec=None, trace=None):
        self.image, self.batch, self.trace = image, tuple(batch), trace
        self._matvec = matvec or NumpyRunner(dict(zip(image.matrix_names, image.matrices))).matvec
        self.reset()

    def reset(self):
        """A fresh sequence: the vector memory zeroed, then the image's reset program run (as a
        device does, whose vector memory holds whatever the last sequence left)."""
        self.vmem = np.zeros(self.batch + (self.image.vmem_words,), np.int64)
        self.run(self.image.reset_program)

    def run(self, program, tokens=None):
        """Run ``program`` (a list of :class:`Op`) on the current state, with ``tokens`` for ``embed``."""
        img, regs = self.image, {}
        embed = lambda: img.embed_row(tokens)
        matvec = lambda index, xq: self._matvec(img.matrix_names[index], xq)
        cmem = img.cmem.astype(np.int64)
        for op in program:
            execute(op, self.vmem, regs, cmem, embed_row=embed, matvec=matvec)
            if self.trace is not None:
                self.trace(op, self.vmem, regs)

    def step(self, tokens):
        img = self.image
        tokens = np.asarray(tokens, np.int64)
        if np.any((tokens < 0) | (tokens >= img.config.vocab)):
            raise TritiumValueError(f"token ids must be in 0..{img.config.vocab - 1}")
        self.run(img.program, tokens)
        addr, n = img.vectors["logits"]
        return self.vmem[..., addr:addr + n].copy()


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """The on-chip choice of token. ``inv_temperature`` is ``round(256 / T)`` (Q8.8, 16 bits);
    0 means greedy (arg-max, lowest id on a tie). ``top_k`` 0 means all tokens."""
    inv_temperature: int = 0
    top_k: int = 0

    @classmethod
    def from_float(cls, temperature, top_k):
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise TritiumValueError(f"temperature must be a finite number >= 0, got {temperature}")
        if temperature == 0:
            return cls(0, int(top_k))
        inv = int(round(256 / temperature))
        if not 1 <= inv < 1 << 16:
            raise TritiumValueError(f"temperature {temperature} is outside the device's range "
                                    f"({256 / 65535:.4f} .. 512)")
        return cls(inv, int(top_k))


def rng_seed(seed):
    """The xorshift32 state for a request's ``seed``: ``seed mod 2**32``, with 0 (which xorshift
    never leaves) replaced by ``0x6D2B79F5``."""
    s = int(seed) & 0xFFFFFFFF
    return s or 0x6D2B79F5


def choose_token(logits, params, rng_state):
    """The next token from one vector of Q16.16 ``logits`` and the new generator state.

    Greedy (``inv_temperature == 0``): the arg-max, lowest id on a tie; the generator does not
    step. Otherwise: the candidates are the ``top_k`` largest logits (ties to the lower id; all
    if ``top_k`` is 0 or exceeds the vocabulary), each weighted ``w = exp_neg_fix(
    shift_round((max - logit) * inv_temperature, 8))``; one xorshift32 draw ``r`` picks the first
    candidate in ascending id order whose running weight sum exceeds ``(r * sum(w)) >> 32``."""
    z = np.asarray(logits, np.int64).ravel()
    if params.inv_temperature == 0:
        return int(np.argmax(z)), rng_state
    order = np.lexsort((np.arange(z.size), -z))            # by logit descending, then id
    k = z.size if params.top_k <= 0 else min(params.top_k, z.size)
    cand = np.sort(order[:k])
    w = golden.exp_neg_fix(golden.shift_round((z.max() - z[cand]) * params.inv_temperature, 8))
    rng_state = golden.xorshift32(rng_state)
    target = (rng_state * int(w.sum())) >> 32
    pick = int(np.searchsorted(np.cumsum(w), target, side="right"))
    return int(cand[pick]), rng_state
