"""The token sampler (tritium.hw.sampler) against the LM step's choice (tritium.sim.lmstep.choose_token), exactly."""

import functools

import numpy as np
import pytest

from amaranth.sim import Simulator

from tritium.hw.vector import word_layout
from tritium.hw.sampler import (PRODUCT_CLAMP, ExpWeight, SerialMultiplier, TokenSampler, choice_model, exp_weight,
                                exp_weight_cycles)
from tritium.sim import golden as G
from tritium.sim import lmstep
from tritium.sim.amaranth_tb import Stalls, run_requests, stream_put
from tritium.sim.lmstep import SamplingParams as SP

TEMPERATURES = (1, 255, 256, 4096, 65535)


def _spec_weight(d, inv):
    return G.exp_neg_fix(G.shift_round(np.asarray(d, np.int64) * np.asarray(inv, np.int64), 8))


@functools.cache
def _zero_from():
    """The smallest x with exp_neg_fix(x) == 0 (it stays 0 above: see the next test)."""
    x = np.arange(1 << 21, dtype=np.int64)
    return int(x[G.exp_neg_fix(x) == 0][0])


# -- the weight's clamps, on the arithmetic ----------------------------------------------------

def test_exp_neg_fix_is_zero_from_the_clamp_on():
    # exp_neg_fix never increases (exhaustively below 2**21), and it is 0 at x = 2**20: its
    # shift t >> 16 is already >= 17 there, and t = shift_round(x * LOG2E_Q16, 16) does not
    # decrease with x, so every larger x (up to the largest the spec can form) gives 0 too
    x = np.arange(1 << 21, dtype=np.int64)
    w = G.exp_neg_fix(x)
    assert np.all(np.diff(w) <= 0)
    t = G.shift_round(np.int64(1 << 20) * G.LOG2E_Q16, 16)
    assert t >> 16 >= 17 and w[1 << 20] == 0
    largest = int(G.shift_round((2**32 - 1) * 65535, 8))
    assert G.exp_neg_fix(np.array([largest, largest - 1, 1 << 30], np.int64)).tolist() == [0, 0, 0]
    # and the product clamp lands there: shift_round(2**28, 8) = 2**20, while the last
    # non-zero weight is far below it
    assert G.shift_round(np.int64(PRODUCT_CLAMP), 8) == 1 << 20
    assert _zero_from() < 1 << 20


def test_clamped_weight_equals_the_spec_at_every_temperature():
    # For every inv_temperature 1..65535: d at 0, at the clamps (d = 2**28, d * inv = 2**28),
    # at the last non-zero weight and the first zero one, at the top (2**32 - 1), each +-1
    inv = np.arange(1, 1 << 16, dtype=np.int64)
    x0 = _zero_from()
    edges = [np.zeros_like(inv), np.ones_like(inv), np.full_like(inv, PRODUCT_CLAMP), np.full_like(inv, 2**32 - 2),
             -(-PRODUCT_CLAMP // inv), (256 * x0 - 128 + inv - 1) // inv]
    for e in edges:
        for delta in (-1, 0, 1):
            d = np.clip(e + delta, 0, 2**32 - 1)
            assert np.array_equal(exp_weight(d, inv), _spec_weight(d, inv))
    # the top-k search's bound Z = 2**28 >> floor(log2(inv)): d * inv >= 2**28 from there on,
    # so every d >= Z has weight 0 (the weight never increases with d)
    zero_from = PRODUCT_CLAMP >> (np.floor(np.log2(inv)).astype(np.int64))
    assert np.all(zero_from * inv >= PRODUCT_CLAMP) and not _spec_weight(zero_from, inv).any()
    # and a million random pairs, half of them with the product below the clamp
    rng = np.random.default_rng(0)
    inv = rng.integers(1, 1 << 16, 1_000_000)
    below = rng.integers(0, PRODUCT_CLAMP, inv.size) // inv
    d = np.where(rng.random(inv.size) < 0.5, rng.integers(0, 2**32, inv.size), below)
    assert np.array_equal(exp_weight(d, inv), _spec_weight(d, inv))


# -- the algorithm, in plain Python --------------------------------------------------------------

def _logits(rng, n, kind, inv=None):
    """Q16.16 logits of one of several kinds (spread, ties, extremes, clamp edges for ``inv``,
    equal)."""
    if kind == "spread":
        return np.round(rng.normal(size=n) * 4 * 65536).astype(np.int64)
    if kind == "ties":
        return rng.integers(-3, 3, n).astype(np.int64) * 65536
    if kind == "extreme":
        pool = [G.INT32_MIN, G.INT32_MAX, G.INT32_MIN + 1, G.INT32_MAX - 1, 0, -1]
        return np.array([pool[i] if i < len(pool) else int(rng.integers(G.INT32_MIN, G.INT32_MAX))
                         for i in rng.integers(0, len(pool) + 2, n)], np.int64)
    if kind == "edges":    # max - logit around where weights reach 0 and around the clamp
        inv = inv or int(rng.choice(TEMPERATURES))
        x0 = _zero_from()
        top = int(rng.integers(0, 1 << 30))
        cuts = [(256 * x0 - 128) // inv, PRODUCT_CLAMP // inv, PRODUCT_CLAMP, 0, 1]
        return np.array([top - max(0, cuts[i % len(cuts)] + int(rng.integers(-2, 3))) for i in range(n)], np.int64)
    if kind == "equal":
        return np.full(n, int(rng.integers(G.INT32_MIN, G.INT32_MAX)), np.int64)
    raise ValueError(kind)


KINDS = ("spread", "ties", "extreme", "edges", "equal")


def test_choice_model_equals_the_spec():
    # The algorithm (threshold search with its early stop, clamped weights, the draw) over
    # many random choices, before any RTL
    rng = np.random.default_rng(1)
    state = lmstep.rng_seed(7)
    passes = []
    for i in range(4000):
        n = int(rng.integers(1, 40))
        params = SP(int(rng.choice((0,) + TEMPERATURES)) if i % 7 else int(rng.integers(1, 1 << 16)),
                    int(rng.choice([0, 1, 2, 5, n - 1, n, n + 3, int(rng.integers(0, n + 1))])))
        z = _logits(rng, n, KINDS[i % len(KINDS)], params.inv_temperature)
        got_token, got_state, _, p = choice_model(z, params, state)
        token, state = lmstep.choose_token(z, params, state)
        assert (got_token, got_state) == (token, state), (z, params)
        # the search's passes: none without top-k, at most one per two bits of the zero-weight bound
        if params.inv_temperature and 1 < params.top_k < n:
            assert p <= (30 - (params.inv_temperature.bit_length() - 1)) // 2
            passes.append(p)
        else:
            assert p == 0
    # both ends of the search are reached: stopped early on a count of exactly top_k, and run
    # to the bound
    assert min(passes) <= 2 and max(passes) >= 10


# -- RTL: the parts -----------------------------------------------------------------------------

@pytest.mark.parametrize("aw,bw", [(29, 16), (25, 32), (1, 1)])
def test_serial_multiplier_is_the_product(aw, bw):
    rng = np.random.default_rng(aw * bw)
    pairs = [(0, 0), ((1 << aw) - 1, (1 << bw) - 1), ((1 << aw) - 1, 1), (1, (1 << bw) - 1)]
    pairs += [(int(rng.integers(0, 1 << aw)), int(rng.integers(0, 1 << bw))) for _ in range(40)]
    dut = SerialMultiplier(a_width=aw, b_width=bw)
    layout = dut.req.payload.shape()
    got = run_requests(dut, [layout.const({"a": a, "b": b}).as_bits() for a, b in pairs], seed=aw)
    assert got == [a * b for a, b in pairs]


def test_exp_weight_rtl_matches_the_spec_at_the_edges():
    # The weight unit at the same edges as the arithmetic test, for the test temperatures
    x0 = _zero_from()
    rng = np.random.default_rng(2)
    cases = []
    for inv in TEMPERATURES + (2, 32767):
        for e in (0, 1, (256 * x0 - 128) // inv, PRODUCT_CLAMP // inv, PRODUCT_CLAMP, 2**32 - 2):
            cases += [(min(max(e + delta, 0), 2**32 - 1), inv) for delta in (-1, 0, 1)]
        cases += [(int(d), inv) for d in rng.integers(0, (256 * x0) // inv + 2, 4)]
    # where the rounding of t moves the table's entry or the shift (d = x at inv 256), and where
    # the weight steps, with the product's rounding deciding the side (d * 1 = 256 x - 128 or - 129)
    x = np.arange(1, x0, dtype=np.int64)
    t = x * G.LOG2E_Q16
    moved = x[((t + (1 << 15)) >> 24) != (t >> 24)]
    steps = x[G.exp_neg_fix(x) != G.exp_neg_fix(x - 1)]
    cases += [(int(v), 256) for v in rng.choice(moved, 16)]
    cases += [(int(256 * v - r), 1) for v in rng.choice(steps, 16) for r in (128, 129)]
    cases += [(0, 0), (2**32 - 1, 0)]     # inv_temperature 0: exp(0) whatever d
    dut = ExpWeight()
    layout = dut.req.payload.shape()
    got = run_requests(dut, [layout.const({"d": d, "inv_temperature": inv}).as_bits() for d, inv in cases], seed=3)
    assert got == [int(_spec_weight(d, inv)) for d, inv in cases]
    assert len(set(got)) > 20 and 0 in got and 65536 in got    # the edges reach both ends


# -- RTL: the sampler -----------------------------------------------------------------------------

def _run_sampler(dut, jobs, *, seed, stall_prob=0.3, latency=(1, 4)):
    """Simulate ``dut`` on ``jobs``: ``("seed", state)`` loads the generator; ``(logits, params,
    base)`` writes the logits into a fake vector memory at ``base`` (wrapping) and makes one
    choice. The memory answers each peek after ``latency`` (a range) cycles, in order, with any
    number in flight, and refuses peeks at random; ``start`` / ``seed`` come after random gaps, ``token.ready`` stalls at random.
    Returns ``(results, problems)``: per choice ``(token, rng state after it, cycles from the
    start's transfer to the token's)``, and every breach of the contract seen. Each answer is the
    element and the ``dut.lanes`` elements of its memory word (:func:`word_layout`); a peek must
    touch the logits (its element, or in a word-wide pass, some lane of its word)."""
    rng = np.random.default_rng(seed)
    lanes = dut.lanes
    wl = word_layout(lanes)
    gaps = Stalls(rng, stall_prob)
    size = 1 << dut.addr_bits
    mem = rng.integers(G.INT32_MIN, G.INT32_MAX, size, endpoint=True)     # junk around the logits
    window = {"base": 0, "n": 0}
    results, problems = [], []

    async def memory(ctx):
        pending = []        # [address, cycles until its word is offered], in request order
        while True:
            ready = not (stall_prob and rng.random() < stall_prob)
            offer = bool(pending) and pending[0][1] == 0
            ctx.set(dut.peek.ready, ready)
            ctx.set(dut.word.valid, offer)
            if offer:
                a = pending[0][0]
                ctx.set(dut.word.payload, wl.const({"value": int(mem[a]),
                                                    "line": [int(mem[(a & -lanes) + k]) for k in range(lanes)]}))
            else:
                ctx.set(dut.word.payload, wl.const({"value": int(rng.integers(G.INT32_MIN, G.INT32_MAX)),
                                                    "line": [0] * lanes}))
            *_, peek_valid, addr, word_ready = await ctx.tick().sample(dut.peek.valid, dut.peek.payload,
                                                                       dut.word.ready)
            if offer and word_ready:
                pending.pop(0)
            for entry in pending:
                entry[1] = max(0, entry[1] - 1)
            if ready and peek_valid:
                if all((a - window["base"]) % size >= window["n"]
                       for a in ([addr] if addr % lanes else range(addr, addr + lanes))):
                    problems.append(f"peek of {addr} outside the logits")
                pending.append([addr, int(rng.integers(latency[0], latency[1] + 1)) - 1])

    async def driver(ctx):
        layout = dut.start_layout
        for job in jobs:
            if isinstance(job[0], str):
                await stream_put(ctx, dut.seed, job[1], gaps)
                continue
            logits, params, base = job
            for i, v in enumerate(logits):
                mem[(base + i) % size] = v
            window.update(base=base, n=len(logits))
            await stream_put(ctx, dut.start, layout.const({"base": base, "vocab": len(logits), "top_k": params.top_k,
                                                           "inv_temperature": params.inv_temperature}).as_bits(), gaps)
            if not ctx.get(dut.busy) or ctx.get(dut.seed.ready) or ctx.get(dut.start.ready):
                problems.append("not busy after a start")
            cycles = 0
            while True:
                ready = not (stall_prob and rng.random() < stall_prob)
                ctx.set(dut.token.ready, ready)
                *_, valid, token = await ctx.tick().sample(dut.token.valid, dut.token.payload)
                cycles += 1
                if valid and ready:
                    break
            ctx.set(dut.token.ready, 0)
            if ctx.get(dut.busy):
                problems.append("still busy after the token")
            results.append((token, ctx.get(dut.rng), cycles))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(memory, background=True)
    sim.add_testbench(driver)
    sim.run()
    return results, problems


def _xorshift32_before(state):
    """The state whose xorshift32 step gives ``state`` (the step is a bijection)."""
    def undo_left(y, s):
        x = y
        for _ in range(32 // s + 1):
            x = y ^ ((x << s) & 0xFFFFFFFF)
        return x

    def undo_right(y, s):
        x = y
        for _ in range(32 // s + 1):
            x = y ^ (x >> s)
        return x

    before = undo_left(undo_right(undo_left(state, 5), 17), 13)
    assert G.xorshift32(before) == state
    return before


def _expected(jobs):
    """The spec's (token, state) per choice of ``jobs``, from the state after reset."""
    state, out = lmstep.rng_seed(0), []
    for job in jobs:
        if isinstance(job[0], str):
            state = job[1]
        elif len(job[0]) == 0:
            out.append((0, state))           # vocab 0: token 0, nothing drawn
        else:
            token, state = lmstep.choose_token(job[0], job[1], state)
            out.append((token, state))
    return out


def _check(jobs, results, problems):
    assert problems == []
    got = [(token, state) for token, state, _ in results]
    expected = _expected(jobs)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"choice {i}: (token, state) {g}, the spec {e}"
    assert len(got) == len(expected)


def _generation(rng, vocab, bases, count):
    """A generation's worth of jobs: every temperature and top-k of interest, every logit kind,
    seeds in between."""
    jobs = [("seed", lmstep.rng_seed(int(rng.integers(0, 2**32))))]
    top_ks = sorted({0, 1, 2, 5, vocab - 1, vocab, vocab + 4, 65535})
    for i in range(count):
        n = vocab if rng.random() < 0.8 else int(rng.integers(1, vocab + 1))
        if i % 6 == 0:
            params = SP(0, int(rng.choice(top_ks)))
        else:
            params = SP(TEMPERATURES[i % len(TEMPERATURES)], top_ks[i % len(top_ks)])
        z = _logits(rng, n, KINDS[int(rng.integers(len(KINDS)))], params.inv_temperature)
        jobs.append((z, params, int(bases[i % len(bases)])))
        if i % 11 == 10:
            jobs.append(("seed", lmstep.rng_seed(int(rng.integers(0, 2**32)))))
    return jobs


@pytest.mark.parametrize("lanes", [1, 4, 8])
def test_sampler_matches_the_spec_vocab_7(lanes):
    # A generation over 7 logits (some choices over fewer) at bases 0, 3 and 29 (wrapping in a
    # 32-word memory): every token and every generator state equal to the spec's, with random
    # memory latency, refused peeks, gaps before start and stalls on token.ready
    rng = np.random.default_rng(10)
    jobs = _generation(rng, 7, [0, 3, 29], 70)
    # greedy over ties takes the lowest id; a sampled choice after a greedy one continues the state
    # ties at the threshold: of the logits at 1.0, only the first (top-3) or the first two
    # (top-4) are candidates, whatever the draw
    for k in (3, 4, 3, 4, 3, 4):
        jobs.append((np.array([2, 1, 2, 0, 1, 1, 0]) * 65536, SP(256, k), 0))
    # a draw whose target equals a running sum: seven weights of 1.0 and target = 3.0 exactly
    # ((s * 7 * 2**16) >> 32 with s * 7 = 3 * 2**32 + 2): the pick is the one after, id 3
    jobs += [("seed", _xorshift32_before(-(-3 * 2**32 // 7))), (np.zeros(7, np.int64), SP(256, 0), 2)]
    assert _expected(jobs)[-1][0] == 3
    # the search stopping early on a probe equal to two logits' d (d = 1.0, the second pass's
    # first probe counts exactly 3): both are candidates, and a draw of 1 picks the first, id 0
    z = -np.array([2**16, 0, 2**16 + 5, 3 * 2**16, 2**16, 20 * 2**16, 2**21])
    assert choice_model(z, SP(256, 3), _xorshift32_before(1))[::3] == (0, 2)
    jobs += [("seed", _xorshift32_before(1)), (z, SP(256, 3), 6)]
    jobs += [(np.array([5, 9, 9, 1, 9, 0, 2]) * 65536, SP(0, 0), 1), (np.array([9, 9, 9, 9, 9, 9, 9]), SP(0, 3), 0),
             (np.array([3, 7, 7, 7, 2, 7, 1]), SP(256, 2), 5), ([], SP(256, 2), 4),
             (np.array([G.INT32_MIN, G.INT32_MAX, G.INT32_MAX, G.INT32_MIN, 0, G.INT32_MAX, -1]), SP(65535, 2), 30)]
    dut = TokenSampler(max_vocab=8, addr_bits=5, lanes=lanes)
    results, problems = _run_sampler(dut, jobs, seed=11)
    _check(jobs, results, problems)
    assert results[-5][0] == 1 and results[-4][0] == 0


def test_sampler_matches_the_spec_vocab_1_and_2():
    # The smallest vocabularies, in a 2-word memory (base 1 wraps), and vocab 0
    rng = np.random.default_rng(12)
    jobs = [("seed", 0x12345678)]
    for i in range(24):
        n = 1 + i % 2
        jobs.append((_logits(rng, n, KINDS[i % len(KINDS)]), SP(TEMPERATURES[i % 5] * (i % 4 != 0), i % 4), i % 2))
    jobs.append(([], SP(0, 0), 0))
    dut = TokenSampler(max_vocab=2, addr_bits=1)
    results, problems = _run_sampler(dut, jobs, seed=13)
    _check(jobs, results, problems)


@pytest.mark.parametrize("lanes", [1, 4])
def test_sampler_matches_the_spec_vocab_256(lanes):
    # The largest vocabulary, at base 300 of a 512-word memory: greedy over ties, sampling
    # without top-k, top-k 40 over spread logits, top-k vocab - 1 over ties, top-k 5 over the
    # int32 extremes (a full 32-pass search)
    rng = np.random.default_rng(14)
    spread = _logits(rng, 256, "spread")
    ties = _logits(rng, 256, "ties")
    extreme = _logits(rng, 256, "extreme")
    jobs = [("seed", lmstep.rng_seed(2024)), (ties, SP(0, 0), 300), (spread, SP(256, 0), 300),
            (spread, SP(4096, 40), 300), (ties, SP(255, 255), 300), (extreme, SP(65535, 5), 300)]
    dut = TokenSampler(max_vocab=256, addr_bits=9, lanes=lanes)
    results, problems = _run_sampler(dut, jobs, seed=15, stall_prob=0.1, latency=(1, 2))
    _check(jobs, results, problems)


@pytest.mark.parametrize("lanes", [1, 4])
def test_cycle_model_matches_simulation(lanes):
    # With no stalls and a fixed latency, every choice takes exactly choice_model's cycles (at
    # 4 lanes from an unaligned base too: the max and count passes read 3 words for 7 logits)
    rng = np.random.default_rng(16)
    for latency in (1, 3):
        jobs = [("seed", 99)] + [j for j in _generation(rng, 7, [2, 4], 25) if not isinstance(j[0], str)]
        jobs += [([], SP(256, 0), 0), (np.arange(7) * 1000, SP(1, 3), 0)]
        dut = TokenSampler(max_vocab=8, addr_bits=4, lanes=lanes)
        results, problems = _run_sampler(dut, jobs, seed=17, stall_prob=0, latency=(latency, latency))
        _check(jobs, results, problems)
        state, expected = 99, []
        for z, params, base in jobs[1:]:
            _, state, cycles, _ = choice_model(z, params, state, latency=latency, lanes=lanes, base=base)
            expected.append(cycles)
        assert [c for _, _, c in results] == expected
    # the docstring's formulas, by hand: greedy R + L + 3 + T (the max pass pipelined over R reads:
    # V words at one lane, ceil((base % lanes + V) / lanes) at more; T = 1 tree level up to 2
    # lanes, 2 at 4); sampling without top-k over all candidates (R + L + 1 + T) + V (L + 1) + W V
    # + 34 + I (L + 1 + W) + 3, the pick at id I - 1, W = 13 at inv_temperature 256; with top-k,
    # P more passes of R + L + 3 + T
    z = np.zeros(7, np.int64)
    assert choice_model(z, SP(0, 0), 99, latency=3)[2] == 7 + 3 + 4
    assert choice_model(z, SP(0, 0), 99, latency=3, lanes=4, base=2)[2] == 3 + 3 + 5     # T = 2
    assert choice_model(z, SP(0, 0), 99, latency=3, lanes=4, base=1)[2] == 2 + 3 + 5
    assert exp_weight_cycles(256) == 13 and exp_weight_cycles(65535) == 20 and exp_weight_cycles(1) == 5
    token, _, cycles, _ = choice_model(z, SP(256, 0), 99, latency=1)
    assert cycles == (7 + 1 + 2) + 7 * 2 + 13 * 7 + 34 + (token + 1) * (2 + 13) + 3
    z = np.arange(7) * 65536
    token, _, cycles, passes = choice_model(z, SP(256, 3), 99, latency=1)
    # (the candidates are ids 4..6: the pick at id `token` had token - 3 of them up to it)
    assert passes > 0
    assert cycles == (7 + 1 + 2) + 7 * 2 + passes * (7 + 1 + 4) + 13 * 3 + 34 + (token + 1) * 2 + 13 * (token - 3) + 3


@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_sampler_reads_through_the_vector_unit(lanes):
    # Wired to the vector unit's own peek / word ports (wiring.connect: the signatures fit), the
    # logits in its memory: the spec's tokens and states, in exactly choice_model's cycles (the
    # unit's word two cycles after its request; aligned and unaligned bases)
    from amaranth.hdl import Module
    from amaranth.lib import wiring

    from tritium.hw.vector import VectorUnit

    rng = np.random.default_rng(18)
    unit = VectorUnit(vmem_depth=64, cmem_depth=1, lanes=lanes)
    dut = TokenSampler(max_vocab=32, addr_bits=unit.addr_bits, lanes=lanes)
    z = np.round(rng.normal(size=30) * 3 * 65536).astype(np.int64)
    elements = [0] * 20 + [int(v) & 0xFFFFFFFF for v in z] + [0] * 14     # lanes elements a word
    unit.vmem.init = [sum(e << (32 * k) for k, e in enumerate(elements[i:i + lanes])) for i in range(0, 64, lanes)]
    top = Module()
    top.submodules.unit, top.submodules.sampler = unit, dut
    wiring.connect(top, dut.peek, unit.peek)
    wiring.connect(top, unit.word, dut.word)
    jobs = [("seed", 77), (z, SP(256, 0), 20), (z, SP(0, 0), 20), (z[:7], SP(4096, 3), 20), (z, SP(200, 9), 20),
            (z[1:], SP(0, 0), 21), (z[3:20], SP(300, 5), 23)]
    cycles = []

    async def bench(ctx):
        layout = dut.start_layout
        for logits, params, base in jobs[1:]:
            ctx.set(dut.start.valid, 1)
            ctx.set(dut.start.payload.as_value(), layout.const({"base": base, "vocab": len(logits), "top_k": params.top_k,
                                                                "inv_temperature": params.inv_temperature}).as_bits())
            await ctx.tick()
            ctx.set(dut.start.valid, 0)
            ctx.set(dut.token.ready, 1)
            count = 1
            while True:
                *_, valid, token = await ctx.tick().sample(dut.token.valid, dut.token.payload)
                if valid:
                    break
                count += 1
            ctx.set(dut.token.ready, 0)
            cycles.append((token, ctx.get(dut.rng), count))

    async def seed(ctx):
        ctx.set(dut.seed.payload, 77)
        ctx.set(dut.seed.valid, 1)
        await ctx.tick()
        ctx.set(dut.seed.valid, 0)

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(seed)
    sim.add_testbench(bench)
    sim.run()
    _check(jobs, cycles, [])
    state, expected = 77, []
    for logits, params, base in jobs[1:]:
        _, state, count, _ = choice_model(logits, params, state, latency=2, lanes=lanes, base=base)   # registered word
        expected.append(count)
    assert [c for _, _, c in cycles] == expected


def test_seed_taken_with_a_start_and_never_while_busy():
    # A seed offered in the same cycle as a start is used by that choice; while busy, a seed is
    # refused and the state does not change before the draw
    dut = TokenSampler(max_vocab=4, addr_bits=2)
    z = np.array([0, 0, 0, 0])
    seen = []

    async def bench(ctx):
        layout = dut.start_layout
        ctx.set(dut.start.payload.as_value(), layout.const({"base": 0, "vocab": 4, "top_k": 0,
                                                            "inv_temperature": 256}).as_bits())
        for state in (0xDEADBEEF, 0x0BADF00D):
            ctx.set(dut.seed.payload, state)
            ctx.set(dut.seed.valid, 1)
            ctx.set(dut.start.valid, 1)
            await ctx.tick()
            ctx.set(dut.start.valid, 0)
            ctx.set(dut.seed.payload, 12345)       # still offered: refused while busy
            ready = []
            while not ctx.get(dut.token.valid):
                if ctx.get(dut.peek.valid):
                    ctx.set(dut.peek.ready, 1)
                    await ctx.tick()
                    ctx.set(dut.peek.ready, 0)
                    ctx.set(dut.word.valid, 1)
                    ctx.set(dut.word.payload, dut.word_layout.const({"value": int(z[0]), "line": [int(z[0])]}))
                    await ctx.tick().until(dut.word.ready)
                    ctx.set(dut.word.valid, 0)
                else:
                    ready.append(ctx.get(dut.seed.ready))
                    await ctx.tick()
            ctx.set(dut.seed.valid, 0)
            ctx.set(dut.token.ready, 1)
            *_, token = await ctx.tick().sample(dut.token.payload)
            ctx.set(dut.token.ready, 0)
            seen.append((token, ctx.get(dut.rng), any(ready)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    expected = [lmstep.choose_token(z, SP(256, 0), s) + (False,) for s in (0xDEADBEEF, 0x0BADF00D)]
    assert seen == expected


def test_scoreboard_can_fail():
    # The check compares the generator state, not only the tokens: a run whose state is off
    # after one choice (the tokens all right) is refused
    jobs = [("seed", 5), (np.array([0, 0]), SP(0, 0), 0), (np.array([0, 0]), SP(256, 0), 0)]
    results = [(t, s, 0) for t, s in _expected(jobs)]
    _check(jobs, results, [])
    token, state, c = results[1]
    with pytest.raises(AssertionError, match="choice 1"):
        _check(jobs, results[:1] + [(token, G.xorshift32(state), c)], [])
    with pytest.raises(AssertionError):
        _check(jobs, results, ["peek outside the logits"])


@pytest.mark.parametrize("kwargs,message", [
    ({"max_vocab": 1, "addr_bits": 8}, "max_vocab = 1 must be an integer in 2..256"),
    ({"max_vocab": 257, "addr_bits": 8}, "max_vocab = 257"),
    ({"max_vocab": 8.0, "addr_bits": 8}, "max_vocab = 8.0"),
    ({"max_vocab": True, "addr_bits": 8}, "max_vocab = True"),
    ({"max_vocab": 8, "addr_bits": 0}, "addr_bits = 0 must be an integer in 1..16"),
    ({"max_vocab": 8, "addr_bits": 17}, "addr_bits = 17"),
    ({"max_vocab": 8, "addr_bits": "8"}, "addr_bits = '8'"),
    ({"max_vocab": 8, "addr_bits": 8, "lanes": 3}, "lanes = 3 must be 1, 2, 4 or 8"),
    ({"max_vocab": 8, "addr_bits": 8, "lanes": True}, "lanes = True"),
    ({"max_vocab": 8, "addr_bits": 2, "lanes": 8}, "lanes = 8 must be .* at most 2..addr_bits"),
])
def test_constructor_rejects_bad_parameters(kwargs, message):
    with pytest.raises(G.TritiumValueError, match=message):
        TokenSampler(**kwargs)


def test_serial_multiplier_rejects_bad_widths():
    with pytest.raises(G.TritiumValueError, match="a_width = 0"):
        SerialMultiplier(a_width=0, b_width=4)
    with pytest.raises(G.TritiumValueError, match="b_width = 65"):
        SerialMultiplier(a_width=4, b_width=65)
