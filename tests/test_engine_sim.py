"""The engine in the Amaranth simulator, against the golden model, with random stalls."""

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module

from tritium.hw.engine import TernaryMatVec, TritDot, product_cycles
from tritium.hw.layouts import EngineLayouts, Trit
from tritium.hw.params import CONFIGS, EngineParams
from tritium.sim import golden
from tritium.sim.amaranth_tb import (Stalls, measure_product_cycles, run_engine_products, stream_get,
                                     stream_put)
from tritium.sim.golden import TritiumValueError

SIM_CONFIGS = ["tiny", "odd", "default", "wide", "base3", "default-reg"]


def check_products(p, jobs, seed, stall_prob=0.3):
    print(f"replay: config {p.as_dict()} seed {seed}")
    produced = run_engine_products(TernaryMatVec(params=p), jobs, seed=seed, stall_prob=stall_prob)
    expected = [golden.matvec(w, x) for w, xs in jobs for x in xs]
    assert len(produced) == len(expected)
    for (values, lasts), exp in zip(produced, expected):
        # exact equality with the golden product; `last` only on the final tile
        assert values == exp.tolist()
        tiles = -(-len(exp) // p.lanes)
        assert lasts == [False] * (tiles - 1) + [True]


def test_spram_weight_memory_model(random_job):
    # SPRAM-backed weights (behavioural SB_SPRAM256KA model, 3 x 16-bit banks for a 48-bit word)
    p = EngineParams(lanes=4, trits=6, packing="trit2", max_k=60, weight_depth=64, memory="spram")
    assert p.spram_count == 3
    rng = np.random.default_rng(21)
    jobs = [random_job(rng, m, k) for m, k in [(9, 60), (1, 1), (16, 13)]]
    check_products(p, jobs, seed=21)


@pytest.mark.parametrize("name", SIM_CONFIGS)
@pytest.mark.parametrize("stall_prob", [0.0, 0.4])
def test_random_products(name, stall_prob, random_shape, random_job):
    p = CONFIGS[name]
    seed = 1000 + SIM_CONFIGS.index(name) * 10 + int(stall_prob * 10)
    rng = np.random.default_rng(seed)
    jobs = [random_job(rng, *random_shape(rng, p)) for _ in range(4)]
    check_products(p, jobs, seed, stall_prob)


@pytest.mark.parametrize("name", SIM_CONFIGS)
def test_edge_cases(name):
    p = CONFIGS[name]
    k = min(p.max_k, 40, p.weight_depth // 2 * p.trits)
    m = max(2, min(2 * p.lanes + 1, p.weight_depth // -(-k // p.trits) * p.lanes))
    jobs = [
        # 1 x 1
        (np.array([[-1]]), [np.array([-128]), np.array([127])]),
        # worst-case accumulators: all activations -128, rows all -1 / all +1
        (np.stack([np.full(k, -1), np.full(k, 1)] * ((m + 1) // 2))[:max(m, 2)],
         [np.full(k, -128), np.full(k, 127)]),
        # all-zero weights
        (np.zeros((m, k), int), [np.full(k, -128)]),
    ]
    check_products(p, jobs, seed=7)


@pytest.mark.parametrize("name", ["tiny", "odd", "base3"])
def test_largest_product_that_fits(name):
    # K = max_k and as many rows as the weight memory holds
    p = CONFIGS[name]
    k = p.max_k
    m = p.weight_depth // -(-k // p.trits) * p.lanes
    p.check_shape(m, k)
    rng = np.random.default_rng(11)
    w = rng.integers(-1, 2, (m, k))
    w[0] = -1
    check_products(p, [(w, [np.full(k, -128), rng.integers(-128, 128, k)])], seed=11, stall_prob=0.2)


def test_tritdot_matches_golden_exhaustively_for_one_trit(simulate):
    # every code (including the invalid 3, which acts as zero) against every int8
    dot = TritDot(trits=1, packing="trit2")
    seen = []

    async def tb(ctx):
        for code in range(4):
            for x in range(-128, 128):
                ctx.set(dot.w.as_value(), code)
                ctx.set(dot.x.as_value(), x & 0xFF)
                await ctx.tick()
                await ctx.tick()
                seen.append((code, x, ctx.get(dot.partial) + ctx.get(dot.carry)))

    simulate(dot, tb)
    assert len(seen) == 4 * 256
    for code, x, got in seen:
        w = code - 1 if code < 3 else 0
        assert got == w * x


def test_layouts_match_golden_packer():
    # the gateware's layout objects and the golden packer produce the same bits
    rng = np.random.default_rng(5)
    for p in CONFIGS.values():
        lay = EngineLayouts(p)
        w = rng.integers(-1, 2, (p.lanes, p.trits))
        (golden_word,) = golden.weight_words(w, lanes=p.lanes, trits=p.trits, packing=p.packing)
        if p.packing.value == "trit2":
            const = lay.weight_word.const([[Trit(int(v) + 1) for v in row] for row in w])
        else:
            const = lay.weight_word.const([golden.pack_base3(row).tolist() for row in w])
        assert const.as_bits() == golden_word
        x = rng.integers(-128, 128, p.trits)
        assert lay.activation_bits(x) == golden.activation_words(x, trits=p.trits)[0]


def test_reset_in_the_middle_of_a_product(simulate):
    p = CONFIGS["odd"]
    engine = TernaryMatVec(params=p)
    lay = engine.layouts
    rng = np.random.default_rng(3)
    w = rng.integers(-1, 2, (9, 30))
    x = rng.integers(-128, 128, 30)
    words = golden.weight_words(w, lanes=p.lanes, trits=p.trits, packing=p.packing)
    xw = golden.activation_words(x, trits=p.trits)
    results = []

    async def tb(ctx):
        for addr, word in enumerate(words):
            await stream_put(ctx, engine.wr, lay.weight_write_bits(addr=addr, word=word))
        # start a product, then reset while it computes
        await stream_put(ctx, engine.cmd, lay.command_bits(base=0, rows=9, chunks=len(xw)))
        for word in xw:
            await stream_put(ctx, engine.act, word)
        await ctx.tick().repeat(4)
        assert ctx.get(engine.busy)
        ctx.set(cd.rst, 1)
        await ctx.tick()
        ctx.set(cd.rst, 0)
        await ctx.tick()
        # after reset the engine is idle, has no result pending, and the weights are still loaded
        assert not ctx.get(engine.busy) and not ctx.get(engine.res.valid)
        await stream_put(ctx, engine.cmd, lay.command_bits(base=0, rows=9, chunks=len(xw)))
        for word in xw:
            await stream_put(ctx, engine.act, word)
        while len(results) < 9:
            results.extend(lay.decode_result(await stream_get(ctx, engine.res, Stalls(rng, 0.3)))[0])

    top = Module()
    top.domains.sync = cd = ClockDomain()
    top.submodules.engine = engine
    simulate(top, tb)
    assert results == golden.matvec(w, x).tolist()


def test_empty_command_is_dropped(simulate):
    p = CONFIGS["tiny"]
    engine = TernaryMatVec(params=p)
    lay = engine.layouts
    w = np.array([[1], [-1], [0]])
    results = []

    async def tb(ctx):
        for addr, word in enumerate(golden.weight_words(w, lanes=p.lanes, trits=p.trits, packing=p.packing)):
            await stream_put(ctx, engine.wr, lay.weight_write_bits(addr=addr, word=word))
        # rows = 0 and chunks = 0 commands are consumed without starting a product
        await stream_put(ctx, engine.cmd, lay.command_bits(base=0, rows=0, chunks=1))
        await stream_put(ctx, engine.cmd, lay.command_bits(base=0, rows=1, chunks=0))
        await ctx.tick()
        assert not ctx.get(engine.busy) and ctx.get(engine.cmd.ready)
        # with the result stream ready, nothing is offered on it for a while
        ctx.set(engine.res.ready, 1)
        await ctx.tick().repeat(40)
        ctx.set(engine.res.ready, 0)
        # and a real command after them still gives exactly its own rows
        await stream_put(ctx, engine.cmd, lay.command_bits(base=0, rows=3, chunks=1))
        await stream_put(ctx, engine.act, lay.activation_bits(np.array([-7])))
        while len(results) < 3:
            results.extend(lay.decode_result(await stream_get(ctx, engine.res))[0])
        await ctx.tick().repeat(20)

    trace = simulate(engine, tb, watch={"valid": engine.res.valid, "ready": engine.res.ready}, max_cycles=2000)
    # the empty commands produced no result: `res.valid` stayed low through the 40 cycles of
    # `ready` that followed them, up to the real product's first tile
    first = trace["valid"].index(1)
    assert sum(trace["ready"][:first]) >= 40
    # the real product: three rows, one tile each, taken once; nothing offered after the last
    transfers = [v & r for v, r in zip(trace["valid"], trace["ready"])]
    assert sum(transfers) == 3
    last = len(transfers) - 1 - transfers[::-1].index(1)
    assert not any(trace["valid"][last + 1:])
    assert results == [-7, 7, 0]


@pytest.mark.parametrize("name", ["tiny", "odd", "default-reg"])
def test_result_stream_rules(name, simulate):
    # each tile is offered once and held (valid and payload unchanged) until it is taken; after the
    # product's last tile `res.valid` stays low, however long the consumer keeps `ready` high
    p = CONFIGS[name]
    engine = TernaryMatVec(params=p)
    lay = engine.layouts
    rng = np.random.default_rng(31)
    m, k = 2 * p.lanes + 1, 2 * p.trits + 1
    w, x = rng.integers(-1, 2, (m, k)), rng.integers(-128, 128, k)
    tiles = -(-m // p.lanes)
    results = []

    async def tb(ctx):
        for addr, word in enumerate(golden.weight_words(w, lanes=p.lanes, trits=p.trits, packing=p.packing)):
            await stream_put(ctx, engine.wr, lay.weight_write_bits(addr=addr, word=word))
        words = golden.activation_words(x, trits=p.trits)
        await stream_put(ctx, engine.cmd, lay.command_bits(base=0, rows=m, chunks=len(words)))
        for word in words:
            await stream_put(ctx, engine.act, word)
        # a slow consumer: it lets each offered tile wait a few cycles (ready low) before taking it
        for _ in range(tiles):
            await ctx.tick().until(engine.res.valid)
            await ctx.tick().repeat(int(rng.integers(1, 6)))
            results.extend(lay.decode_result(await stream_get(ctx, engine.res))[0])
        ctx.set(engine.res.ready, 1)
        await ctx.tick().repeat(60)

    trace = simulate(engine, tb, watch={"valid": engine.res.valid, "ready": engine.res.ready,
                                        "payload": engine.res.payload.as_value()}, max_cycles=5000)
    valid, ready, payload = trace["valid"], trace["ready"], trace["payload"]
    # the values are the golden product
    assert results == golden.matvec(w, x).tolist()
    # a tile offered but not taken is still offered, unchanged, the next cycle
    held = [i for i in range(len(valid) - 1) if valid[i] and not ready[i]]
    assert len(held) >= tiles, "the consumer did not stall every offered tile"
    assert all(valid[i + 1] and payload[i + 1] == payload[i] for i in held)
    # exactly one transfer per tile, and nothing offered after the last one
    transfers = [i for i in range(len(valid)) if valid[i] and ready[i]]
    assert len(transfers) == tiles
    assert not any(valid[transfers[-1] + 1:])
    assert len(valid) - transfers[-1] > 50


@pytest.mark.parametrize("kwargs, msg", [
    (dict(lanes=0, trits=4), r"lanes = 0 must be a positive integer"),
    (dict(lanes=4, trits=4, packing="base3"), r"trits per lane = 4 must be a multiple of 5"),
    (dict(lanes=4, trits=4, packing="trit3"), r"packing = 'trit3' is not one of"),
    (dict(lanes=16, trits=4, memory="spram", weight_depth=1024), r"needs 8 SPRAMs; the UP5K has 4"),
    (dict(lanes=4, trits=4, memory="dram"), r"memory = 'dram' is not one of"),
    (dict(lanes=4, trits=4, max_k=True), r"max_k = True must be a positive integer"),
])
def test_params_validation(kwargs, msg):
    with pytest.raises(TritiumValueError, match=msg):
        EngineParams(**kwargs)


def test_params_are_keyword_only_and_capacity_checked():
    with pytest.raises(TypeError):
        EngineParams(8, 4)
    p = CONFIGS["default"]
    with pytest.raises(TritiumValueError, match="K = 1025 exceeds the engine's max_k = 1024"):
        p.check_shape(4, 1025)
    with pytest.raises(TritiumValueError, match="a 64x1024 matrix needs 2048 weight words; from base 0 that passes"):
        p.check_shape(64, 1024)
    with pytest.raises(TypeError, match="params must be an EngineParams"):
        TernaryMatVec(params={"lanes": 8})


@pytest.mark.parametrize("name, m, k", [("default", 20, 100), ("default", 8, 4), ("odd", 7, 9),
                                        ("tiny", 3, 1), ("wide", 33, 64), ("base3", 9, 45),
                                        ("default-reg", 20, 100), ("default-reg", 8, 4)])
def test_cycle_model_matches_simulation(name, m, k):
    # back-to-back products with no stalls: the command-to-command period equals product_cycles()
    p = CONFIGS[name]
    w = np.random.default_rng(9).integers(-1, 2, (m, k))
    periods = measure_product_cycles(TernaryMatVec(params=p), m, k, products=3, weights=w)
    assert periods == [product_cycles(p, m, k)] * 2
