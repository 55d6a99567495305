"""The on-chip LM step's integer arithmetic (tritium.sim.golden fixed point, tritium.sim.lmstep).

Every primitive is checked against exact Python-integer arithmetic (no int64 intermediate may
wrap), each nonlinearity against its float definition over its whole input range, and the whole
step against the float runtime on the shipped model.
"""

import json
import math

import numpy as np
import pytest

from tritium.host.models import DEFAULT_MODEL, MMFreeLM, load_model
from tritium.host.quality import NumpyRunner, validation_loss
from tritium.sim import golden as G
from tritium.sim import lmstep


@pytest.fixture(scope="module")
def model():
    return load_model(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def image(model):
    return lmstep.compile_mmfree(model)


def test_shift_round_is_half_up_and_exact_for_left_shifts():
    x = np.array([5, 6, 7, -5, -6, -7, 2**40 + 1])
    # 5/4 = 1.25 -> 1, 6/4 = 1.5 -> 2 (half up), 7/4 -> 2; -6/4 = -1.5 -> -1 (half up is toward +inf)
    assert G.shift_round(x, 2).tolist() == [1, 2, 2, -1, -1, -2, 2**38]
    # a non-positive shift is an exact left shift, clamped at +-2**62; huge right shifts give 0
    assert G.shift_round(np.array([3, -3]), -4).tolist() == [48, -48]
    assert G.shift_round(np.array([3, -3, 0, 2**40]), -61).tolist() == [2**62, -(2**62), 0, 2**62]
    assert G.shift_round(np.array([1, -1, 0]), -70).tolist() == [2**62, -(2**62), 0]
    assert G.shift_round(np.array([2**61, -(2**61)]), 100).tolist() == [0, 0]


def test_bit_length_and_isqrt_are_exact():
    rng = np.random.default_rng(1)
    xs = np.concatenate([np.arange(70000), rng.integers(0, 2**62, 20000), [2**61, 2**62 - 1]])
    xs = xs.astype(np.int64)
    # against Python's exact integer functions, including every perfect square's neighbours
    assert G.bit_length(xs).tolist() == [int(v).bit_length() for v in xs]
    assert G.bit_length(np.array([2**63 - 1])).tolist() == [63]
    assert G.isqrt(xs).tolist() == [math.isqrt(int(v)) for v in xs]
    sq = np.arange(1, 2**31 - 1, 7_777_777, dtype=np.int64) ** 2
    for d in (-1, 0, 1):
        assert G.isqrt(sq + d).tolist() == [math.isqrt(int(v)) for v in sq + d]


def test_sigmoid_table_over_its_whole_input_range():
    # every table entry is reached, in order, and the step function stays within half an interval
    # of the true sigmoid (its slope is at most 1/4): |error| <= 1/64 * 1/4 + rounding
    x = np.arange(-9 * 65536, 9 * 65536, 37, dtype=np.int64)
    s = G.sigmoid_fix(x)
    assert np.all(np.diff(s) >= 0)
    assert set(np.unique(np.clip((x >> 11) + 256, 0, 511)).tolist()) == set(range(512))
    err = np.abs(s / 65536 - 1 / (1 + np.exp(-x / 65536)))
    assert err.max() <= (1 / 64) / 4 + 2**-16 + 4e-4          # 4e-4: the tails beyond +-8
    # out of range saturates to the end entries; inputs are all of int32
    assert G.sigmoid_fix(np.array([G.INT32_MIN, G.INT32_MAX])).tolist() == [G.sigmoid_table()[0], G.sigmoid_table()[-1]]


def test_silu_and_exp_against_float():
    x = np.arange(-12 * 65536, 12 * 65536, 101, dtype=np.int64)
    silu = G.silu_fix(x) / 65536
    ref = (x / 65536) / (1 + np.exp(-x / 65536))
    # silu error: |x| * sigmoid error, plus one rounding; beyond +-8 the table end adds |x| * 3.4e-4
    assert np.all(np.abs(silu - ref) <= np.abs(x / 65536) * (1 / 256 + 4e-4) + 2**-16)
    z = np.arange(0, 20 * 65536, 53, dtype=np.int64)
    e = G.exp_neg_fix(z) / 65536
    # exp(-z) with a 256-entry 2**-j table: relative error below 2**-8 * ln 2, plus one LSB
    assert np.all(np.abs(e - np.exp(-z / 65536)) <= np.exp(-z / 65536) * (np.log(2) / 256) + 2 * 2**-16)
    assert G.exp_neg_fix(np.array([0]))[0] == 65536


def test_no_intermediate_overflows_at_the_extremes():
    # The worst cases of every product (int32 x int32, int32 x const, quantizer, rescale) are
    # computed with numpy int64 and with Python integers: equal means nothing wrapped.
    ext = [G.INT32_MIN, -1, 0, 1, G.INT32_MAX]
    # fgate: a lower bound constant far outside [0, 1] is clamped before the product
    from tritium.sim.lmstep import Op, execute
    vm = np.array([G.INT32_MAX, G.INT32_MIN, 0, 0], np.int64)
    execute(Op("fgate", 2, 0, n=2, c=0, shift=-60), vm, {}, np.array([100, -100]))
    # constant 100 at shift -60 is huge: lb = 1.0, so the gate is 1.0 whatever a is; constant -100
    # is clamped to lb = 0, so the gate is a itself (here INT32_MIN), with no int64 wrap
    assert vm[2:].tolist() == [65536, G.INT32_MIN]
    for a in ext:
        for b in ext:
            assert int(G.mul_fix(np.array([a]), np.array([b]))[0]) == max(G.INT32_MIN, min(G.INT32_MAX, (a * b + 2**15) >> 16))
        for m in (-(2**15), 2**15 - 1):
            for s in (-16, 0, 1, 30):
                want = (a * m + (1 << (s - 1))) >> s if s > 0 else a * m << -s
                assert int(G.mul_const(np.array([a]), np.array([m]), s)[0]) == max(G.INT32_MIN, min(G.INT32_MAX, want))
    # quantizer: any max from 1 to int32, elements at +-max, quantize to exactly +-127
    for m in [1, 2, 3, 2**14, 2**15 - 1, 2**15, 2**31 - 1, 2**31]:
        u = np.array([[m, -m, 0]])
        assert G.quantize_fix(u, np.array([[m]])).tolist() == [[127, -127, 0]]
    # sum of squares of MAX_VECTOR int32 extremes stays inside isqrt's domain (< 2**62)
    v = np.full((1, G.MAX_VECTOR), G.INT32_MIN)
    assert int(G.sum_squares(v)[0, 0]) == G.MAX_VECTOR * ((G.INT32_MIN >> G.SUMSQ_SHIFT) ** 2) < 2**62
    assert int(G.isqrt(G.sum_squares(v))[0, 0]) == math.isqrt(G.MAX_VECTOR * ((G.INT32_MIN >> G.SUMSQ_SHIFT) ** 2))
    # rescale: the largest accumulator times the largest gain
    g, s = G.rescale_gain(np.array([[2**31]]), np.array([[1]]), 2**16 - 1, 0)
    assert int(g[0, 0]) < 2**24
    acc = 127 * G.MAX_VECTOR
    assert int(G.rescale_fix(np.array([[acc]]), g, s)[0, 0]) == G.INT32_MAX  # saturates, exactly


def test_quantizer_matches_absmax_int8_within_one_step():
    rng = np.random.default_rng(2)
    for scale in (1e-3, 0.1, 1, 30, 3000):
        u = np.round(rng.normal(size=(64, 128)) * scale * 65536).astype(np.int64)
        q = G.quantize_fix(u, G.max_abs(u))
        ref, _ = G.quantize_activations(u.astype(np.float64))
        # the fixed-point reciprocal differs from float32 only on near-ties
        assert np.abs(q.astype(int) - ref.astype(int)).max() <= 1
        assert np.mean(q == ref) > 0.99


def test_rescale_gain_relative_error():
    rng = np.random.default_rng(3)
    for _ in range(200):
        v = np.round(rng.normal(size=(1, 128)) * 10 ** rng.uniform(-2, 3) * 65536).astype(np.int64)
        m, ss = G.max_abs(v), G.sum_squares(v)
        c = rng.uniform(0.01, 100)
        cm, cs = lmstep._gain_constant(128, 128 ** 0.5 * 2 ** (16 - G.SUMSQ_SHIFT) / (127 * c))
        g, s = G.rescale_gain(m, ss, cm, cs)
        y = G.rescale_fix(np.array([[10000]]), g, s)[0, 0]
        want = 10000 * int(m[0, 0]) * c / math.sqrt(int(ss[0, 0]))
        # 15-bit max, 16-bit root, 16-bit constant, 24-bit gain: a few parts in 2**14
        assert abs(y - want) <= 4e-4 * abs(want) + 1


def test_bfp_constants_round_trip():
    rng = np.random.default_rng(4)
    w = rng.uniform(0.2, 3, 128).astype(np.float32)
    for bits in (8, 16):
        m, s = G.bfp_constant(w, bits)
        # mantissas use the full width without overflowing it
        assert np.abs(m).max() < 2 ** (bits - 1) <= 2 * np.abs(m).max()
        assert np.abs(m / 2.0**s - w).max() <= 2.0 ** -(s + 1)
    with pytest.raises(G.TritiumValueError, match="finite"):
        G.bfp_constant([1.0, np.nan], 8)


def test_xorshift32_known_sequence():
    # Marsaglia's xorshift32 (13, 17, 5) from state 1
    x, seq = 1, []
    for _ in range(3):
        x = G.xorshift32(x)
        seq.append(x)
    assert seq == [270369, 67634689, 2647435461]


def test_choose_token_rules():
    z = np.array([5, 9, 9, 1]) * 65536
    # greedy: arg-max, the lower id on a tie, and the generator does not move
    assert lmstep.choose_token(z, lmstep.SamplingParams(0, 0), 7) == (1, 7)
    # top-k 1 is greedy whatever the draw
    for seed in range(1, 20):
        assert lmstep.choose_token(z, lmstep.SamplingParams(256, 1), seed)[0] == 1
    # sampling follows exp((z - max) / T): at T = 1, ids 1 and 2 each about 49%, id 0 0.9%
    counts, state = np.zeros(4), 12345
    for _ in range(20000):
        tok, state = lmstep.choose_token(z, lmstep.SamplingParams(256, 0), state)
        counts[tok] += 1
    p = np.exp((z / 65536) - 9)
    p /= p.sum()
    assert np.all(np.abs(counts / 20000 - p) < 0.01)
    with pytest.raises(G.TritiumValueError, match="temperature"):
        lmstep.SamplingParams.from_float(-1, 0)
    # fixed cases, worked by hand: logits [3, 5, 5, 4] (x 2**16), T = 1, top-k 2 keeps ids 1 and 2
    # (the tie at 5), weights 65536 each; state 1 draws 270369, target = 270369 * 131072 >> 32 = 8,
    # so id 1; top-k 3 adds id 3 with exp(-1) -> 24109 (t = 94548, E[(94548 & 0xffff) >> 8] >> 1)
    z = np.array([3, 5, 5, 4]) * 65536
    assert lmstep.choose_token(z, lmstep.SamplingParams(256, 2), 1) == (1, 270369)
    assert int(G.exp_neg_fix(np.array([65536]))[0]) == G.exp2_table()[(94548 & 0xFFFF) >> 8] >> 1
    # top-k beyond the vocabulary means all; seed 0 becomes the documented non-zero state
    assert lmstep.choose_token(z, lmstep.SamplingParams(256, 99), 5)[0] in (0, 1, 2, 3)
    assert lmstep.rng_seed(0) == 0x6D2B79F5 and lmstep.rng_seed(2**32 + 7) == 7


def test_integer_step_tracks_the_float_runtime(model, image):
    # One sequence through both: logits within 3% of their range, same arg-max nearly everywhere.
    ref = MMFreeLM(model, NumpyRunner({n: l.wq for n, l in model.linears.items()}))
    lm = lmstep.IntegerLM(image)
    text = b"The return statement is used to leave a function."
    same = 0
    for t in text:
        a, b = ref.step(t), lm.step(t) / 65536
        assert np.abs(a - b).max() < 0.03 * (a.max() - a.min())
        same += a.argmax() == b.argmax()
    assert same >= 0.9 * len(text)


def test_integer_step_is_batched_exactly(image):
    # A batch of sequences gives, row for row, the integers of running each alone.
    seqs = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz012345", np.uint8).reshape(4, 8)
    batched = lmstep.IntegerLM(image, batch=(4,))
    out = [batched.step(seqs[:, t]) for t in range(8)]
    for r in range(4):
        alone = lmstep.IntegerLM(image)
        for t in range(8):
            assert np.array_equal(alone.step(seqs[r, t]), out[t][r])


def test_deferred_products_keep_every_integer(image):
    # The compiler moves each matvec past the independent elementwise work after it; the step
    # in the program's written order leaves the same vector memory (the logits, every state).
    def undeferred(prog):      # each matvec back right after its quant
        out = []
        for op in prog:
            if op.code == "matvec":
                q = max(i for i, o in enumerate(out) if o.code == "quant")
                out.insert(q + 1, op)
            else:
                out.append(op)
        return out

    moved = [i for i, op in enumerate(image.program) if op.code == "matvec" and image.program[i - 1].code != "quant"]
    assert len(moved) >= 3 * image.config.layers        # f, i and g of every layer
    assert lmstep.defer_products(undeferred(image.program)) == image.program
    plain = lmstep.IntegerLM(image)
    written = lmstep.IntegerLM(image)
    written_prog = undeferred(image.program)
    for t in b"The loop ends.":
        plain.step(t)
        written.run(written_prog, np.int64(t))
        assert np.array_equal(plain.vmem, written.vmem)       # the logits and every state


def test_defer_products_stops_at_a_reader_a_writer_and_a_non_elementwise_op():
    Op = lmstep.Op
    prog = [Op("quant", a=0, n=8, c=0), Op("matvec", 64, n=16, c=0), Op("add", 8, 8, 8, n=8),
            Op("mul", 32, 72, 32, n=8), Op("add", 0, 0, 0, n=8)]
    assert [o.code for o in lmstep.defer_products(prog)] == ["quant", "add", "matvec", "mul", "add"]
    prog[3] = Op("silu", 70, 0, n=8)          # writes into the product's result
    assert [o.code for o in lmstep.defer_products(prog)] == ["quant", "add", "matvec", "silu", "add"]
    prog[2] = Op("gain")                      # not elementwise: stays after the matvec
    assert [o.code for o in lmstep.defer_products(prog)] == ["quant", "matvec", "gain", "silu", "add"]


def test_integer_validation_loss_within_001_nats_of_float(model):
    # the target of the on-chip step: a slice of the held-out text here (make bench: all of it)
    r = validation_loss(model, seq=64, sequences=12)
    assert abs(r["integer"] - r["float"]) < 0.01, r


def test_compiler_rejects_what_the_step_cannot_run(model):
    class Fake:
        arch = "bitnet"
    with pytest.raises(G.TritiumValueError, match="MatMul-free"):
        lmstep.compile_mmfree(Fake())
    with pytest.raises(G.TritiumValueError, match="token ids"):
        lmstep.IntegerLM(lmstep.compile_mmfree(model)).step(256)


def _cli_tokens(capsys, *extra):
    from tritium.host.cli import main as cli
    assert cli(["generate", "--prompt", "The result", "--max-tokens", "10", "--seed", "5", "--json", "--quiet",
                "--timeout", "60", "--arith", "integer", *extra]) == 0
    return json.loads(capsys.readouterr().out)["tokens"]


def _spec_tokens(image, prompt, n, temperature, top_k, seed):
    lm, rule, state = lmstep.IntegerLM(image), lmstep.SamplingParams.from_float(temperature, top_k), lmstep.rng_seed(seed)
    for t in prompt:
        logits = lm.step(t)
    out = []
    for _ in range(n):
        tok, state = lmstep.choose_token(logits, rule, state)
        out.append(tok)
        logits = lm.step(tok)
    return out


@pytest.mark.parametrize("temperature", ["0", "0.7"])
def test_integer_generation_through_the_golden_device_is_the_spec(capsys, image, temperature):
    # tritium generate --arith integer: the program on the host, products on the golden device;
    # the tokens are those of the spec run with numpy products
    got = _cli_tokens(capsys, "--backend", "golden", "--temperature", temperature)
    assert got == _spec_tokens(image, b"The result", 10, float(temperature), 40, 5)


@pytest.mark.cocotb
def test_integer_generation_sim_equals_golden(capsys):
    # the same integer-step tokens with every product made by the simulated gateware device
    assert _cli_tokens(capsys, "--backend", "sim") == _cli_tokens(capsys, "--backend", "golden")
