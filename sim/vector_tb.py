"""Amaranth-simulator driver for the vector unit: runs a vector program on the RTL.

The testbench plays the unit's neighbours: it loads the constant memory, feeds ``embed`` rows
and ``matvec`` products on ``ext`` (computing each product exactly from the activations the unit
offered on ``xq``), and inserts random idle cycles on both streams and before each
instruction, which it otherwise offers as soon as the one before is taken (the unit takes an
elementwise one while the one before drains when that is safe). What it returns is read
straight out of the unit's vector memory, for exact comparison with
:func:`tritium.sim.lmstep.execute`.
"""

import numpy as np

from amaranth.sim import Simulator

from ..hw.vector import encode
from .amaranth_tb import Stalls, stream_get, stream_put

__all__ = ["run_vector_program"]


def run_vector_program(dut, cmem, steps, *, seed=0, stall_prob=0.3, read=(), max_cycles=5_000_000):
    """Run ``steps`` on ``dut`` (a :class:`~tritium.hw.vector.VectorUnit`) after loading ``cmem``.

    ``steps`` is a list of ``(program, ext_source)``: ``program`` a list of
    :class:`~tritium.sim.lmstep.Op`; ``ext_source(op, xq)`` returns the int values an ``embed``
    or ``matvec`` op receives (``xq``: the activations of the latest ``quant``). Returns
    ``(snapshots, cycles)``: after each step, ``{name: values}`` for every ``(name, address,
    length)`` in ``read``; and the clock cycles each step took.
    """
    rng = np.random.default_rng(seed)
    stalls = Stalls(rng, stall_prob)
    snapshots, cycles = [], []

    ext = dut.ext.payload.shape()

    async def bench(ctx):
        for addr, value in enumerate(cmem):
            await stream_put(ctx, dut.cload, dut.cload.payload.shape().const({"addr": addr, "data": int(value)}).as_bits())
        for program, ext_source in steps:
            start = clock[0]
            xq = None
            for op in program:   # each offered as soon as the last is taken (or after idle cycles)
                for _ in range(stalls()):
                    await ctx.tick()
                await stream_put(ctx, dut.instr, encode(op, dut.layout))
                if op.code in ("embed", "matvec"):   # `lanes` values a transfer, the last perhaps fewer
                    vals = [int(v) for v in ext_source(op, xq)]
                    for i in range(0, len(vals), dut.lanes):
                        for _ in range(stalls()):
                            await ctx.tick()
                        group = vals[i:i + dut.lanes]
                        t = ext.const({"values": group + [0] * (dut.lanes - len(group)), "count": len(group)})
                        await stream_put(ctx, dut.ext, t.as_bits())
                elif op.code == "quant":
                    got, layout = [], dut.xq.payload.shape()
                    while len(got) < op.n:
                        for _ in range(stalls()):
                            await ctx.tick()
                        t = layout.from_bits(await stream_get(ctx, dut.xq))
                        got += [t.values[k] for k in range(t.count)]
                    assert len(got) == op.n, f"quant gave {len(got)} activations for n = {op.n}"
                    xq = np.array(got, np.int64)
            while ctx.get(dut.busy):
                await ctx.tick()
            cycles.append(clock[0] - start)
            snap = {}
            for name, addr, n in read:   # through the unit's own peek port
                raw = []
                for i in range(n):
                    await stream_put(ctx, dut.peek, addr + i)
                    word = await stream_get(ctx, dut.word) & 0xFFFFFFFF     # the payload's `value`
                    raw.append(word - (1 << 32) if word >= 1 << 31 else word)
                snap[name] = np.array(raw, np.int64)
            snapshots.append(snap)

    clock = [0]

    async def counter(ctx):
        async for _ in ctx.tick():
            clock[0] += 1
            if len(snapshots) == len(steps):
                break

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_process(counter)
    sim.add_testbench(bench)
    while len(snapshots) < len(steps) and clock[0] < max_cycles:
        sim.advance()
    if len(snapshots) != len(steps):
        raise RuntimeError(f"the vector program did not finish within {max_cycles} cycles")
    return snapshots, cycles
