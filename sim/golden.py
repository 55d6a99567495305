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
    "TritiumValueError", "Packing",
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
