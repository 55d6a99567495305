"""Model files are untrusted input (issue 11, item 6).

Mutated copies of the shipped MatMul-free model, a released-style latent MatMul-free checkpoint,
a Hugging Face BitNet checkpoint (safetensors plus ``config.json``) and two llama.cpp ``bitnet``
GGUFs (TQ2_0 / TQ1_0, and Q8_0 / F16 / F32 with a ``.scale`` tensor) must each either load into
a sound model or raise :class:`ModelFileError`: no other exception (warnings count as errors),
no hang (a watchdog stops each load), and no allocation out of proportion to the file
(``tracemalloc`` peak per load). Mutations: bit flips, overwrites with interesting values,
truncation, insertion, deletion, edits of the safetensors header JSON (shapes, dtypes, offsets,
entries, metadata and its ``config`` JSON), of ``config.json``, of every numeric field of the
GGUF header (counts, lengths, types, dimensions, offsets, metadata values), and NaN / inf /
huge values written into float data and block scales.

Every mutation is a pure function of its seed, printed with any failure; ``TRITIUM_FUZZ_SEED``
sets the base seed (CI uses a fixed one).
"""

import dataclasses
import json
import os
import random
import signal
import struct
import tracemalloc
import warnings

import numpy as np
import pytest

from test_models import BITNET_CFG, random_bitnet, random_mmfree, write_gguf, write_hf
from tritium.host.formats import MAX_PARAM, ModelFileError, write_safetensors
from tritium.host.models import DEFAULT_MODEL, MMFreeConfig, load_model

LIMIT_S = 10                   # per load; a pristine load takes 10-60 ms
MEMORY = (64, 16 << 20)        # allowed tracemalloc peak: 64 x the file size + 16 MiB
BASE_SEED = int(os.environ.get("TRITIUM_FUZZ_SEED", "20261123"))


# -- the files to mutate ------------------------------------------------------------------------

@dataclasses.dataclass
class Base:
    """A pristine model file and what the mutators know about its layout."""
    name: str
    suffix: str
    data: bytes
    header_end: int                                     # bytes before the tensor data
    config: str | None = None                           # config.json beside it (HF)
    st_header: dict | None = None                       # safetensors header JSON
    slots: list = dataclasses.field(default_factory=list)   # GGUF header numbers: (offset, size)
    floats: list = dataclasses.field(default_factory=list)  # (offset, stride, count, kind) of float data


def _safetensors_base(name, path, config=None):
    data = path.read_bytes()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    floats = []
    for t, info in header.items():
        if t != "__metadata__" and info["dtype"] == "F32":
            begin, end = info["data_offsets"]
            floats.append((8 + hlen + begin, 4, (end - begin) // 4, "f32"))
    return Base(name, ".safetensors", data, 8 + hlen, config=config, st_header=header, floats=floats)


def _gguf_base(name, path):
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(path))  # the pristine file only: trusted, used to locate fields
    slots = []
    for field in list(reader.fields.values()) + [t.field for t in reader.tensors]:
        offset = field.offset
        for part in field.parts:
            if part.dtype.itemsize in (2, 4, 8):
                slots += [(offset + j * part.dtype.itemsize, part.dtype.itemsize) for j in range(min(part.size, 8))]
            offset += part.nbytes
    floats = []
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind == "F32":
            floats.append((t.data_offset, 4, t.n_elements, "f32"))
        elif kind == "F16":
            floats.append((t.data_offset, 2, t.n_elements, "f16"))
        elif kind in ("TQ1_0", "TQ2_0", "Q8_0"):  # the fp16 block scale d: last of each TQ block, first of Q8_0
            block, size = gguf.GGML_QUANT_SIZES[t.tensor_type]
            floats.append((t.data_offset + (size - 2 if kind != "Q8_0" else 0), size, t.n_elements // block, "f16"))
    data = path.read_bytes()
    return Base(name, ".gguf", data, reader.data_offset, slots=slots, floats=floats)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return make_bases(tmp_path_factory.mktemp("fuzz-bases"))


def make_bases(d):
    """The pristine files, written under ``d``."""
    out = [_safetensors_base("shipped-mmfree", DEFAULT_MODEL)]
    cfg = MMFreeConfig(vocab=40, hidden=32, layers=2, intermediate=64)
    out.append(_safetensors_base("latent-mmfree", write_safetensors(d / "latent.safetensors", random_mmfree(cfg))))
    c = {**BITNET_CFG, "hidden_size": 64, "intermediate_size": 96, "vocab_size": 50}
    (d / "hf").mkdir()
    hf = write_hf(d / "hf", c, *random_bitnet(c, seed=2))
    out.append(_safetensors_base("hf-bitnet", hf, config=(d / "hf" / "config.json").read_text()))
    c = {**BITNET_CFG, "vocab_size": 40}  # rows of 256: the TQ block
    f, trits, scales = random_bitnet(c, seed=1)
    out.append(_gguf_base("gguf-tq", _with_vocab(write_gguf(d / "tq.gguf", c, f, trits, scales), c["vocab_size"])))
    out.append(_gguf_base("gguf-mixed", write_gguf(
        d / "mixed.gguf", c, f, trits, scales, arch="bitnet", types=("Q8_0", "F16", "TQ1_0", "F32"),
        extra={"blk.0.ffn_down.scale": np.array([2.0], np.float32)})))
    for b in out:  # every pristine file loads: the mutations start from something valid
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _write(d / "pristine", b, b.data, b.config)
            load_model(d / "pristine" / ("model" + b.suffix))
    return out


def _gguf_kv(key, vtype, payload):
    return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vtype) + payload


def _with_vocab(path, n):
    """``path`` with tokenizer arrays added to its metadata (tokens, scores, token types), so
    that the mutations reach GGUF arrays of strings and of numbers."""
    data = path.read_bytes()
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(path))
    infos_at = min(t.field.offset for t in reader.tensors)
    infos_end = max(t.field.offset + sum(p.nbytes for p in t.field.parts) for t in reader.tensors)
    tokens = [f"<0x{i:02X}>" if i < 8 else "\u2581t" * (i % 3) + str(i) for i in range(n)]
    kvs = (_gguf_kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, n) + b"".join(
               struct.pack("<Q", len(t.encode())) + t.encode() for t in tokens))
           + _gguf_kv("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, n) + np.arange(n, dtype="<f4").tobytes())
           + _gguf_kv("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, n) + np.ones(n, "<i4").tobytes()))
    (n_kv,) = struct.unpack("<Q", data[16:24])
    head = data[:16] + struct.pack("<Q", n_kv + 3) + data[24:infos_at] + kvs + data[infos_at:infos_end]
    path.write_bytes(head + bytes((-len(head)) % 32) + data[reader.data_offset:])
    return path


def _write(d, base, data, config):
    d.mkdir(exist_ok=True)
    (d / ("model" + base.suffix)).write_bytes(data)
    if config is not None:
        (d / "config.json").write_text(config)
    return d / ("model" + base.suffix)


# -- mutations ----------------------------------------------------------------------------------

INTS = [0, 1, 2, 3, 4, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
        2 ** 32, 2 ** 40, 2 ** 62, 2 ** 63, 2 ** 64 - 1]
F32_BITS = [0x7FC00000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x7149F2CA, 0x00000001, 0x80000000, 0x4F800000]
F16_BITS = [0x7E00, 0x7C00, 0xFC00, 0x7BFF, 0x0001, 0x8000]
JSON_VALUES = [0, -1, 1, 3, 2 ** 31, 10 ** 12, 2 ** 64, 1.5, -0.5, 1e-300, 1e300, float("inf"), float("nan"), "7", "",
               None, True, [], {}, [1, 2], "x" * 40]


def _pos(rng, base, n):
    """A position, half the time inside the header (where lengths and offsets live)."""
    return rng.randrange(min(base.header_end, n)) if rng.random() < 0.5 else rng.randrange(n)


def m_bitflip(rng, base, data):
    data = bytearray(data)
    flips = [(_pos(rng, base, len(data)), rng.randrange(8)) for _ in range(rng.choice([1, 1, 2, 4, 8]))]
    for p, b in flips:
        data[p] ^= 1 << b
    return bytes(data), None, f"bit flips {flips}"


def m_overwrite(rng, base, data):
    size = rng.choice([1, 2, 4, 8])
    value = rng.choice(INTS + [rng.getrandbits(64)]) % (1 << (8 * size))
    p = _pos(rng, base, len(data) - size)
    return data[:p] + value.to_bytes(size, "little") + data[p + size:], None, f"{size}-byte {value:#x} at {p}"


def m_truncate(rng, base, data):
    n = _pos(rng, base, len(data))
    return data[:n], None, f"truncated to {n} bytes"


def m_insert(rng, base, data):
    p, blob = _pos(rng, base, len(data)), rng.randbytes(rng.choice([1, 2, 4, 8, 16]))
    return data[:p] + blob + data[p:], None, f"{blob.hex()} inserted at {p}"


def m_delete(rng, base, data):
    p, n = _pos(rng, base, len(data)), rng.choice([1, 2, 4, 8, 16])
    return data[:p] + data[p + n:], None, f"{n} bytes deleted at {p}"


def m_float_data(rng, base, data):
    offset, stride, count, kind = rng.choice(base.floats)
    p = offset + stride * rng.randrange(count)
    bits = rng.choice(F32_BITS if kind == "f32" else F16_BITS)
    size = 4 if kind == "f32" else 2
    return data[:p] + bits.to_bytes(size, "little") + data[p + size:], None, f"{kind} {bits:#x} at {p}"


def m_gguf_slot(rng, base, data):
    p, size = rng.choice(base.slots)
    old = int.from_bytes(data[p:p + size], "little")
    value = rng.choice(INTS + [old + 1, old - 1, old * 2, old // 2, rng.getrandbits(8 * size)]) % (1 << (8 * size))
    return data[:p] + value.to_bytes(size, "little") + data[p + size:], None, f"header field at {p}: {old} -> {value}"


def _st_rebuild(rng, base, header, what):
    """The file with ``header`` re-encoded (its length fixed up, except now and then)."""
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    raw += b" " * ((-len(raw)) % 8)
    hlen = len(raw) if rng.random() < 0.9 else base.header_end - 8
    return struct.pack("<Q", hlen) + raw + base.data[base.header_end:], base.config, what


def m_st_header(rng, base, data):
    h = json.loads(json.dumps(base.st_header))
    names = [n for n in h if n != "__metadata__"]
    t = rng.choice(names)
    op = rng.randrange(9)
    if op == 0:  # a shape
        shape = h[t]["shape"]
        i = rng.randrange(len(shape)) if shape else 0
        change = rng.choice(["+1", "-1", "0", "neg", "huge", "float", "str", "append", "drop", "empty", "2**64"])
        if shape and change in ("+1", "-1", "0", "neg", "huge", "float", "str", "2**64"):
            shape[i] = {"+1": shape[i] + 1, "-1": shape[i] - 1, "0": 0, "neg": -shape[i], "huge": 2 ** 40,
                        "float": shape[i] + 0.5, "str": str(shape[i]), "2**64": 2 ** 64}[change]
        elif change == "append":
            shape.append(rng.choice([1, 0, 2]))
        elif change == "drop" and shape:
            shape.pop()
        elif change == "empty":
            h[t]["shape"] = []
        what = f"shape of {t} -> {h[t]['shape']}"
    elif op == 1:  # a dtype
        h[t]["dtype"] = rng.choice(["F32", "F16", "BF16", "F64", "U8", "I8", "I32", "I64", "BOOL", "F8_E4M3", "Q4",
                                    "", 7, None, ["F32"]])
        what = f"dtype of {t} -> {h[t]['dtype']!r}"
    elif op == 2:  # data offsets
        b, e = h[t]["data_offsets"]
        h[t]["data_offsets"] = rng.choice([[b + 1, e + 1], [b - 1, e], [b, e - 1], [e, b], [b, 2 ** 63], [-8, e],
                                           [b, e, e], [b], [float(b), e], [str(b), e], None, [0, e - b]])
        what = f"data_offsets of {t} -> {h[t]['data_offsets']}"
    elif op == 3:  # the entry itself
        h[t] = rng.choice([None, [], "x", 5, {}, {"dtype": "F32"}, {**h[t], "extra": 1}])
        what = f"entry {t} -> {str(h[t])[:60]}"
    elif op == 4:
        del h[t]
        what = f"entry {t} deleted"
    elif op == 5:  # metadata
        h["__metadata__"] = rng.choice([[], "x", 3, {"architecture": 3}, {"config": None}, {}, None,
                                        {**h.get("__metadata__", {}), "architecture": rng.choice(["mmfreelm", "x"])},
                                        {**h.get("__metadata__", {}), "training": rng.choice(["{", "[]", "1", "{}"])}])
        what = f"__metadata__ -> {str(h['__metadata__'])[:60]}"
    elif op == 6 and "config" in h.get("__metadata__", {}):  # the config JSON inside the metadata
        c = json.loads(h["__metadata__"]["config"])
        key = rng.choice(sorted(c) + ["extra"])
        if rng.random() < 0.2:
            c.pop(key, None)
            what = f"config key {key} deleted"
        else:
            c[key] = rng.choice(JSON_VALUES)
            what = f"config {key} -> {c[key]!r}"
        h["__metadata__"]["config"] = rng.choice([json.dumps(c)] * 8 + ["{", "[1]", "null", "[" * 100000])
    elif op == 7:  # the whole header
        h = rng.choice([b"[]", b"null", b'"x"', b"{}", b"[" * 100000, b"{\"a\": " * 50000, b"\xff\xfe{}", b"1e999"])
        what = f"header -> {h[:20]!r}"
    else:  # a tensor's name (the loader then misses it, or finds a stranger)
        h[t + rng.choice(["x", ".weight", ""]) if rng.random() < 0.5 else rng.choice(names)[:-1]] = h.pop(t)
        what = f"entry {t} renamed"
    return _st_rebuild(rng, base, h, what)


def m_config_json(rng, base, data):
    c = json.loads(base.config)
    key = rng.choice(sorted(c))
    r = rng.random()
    if r < 0.15:
        del c[key]
        text, what = json.dumps(c), f"config.json {key} deleted"
    elif r < 0.25:
        text = rng.choice(["{", "[]", "null", "1", "[" * 100000, "\ufeff{}", '{"a": NaN}'])
        what = f"config.json -> {text[:20]!r}"
    else:
        c[key] = rng.choice(JSON_VALUES)
        text, what = json.dumps(c), f"config.json {key} -> {c[key]!r}"
    return data, text, what


GENERIC = [(m_bitflip, 3), (m_overwrite, 3), (m_truncate, 1), (m_insert, 1), (m_delete, 1), (m_float_data, 2)]
MUTATORS = {".safetensors": GENERIC + [(m_st_header, 5)], ".gguf": GENERIC + [(m_gguf_slot, 6)]}


def mutation(base, seed):
    """``(bytes, config_text, description)``: mutation ``seed`` of ``base`` (deterministic)."""
    rng = random.Random(seed)
    table = MUTATORS[base.suffix] + ([(m_config_json, 2)] if base.config is not None else [])
    fn = rng.choices([f for f, _ in table], [w for _, w in table])[0]
    data, config, what = fn(rng, base, base.data)
    return data, config if config is not None else base.config, f"{fn.__name__}: {what}"


# -- running one load ---------------------------------------------------------------------------

class Hang(BaseException):
    """Raised by the watchdog; a BaseException so that no ``except Exception`` in the loader hides it."""


def guarded(fn, *, limit_s=LIMIT_S):
    """Run ``fn()`` under a watchdog (SIGALRM), warnings as errors (an all-zero projection's
    warning aside) and tracemalloc. Returns ``(result or exception, peak traced bytes)``."""
    def alarm(signum, frame):
        raise Hang(f"still running after {limit_s} s")
    old = signal.signal(signal.SIGALRM, alarm)
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.filterwarnings("ignore", message=".*is all zeros", category=RuntimeWarning)
            signal.setitimer(signal.ITIMER_REAL, limit_s)
            try:
                out = fn()
            except BaseException as e:  # noqa: B036 -- classifying every outcome is the point
                if isinstance(e, KeyboardInterrupt):
                    raise
                out = e
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        if not tracing:
            tracemalloc.stop()
        signal.signal(signal.SIGALRM, old)


def unsound(model):
    """What is wrong with a model that loaded (``None`` if nothing): every projection present,
    ternary, of its configured shape, with a finite positive scale; every float finite."""
    cfg = model.config
    shapes = {n: (m, k) for n, m, k in cfg.projections()}
    if set(model.linears) != set(shapes):
        return f"projections {sorted(set(shapes) ^ set(model.linears))[:4]} missing or extra"
    for name, lin in model.linears.items():
        if lin.wq.dtype != np.int8 or lin.wq.shape != shapes[name] or np.abs(lin.wq).max(initial=0) > 1:
            return f"{name}: {lin.wq.dtype} {lin.wq.shape}, expected ternary int8 {shapes[name]}"
        if not 1 / MAX_PARAM <= lin.s_w <= MAX_PARAM:
            return f"{name}: scale {lin.s_w}"
        if lin.norm is not None and not np.all(np.abs(lin.norm) <= MAX_PARAM):
            return f"{name}: norm weight not finite"
    for name, arr in model.floats.items():
        if arr.dtype != np.float32 or not np.all(np.abs(arr) <= MAX_PARAM):
            return f"{name}: {arr.dtype} with non-finite or huge values"
    return None


def classify(base, path, outcome, peak):
    """``("loaded" | "refused" | "failed", detail)`` of one load."""
    size = path.stat().st_size + (len(base.config) if base.config else 0)
    if peak > MEMORY[0] * size + MEMORY[1]:
        return "failed", f"traced allocation peak {peak:,} bytes for a {size:,}-byte file"
    if isinstance(outcome, ModelFileError):
        msg = str(outcome)
        if "\n" in msg or path.parent.name not in msg:
            return "failed", f"ModelFileError not one line naming the file: {msg[:200]!r}"
        return "refused", msg
    if isinstance(outcome, BaseException):
        return "failed", f"{type(outcome).__name__}: {str(outcome)[:200]}"
    problem = unsound(outcome)
    return ("failed", f"loaded an unsound model: {problem}") if problem else ("loaded", "")


def fuzz(bases, count, seed, tmp_path, load=load_model):
    """Run ``count`` mutations (round robin over ``bases``); returns the tallies and the failures."""
    tally = {b.name: {"loaded": 0, "refused": 0, "failed": 0} for b in bases}
    failures = []
    for i in range(count):
        base, s = bases[i % len(bases)], seed + i
        data, config, what = mutation(base, s)
        path = _write(tmp_path / base.name, base, data, config)
        outcome, peak = guarded(lambda: load(path))
        kind, detail = classify(base, path, outcome, peak)
        tally[base.name][kind] += 1
        if kind == "failed":
            failures.append(f"seed {s} ({base.name}, {what}): {detail}")
    return tally, failures


def report(tally, failures, count, seed):
    total = {k: sum(t[k] for t in tally.values()) for k in ("loaded", "refused", "failed")}
    print(f"\nmodel fuzz: base seed {seed}, {count} mutations: {total['loaded']} loaded, {total['refused']} refused "
          f"with ModelFileError, {total['failed']} failed")
    for name, t in tally.items():
        print(f"  {name:16} {t['loaded']:5} loaded {t['refused']:5} refused {t['failed']:3} failed")
    for f in failures[:30]:
        print("  FAIL", f)
    return total


def _check_run(bases, count, seed, tmp_path):
    tally, failures = fuzz(bases, count, seed, tmp_path)
    total = report(tally, failures, count, seed)
    # every mutation either loaded a sound model or was refused with one ModelFileError line
    assert not failures, f"{len(failures)} of {count} mutations failed (base seed {seed}); first: {failures[:5]}"
    # the mutations reach past the first check: some files still load, every kind of file is refused somewhere
    assert total["loaded"] > 0 and all(t["refused"] > 0 for t in tally.values()), tally


def test_mutated_model_files_load_or_are_refused(bases, tmp_path):
    _check_run(bases, 250, BASE_SEED, tmp_path)


@pytest.mark.slow
def test_many_mutated_model_files_load_or_are_refused(bases, tmp_path):
    _check_run(bases, 3000, BASE_SEED + 1_000_000, tmp_path)


# -- the harness itself can fail ----------------------------------------------------------------

def test_the_harness_reports_stray_exceptions_hangs_warnings_and_big_allocations(bases, tmp_path):
    base = bases[0]
    path = _write(tmp_path / "h", base, base.data, base.config)

    def raises():
        raise IndexError("index 0 is out of bounds")

    def spins():
        while True:
            pass

    def warns():
        return np.float32(3e38) * np.float32(10)

    def allocates():
        return np.ones(MEMORY[0] * len(base.data) + MEMORY[1], np.uint8)

    # an exception other than ModelFileError is a failure that names it
    assert classify(base, path, *guarded(raises)) == ("failed", "IndexError: index 0 is out of bounds")
    # a loop that never ends is stopped by the watchdog and reported
    assert classify(base, path, *guarded(spins, limit_s=0.2))[1].startswith("Hang: still running")
    # a numpy warning (float32 overflow) is an error, not a silent inf
    assert classify(base, path, *guarded(warns)) == ("failed",
                                                     "RuntimeWarning: overflow encountered in scalar multiply")
    # an allocation beyond the bound set by the file's size is reported with its size
    assert "traced allocation peak" in classify(base, path, *guarded(allocates))[1]
    # a loader that hands back an unsound model (a NaN norm weight) is reported too
    model = load_model(path)
    model.floats["model.norm.weight"][3] = np.nan
    assert classify(base, path, model, 0) == ("failed", "loaded an unsound model: model.norm.weight: float32 with "
                                                       "non-finite or huge values")


# -- the failures the fuzzing found, each pinned -------------------------------------------------

def _gguf_with(base, edits):
    data = bytearray(base.data)
    for offset, blob in edits:
        data[offset:offset + len(blob)] = blob
    return bytes(data)


def _gguf_field_offset(base, key):
    """Offset of metadata ``key``'s value type in the pristine GGUF."""
    needle = struct.pack("<Q", len(key)) + key.encode()
    return base.data.index(needle) + len(needle)


@pytest.mark.parametrize("case, message", [
    # gguf.GGUFReader looped over this length, reading nothing once past the end: a hang
    ("byte array length", "needs 4611686018427387904 bytes"),
    ("string array length", "claims 4611686018427387904 strings"),
    ("kv count", "more than the file's"),
    ("string length", "needs 9223372036854775807 bytes"),
    ("tensor dims", "has 4294967295 dimensions"),
    ("tensor offset", "expected 0"),
    ("head count zero", "must be a positive integer, got 0"),
    ("block scale inf", "non-finite or out-of-range values"),
])
def test_corrupt_gguf_fields_are_refused_quickly(bases, tmp_path, case, message):
    base = next(b for b in bases if b.name == "gguf-tq")
    arch_type = _gguf_field_offset(base, "general.architecture")
    heads = _gguf_field_offset(base, "bitnet-25.attention.head_count")
    first_tensor = base.data.index(struct.pack("<Q", len("token_embd.weight")) + b"token_embd.weight")
    edits = {
        # general.architecture becomes an array of 2**62 uint8 (type 9, item type 0), or strings (8)
        "byte array length": [(arch_type, struct.pack("<IIQ", 9, 0, 2 ** 62))],
        "string array length": [(arch_type, struct.pack("<IIQ", 9, 8, 2 ** 62))],
        "kv count": [(16, struct.pack("<Q", 2 ** 63))],
        "string length": [(arch_type + 4, struct.pack("<Q", 2 ** 63 - 1))],
        "tensor dims": [(first_tensor + 8 + len("token_embd.weight"), struct.pack("<I", 2 ** 32 - 1))],
        "tensor offset": [(first_tensor + 8 + len("token_embd.weight") + 4 + 16 + 4, struct.pack("<Q", 64))],
        "head count zero": [(heads + 4, struct.pack("<I", 0))],
        "block scale inf": [(f[0], struct.pack("<H", 0x7C00)) for f in base.floats if f[3] == "f16"][:1],
    }[case]
    path = _write(tmp_path, base, _gguf_with(base, edits), None)
    outcome, peak = guarded(lambda: load_model(path), limit_s=5)
    # refused with the problem named, in well under the watchdog's limit
    assert isinstance(outcome, ModelFileError), repr(outcome)
    assert message in str(outcome)


@pytest.mark.parametrize("edit, message", [
    # np.prod of this shape wraps around in int64 to the tensor's true 128 values: reshape then failed
    (lambda h: h["lm_head.norm.weight"].update(shape=[128, 2 ** 57 + 1]), "do not fit"),
    (lambda h: h["lm_head.norm.weight"].update(shape=[-1, -128]), "non-negative sizes"),
    (lambda h: h["lm_head.norm.weight"].update(dtype=["F32"]), "malformed header entry"),
    (lambda h: h.update(__metadata__=[1]), "__metadata__ is not a map"),
    # a config with 10**12 layers made the loader build 10**12 tensor names before checking one
    (lambda h: h["__metadata__"].update(config=json.dumps({"layers": 10 ** 12})), "but the file holds"),
    (lambda h: h["__metadata__"].update(config=json.dumps({"hidden": 0})), "hidden must be a positive integer"),
    (lambda h: h["__metadata__"].update(config=json.dumps({"eps": float("nan")})), "eps must be a number in (0, 1)"),
    (lambda h: h["__metadata__"].update(config="[" * 100000), "not JSON (RecursionError"),
    (lambda h: h["__metadata__"].update(training="{"), "'training' metadata is not JSON"),
])
def test_corrupt_safetensors_headers_are_refused(bases, tmp_path, edit, message):
    base = bases[0]
    header = json.loads(json.dumps(base.st_header))
    edit(header)
    data, config, _ = _st_rebuild(random.Random(0), base, header, "")
    path = _write(tmp_path, base, data, config)
    outcome, _ = guarded(lambda: load_model(path), limit_s=5)
    # one ModelFileError naming the problem
    assert isinstance(outcome, ModelFileError), repr(outcome)
    assert message in str(outcome)


@pytest.mark.parametrize("bits, message", [(0x7FC00000, "non-finite"), (0x7F7FFFFF, "out-of-range")])
def test_nan_or_huge_float_parameters_are_refused(bases, tmp_path, bits, message):
    for base in bases:
        if base.suffix != ".safetensors":
            continue
        offset, _, count, _ = base.floats[0]
        data = base.data[:offset] + struct.pack("<I", bits) + base.data[offset + 4:]
        path = _write(tmp_path / base.name, base, data, base.config)
        outcome, _ = guarded(lambda: load_model(path))
        # a NaN (or a finite value that overflows float32 arithmetic) is refused, not computed with
        assert isinstance(outcome, ModelFileError) and message in str(outcome), (base.name, repr(outcome))


@pytest.mark.parametrize("key, value, message", [
    ("num_attention_heads", 0, "heads must be a positive integer"),
    ("hidden_size", float("inf"), "OverflowError"),
    ("rope_theta", -1.0, "RoPE theta must be"),
    ("rms_norm_eps", float("nan"), "eps must be"),
    ("hidden_act", ["relu2"], "activation must be a string"),
])
def test_corrupt_hf_config_is_refused(bases, tmp_path, key, value, message):
    base = next(b for b in bases if b.name == "hf-bitnet")
    path = _write(tmp_path, base, base.data, json.dumps({**json.loads(base.config), key: value}))
    outcome, _ = guarded(lambda: load_model(path))
    # the config.json problem is named
    assert isinstance(outcome, ModelFileError) and message in str(outcome), repr(outcome)


def test_model_files_are_memory_mapped_not_read_whole(bases, tmp_path, monkeypatch):
    """Both readers map the file instead of reading it into one bytes object."""
    import pathlib
    mapped = []
    real_memmap = np.memmap

    def no_read_bytes(self):
        raise AssertionError(f"{self} read whole")

    def recording_memmap(filename, *args, **kwargs):
        mapped.append(pathlib.Path(filename))
        return real_memmap(filename, *args, **kwargs)
    monkeypatch.setattr(pathlib.Path, "read_bytes", no_read_bytes)
    monkeypatch.setattr(np, "memmap", recording_memmap)
    for base in bases:
        path = tmp_path / base.name / ("model" + base.suffix)
        path.parent.mkdir()
        with open(path, "wb") as f:
            f.write(base.data)
        if base.config:
            (path.parent / "config.json").write_text(base.config)
        mapped.clear()
        # loads without Path.read_bytes, through one memory map of the model file
        assert load_model(path).linears
        assert mapped == [path], (base.name, mapped)
