"""Async stream drivers for the Amaranth simulator, and an engine regression driver.

Every transfer is made with optional random idle cycles (``valid`` low before a put,
``ready`` low before a get), so tests exercise back-pressure on both sides.
"""

import numpy as np

from amaranth.hdl import Value
from amaranth.sim import Simulator

from . import golden

__all__ = ["stream_put", "stream_get", "Stalls", "run_requests", "run_engine_products"]


class Stalls:
    """Random idle-cycle generator: ``0`` with probability ``1 - prob``, else 1..``longest``."""

    def __init__(self, rng, prob=0.3, longest=3):
        self.rng, self.prob, self.longest = rng, prob, longest

    def __call__(self):
        if self.prob and self.rng.random() < self.prob:
            return int(self.rng.integers(1, self.longest + 1))
        return 0


async def stream_put(ctx, stream, payload, stalls=None):
    """Transfer one ``payload`` (bits) on ``stream`` as the source."""
    if stalls is not None:
        for _ in range(stalls()):
            await ctx.tick()
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload if isinstance(stream.payload, Value) else stream.payload.as_value(), payload)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, stalls=None):
    """Transfer one payload from ``stream`` as the sink; returns its bits."""
    if stalls is not None:
        for _ in range(stalls()):
            await ctx.tick()
    ctx.set(stream.ready, 1)
    value = stream.payload if isinstance(stream.payload, Value) else stream.payload.as_value()
    payload, = await ctx.tick().sample(value).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload


def run_requests(dut, requests, *, seed, stall_prob=0.3):
    """Each of ``requests`` into ``dut.req`` and its answer out of ``dut.res``, one at a time,
    both streams with random stalls; returns the answers (a request/response block: a divider,
    a root, a multiplier)."""
    stalls = Stalls(np.random.default_rng(seed), stall_prob)
    out = []

    async def bench(ctx):
        for req in requests:
            await stream_put(ctx, dut.req, req, stalls)
            out.append(await stream_get(ctx, dut.res, stalls))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return out


def run_engine_products(engine, jobs, *, seed, stall_prob=0.3, vcd=None):
    """Simulate ``engine`` (a :class:`TernaryMatVec`) on ``jobs`` and return what it produced.

    ``jobs`` is a list of ``(W, [x, ...])``: each matrix is written at base 0, then each
    vector is multiplied by it. Returns a list of ``(result values, last flag of each tile)``
    per product, in order, for the caller to compare with :func:`golden.matvec`.
    """
    p, lay = engine.params, engine.layouts
    rng = np.random.default_rng(seed)
    in_stalls = Stalls(rng, stall_prob)
    out_stalls = Stalls(np.random.default_rng(seed + 1), stall_prob)
    expected_rows = [w.shape[0] for w, xs in jobs for _ in xs]
    for w, xs in jobs:  # reject what cannot fit before simulating anything
        p.check_shape(*np.shape(w))
    produced = []

    async def feeder(ctx):
        for w, xs in jobs:
            m, k = w.shape
            for addr, word in enumerate(golden.weight_words(w, lanes=p.lanes, trits=p.trits, packing=p.packing)):
                await stream_put(ctx, engine.wr, lay.weight_write_bits(addr=addr, word=word), in_stalls)
            for x in xs:
                words = golden.activation_words(x, trits=p.trits)
                await stream_put(ctx, engine.cmd, lay.command_bits(base=0, rows=m, chunks=len(words)), in_stalls)
                for word in words:
                    await stream_put(ctx, engine.act, word, in_stalls)

    async def consumer(ctx):
        for rows in expected_rows:
            values, lasts = [], []
            while len(values) < rows:
                tile, last = lay.decode_result(await stream_get(ctx, engine.res, out_stalls))
                values.extend(tile)
                lasts.append(last)
            produced.append((values, lasts))

    sim = Simulator(engine)
    sim.add_clock(1e-6)
    sim.add_testbench(feeder)
    sim.add_testbench(consumer)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return produced


def run_device_session(device, events, *, seed, stall_prob=0.3):
    """Drive :class:`LinkDevice` with ``events`` and return every reply byte it sent.

    ``events`` is a list of ``bytes`` (sent on ``rx``, with random gaps) and ``("idle", cycles)``
    (no input for that many cycles). The simulation runs until the device has been quiet for
    a while after the last event.
    """
    rng = np.random.default_rng(seed)
    in_stalls = Stalls(rng, stall_prob)
    out_stalls = Stalls(np.random.default_rng(seed + 1), stall_prob)
    replies = bytearray()
    done = [False]

    async def feeder(ctx):
        for ev in events:
            if isinstance(ev, tuple):
                await ctx.tick().repeat(ev[1])
                continue
            for b in ev:
                await stream_put(ctx, device.rx, b, in_stalls)
        await ctx.tick().repeat(200)
        while ctx.get(device.busy):
            await ctx.tick()
        await ctx.tick().repeat(50)
        done[0] = True

    async def sink(ctx):
        while not done[0]:
            for _ in range(out_stalls()):
                await ctx.tick()
            ctx.set(device.tx.ready, 1)
            *_, valid, payload = await ctx.tick().sample(device.tx.valid, device.tx.payload)
            ctx.set(device.tx.ready, 0)
            if valid:
                replies.append(payload)

    sim = Simulator(device)
    sim.add_clock(1e-6)
    sim.add_testbench(feeder)
    sim.add_testbench(sink, background=True)
    sim.run()
    return bytes(replies)


def measure_product_cycles(engine, m, k, *, products=2, weights=None):
    """Back-to-back ``m x k`` products on ``engine`` with activations offered every cycle and
    results always taken; returns the command-to-command periods in cycles (``products - 1`` of
    them). The weight memory's contents do not affect timing, so ``weights`` (a matrix to load
    first) is optional."""
    p, lay = engine.params, engine.layouts
    p.check_shape(m, k)  # a command that does not fit would be truncated and never complete
    chunks = -(-k // p.trits)
    accepted = []

    async def tb(ctx):
        if weights is not None:
            for addr, word in enumerate(golden.weight_words(weights, lanes=p.lanes, trits=p.trits,
                                                            packing=p.packing)):
                await stream_put(ctx, engine.wr, lay.weight_write_bits(addr=addr, word=word))
        ctx.set(engine.res.ready, 1)
        cmd = lay.command_bits(base=0, rows=m, chunks=chunks)
        cycle = 0
        for _ in range(products):
            todo = [(engine.cmd, cmd)] + [(engine.act, 0)] * chunks
            while todo:
                port, bits = todo[0]
                ctx.set(port.valid, 1)
                ctx.set(port.payload.as_value(), bits)
                if ctx.get(port.ready):  # the transfer happens at this cycle's edge
                    if port is engine.cmd:
                        accepted.append(cycle)
                    todo.pop(0)
                await ctx.tick()
                ctx.set(port.valid, 0)
                cycle += 1

    sim = Simulator(engine)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return [b - a for a, b in zip(accepted, accepted[1:])]
