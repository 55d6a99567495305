"""The Tritium arithmetic specification: the numpy golden model.

This module owns every bit of arithmetic in the project. The gateware, the host
runtime and the tests all take their encodings, packings, quantizers and widths
from here, and every other implementation is checked against it with exact
integer equality. ``docs/arithmetic.md`` states the same rules in prose.

Only numpy is imported: the spec must be usable without any hardware tooling.

Contents
--------
* Trit encoding: a weight ``w`` in {-1, 0, +1} is stored as the 2-bit code
  ``w + 1`` (0 -> -1, 1 -> 0, 2 -> +1), the code used by BitNet's packed
  checkpoints, GGUF TQ2_0 and bitnet.cpp I2_S. Code 3 is invalid.
* Packings: :attr:`Packing.TRIT2` (2 bits per trit, 4 per byte) and
  :attr:`Packing.BASE3` (5 trits per byte, 1.6 bits per trit, the TQ1_0 code).
* Exact integer matrix-vector product and the accumulator width that provably
  never overflows for a given ``K``.
* BitNet b1.58 quantizers (absmean weights, absmax int8 activations) and the
  dequantization that follows an integer product.
* The engine's memory-word images (weights and activations) for a given
  lane/trit configuration.
"""

import enum

import numpy as np

__all__ = [
    "TritiumValueError", "Packing", "PACKING_CODES",
    "TRIT_CODE_NEG", "TRIT_CODE_ZERO", "TRIT_CODE_POS", "INT8_MIN", "INT8_MAX",
    "BASE3_TRITS_PER_BYTE", "ROUNDING",
    "check_ternary", "check_int8", "acc_width", "acc_bound", "partial_width", "matvec",
    "trit_codes", "trits_from_codes",
    "pack_trit2", "unpack_trit2", "pack_base3", "unpack_base3", "base3_decode_byte",
    "pack", "unpack", "lane_bits", "pack_bitnet_hf", "unpack_bitnet_hf",
    "weight_words", "weights_from_words", "activation_words", "activations_from_words",
    "quantize_weights", "quantize_activations", "dequantize", "bitlinear",
]


class TritiumValueError(ValueError):
    """Bad input to the arithmetic: the message names the offending value and the limit."""


class Packing(enum.Enum):
    """How trits are laid out in memory.

    TRIT2: each trit is its 2-bit code; trit ``i`` of a group sits at bits ``2i .. 2i+1``.
    BASE3: five trits per byte; the codes ``c0..c4`` form the base-3 number
    ``q = c0*81 + c1*27 + c2*9 + c3*3 + c4`` stored as ``ceil(q * 256 / 243)``.
    """
    TRIT2 = "trit2"
    BASE3 = "base3"

    @property
    def trits_per_group(self):
        """Trits in the smallest independently decodable unit."""
        return 1 if self is Packing.TRIT2 else BASE3_TRITS_PER_BYTE

    @property
    def bits_per_group(self):
        return 2 if self is Packing.TRIT2 else 8

    @property
    def code(self):
        """The packing's number on the link (the IDENTIFY reply's ``packing`` byte):
        :data:`PACKING_CODES`."""
        return PACKING_CODES[self]

    @classmethod
    def from_code(cls, code):
        """The packing whose :attr:`code` is ``code``; :class:`TritiumValueError` for an unknown code."""
        for packing, c in PACKING_CODES.items():
            if c == code:
                return packing
        raise TritiumValueError(f"packing code {code!r} is not one of {sorted(PACKING_CODES.values())}")


#: Link protocol code of each packing (``docs/protocol.md``, IDENTIFY): the one table.
PACKING_CODES = {Packing.TRIT2: 0, Packing.BASE3: 1}


TRIT_CODE_NEG = 0
TRIT_CODE_ZERO = 1
TRIT_CODE_POS = 2
INT8_MIN = -128
INT8_MAX = 127
BASE3_TRITS_PER_BYTE = 5
#: Rounding used by both quantizers: round half to even (numpy/PyTorch ``round``,
#: ggml ``nearest_int``), the rule of the BitNet reference implementations.
ROUNDING = "half-to-even"
EPS = 1e-5


def _first_bad(mask, arr):
    idx = tuple(int(i) for i in np.argwhere(mask)[0])
    return idx, arr[idx].item()


def check_ternary(w, name="weights"):
    """Return ``w`` as an int8 array, or raise if any element is not -1, 0 or +1."""
    arr = np.asarray(w)
    if arr.dtype.kind not in "iub":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            pass
        else:
            bad = ~np.isin(arr, (-1, 0, 1)) if arr.dtype.kind == "f" else np.ones(arr.shape, bool)
            if arr.size and bad.any():
                idx, val = _first_bad(bad, arr)
                raise TritiumValueError(
                    f"{name}[{', '.join(map(str, idx))}] = {val} is not ternary (must be -1, 0 or +1)")
            raise TritiumValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    bad = (arr < -1) | (arr > 1)
    if bad.any():
        idx, val = _first_bad(bad, arr)
        raise TritiumValueError(
            f"{name}[{', '.join(map(str, idx))}] = {val} is not ternary (must be -1, 0 or +1)")
    return arr.astype(np.int8)


def check_int8(x, name="activations"):
    """Return ``x`` as an int8 array, or raise if any element is outside [-128, 127]."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "iub":
        if not (arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise TritiumValueError(f"{name} must be integers in [-128, 127], got dtype {arr.dtype}")
    bad = (arr < INT8_MIN) | (arr > INT8_MAX)
    if bad.any():
        idx, val = _first_bad(bad, arr)
        raise TritiumValueError(
            f"{name}[{', '.join(map(str, idx))}] = {val} is out of int8 range [-128, 127]")
    return arr.astype(np.int8)


def acc_bound(k):
    """Largest ``|sum_k w_k x_k|`` over ternary ``w`` and int8 ``x`` of length ``k``: ``128 * k``.

    It is reached by ``x = -128`` everywhere and ``w = -1`` everywhere.
    """
    if not isinstance(k, int) or k < 1:
        raise TritiumValueError(f"K = {k!r} must be a positive integer")
    return 128 * k


def acc_width(k):
    """Signed bit width that holds every dot product of length ``k`` exactly.

    The result lies in ``[-128k, +128k]``; ``+128k`` needs ``bit_length(128k) + 1``
    bits in two's complement, and no narrower width holds it.
    """
    return acc_bound(k).bit_length() + 1


def partial_width(trits):
    """Signed width of one cycle's lane sum over ``trits`` products (``acc_width(trits)``)."""
    return acc_width(trits)


def matvec(w, x):
    """Exact ``y = W @ x`` for ternary ``W`` (M x K) and int8 ``x`` (K); returns int64 (M).

    Raises :class:`TritiumValueError` for non-ternary weights, non-int8 activations
    or mismatched shapes.
    """
    w = check_ternary(w, "weights")
    x = check_int8(x, "activations")
    if w.ndim != 2:
        raise TritiumValueError(f"weights must be a 2-D matrix (M x K), got shape {w.shape}")
    if x.ndim != 1 or x.shape[0] != w.shape[1]:
        raise TritiumValueError(
            f"activations of shape {x.shape} do not match weights of shape {w.shape} (need ({w.shape[1]},))")
    return w.astype(np.int64) @ x.astype(np.int64)


# -- encodings and packings ---------------------------------------------------------------------

def trit_codes(w):
    """Ternary values -> 2-bit codes (``w + 1``), uint8."""
    return (check_ternary(w).astype(np.int16) + 1).astype(np.uint8)


def trits_from_codes(codes, name="trit codes", *, lenient=False):
    """2-bit codes -> ternary values; code 3 is rejected, or with ``lenient`` read as 0 (what the
    gateware does with it)."""
    codes = np.asarray(codes)
    if lenient:
        codes = np.where(codes > TRIT_CODE_POS, TRIT_CODE_ZERO, codes)
    bad = codes > TRIT_CODE_POS
    if bad.any():
        idx, val = _first_bad(bad, codes)
        raise TritiumValueError(f"{name}[{', '.join(map(str, idx))}] = {val} is not a valid trit code (0, 1 or 2)")
    return codes.astype(np.int8) - 1


def pack_trit2(w):
    """Pack a 1-D ternary vector, four trits per byte, trit ``i`` at bits ``2(i%4)`` of byte ``i//4``."""
    codes = trit_codes(np.ravel(w))
    pad = (-codes.size) % 4
    codes = np.concatenate([codes, np.full(pad, TRIT_CODE_ZERO, np.uint8)]).reshape(-1, 4)
    return (codes[:, 0] | codes[:, 1] << 2 | codes[:, 2] << 4 | codes[:, 3] << 6).astype(np.uint8)


def unpack_trit2(packed, n, *, lenient=False):
    """Inverse of :func:`pack_trit2`: the first ``n`` trits."""
    packed = np.asarray(packed, np.uint8)
    if n > packed.size * 4:
        raise TritiumValueError(f"{n} trits requested from {packed.size} TRIT2 bytes (holds {packed.size * 4})")
    codes = np.stack([(packed >> s) & 3 for s in (0, 2, 4, 6)], axis=1).ravel()[:n]
    return trits_from_codes(codes, "TRIT2 codes", lenient=lenient)


_POW3 = np.array([81, 27, 9, 3, 1], np.int32)


def pack_base3(w):
    """Pack a 1-D ternary vector, five trits per byte (TQ1_0's code), first trit most significant."""
    codes = trit_codes(np.ravel(w)).astype(np.int32)
    pad = (-codes.size) % 5
    codes = np.concatenate([codes, np.full(pad, TRIT_CODE_ZERO, np.int32)]).reshape(-1, 5)
    q = codes @ _POW3
    return ((q * 256 + 242) // 243).astype(np.uint8)


def base3_decode_byte(b):
    """Decode one BASE3 byte (or array of bytes) into five codes, first trit first.

    Trit ``n`` is ``((b * 3**n) mod 256) * 3 >> 8``: a chain of five x3 steps where
    each step's carry-out above bit 7 is the code. Every byte decodes to five valid codes;
    the 243 bytes :func:`pack_base3` produces decode back to what was packed.
    """
    b = np.asarray(b, np.int32)
    out = []
    cur = b & 0xFF
    for _ in range(BASE3_TRITS_PER_BYTE):
        t = cur * 3
        out.append(t >> 8)
        cur = t & 0xFF
    return np.stack(out, axis=-1).astype(np.uint8)


def unpack_base3(packed, n):
    """Inverse of :func:`pack_base3`: the first ``n`` trits."""
    packed = np.asarray(packed, np.uint8)
    if n > packed.size * 5:
        raise TritiumValueError(f"{n} trits requested from {packed.size} BASE3 bytes (holds {packed.size * 5})")
    return trits_from_codes(base3_decode_byte(packed).ravel()[:n], "BASE3 codes")


def pack(w, packing):
    """Pack a 1-D ternary vector with ``packing``; see :func:`pack_trit2`, :func:`pack_base3`."""
    return pack_trit2(w) if Packing(packing) is Packing.TRIT2 else pack_base3(w)


def unpack(packed, n, packing, *, lenient=False):
    if Packing(packing) is Packing.TRIT2:
        return unpack_trit2(packed, n, lenient=lenient)
    return unpack_base3(packed, n)


def lane_bits(trits, packing):
    """Bits one lane reads per cycle for ``trits`` trits with ``packing``."""
    packing = Packing(packing)
    if trits % packing.trits_per_group:
        raise TritiumValueError(
            f"trits per lane = {trits} must be a multiple of {packing.trits_per_group} for {packing.value} packing")
    return trits // packing.trits_per_group * packing.bits_per_group


# -- engine memory images -----------------------------------------------------------------------

def _check_engine_shape(lanes, trits):
    for name, v in (("lanes", lanes), ("trits", trits)):
        if not isinstance(v, int) or v < 1:
            raise TritiumValueError(f"{name} = {v!r} must be a positive integer")


def _lane_bits_array(blocks, packing):
    """(..., trits) ternary -> (..., lane_bits) bits, least significant first."""
    packing = Packing(packing)
    codes = blocks.astype(np.int16) + 1
    if packing is Packing.TRIT2:
        return np.stack([codes & 1, codes >> 1], axis=-1).reshape(*codes.shape[:-1], -1).astype(np.uint8)
    groups = codes.reshape(*codes.shape[:-1], -1, BASE3_TRITS_PER_BYTE).astype(np.int32)
    q = groups @ _POW3
    b = ((q * 256 + 242) // 243).astype(np.uint8)
    return np.unpackbits(b[..., None], axis=-1, bitorder="little").reshape(*b.shape[:-1], -1)


def _words_from_bits(bits):
    """(n, word_bits) bits -> list of Python ints."""
    n, width = bits.shape
    pad = (-width) % 8
    if pad:
        bits = np.concatenate([bits, np.zeros((n, pad), np.uint8)], axis=1)
    raw = np.packbits(bits, axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in raw]


def weight_words(w, *, lanes, trits, packing):
    """The weight-memory image of ternary ``W`` (M x K) for an engine of ``lanes`` x ``trits``.

    Word ``tile * chunks + chunk`` (``tiles = ceil(M / lanes)``, ``chunks = ceil(K / trits)``)
    holds, for lane ``l`` at bits ``[l * lane_bits, (l + 1) * lane_bits)``, the trits
    ``W[tile * lanes + l, chunk * trits : (chunk + 1) * trits]`` packed with ``packing``.
    Rows and columns past ``M`` and ``K`` are zero trits. Returns a list of Python ints.
    """
    _check_engine_shape(lanes, trits)
    w = check_ternary(w, "weights")
    if w.ndim != 2 or 0 in w.shape:
        raise TritiumValueError(f"weights must be a non-empty 2-D matrix (M x K), got shape {w.shape}")
    lane_bits(trits, packing)
    m, k = w.shape
    tiles, chunks = -(-m // lanes), -(-k // trits)
    padded = np.zeros((tiles * lanes, chunks * trits), np.int8)
    padded[:m, :k] = w
    # (tiles, lanes, chunks, trits) -> (tiles, chunks, lanes, trits): one word per (tile, chunk)
    blocks = padded.reshape(tiles, lanes, chunks, trits).transpose(0, 2, 1, 3)
    bits = _lane_bits_array(blocks, packing)
    return _words_from_bits(bits.reshape(tiles * chunks, -1))


def weights_from_words(words, m, k, *, lanes, trits, packing, lenient=False):
    """Inverse of :func:`weight_words`: recover the M x K ternary matrix. With ``lenient``,
    the invalid code 3 reads as 0, as the gateware reads it."""
    _check_engine_shape(lanes, trits)
    packing = Packing(packing)
    lb = lane_bits(trits, packing)
    tiles, chunks = -(-m // lanes), -(-k // trits)
    if len(words) < tiles * chunks:
        raise TritiumValueError(f"{len(words)} weight words given, {m}x{k} needs {tiles * chunks}")
    nbytes = -(-(lanes * lb) // 8)
    raw = np.frombuffer(b"".join(int(wd).to_bytes(nbytes, "little") for wd in words[:tiles * chunks]),
                        np.uint8).reshape(tiles * chunks, nbytes)
    bits = np.unpackbits(raw, axis=1, bitorder="little")[:, :lanes * lb].reshape(tiles * chunks, lanes, lb)
    if packing is Packing.TRIT2:
        codes = bits[..., 0::2] | bits[..., 1::2] << 1
    else:
        b = np.packbits(bits, axis=-1, bitorder="little")
        codes = base3_decode_byte(b).reshape(tiles * chunks, lanes, trits)
    vals = trits_from_codes(codes, f"{packing.value} codes", lenient=lenient)
    out = vals.reshape(tiles, chunks, lanes, trits).transpose(0, 2, 1, 3).reshape(tiles * lanes, chunks * trits)
    return out[:m, :k].copy()


def activation_words(x, *, trits):
    """The activation words for int8 ``x`` (K): word ``c`` holds ``x[c*trits + t]`` at bits
    ``[8t, 8t + 8)`` in two's complement; the last word is zero-padded. List of ints."""
    _check_engine_shape(1, trits)
    x = check_int8(x, "activations")
    if x.ndim != 1 or x.size == 0:
        raise TritiumValueError(f"activations must be a non-empty vector, got shape {x.shape}")
    chunks = -(-x.size // trits)
    padded = np.zeros(chunks * trits, np.int8)
    padded[:x.size] = x
    raw = padded.view(np.uint8).reshape(chunks, trits)
    return [int.from_bytes(row.tobytes(), "little") for row in raw]


def activations_from_words(words, k, *, trits):
    """Inverse of :func:`activation_words`."""
    raw = b"".join(int(wd).to_bytes(trits, "little") for wd in words)
    return np.frombuffer(raw, np.int8)[:k].copy()


# -- checkpoint packings ---------------------------------------------------------------------------

def pack_bitnet_hf(w):
    """Hugging Face BitNet b1.58 packing of a ternary ``M x K`` matrix (``M`` a multiple of 4):
    uint8 ``[M/4, K]``, blocked along the output dimension, ``(packed[r, c] >> 2i) & 3`` is the
    code (``w + 1``) of ``w[i * M/4 + r, c]``."""
    w = check_ternary(w)
    if w.ndim != 2 or w.shape[0] % 4:
        raise TritiumValueError(f"HF BitNet packing needs a 2-D matrix with rows a multiple of 4, got shape {w.shape}")
    codes = trit_codes(w).reshape(4, w.shape[0] // 4, w.shape[1])
    return (codes[0] | codes[1] << 2 | codes[2] << 4 | codes[3] << 6).astype(np.uint8)


def unpack_bitnet_hf(packed, rows=None):
    """Inverse of :func:`pack_bitnet_hf`: ternary int8 ``[4 * R, K]`` (or the first ``rows``).
    Code 3 is rejected with the position named."""
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype != np.uint8:
        raise TritiumValueError(f"HF BitNet packed weights must be 2-D uint8, got {packed.dtype} {packed.shape}")
    codes = np.concatenate([(packed >> s) & 3 for s in (0, 2, 4, 6)], axis=0)
    w = trits_from_codes(codes, "HF BitNet packed codes")
    if rows is not None:
        if not 0 < rows <= w.shape[0]:
            raise TritiumValueError(f"{rows} rows requested from a packed tensor holding {w.shape[0]}")
        w = w[:rows]
    return w


# -- BitNet b1.58 quantization ------------------------------------------------------------------

def quantize_weights(w, eps=EPS):
    """Absmean ternarization (per tensor): ``s_w = 1 / max(mean|W|, eps)``,
    ``Wq = clamp(round(W * s_w), -1, 1)`` with round half to even. Returns ``(Wq int8, s_w float32)``;
    the effective weight is ``Wq / s_w``. Computed in float32."""
    w = np.asarray(w, np.float32)
    if w.size == 0 or not np.all(np.isfinite(w)):
        raise TritiumValueError("weights to quantize must be a non-empty array of finite numbers")
    s_w = np.float32(1.0) / np.maximum(np.mean(np.abs(w), dtype=np.float32), np.float32(eps))
    wq = np.clip(np.round(w * s_w), -1, 1).astype(np.int8)
    return wq, np.float32(s_w)


def quantize_activations(x, eps=EPS):
    """Absmax int8 quantization per token (last axis): ``s_x = 127 / max(max|x|, eps)``,
    ``xq = clamp(round(x * s_x), -128, 127)`` with round half to even, in float32.
    Returns ``(xq int8, s_x float32 with the last axis kept as size 1)``."""
    x = np.asarray(x, np.float32)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise TritiumValueError("activations to quantize must be a non-empty array of finite numbers")
    s_x = np.float32(127.0) / np.maximum(np.max(np.abs(x), axis=-1, keepdims=True), np.float32(eps))
    xq = np.clip(np.round(x * s_x), INT8_MIN, INT8_MAX).astype(np.int8)
    return xq, s_x.astype(np.float32)


def dequantize(y, s_x, s_w):
    """Rescale an exact integer product: ``y / (s_x * s_w)`` in float32."""
    return (np.asarray(y, np.float32) / (np.float32(s_x) * np.float32(s_w))).astype(np.float32)


def bitlinear(x, wq, s_w, matvec_fn=None):
    """A BitLinear forward pass for one token ``x`` (K floats): quantize, exact integer
    product (``matvec_fn(Wq, xq)``, default :func:`matvec`), dequantize."""
    xq, s_x = quantize_activations(x)
    y = (matvec_fn or matvec)(wq, xq)
    return dequantize(y, s_x[..., 0] if np.ndim(s_x) else s_x, s_w)


# -- Fixed-point arithmetic of the on-chip LM step ------------------------------------------------
#
# Every function below works on int64 numpy arrays with any leading (batch) axes; vector ops act on
# the last axis, "scalars" keep it as size 1. Values are exact integers: each function is what
# one vector-unit instruction (or one scalar-unit step) computes, bit for bit. The prose is
# ``docs/arithmetic.md``, "The on-chip LM step".

#: Vector values are Q16.16 fixed point in int32: real value = v / 2**16.
FIX_FRAC = 16
FIX_ONE = 1 << FIX_FRAC
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
#: The sum of squares of a vector is taken over ``v >> SUMSQ_SHIFT`` (so that MAX_VECTOR squares
#: of int32 values stay below 2**62 in a 64-bit accumulator).
SUMSQ_SHIFT = 5
#: Largest vector length of the LM step (BitLinear K, hidden, GLU intermediate).
MAX_VECTOR = 512
#: Sigmoid table: ``SIGMOID_ENTRIES`` samples over ``[-SIGMOID_RANGE, SIGMOID_RANGE)`` (real units),
#: indexed by the top bits of a Q16.16 value; entries are Q0.16.
SIGMOID_ENTRIES = 512
SIGMOID_RANGE = 8
#: Normalised widths of the quantizer's and the rescale's scalars.
QUANT_NORM_BITS = 15
RECIP_SHIFT = 30
RSQRT_NORM_BITS = 16
GAIN_SHIFT = 8
#: exp table for sampling: ``2**(-j/EXP2_ENTRIES)`` in Q0.16 (entry 0 is ``1.0 = 65536``).
EXP2_ENTRIES = 256
LOG2E_Q16 = 94548            # round(log2(e) * 2**16)


def sat32(x):
    """Saturate to the int32 range (every vector write does this)."""
    return np.clip(np.asarray(x, np.int64), INT32_MIN, INT32_MAX)


SHIFT_LIMIT = 1 << 62


def shift_round(x, s):
    """``x / 2**s`` rounded half up (``floor((x + 2**(s-1)) / 2**s)``) for ``s > 0`` (a shift of
    63 or more gives the same as 63: 0 for ``|x| < 2**62``); ``x * 2**-s`` for ``s <= 0``, exact
    but clamped to ``+-2**62`` (every caller saturates to int32 next, so the clamp never shows).
    ``s`` may be an array (per batch element). Inputs satisfy ``|x| < 2**62``."""
    x = np.asarray(x, np.int64)
    s = np.asarray(s, np.int64)
    pos = np.minimum(np.maximum(s, 0), 63)
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(pos - 1, 0)), 0)
    k = np.minimum(np.maximum(-s, 0), 63)
    lim = np.right_shift(np.int64(SHIFT_LIMIT), np.minimum(k, 62)) * (k < 63)
    left = np.where(np.abs(x) > lim, np.sign(x) * SHIFT_LIMIT, np.left_shift(x, np.minimum(k, 62)))
    return np.where(s > 0, np.right_shift(x + half, pos), left)


def bit_length(x):
    """Bits of a non-negative int64 (0 for 0), exactly: the index of the leading one plus one."""
    x = np.asarray(x, np.int64)
    n = np.zeros(x.shape, np.int64)
    for k in range(63):
        n += x >= (np.int64(1) << k)
    return n


def isqrt(x):
    """``floor(sqrt(x))`` of int64 ``0 <= x < 2**62``, exactly (the scalar unit's bit-serial root)."""
    x = np.asarray(x, np.int64)
    r = np.floor(np.sqrt(x.astype(np.float64))).astype(np.int64)
    for _ in range(2):
        r = np.where(r * r > x, r - 1, r)
        r = np.where((r + 1) * (r + 1) <= x, r + 1, r)
    return r


def bfp_constant(values, bits):
    """A constant vector as block floating point: ``(mantissas int64, shift)`` with
    ``value ~= m / 2**shift``, ``|m| < 2**(bits-1)``, every mantissa rounded half to even from the
    float32 value. The shift is the largest that keeps the biggest magnitude in range (0 for an
    all-zero vector); a Q16.16 vector times it is :func:`mul_const`."""
    v = np.asarray(values, np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise TritiumValueError("a constant vector must be non-empty and finite")
    big = float(np.max(np.abs(v)))
    if big == 0:
        return np.zeros(v.shape, np.int64), 0
    shift = (bits - 1) - int(np.floor(np.log2(big))) - 1
    m = np.round(v * 2.0 ** shift).astype(np.int64)
    while np.max(np.abs(m)) >= (1 << (bits - 1)):
        shift -= 1
        m = np.round(v * 2.0 ** shift).astype(np.int64)
    return m, shift


def mul_const(v, m, shift):
    """Q16.16 vector times a constant vector (:func:`bfp_constant`): ``sat32(shift_round(v*m, shift))``."""
    return sat32(shift_round(np.asarray(v, np.int64) * np.asarray(m, np.int64), shift))


def mul_fix(a, b):
    """Q16.16 times Q16.16: ``sat32(shift_round(a*b, 16))``."""
    return sat32(shift_round(np.asarray(a, np.int64) * np.asarray(b, np.int64), FIX_FRAC))


def add_fix(a, b):
    return sat32(np.asarray(a, np.int64) + np.asarray(b, np.int64))


def sum_squares(v):
    """``sum((v >> SUMSQ_SHIFT)**2)`` over the last axis (arithmetic shift: floor), keepdims."""
    v = np.right_shift(np.asarray(v, np.int64), SUMSQ_SHIFT)
    if v.shape[-1] > MAX_VECTOR:
        raise TritiumValueError(f"vector of {v.shape[-1]} elements; the LM step takes at most {MAX_VECTOR}")
    return np.sum(v * v, axis=-1, keepdims=True)


def max_abs(v):
    return np.max(np.abs(np.asarray(v, np.int64)), axis=-1, keepdims=True)


def normalize(x, bits):
    """``(m, s)`` with ``m = floor(x / 2**s)`` holding exactly ``bits`` bits (``2**(bits-1) <= m <
    2**bits``) for ``x > 0``; ``s`` may be negative (a left shift, exact). ``x = 0`` gives ``(0, 0)``."""
    x = np.asarray(x, np.int64)
    s = np.where(x > 0, bit_length(x) - bits, 0)
    m = np.where(s >= 0, np.right_shift(x, np.maximum(s, 0)), np.left_shift(x, np.maximum(-s, 0)))
    return m, s


def sigmoid_table():
    """The sigmoid ROM: entry ``i`` is ``round(2**16 * sigmoid(x_i))`` (half to even) at the centre
    ``x_i = (i - N/2 + 1/2) * 2R/N`` of its interval, ``N = SIGMOID_ENTRIES``, ``R = SIGMOID_RANGE``."""
    i = np.arange(SIGMOID_ENTRIES, dtype=np.float64)
    x = (i - SIGMOID_ENTRIES / 2 + 0.5) * (2 * SIGMOID_RANGE / SIGMOID_ENTRIES)
    return np.round(FIX_ONE / (1 + np.exp(-x))).astype(np.int64)


_SIGMOID = sigmoid_table()
#: A Q16.16 value shifted right by this many bits counts sigmoid-table entries (11: 1/32 each).
SIGMOID_SHIFT = FIX_FRAC - ((SIGMOID_ENTRIES // (2 * SIGMOID_RANGE)).bit_length() - 1)


def sigmoid_fix(x):
    """Q16.16 sigmoid, Q0.16 result: ``T[clamp((x >> s) + N/2, 0, N-1)]`` with ``2**-s`` real
    units per entry (``s = 11`` for 512 entries over [-8, 8))."""
    i = np.clip(np.right_shift(np.asarray(x, np.int64), SIGMOID_SHIFT) + SIGMOID_ENTRIES // 2, 0,
                SIGMOID_ENTRIES - 1)
    return _SIGMOID[i]


def silu_fix(x):
    """``mul_fix(x, sigmoid_fix(x))``."""
    return mul_fix(x, sigmoid_fix(x))


def quantize_fix(u, m):
    """Absmax int8 quantization of a Q16.16 vector ``u`` whose max magnitude is ``m`` (keepdims):
    normalise ``m`` to ``QUANT_NORM_BITS`` bits (``mn = m >> s``, ``un = u >> s``, floor; a left
    shift when ``s < 0``), reciprocal ``q = floor(127 * 2**30 / mn)``, then
    ``xq = clamp(shift_round(un * q, 30), -127, 127)``. ``m = 0`` gives zeros. int8 out."""
    u = np.asarray(u, np.int64)
    mn, s = normalize(m, QUANT_NORM_BITS)
    un = np.where(s >= 0, np.right_shift(u, np.maximum(s, 0)), np.left_shift(u, np.maximum(-s, 0)))
    q = np.where(mn > 0, (127 << RECIP_SHIFT) // np.maximum(mn, 1), 0)
    return np.clip(shift_round(un * q, RECIP_SHIFT), -127, 127).astype(np.int8)


def rescale_gain(m, ss, c_m, c_shift):
    """The scalar gain that turns a BitLinear's exact product into Q16.16: ``(g, shift)`` with
    ``y = sat32(shift_round(acc * g, shift))`` and ``y/2**16 ~= acc * (m/2**16) * C / sqrt(ss)``,
    where ``m`` is the quantizer's max (keepdims), ``ss`` the input's :func:`sum_squares`, and the
    compile-time constant ``C = c_m / 2**c_shift`` (a ``RSQRT_NORM_BITS``-bit mantissa).
    Steps: ``ss`` is first scaled by ``4**k``, ``k = max(0, (61 - bit_length(ss)) // 2)``, so that
    its root has 30 or 31 bits; ``r = isqrt(ss * 4**k)`` normalised to ``rn`` (16 bits, shift
    ``rs``); ``m`` to ``mn`` (15 bits, shift ``ms``); ``g = floor(mn * c_m * 2**8 / rn)`` (24 bits);
    ``shift = 8 + c_shift - ms + rs - k``. ``m = 0`` or ``ss = 0`` gives ``g = 0``."""
    mn, ms = normalize(m, QUANT_NORM_BITS)
    ss = np.asarray(ss, np.int64)
    k = np.maximum(0, (61 - bit_length(ss)) // 2)
    rn, rs = normalize(isqrt(np.left_shift(ss, 2 * k)), RSQRT_NORM_BITS)
    rs = rs - k
    ok = (mn > 0) & (rn > 0)
    g = np.where(ok, np.left_shift(mn * np.int64(c_m), GAIN_SHIFT) // np.maximum(rn, 1), 0)
    return g, GAIN_SHIFT + c_shift - ms + rs


def rescale_fix(acc, g, shift):
    return sat32(shift_round(np.asarray(acc, np.int64) * g, shift))


def exp2_table():
    """``round(2**16 * 2**(-j / EXP2_ENTRIES))`` for ``j`` in ``0 .. EXP2_ENTRIES-1`` (half to even)."""
    j = np.arange(EXP2_ENTRIES, dtype=np.float64)
    return np.round(FIX_ONE * 2.0 ** (-j / EXP2_ENTRIES)).astype(np.int64)


_EXP2 = exp2_table()


def exp_neg_fix(x):
    """``exp(-x)`` for Q16.16 ``x >= 0``, as Q0.16: ``t = shift_round(x * LOG2E_Q16, 16)``,
    ``E[(t & 0xffff) >> 8] >> (t >> 16)`` (0 once the shift reaches 17)."""
    t = shift_round(np.asarray(x, np.int64) * LOG2E_Q16, FIX_FRAC)
    n = np.right_shift(t, FIX_FRAC)
    e = _EXP2[np.right_shift(np.bitwise_and(t, FIX_ONE - 1), FIX_FRAC - 8)]
    return np.where(n >= 17, 0, np.right_shift(e, np.minimum(n, 17)))


def xorshift32(state):
    """One step of Marsaglia's xorshift32 (13, 17, 5) on a non-zero uint32 state; returns the new
    state, which is also the draw."""
    x = int(state) & 0xFFFFFFFF
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    return x
