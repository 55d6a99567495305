"""cocotb testbench for the engine's generated Verilog (run by :mod:`tritium.sim.runner`).

Structure (driver -> monitor -> model -> scoreboard): one clocked loop drives the input
streams with random idle cycles and the result stream with random back-pressure; a
monitor records every transfer that actually happens on each input stream and feeds the
golden model with what it saw (so a driver bug is caught too); the scoreboard compares
every result transfer with the model, exactly.

Configuration comes from the environment: ``TRITIUM_PARAMS`` (JSON of
:meth:`EngineParams.as_dict`), ``TRITIUM_PRODUCTS`` (random products to check),
``TRITIUM_STATS`` (a file to write counts to). The random seed is cocotb's
``RANDOM_SEED``, printed at start so a failure can be replayed.
"""

import collections
import json
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

from tritium.hw.layouts import EngineLayouts
from tritium.hw.params import EngineParams
from tritium.sim import golden


class EngineBench:
    """Drives, monitors and scores one engine instance."""

    def __init__(self, dut, params, rng, stall_in=0.3, stall_out=0.3):
        self.dut, self.p, self.rng = dut, params, rng
        self.lay = EngineLayouts(params)
        self.stall_in, self.stall_out = stall_in, stall_out
        self.todo = collections.deque()        # (port, payload bits) in order
        self.shadow = {}                       # model: weight memory as seen by the monitor
        self.pending = None                    # model: command being collected
        self.expected = collections.deque()    # model: (tile values, last) awaiting results
        self.products = 0
        self.results = 0
        self.errors = []
        self.ports = {name: getattr(dut, f"{name}__valid") for name in ("wr", "cmd", "act")}

    # -- stimulus --------------------------------------------------------------------------
    def load(self, w, base):
        p = self.p
        p.check_shape(*w.shape, base=base)
        for i, word in enumerate(golden.weight_words(w, lanes=p.lanes, trits=p.trits, packing=p.packing)):
            self.todo.append(("wr", self.lay.weight_write_bits(addr=base + i, word=word)))

    def product(self, base, m, x):
        words = golden.activation_words(x, trits=self.p.trits)
        self.todo.append(("cmd", self.lay.command_bits(base=base, rows=m, chunks=len(words))))
        self.todo.extend(("act", wd) for wd in words)

    # -- model, fed by the input monitor ---------------------------------------------------
    def observed(self, port, bits):
        p = self.p
        if port == "wr":
            t = self.lay.weight_write.from_bits(bits)
            self.shadow[int(t.addr)] = t.data.as_bits()
        elif port == "cmd":
            c = self.lay.command.from_bits(bits)
            if int(c.rows) and int(c.chunks):
                self.pending = (int(c.base), int(c.rows), int(c.chunks), [])
        else:
            base, m, chunks, xs = self.pending
            xs.append(bits)
            if len(xs) == chunks:
                k = chunks * p.trits
                words = [self.shadow.get(base + i, 0) for i in range(p.words_for(m, k))]
                w = golden.weights_from_words(words, m, k, lanes=p.lanes, trits=p.trits, packing=p.packing)
                x = golden.activations_from_words(xs, k, trits=p.trits)
                y = golden.matvec(w, x)
                tiles = [y[i:i + p.lanes].tolist() for i in range(0, m, p.lanes)]
                self.expected.extend((t, i == len(tiles) - 1) for i, t in enumerate(tiles))
                self.pending = None
                self.products += 1

    def scored(self, bits):
        got = self.lay.decode_result(bits)
        if not self.expected:
            self.errors.append(f"unexpected result {got}")
            return
        exp = self.expected.popleft()
        self.results += 1
        if got != exp:
            self.errors.append(f"result tile {self.results}: got {got}, expected {exp}")

    # -- the clocked loop ------------------------------------------------------------------
    async def run(self, max_cycles=10_000_000, until_empty=True):
        dut = self.dut
        idle_in = 0
        for _ in range(max_cycles):
            await FallingEdge(dut.clk)
            for v in self.ports.values():
                v.value = 0
            head = None
            if self.todo:
                if idle_in == 0 and self.rng.random() < self.stall_in:
                    idle_in = int(self.rng.integers(1, 4))
                if idle_in:
                    idle_in -= 1
                else:
                    head = self.todo[0]
                    self.ports[head[0]].value = 1
                    getattr(dut, f"{head[0]}__payload").value = head[1]
            dut.res__ready.value = int(self.rng.random() >= self.stall_out)
            await ReadOnly()
            if head is not None and getattr(dut, f"{head[0]}__ready").value:
                self.todo.popleft()
                self.observed(*head)
            if dut.res__valid.value and dut.res__ready.value:
                self.scored(int(dut.res__payload.value))
            if self.errors:
                return
            if until_empty and not self.todo and not self.expected and self.pending is None \
                    and not dut.busy.value:
                return
        self.errors.append(f"timed out after {max_cycles} cycles with {len(self.expected)} results missing")


def _setup(dut):
    params = EngineParams.from_dict(json.loads(os.environ["TRITIUM_PARAMS"]))
    rng = np.random.default_rng(cocotb.RANDOM_SEED)
    dut._log.info(f"engine {params.describe()}; replay with RANDOM_SEED={cocotb.RANDOM_SEED}")
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    return params, rng


async def _reset(dut, cycles=2):
    await FallingEdge(dut.clk)  # leave any ReadOnly phase before driving
    dut.rst.value = 1
    for name in ("wr", "cmd", "act"):
        getattr(dut, f"{name}__valid").value = 0
    dut.res__ready.value = 0
    for _ in range(cycles):
        await FallingEdge(dut.clk)
    dut.rst.value = 0


def _write_stats(bench, name):
    path = os.environ.get("TRITIUM_STATS")
    if not path:
        return
    stats = {}
    if os.path.exists(path):
        with open(path) as f:
            stats = json.load(f)
    stats[name] = {"products": bench.products, "results": bench.results}
    with open(path, "w") as f:
        json.dump(stats, f)


def _random_shape(rng, p):
    # mostly small shapes (many products), sometimes up to the full K; never multiples on purpose
    kmax = p.max_k if rng.random() < 0.1 else min(p.max_k, 6 * p.trits + 3)
    m = int(rng.integers(1, 3 * p.lanes + 3))
    k = int(rng.integers(1, kmax + 1))
    while p.words_for(m, k) > p.weight_depth // 2:
        m, k = max(1, m // 2), max(1, k // 2)
    return m, k


@cocotb.test()
async def random_products(dut):
    """Random matrices of many shapes at two weight slots, random vectors, stalls on both sides."""
    p, rng = _setup(dut)
    await _reset(dut)
    target = int(os.environ.get("TRITIUM_PRODUCTS", "500"))
    bench = EngineBench(dut, p, rng)
    half = p.weight_depth // 2
    while bench.products < target:
        # two resident matrices, then interleaved products on both
        mats = []
        for base in (0, half):
            m, k = _random_shape(rng, p)
            w = rng.integers(-1, 2, (m, k))
            bench.load(w, base)
            mats.append((base, m, k))
        for _ in range(min(16, target - bench.products)):
            base, m, k = mats[int(rng.integers(0, 2))]
            bench.product(base, m, rng.integers(-128, 128, k))
        bench.stall_in, bench.stall_out = (0.0, 0.0) if rng.random() < 0.3 else (0.3, 0.3)
        await bench.run()
        assert not bench.errors, bench.errors[:5]
    _write_stats(bench, "random_products")
    dut._log.info(f"{bench.products} products, {bench.results} results checked")


@cocotb.test()
async def extremes(dut):
    """1x1, worst-case accumulators at the largest K, all-zero weights, the largest M that fits."""
    p, rng = _setup(dut)
    await _reset(dut)
    bench = EngineBench(dut, p, rng)
    k = p.max_k
    chunks = -(-k // p.trits)
    m_max = p.weight_depth // chunks * p.lanes
    cases = [
        np.array([[1]]),
        np.stack([np.full(k, -1), np.full(k, 1)] * (p.lanes + 1))[:max(1, min(m_max, 2 * p.lanes + 1))],
        np.zeros((min(m_max, p.lanes + 1), k), int),
        rng.integers(-1, 2, (m_max, k)),
    ]
    for w in cases:
        bench.load(w, 0)
        xk = w.shape[1]
        for x in (np.full(xk, -128), np.full(xk, 127), rng.integers(-128, 128, xk)):
            bench.product(0, w.shape[0], x)
        await bench.run()
        assert not bench.errors, bench.errors[:5]
    _write_stats(bench, "extremes")


@cocotb.test()
async def reset_mid_product(dut):
    """Reset while computing and while results wait; the engine recovers with weights intact."""
    p, rng = _setup(dut)
    await _reset(dut)
    bench = EngineBench(dut, p, rng, stall_in=0.0, stall_out=0.0)
    m, k = min(2 * p.lanes + 1, p.max_rows), min(p.max_k, 4 * p.trits + 1)
    while p.words_for(m, k) > p.weight_depth:
        m = max(1, m // 2)
    w = rng.integers(-1, 2, (m, k))
    bench.load(w, 0)
    await bench.run()
    for hold_cycles in (3, 12, 40):
        # start a product with the result stream stalled, reset it part-way through
        bench.product(0, m, rng.integers(-128, 128, k))
        bench.stall_out = 1.0
        await bench.run(max_cycles=len(bench.todo) + hold_cycles, until_empty=False)
        bench.errors.clear()
        await _reset(dut)
        bench.todo.clear()
        bench.expected.clear()
        bench.pending = None
        await FallingEdge(dut.clk)
        assert not dut.busy.value and not dut.res__valid.value, "engine not idle after reset"
        # a fresh product on the same resident weights is exact
        bench.stall_out = 0.3
        bench.product(0, m, rng.integers(-128, 128, k))
        await bench.run()
        assert not bench.errors, bench.errors[:5]
    _write_stats(bench, "reset_mid_product")
