"""Formal property harnesses for the engine, proved with SymbiYosys (:mod:`tritium.sim.formal`).

Every top-level input of a harness is unconstrained: the solver picks any value every cycle.
"""

from amaranth.hdl import Assert, Assume, Cover, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, flipped

from .engine import LaneAccumulator, TernaryMatVec, TritDot
from .layouts import EngineLayouts
from .params import EngineParams, rejected

__all__ = ["AccumulatorNoOverflow", "ResultStreamRules"]


class AccumulatorNoOverflow(wiring.Component):
    """One lane (its :class:`TritDot` and :class:`LaneAccumulator`) fed with arbitrary weights and
    activations every cycle and arbitrary ``en``/``last``, under the single assumption that a
    tile has at most ``params.max_chunks`` chunks.

    Proved by k-induction: ``|partial + carry| <= 128 * trits`` always; the accumulator register
    equals the exact sum (kept in a register two bits wider), bounded by ``128 * trits * n`` where
    ``n`` counts the chunks it holds; and the tile sum handed to the output bank equals the exact
    sum too. So the ``params.acc_width``-bit accumulator never wraps for any ``K <= params.max_k``.

    ``acc_width`` overrides the accumulator width (default ``params.acc_width``), so a test can
    show the proof fails for a width one bit short.
    """

    def __init__(self, *, params, acc_width=None):
        if not isinstance(params, EngineParams):
            raise rejected(self, TypeError(f"params must be an EngineParams, not {params!r}"))
        self._params = params
        self._acc_width = params.acc_width if acc_width is None else acc_width
        lay = EngineLayouts(params)
        super().__init__({"w": In(lay.lane_weights), "x": In(lay.activation), "en": In(1), "last": In(1)})

    def elaborate(self, platform):
        m = Module()
        p = self._params
        m.submodules.dot = dot = TritDot(trits=p.trits, packing=p.packing)
        m.submodules.acc = acc = LaneAccumulator(partial_width=p.partial_width, width=self._acc_width)
        m.d.comb += [dot.w.eq(self.w), dot.x.eq(self.x), acc.partial.eq(dot.partial), acc.carry.eq(dot.carry),
                     acc.en.eq(self.en), acc.last.eq(self.last)]
        # n: chunks held in `acc` since the last clear; exact: the same sum in a register that cannot wrap
        step = 128 * p.trits
        n = Signal(range(p.max_chunks + 1))
        exact = Signal(signed(max(self._acc_width, p.acc_width) + 2))
        incoming = Signal(signed(p.partial_width + 1))
        m.d.comb += incoming.eq(dot.partial + dot.carry)
        with m.If(self.en):
            with m.If(self.last):
                m.d.sync += [n.eq(0), exact.eq(0)]
            with m.Else():
                m.d.sync += [n.eq(n + 1), exact.eq(exact + incoming)]
        # the only assumption: a tile has at most max_chunks chunks (the last one with `last`)
        m.d.comb += Assume(~(self.en & ~self.last & (n >= p.max_chunks - 1)))
        bound = Signal(range(step * p.max_chunks + 1))
        m.d.comb += bound.eq(n * step)
        m.d.comb += [
            Assert((incoming <= step) & (incoming >= -step), "lane partial sum out of range"),
            Assert(n < p.max_chunks, "chunk count out of range"),
            Assert((exact <= bound) & (exact >= -bound), "exact sum out of range"),
            Assert(acc.acc == exact, "accumulator out of range: it differs from the exact sum"),
        ]
        with m.If(self.en):
            m.d.comb += Assert(acc.sum == exact + incoming, "tile sum out of range: it differs from the exact sum")
        return m


class ResultStreamRules(wiring.Component):
    """The whole engine with unconstrained inputs; asserts the stream rules on ``res``: once
    ``valid`` is high without ``ready``, ``valid`` stays high and the payload stays the same
    until the transfer (reset excepted). Checked by bounded model checking."""

    def __init__(self, *, params):
        if not isinstance(params, EngineParams):
            raise rejected(self, TypeError(f"params must be an EngineParams, not {params!r}"))
        self._engine = TernaryMatVec(params=params)
        members = self._engine.signature.members
        super().__init__({name: members[name] for name in ("wr", "cmd", "act", "res")})

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = e = self._engine
        wiring.connect(m, flipped(self.wr), e.wr)
        wiring.connect(m, flipped(self.cmd), e.cmd)
        wiring.connect(m, flipped(self.act), e.act)
        wiring.connect(m, e.res, flipped(self.res))
        stalled = Signal()
        held = Signal.like(self.res.payload)
        m.d.sync += [stalled.eq(self.res.valid & ~self.res.ready), held.eq(self.res.payload)]
        with m.If(stalled):
            m.d.comb += Assert(self.res.valid, "res.valid dropped before ready")
            m.d.comb += Assert(self.res.payload.as_value() == held.as_value(), "res.payload changed before ready")
        m.d.comb += Cover(self.res.valid & self.res.ready & self.res.payload.last)
        return m
