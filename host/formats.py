"""Model files: safetensors (read and write, numpy only) and GGUF (read; decoding via the ``gguf`` package).

Model files are untrusted input. Every reader memory-maps the file, checks each length, count,
shape and offset against the file before it allocates or loops by it, and raises
:class:`ModelFileError` with the file and the problem in one line (missing file, truncated
header, offsets outside the file, unknown dtype or tensor type) -- never a traceback from
inside a parser. :func:`finite_f32` is the check loaders apply to every float parameter.
"""

import json
import math
import pathlib
import struct

import numpy as np

from ..sim.golden import TritiumValueError

__all__ = ["ModelFileError", "MAX_PARAM", "finite_f32", "read_safetensors", "write_safetensors", "read_gguf"]


class ModelFileError(TritiumValueError):
    """A model file is missing, corrupt, or of a kind the runtime does not read."""


#: The largest magnitude a float parameter may have. Beyond it float32 arithmetic at run time
#: (the squares inside RMSNorm) overflows, so a larger value is a corrupt file, not a model.
MAX_PARAM = 2.0 ** 32

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "BF16": None}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items() if v is not None}
_MAX_HEADER = 100 << 20
_MAX_DIMS = 16


def finite_f32(arr, name, source):
    """``arr`` as a float32 array; :class:`ModelFileError` naming ``name`` in ``source`` when a
    value is NaN, infinite, or larger in magnitude than :data:`MAX_PARAM` (float32 overflow
    included)."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(arr, np.float32)
    if out.size == 0 or -MAX_PARAM <= out.min() and out.max() <= MAX_PARAM:  # NaN compares false
        return out
    bad = ~(np.abs(out) <= MAX_PARAM)
    i = int(np.flatnonzero(bad.ravel())[0])
    raise ModelFileError(f"{source}: tensor {name} has {int(bad.sum())} non-finite or out-of-range values "
                         f"(first at flat index {i}: {float(out.ravel()[i])}; |x| must be <= 2**32)")


def _map(path):
    """``(path, uint8 array)``: the whole file, memory-mapped read-only (nothing read yet)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        if path.stat().st_size == 0:
            return path, np.zeros(0, np.uint8)
        return path, np.asarray(np.memmap(path, np.uint8, mode="r"))
    except OSError as e:
        raise ModelFileError(f"{path}: cannot be read ({e.strerror or e})") from None


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


# -- safetensors ---------------------------------------------------------------------------------

def read_safetensors(path):
    """``(tensors, metadata)`` of a safetensors file: ``{name: ndarray}`` (copies, native byte
    order; BF16 is widened to float32 exactly) and the ``__metadata__`` string map.

    The header must be a JSON object whose entries have a known dtype, a shape of non-negative
    integers and data offsets that tile the data section exactly (as the format requires);
    otherwise :class:`ModelFileError`."""
    path, raw = _map(path)
    if len(raw) < 8:
        raise ModelFileError(f"{path}: {len(raw)} bytes is too short for a safetensors file")
    (hlen,) = struct.unpack("<Q", raw[:8].tobytes())
    if hlen > min(len(raw) - 8, _MAX_HEADER):
        raise ModelFileError(f"{path}: header length {hlen} runs past the end of the file ({len(raw)} bytes); "
                             "not a safetensors file, or truncated")
    try:
        header = json.loads(raw[8:8 + hlen].tobytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ModelFileError(f"{path}: the safetensors header is not valid JSON ({type(e).__name__}: "
                             f"{str(e)[:200]})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: the safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ModelFileError(f"{path}: the safetensors __metadata__ is not a map of strings to strings")
    data = raw[8 + hlen:]
    entries = []
    for name, info in header.items():
        entries.append((name, *_st_entry(path, name, info, len(data))))
    # the format requires the tensors to tile the data section: no gaps, overlaps or trailing bytes
    end = 0
    for name, _, _, begin, stop in sorted(entries, key=lambda e: (e[3], e[4])):
        if begin != end:
            raise ModelFileError(f"{path}: tensor {name!r:.80} starts at data byte {begin}, expected {end} "
                                 "(tensors overlap or leave a gap: corrupt offsets)")
        end = stop
    if end != len(data):
        raise ModelFileError(f"{path}: the tensors cover {end} data bytes but the file holds {len(data)} "
                             "(bytes inserted, or corrupt offsets)")
    out = {}
    for name, dtype, shape, begin, stop in entries:
        buf = data[begin:stop]
        if dtype == "BF16":
            arr = (buf.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = buf.view(np.dtype(_ST_DTYPES[dtype]).newbyteorder("<")).astype(_ST_DTYPES[dtype])
        out[name] = arr.reshape(shape)
    return out, dict(meta)


def _st_entry(path, name, info, data_len):
    """``(dtype, shape, begin, end)`` of one header entry, every number checked against the file."""
    if not (isinstance(info, dict) and isinstance(info.get("dtype"), str) and isinstance(info.get("shape"), list)
            and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
            and all(_is_int(v) for v in info["shape"] + info["data_offsets"])):
        raise ModelFileError(f"{path}: tensor {name!r:.80} has a malformed header entry {info!r:.200} "
                             "(needs dtype, shape [ints], data_offsets [begin, end])")
    dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in _ST_DTYPES:
        raise ModelFileError(f"{path}: tensor {name!r:.80} has dtype {dtype!r:.40}, which the runtime does not read "
                             f"(known: {', '.join(_ST_DTYPES)})")
    if len(shape) > _MAX_DIMS or any(d < 0 for d in shape):
        raise ModelFileError(f"{path}: tensor {name!r:.80} has shape {str(shape)[:200]} (need at most {_MAX_DIMS} "
                             "non-negative sizes)")
    itemsize = 2 if dtype == "BF16" else np.dtype(_ST_DTYPES[dtype]).itemsize
    nbytes = math.prod(shape) * itemsize  # exact: Python integers do not wrap
    if not (0 <= begin <= end <= data_len) or end - begin != nbytes:
        raise ModelFileError(f"{path}: tensor {name!r:.80} ({dtype} {str(shape)[:100]}) has data offsets "
                             f"{begin}..{end} that do not fit its size or the file's {data_len} data bytes "
                             "(truncated?)")
    return dtype, tuple(shape), begin, end


def write_safetensors(path, tensors, metadata=None):
    """Write ``{name: ndarray}`` (float16/32/64, int8..64, uint8, bool) in safetensors layout, names
    sorted, with ``metadata`` (str -> str) as ``__metadata__``."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype not in _ST_NAMES:
            raise TritiumValueError(f"tensor {name!r:.80} has dtype {arr.dtype}, which safetensors here does not write")
        blob = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _ST_NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((-len(hjson)) % 8)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(hjson)) + hjson + b"".join(blobs))
    return path


# -- GGUF --------------------------------------------------------------------------------------------
# The header is parsed here rather than by gguf.GGUFReader, which loops and indexes by counts
# and lengths it has not checked against the file (a corrupt array length makes it spin).

_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
                 10: "<u8", 11: "<i8", 12: "<f8"}
_GGUF_BOOL = 7
_GGUF_MAX_DIMS = 4  # GGML_MAX_DIMS


class _Cursor:
    """Reads little-endian GGUF items from the mapped file; running past its end is a ModelFileError."""

    def __init__(self, path, raw):
        self.path, self.raw, self.pos = path, raw, 0

    def left(self):
        return len(self.raw) - self.pos

    def take(self, n, what):
        if n > self.left():
            raise ModelFileError(f"{self.path}: {what} at byte {self.pos} needs {n} bytes, but the file ends at "
                                 f"{len(self.raw)} (truncated, or a corrupt length)")
        out = self.raw[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, size, what):
        return int.from_bytes(self.take(size, what).tobytes(), "little")

    def string(self, what):
        n = self.uint(8, what + " length")
        try:
            return self.take(n, what).tobytes().decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError(f"{self.path}: {what} at byte {self.pos - n} is not UTF-8") from None

    def value(self, vtype, what):
        """One metadata value of GGUF type ``vtype`` as a Python value (arrays as lists)."""
        if vtype == _GGUF_STRING:
            return self.string(what)
        if vtype in _GGUF_SCALARS:
            dt = np.dtype(_GGUF_SCALARS[vtype])
            v = self.take(dt.itemsize, what).view(dt)[0].item()
            return bool(v) if vtype == _GGUF_BOOL else v
        if vtype != _GGUF_ARRAY:
            raise ModelFileError(f"{self.path}: {what} has unknown GGUF value type {vtype}")
        itype, count = self.uint(4, what + " item type"), self.uint(8, what + " length")
        if itype == _GGUF_STRING:
            if count * 8 > self.left():  # every string takes at least its 8-byte length
                raise ModelFileError(f"{self.path}: {what} claims {count} strings, more than the "
                                     f"{self.left()} bytes left in the file can hold")
            return [self.string(f"{what}[{i}]") for i in range(count)]
        if itype not in _GGUF_SCALARS:
            raise ModelFileError(f"{self.path}: {what} is an array of GGUF type {itype}, which the runtime does not "
                                 "read (nested arrays are not supported)")
        dt = np.dtype(_GGUF_SCALARS[itype])
        items = self.take(count * dt.itemsize, f"{what} ({count} items)").view(dt)
        return [bool(v) for v in items] if itype == _GGUF_BOOL else items.tolist()


def read_gguf(path):
    """``(tensors, fields)`` of a little-endian GGUF file (version 2 or 3). Tensors come as
    ``{name: (type_name, array)}`` in PyTorch order (rows first); TQ1_0 / TQ2_0 tensors are
    returned as their exact ternary values times the fp16 block scale, Q8_0 / BF16 / F16 / F32
    as float32 (values are not checked for finiteness here: see :func:`finite_f32`).
    ``fields`` maps metadata keys to Python values (arrays as lists).

    The header is checked as llama.cpp checks it: at most 4 dimensions, rows a whole number of
    quantization blocks, tensor data contiguous at the file's alignment and inside the file,
    no duplicated keys or tensor names; anything else is a :class:`ModelFileError`."""
    try:
        import gguf
        from gguf import GGMLQuantizationType as T
    except ImportError:
        raise ModelFileError("reading GGUF needs the gguf package (pip install gguf)") from None
    path, raw = _map(path)
    cur = _Cursor(path, raw)
    if raw[:4].tobytes() != b"GGUF":
        raise ModelFileError(f"{path}: not a GGUF file (no GGUF magic)")
    cur.pos = 4
    version = cur.uint(4, "version")
    if version not in (2, 3):
        kind = "a big-endian GGUF, which the runtime does not read" if version and not version & 0xFFFF \
            else "not a version the runtime reads (2 or 3)"
        raise ModelFileError(f"{path}: GGUF version {version:#x} is {kind}")
    n_tensors, n_kv = cur.uint(8, "tensor count"), cur.uint(8, "metadata count")
    # bounds before looping: a key/value takes at least 13 bytes, a tensor description 28
    if n_kv * 13 + n_tensors * 28 > cur.left():
        raise ModelFileError(f"{path}: header claims {n_kv} metadata entries and {n_tensors} tensors, more than "
                             f"the file's {len(raw)} bytes can hold (corrupt counts)")
    fields = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key {i}")
        if key in fields:
            raise ModelFileError(f"{path}: metadata key {key!r:.80} appears twice")
        vtype = cur.uint(4, f"type of metadata {key!r:.80}")
        fields[key] = (vtype, cur.value(vtype, f"metadata {key!r:.80}"))
    align = 32
    if "general.alignment" in fields:
        vtype, align = fields["general.alignment"]
        if vtype != 4 or align == 0 or align & (align - 1):
            raise ModelFileError(f"{path}: general.alignment must be a power of two (uint32), got {align!r}")
    infos = []
    for i in range(n_tensors):
        name = cur.string(f"tensor {i} name")
        n_dims = cur.uint(4, f"tensor {name!r:.80} dimension count")
        if not 1 <= n_dims <= _GGUF_MAX_DIMS:
            raise ModelFileError(f"{path}: tensor {name!r:.80} has {n_dims} dimensions (1 to {_GGUF_MAX_DIMS})")
        dims = [cur.uint(8, f"tensor {name!r:.80} size") for _ in range(n_dims)]
        raw_type = cur.uint(4, f"tensor {name!r:.80} type")
        offset = cur.uint(8, f"tensor {name!r:.80} offset")
        try:
            ttype = T(raw_type)
            block, tsize = gguf.GGML_QUANT_SIZES[ttype]
        except (ValueError, KeyError):
            raise ModelFileError(f"{path}: tensor {name!r:.80} has unknown GGUF tensor type {raw_type}") from None
        if dims[0] % block:
            raise ModelFileError(f"{path}: tensor {name!r:.80} ({ttype.name}) has rows of {dims[0]} values, not a "
                                 f"multiple of its block of {block}")
        row_bytes = dims[0] // block * tsize
        infos.append((name, ttype, dims, offset, math.prod(dims[1:]) * row_bytes, row_bytes))
    names = [x[0] for x in infos]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ModelFileError(f"{path}: tensor {dup!r:.80} appears twice")
    start = cur.pos + (-cur.pos) % align
    expected = 0
    for name, ttype, dims, offset, nbytes, _ in infos:
        if offset != expected:
            raise ModelFileError(f"{path}: tensor {name!r:.80} has data offset {offset}, expected {expected} "
                                 "(tensor data must follow in order, each aligned: corrupt offset)")
        if start + offset + nbytes > len(raw):
            raise ModelFileError(f"{path}: tensor {name!r:.80} ({ttype.name} {dims}) needs data bytes up to "
                                 f"{start + offset + nbytes}, but the file ends at {len(raw)} (truncated?)")
        expected = offset + nbytes + (-nbytes) % align
    end = start + expected if infos else cur.pos
    if len(raw) > end:
        raise ModelFileError(f"{path}: {len(raw) - end} bytes follow the last tensor's data (bytes inserted, "
                             "or a corrupt size or offset)")
    readable = {T.F32, T.F16, T.BF16, T.TQ1_0, T.TQ2_0, T.Q8_0}
    tensors = {}
    for name, ttype, dims, offset, nbytes, row_bytes in infos:
        if ttype not in readable:
            raise ModelFileError(f"{path}: tensor {name!r:.80} has GGUF type {ttype.name}, which the runtime "
                                 f"does not read (known: {', '.join(x.name for x in sorted(readable))})")
        shape = tuple(reversed(dims))  # GGUF lists ne0 (the row length) first
        blob = raw[start + offset:start + offset + nbytes]
        if ttype == T.F32:
            arr = blob.view("<f4").astype(np.float32)
        elif ttype == T.F16:
            arr = blob.view("<f2").astype(np.float32)
        elif nbytes == 0:
            arr = np.zeros(0, np.float32)
        else:
            with np.errstate(all="ignore"):  # an inf block scale times a zero trit: NaN, caught by the loader
                arr = np.asarray(gguf.quants.dequantize(blob.reshape(-1, row_bytes), ttype), np.float32)
        tensors[name] = (ttype.name, arr.reshape(shape))
    return tensors, {k: v for k, (_, v) in fields.items()}
