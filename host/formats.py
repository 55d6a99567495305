"""Model files: safetensors (read and write, numpy only) and GGUF (read, via the ``gguf`` package).

Every reader checks what it is given and raises :class:`ModelFileError` with the file and the
problem in one line (missing file, truncated header, offsets outside the file, unknown dtype or
tensor type) -- never a traceback from inside a parser.
"""

import json
import pathlib
import struct

import numpy as np

from ..sim.golden import TritiumValueError

__all__ = ["ModelFileError", "read_safetensors", "write_safetensors", "read_gguf"]


class ModelFileError(TritiumValueError):
    """A model file is missing, corrupt, or of a kind the runtime does not read."""


_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "BF16": None}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items() if v is not None}
_MAX_HEADER = 100 << 20


def _open_bytes(path):
    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    return path, path.read_bytes()


def read_safetensors(path):
    """``(tensors, metadata)`` of a safetensors file: ``{name: ndarray}`` (BF16 is widened to
    float32 exactly) and the ``__metadata__`` string map."""
    path, raw = _open_bytes(path)
    if len(raw) < 8:
        raise ModelFileError(f"{path}: {len(raw)} bytes is too short for a safetensors file")
    (hlen,) = struct.unpack("<Q", raw[:8])
    if hlen > min(len(raw) - 8, _MAX_HEADER):
        raise ModelFileError(f"{path}: header length {hlen} runs past the end of the file ({len(raw)} bytes); "
                             "not a safetensors file, or truncated")
    try:
        header = json.loads(raw[8:8 + hlen])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: the safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: the safetensors header is not a JSON object")
    meta = header.pop("__metadata__", {}) or {}
    data = memoryview(raw)[8 + hlen:]
    out = {}
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from None
        if dtype not in _ST_DTYPES:
            raise ModelFileError(f"{path}: tensor {name!r} has dtype {dtype}, which the runtime does not read "
                                 f"(known: {', '.join(_ST_DTYPES)})")
        itemsize = 2 if dtype == "BF16" else np.dtype(_ST_DTYPES[dtype]).itemsize
        count = int(np.prod(shape, dtype=np.int64))
        if not (0 <= begin <= end <= len(data)) or end - begin != count * itemsize:
            raise ModelFileError(f"{path}: tensor {name!r} ({dtype} {shape}) has data offsets {begin}..{end} that do "
                                 f"not fit its size or the file's {len(data)} data bytes (truncated?)")
        buf = bytes(data[begin:end])
        if dtype == "BF16":
            arr = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(buf, np.dtype(_ST_DTYPES[dtype]).newbyteorder("<")).astype(_ST_DTYPES[dtype])
        out[name] = arr.reshape(shape)
    return out, {str(k): str(v) for k, v in meta.items()}


def write_safetensors(path, tensors, metadata=None):
    """Write ``{name: ndarray}`` (float16/32/64, int8..64, uint8, bool) in safetensors layout, names
    sorted, with ``metadata`` (str -> str) as ``__metadata__``."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype not in _ST_NAMES:
            raise TritiumValueError(f"tensor {name!r} has dtype {arr.dtype}, which safetensors here does not write")
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


def read_gguf(path):
    """``(tensors, fields)`` of a GGUF file. Tensors come as ``{name: (type_name, array)}`` in
    PyTorch order (rows first); TQ1_0 / TQ2_0 tensors are returned as their exact ternary
    values times the fp16 block scale (``gguf.quants.dequantize``), floats as float32.
    ``fields`` maps metadata keys to Python values."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        import gguf
        from gguf import GGMLQuantizationType as T
    except ImportError:
        raise ModelFileError("reading GGUF needs the gguf package (pip install gguf)") from None
    if path.read_bytes()[:4] != b"GGUF":
        raise ModelFileError(f"{path}: not a GGUF file (no GGUF magic)")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError/struct.error/IndexError on corrupt input
        raise ModelFileError(f"{path}: corrupt GGUF ({type(e).__name__}: {e})") from None
    fields = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            fields[key] = field.contents()
        except Exception:  # an array of arrays, unused by the runtime
            fields[key] = None
    readable = {T.F32, T.F16, T.BF16, T.TQ1_0, T.TQ2_0, T.Q8_0}
    tensors = {}
    for t in reader.tensors:
        if t.tensor_type not in readable:
            raise ModelFileError(f"{path}: tensor {t.name!r} has GGUF type {t.tensor_type.name}, which the runtime "
                                 f"does not read (known: {', '.join(x.name for x in sorted(readable))})")
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists ne0 (the row length) first
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type) if t.tensor_type not in (T.F32, T.F16) \
                else np.asarray(t.data)
            arr = np.asarray(arr, np.float32).reshape(shape)
        except Exception as e:
            raise ModelFileError(f"{path}: tensor {t.name!r} ({t.tensor_type.name}, shape {shape}) cannot be decoded "
                                 f"({type(e).__name__}: {e})") from None
        tensors[t.name] = (t.tensor_type.name, arr)
    return tensors, fields
