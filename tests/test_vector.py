"""The vector unit (tritium.hw.vector) against the LM step's spec (tritium.sim.lmstep), exactly."""

import math

import numpy as np
import pytest

from tritium.hw.vector import SerialDivider, SerialSqrt, VectorUnit, encode, instruction_layout
from tritium.sim import golden as G
from tritium.sim import lmstep
from tritium.sim.amaranth_tb import run_requests
from tritium.sim.lmstep import Op
from tritium.sim.vector_tb import run_vector_program


@pytest.mark.parametrize("bits_per_cycle, skip", [(1, 0), (2, 0), (3, 0), (4, 0), (2, 15), (3, 15), (2, 16), (1, 5)])
def test_serial_divider_is_floor_division(bits_per_cycle, skip):
    # one to four quotient bits a cycle (39 is a multiple of neither 2 nor 4: the padding too);
    # with `skip`, numerators whose top `skip` bits are below the denominator (the promise), the
    # edge of it included, and the vector unit's two uses (a 15-bit M, a 16-bit root)
    rng = np.random.default_rng(5)
    pairs = [(0, 1), (1, 1), (2**39 - 1, 1), (2**39 - 1, 2**16 - 1), (127 << 30, 2**14), (127 << 30, 2**15 - 1)]
    pairs += [(int(rng.integers(0, 2**39)), int(rng.integers(1, 2**16))) for _ in range(60)]
    pairs += [((127 << 30), int(rng.integers(2**14, 2**15))) for _ in range(10)]
    pairs += [(int(rng.integers(0, 2**31)) << 8, int(rng.integers(2**15, 2**16))) for _ in range(10)]
    pairs += [(((d - 1) << (39 - skip)) | (2**(39 - skip) - 1), d) for d in (1, 2, 2**14, 2**16 - 1)]
    pairs = [(n, d) for n, d in pairs if n < 2**39 and n >> (39 - skip) < d]
    assert len(pairs) > 40
    dut = SerialDivider(num_width=39, den_width=16, bits_per_cycle=bits_per_cycle, skip=skip)
    layout = dut.req.payload.shape()
    got = run_requests(dut, [layout.const({"num": n, "den": d}).as_bits() for n, d in pairs], seed=1)
    # every quotient equals Python's floor division
    assert got == [n // d for n, d in pairs]


@pytest.mark.parametrize("bits_per_cycle", [1, 2, 3])
def test_serial_sqrt_is_the_integer_root(bits_per_cycle):
    # one to three root bits a cycle (31 root bits: a multiple of neither 2 nor 3, the padding too)
    rng = np.random.default_rng(6)
    xs = [0, 1, 2, 3, 4, 2**62 - 1, 2**61, (2**31 - 1) ** 2, (2**31 - 1) ** 2 - 1]
    xs += [int(v) for v in rng.integers(0, 2**62, 60)] + [int(v) ** 2 + d for v in rng.integers(0, 2**31, 10) for d in (-1, 0, 1) if int(v) ** 2 + d >= 0]
    got = run_requests(SerialSqrt(width=62, bits_per_cycle=bits_per_cycle), xs, seed=2)
    assert got == [math.isqrt(x) for x in xs]


def _vectors(rng, n, scale):
    return np.round(rng.normal(size=n) * scale * 65536).clip(G.INT32_MIN, G.INT32_MAX).astype(np.int64)


def _run_ops(ops, vmem0, cmem, *, seed, ext=None, stall_prob=0.3, lanes=1):
    """Run ``ops`` on the RTL and on the spec from the same memory; return both memories."""
    words = len(vmem0)
    dut = VectorUnit(vmem_depth=words, cmem_depth=max(1, len(cmem)), lanes=lanes)
    load = [Op("embed", 0, n=words)]
    vals = {"init": vmem0}

    def source(op, xq):
        if op.code == "embed":
            return vals["init"]
        return ext(op, xq)

    (snap,), _ = run_vector_program(dut, cmem, [(load + ops, source)], seed=seed, stall_prob=stall_prob, max_cycles=20_000,
                                    read=[("vmem", 0, words)])
    spec = vmem0.copy()
    regs = {"M": np.zeros(1, np.int64), "SS": np.zeros(1, np.int64)}   # the registers after reset
    for op in ops:
        lmstep.execute(op, spec, regs, np.asarray(cmem, np.int64), matvec=lambda c, xq: ext(Op("matvec", c=c), xq))
    return snap["vmem"], spec, regs


@pytest.mark.parametrize("seed, lanes, n", [(0, 1, 24), (1, 1, 24), (0, 2, 24), (1, 2, 25), (2, 2, 23), (3, 4, 24), (4, 4, 26), (5, 4, 23), (6, 8, 24), (7, 8, 29), (8, 8, 21)])
def test_elementwise_ops_match_the_spec(seed, lanes, n):
    # Every elementwise instruction with and without reductions, over values that reach
    # saturation, the sigmoid table's ends and the rounding ties; random stalls on the streams.
    # Two and four lanes: with n not a multiple of the lanes the vectors sit at unaligned addresses
    # too, so aligned (`lanes` elements a cycle, the last word part full) and unaligned
    # instructions (one a cycle) both run.
    rng = np.random.default_rng(seed)
    a = np.concatenate([_vectors(rng, n - 6, 6), [G.INT32_MAX, G.INT32_MIN, 0, 1, -1, 9 * 65536]])
    b = np.concatenate([_vectors(rng, n - 4, 40000), [G.INT32_MAX, G.INT32_MIN, -1, 2**15]])
    c = rng.integers(-128, 128, n)
    vmem0 = np.concatenate([a, b, np.zeros(4 * n, np.int64)])
    A, B, D = 0, n, 2 * n
    ops = [Op("mulc", D, A, n=n, c=0, shift=5, red=lmstep.RED_SUMSQ), Op("mulc", D + n, A, n=n, c=0, shift=-3),
           Op("mul", D + 2 * n, A, B, n=n, red=lmstep.RED_MAX), Op("add", D + 3 * n, A, B, n=n),
           Op("sigmoid", B, A, n=n), Op("silu", A, A, n=n), Op("rsub", D, B, n=n),
           Op("fgate", D + n, B, n=n, c=0, shift=9), Op("mul", D + 2 * n, D + 2 * n, D + n, n=n, red=lmstep.RED_SUMSQ),
           # fgate on raw operands (not only sigmoid outputs), with constants beyond [0, 1] (clamped)
           Op("fgate", D + 3 * n, A + 0, n=n, c=0, shift=7), Op("fgate", D, D + 3 * n, n=n, c=0, shift=-3),
           # the fused forms: fgate of the sigmoid, and a product by 1 - b (b saturating included)
           Op("sfgate", D + n, A, n=n, c=0, shift=9, red=lmstep.RED_MAX), Op("sfgate", D + 2 * n, B, n=n, c=0, shift=-2),
           Op("mulr", D + 3 * n, A, B, n=n, red=lmstep.RED_SUMSQ), Op("mulr", B, B, D + n, n=n)]
    got, spec, _ = _run_ops(ops, vmem0, c, seed=seed, lanes=lanes)
    assert np.array_equal(got, spec)


@pytest.mark.parametrize("scale, lanes", [(1e-4, 1), (0.3, 1), (50, 2), (20000, 2), (0.3, 4), (20000, 4), (0.3, 8), (20000, 8)])
def test_bitlinear_sequence_matches_the_spec(scale, lanes):
    # mulc with a max, quant (activations leave on xq), matvec (products come back on ext),
    # gain, rescale: the BitLinear of the LM step, over inputs small to huge.
    rng = np.random.default_rng(int(scale * 1000) % 997)
    k, mrows = 40, 12
    w = rng.integers(-1, 2, (mrows, k))
    vmem0 = np.concatenate([_vectors(rng, k, scale), np.zeros(k + mrows, np.int64)])
    c = rng.integers(-128, 128, k)
    seen = []

    def ext(op, xq):
        seen.append(xq.copy())
        return w @ xq

    ops = [Op("mulc", 0, 0, n=k, red=lmstep.RED_SUMSQ, c=0, shift=0),   # SS of the input itself
           Op("mulc", k, 0, n=k, c=0, shift=6, red=lmstep.RED_MAX),
           Op("quant", a=k, n=k), Op("matvec", 2 * k, n=mrows, c=0),
           Op("gain", imm=45000, shift=14), Op("rescale", 2 * k, 2 * k, n=mrows)]
    got, spec, regs = _run_ops(ops, vmem0, c, seed=3, ext=ext, lanes=lanes)
    assert np.array_equal(got, spec)
    # the activations the RTL offered are the spec's quantization (checked by ext's products too)
    assert np.array_equal(seen[0], regs["XQ"].astype(np.int64))
    assert np.abs(seen[0]).max() == 127


@pytest.mark.parametrize("scale, lanes", [(1e-4, 1), (0.3, 2), (20000, 2), (1e-4, 4), (0.3, 4), (0.3, 8)])
def test_fused_bitlinear_matches_the_spec_and_the_unfused_one(scale, lanes):
    # quant with the gain folded in (imm != 0), then matvec rescaling its products as they come
    # in on ext (imm = 1): what the compiler emits; equal to the spec, and to quant, matvec,
    # gain, rescale one by one.
    rng = np.random.default_rng(int(scale * 100) % 991)
    k, mrows = 36, 20
    w = rng.integers(-1, 2, (mrows, k))
    vmem0 = np.concatenate([_vectors(rng, k, scale), np.zeros(k + 2 * mrows, np.int64)])
    c = rng.integers(-128, 128, k)
    ext = lambda op, xq: w @ xq
    head = [Op("mulc", 0, 0, n=k, red=lmstep.RED_SUMSQ, c=0, shift=0), Op("mulc", k, 0, n=k, c=0, shift=6, red=lmstep.RED_MAX)]
    fused = head + [Op("quant", a=k, n=k, imm=45000, shift=14), Op("matvec", 2 * k, n=mrows, c=0, imm=1)]
    plain = head + [Op("quant", a=k, n=k), Op("matvec", 2 * k + mrows, n=mrows, c=0),
                    Op("gain", imm=45000, shift=14), Op("rescale", 2 * k + mrows, 2 * k + mrows, n=mrows)]
    got, spec, _ = _run_ops(fused + plain[2:], vmem0, c, seed=5, ext=ext, lanes=lanes)
    assert np.array_equal(got, spec)
    assert np.array_equal(got[2 * k:2 * k + mrows], got[2 * k + mrows:])
    assert got[2 * k:].any()


def test_zero_input_gives_zero_activations_and_gain():
    k = 8
    vmem0 = np.zeros(3 * k, np.int64)
    ops = [Op("mulc", k, 0, n=k, c=0, shift=3, red=lmstep.RED_MAX), Op("quant", a=k, n=k),
           Op("matvec", 2 * k, n=k, c=0), Op("gain", imm=40000, shift=10), Op("rescale", 2 * k, 2 * k, n=k)]
    got, spec, regs = _run_ops(ops, vmem0, np.ones(k, np.int64), seed=4, ext=lambda op, xq: np.arange(k) * 1000)
    # M = 0: every activation is 0, the gain is 0, so the rescaled products are 0 whatever came back
    assert np.array_equal(got, spec) and not got[2 * k:].any()


def test_encode_refuses_fields_that_do_not_fit():
    layout = instruction_layout(addr_bits=4, caddr_bits=4)
    with pytest.raises(G.TritiumValueError, match="dst = 16"):
        encode(Op("add", 16, 0, 0, n=1), layout)
    with pytest.raises(G.TritiumValueError, match="positive integer"):
        VectorUnit(vmem_depth=0, cmem_depth=4)
    # what the unit does not define is refused before it reaches it: a reduction outside an
    # elementwise op, and a destination overlapping a source part-way
    with pytest.raises(G.TritiumValueError, match="reduction"):
        encode(Op("matvec", 0, n=4, red=lmstep.RED_MAX), layout)
    with pytest.raises(G.TritiumValueError, match="overlaps a 0..7"):
        encode(Op("add", 4, 0, 0, n=8), layout)
    encode(Op("add", 0, 0, 8, n=8), layout)   # in place is fine


@pytest.fixture(scope="module")
def shipped_image():
    from tritium.host.models import DEFAULT_MODEL, load_model
    return lmstep.compile_mmfree(load_model(DEFAULT_MODEL))


def _small_image():
    from test_models import random_mmfree
    from tritium.host.models import MMFreeConfig, _load_mmfree
    cfg = MMFreeConfig(vocab=48, hidden=32, layers=2, intermediate=64)
    return lmstep.compile_mmfree(_load_mmfree(random_mmfree(cfg, seed=3), cfg, "random", {}))


@pytest.mark.parametrize("lanes", [1, 2, 4, 8])
def test_a_small_models_step_runs_bit_exactly_on_the_vector_unit(lanes):
    # another shape, compiled from its config: no RTL change, same exact agreement
    _program_on_rtl(_small_image(), [5, 17, 40, 0], lanes=lanes)


@pytest.mark.parametrize("lanes", [1, 2, 4, 8])
def test_the_shipped_models_step_runs_bit_exactly_on_the_vector_unit(shipped_image, lanes):
    cycles = _program_on_rtl(shipped_image, list(b"The"), lanes=lanes)
    print(f"vector unit cycles per token (shipped model, {lanes} lanes, 10% stalls on ext/xq): {cycles}")


def _program_on_rtl(img, tokens, *, lanes=1):
    # The whole compiled program, token after token, on the RTL: the logits and every layer's
    # state equal the spec's integers; products and embedding rows come in on ext.
    spec = lmstep.IntegerLM(img)
    want = [spec.step(t) for t in tokens]
    dut = VectorUnit(vmem_depth=img.vmem_words, cmem_depth=len(img.cmem), lanes=lanes)

    def source_for(tok):
        def source(op, xq):
            if op.code == "embed":
                return img.embed_row(tok)
            return img.matrices[op.c].astype(np.int64) @ xq
        return source

    la, ln = img.vectors["logits"]
    read = [("logits", la, ln)] + [(f"s{l}", *img.vectors[f"s{l}"]) for l in range(img.config.layers)]
    snaps, cycles = run_vector_program(dut, img.cmem, [(img.program, source_for(t)) for t in tokens],
                                       seed=7, stall_prob=0.1, read=read)
    for t, (snap, logits) in enumerate(zip(snaps, want)):
        assert np.array_equal(snap["logits"], logits), f"token {t}"
    last = img.config.layers - 1
    addr, n = img.vectors[f"s{last}"]
    assert np.array_equal(snaps[-1][f"s{last}"], spec.vmem[addr:addr + n])
    # each token streams at least the program's vector elements through the unit (at most
    # `lanes` a cycle in elementwise instructions)
    cost = img.cost()
    assert all(c > cost["vector_elements"] / lanes for c in cycles)
    return cycles


@pytest.mark.cocotb
def test_vector_unit_verilog_runs_the_shipped_program_under_verilator():
    # The generated Verilog, under Verilator with cocotb: 2 tokens of the shipped model, every
    # activation and every logit / state word equal to the spec (tritium.sim.tb_vector).
    from tritium.sim.runner import run_vector_tb
    r = run_vector_tb(tokens="Th", seed=3)
    assert r["tests"] == 1 and r["failed"] == 0, f"see {r['log']}"
    # the scoreboard checked what it should: 2 tokens, every quantization's activations, the
    # logits and the three layer states after each token
    from tritium.host.models import DEFAULT_MODEL, load_model
    img = lmstep.compile_mmfree(load_model(DEFAULT_MODEL))
    quantized = sum(op.n for op in img.program if op.code == "quant")
    assert r["stats"] == {"tokens": 2, "activations_checked": 2 * quantized, "words_checked": 2 * (256 + 3 * 128)}


def test_fgates_lower_bound_logic_is_exact_for_every_constant_and_shift():
    # the small lower-bound circuit against the spec's clamp(shift_round(c, s), 0, 1.0), for
    # every int8 mantissa and every shift an instruction can give (its shift field minus 16)
    from amaranth.hdl import Module, Signal, signed
    from amaranth.sim import Simulator

    from tritium.hw.vector import _lower_bound
    m = Module()
    c, s = Signal(signed(8)), Signal(signed(10))
    out = _lower_bound(m, c, s)
    cs, ss = np.meshgrid(np.arange(-128, 128), np.arange(-128 - 16, 128 - 16), indexing="ij")
    want = np.clip(G.shift_round(cs.astype(np.int64), ss), 0, G.FIX_ONE)
    got = np.zeros_like(want)

    async def bench(ctx):
        for i in range(cs.shape[0]):
            for j in range(cs.shape[1]):
                ctx.set(c, int(cs[i, j]))
                ctx.set(s, int(ss[i, j]))
                got[i, j] = ctx.get(out)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert np.array_equal(got, want)


def test_bit_length_tree_is_exact():
    # the normaliser's bit length (a tree of multiplexers) against int.bit_length, every width
    # the unit uses and the edges of each
    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator

    from tritium.hw.vector import _bit_length
    rng = np.random.default_rng(11)
    m = Module()
    xs = {w: Signal(w, name=f"x{w}") for w in (1, 5, 33, 64)}
    outs = {w: _bit_length(m, x) for w, x in xs.items()}
    cases = {w: [0, 1, 2**w - 1, 2**(w - 1)] + [int(rng.integers(0, 2**min(b, 62))) << max(0, b - 62)
                                               for b in range(1, w + 1) for _ in range(3)] for w in xs}
    got = []

    async def bench(ctx):
        for w, values in cases.items():
            for v in values:
                v &= (1 << w) - 1
                ctx.set(xs[w], v)
                got.append((ctx.get(outs[w]), v.bit_length()))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert len(got) > 300 and all(a == b for a, b in got)


@pytest.mark.parametrize("seed, lanes", [(0, 1), (1, 2), (2, 4), (3, 4), (4, 2), (5, 4), (6, 8)])
def test_back_to_back_elementwise_instructions_match_the_spec(seed, lanes):
    # Chains of elementwise instructions that the unit takes while the one before drains, where
    # that is safe: each reads the vector just written from its start (at lengths around the
    # OVERLAP_ISSUES limit, wide after narrow and narrow after wide), a vector overlapping it
    # part-way (must wait), or one apart; reductions into the same and the other register one
    # after another, observed through a gain and its rescale now and then (M and SS); and
    # rescaled products (quant, matvec) read by the next instruction, some with elementwise
    # instructions between the quant and its matvec (the compiler's deferred products).
    from tritium.hw.vector import OVERLAP_ISSUES
    rng = np.random.default_rng(100 + seed)
    area, words = 64, 320
    vmem0 = np.concatenate([_vectors(rng, 3 * area, 3), np.zeros(words - 3 * area, np.int64)])
    c = rng.integers(-128, 128, area + 8)
    lengths = [1, 3, lanes * (OVERLAP_ISSUES - 1), lanes * (OVERLAP_ISSUES - 1) + 1, lanes * OVERLAP_ISSUES,
               lanes * OVERLAP_ISSUES + 1, lanes * (OVERLAP_ISSUES + 1), 40]
    codes = ["mulc", "mul", "add", "sigmoid", "silu", "rsub", "fgate", "sfgate", "mulr"]
    layout = instruction_layout(addr_bits=9, caddr_bits=7)
    k, rows = 24, int(rng.choice([lanes * OVERLAP_ISSUES, 13]))
    w = rng.integers(-1, 2, (rows, k))
    ops, prev = [], Op("add", 0, 0, 64, n=16)
    while len(ops) < 80:
        n = int(rng.choice(lengths))
        aligned = rng.random() < 0.6             # every address a multiple of the lanes (wide), or not

        def place(x):
            return x - x % lanes if aligned else x

        def start():
            pick = rng.integers(4)
            if pick == 0:                        # near the vector just written
                return max(0, prev.dst + int(rng.choice([1, -1, 2, lanes, -3, n // 2])))
            if pick == 1:
                return place(int(rng.integers(0, 3 * area - n)))
            return prev.dst                      # the vector just written, from its start
        code = str(rng.choice(codes))
        dst = max(0, prev.dst + int(rng.choice([0, n, -n]))) if rng.random() < 0.3 else int(rng.integers(0, words - n))
        op = Op(code, dst=place(min(dst, words - n)), a=start(), b=start(), n=n,
                c=place(int(rng.integers(0, 8))), shift=int(rng.integers(-4, 10)), red=int(rng.choice([0, 0, 1, 2])))
        if max(op.a, op.b) + n > words:
            continue
        try:
            encode(op, layout)
        except G.TritiumValueError:
            continue
        ops.append(op)
        prev = op
        if rng.random() < 0.12 and not 3 * area - 8 < prev.dst < 3 * area + 8:   # M and SS, seen through a gain and its rescale
            ops += [Op("gain", imm=int(rng.integers(1, 65536)), shift=12), Op("rescale", 3 * area, prev.dst, n=8)]
        elif rng.random() < 0.12:                # a rescaled product, its result read next
            mv = Op("matvec", place(int(rng.integers(0, words - rows))), n=rows, c=0, imm=1)
            qa = place(int(rng.integers(0, 3 * area - k)))
            # (a program's rule: quant's M is the max of the vector it quantizes)
            ops += [Op("rsub", qa, qa, qa, n=k, red=lmstep.RED_MAX),
                    Op("quant", a=qa, n=k, imm=int(rng.integers(1, 65536)), shift=int(rng.integers(6, 14)))]
            if rng.random() < 0.5:               # elementwise work before the matvec (which may
                # then be taken while it drains), reading the vector just written, a reduction too
                extra = Op("mul", 3 * area + 8, prev.dst, place(int(rng.integers(0, area))), n=int(rng.choice(lengths)),
                           red=int(rng.choice([0, 1, 2])))
                if not (extra.a < extra.dst < extra.a + extra.n or extra.a + extra.n > words):
                    ops.append(extra)
            ops.append(mv)
            prev = mv
    got, spec, _ = _run_ops(ops, vmem0, c, seed=seed, lanes=lanes, stall_prob=0.15, ext=lambda op, xq: w @ xq)
    assert np.array_equal(got, spec)
