"""The ternary matrix-vector (TMV) engine: ``y = W x`` with no multipliers."""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..sim import golden
from ..sim.golden import Packing
from .layouts import EngineLayouts, Trit
from .params import EngineParams
from .wmem import WeightMemory

__all__ = ["TritDot", "LaneAccumulator", "TernaryMatVec", "PIPELINE_DEPTH"]

#: Cycles from a weight-word read being issued to its lane sum reaching the accumulators.
PIPELINE_DEPTH = 3


def _balanced_sum(values):
    values = list(values)
    while len(values) > 1:
        nxt = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
    return values[0]


class TritDot(wiring.Component):
    """One lane's dot product of ``trits`` ternary weights with ``trits`` int8 activations.

    Each weight adds, subtracts or skips its activation; no multiplier is used. A
    negated term is formed as ``~x`` with the ``+1`` of two's complement collected into
    one small correction count, so no per-term carry chain is needed.

    Parameters
    ----------
    trits : int
    packing : Packing

    Members
    -------
    w : In(lane weight layout)
    x : In(ArrayLayout(signed(8), trits))
    partial : Out(signed(golden.partial_width(trits)))
        ``sum_t w_t * x_t`` for the ``w`` and ``x`` presented two cycles earlier
        (latency 2, a new input every cycle, no stall).
    """

    def __init__(self, *, trits, packing):
        probe = EngineParams(lanes=1, trits=trits, packing=packing, max_k=trits, weight_depth=1)
        self._trits = trits
        self._packing = probe.packing
        layouts = EngineLayouts(probe)
        super().__init__({
            "w": In(layouts.lane_weights),
            "x": In(layouts.activation),
            "partial": Out(signed(golden.partial_width(trits))),
        })

    def codes(self, m):
        """The 2-bit trit codes of ``w`` (decoding BASE3 bytes with a chain of x3 steps)."""
        if self._packing is Packing.TRIT2:
            return [self.w[t].as_value() for t in range(self._trits)]
        codes = []
        for g in range(self._trits // golden.BASE3_TRITS_PER_BYTE):
            cur = self.w[g]
            for n in range(golden.BASE3_TRITS_PER_BYTE):
                step = Signal(10, name=f"b3_{g}_{n}")
                m.d.comb += step.eq(cur * 3)  # (cur << 1) + cur: a shift-add, not a multiplier
                codes.append(step[8:10])
                cur = step[:8]
        return codes

    def elaborate(self, platform):
        m = Module()
        codes = self.codes(m)
        terms, negs = [], []
        for t, code in enumerate(codes):
            # code 0 (NEG) -> ~x (+1 later), code 2 (POS) -> x, codes 1 (ZERO) and 3 -> 0
            nz = ~code[0]
            neg = nz & ~code[1]
            term = Signal(signed(8), name=f"term{t}")
            negr = Signal(name=f"neg{t}")
            x = self.x[t]
            m.d.sync += [term.eq(Mux(nz, x ^ neg.replicate(8), 0)), negr.eq(neg)]
            terms.append(term)
            negs.append(negr)
        correction = _balanced_sum([n.as_unsigned() for n in negs]) if len(negs) > 1 else negs[0]
        m.d.sync += self.partial.eq(_balanced_sum(terms) + correction)
        return m


class LaneAccumulator(wiring.Component):
    """A lane's running sum.

    Members
    -------
    partial : In(signed(partial_width))
    en : In(1)
    first : In(1)
        When ``en``: ``acc <= partial`` if ``first`` else ``acc + partial``.
    acc : Out(signed(width))
        Registered; updated the cycle after ``en``.
    acc_next : Out(signed(width))
        The value ``acc`` takes at the next edge (combinational).
    """

    def __init__(self, *, partial_width, width):
        if width < partial_width:
            raise ValueError(f"accumulator width {width} is narrower than the partial sum width {partial_width}")
        super().__init__({
            "partial": In(signed(partial_width)), "en": In(1), "first": In(1),
            "acc": Out(signed(width)), "acc_next": Out(signed(width)),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.acc_next.eq(Mux(self.en, Mux(self.first, 0, self.acc) + self.partial, self.acc))
        m.d.sync += self.acc.eq(self.acc_next)
        return m


class TernaryMatVec(wiring.Component):
    """Ternary matrix-vector engine: ``y = W x``, ``W`` ternary (M x K), ``x`` int8 (K),
    ``y`` exact in ``params.acc_width`` bits (never overflows for ``K <= params.max_k``).

    Weights stay resident in the weight memory; each product names the matrix by its base
    word address, so several matrices can be loaded at once. The memory image of a matrix
    is :func:`golden.weight_words`.

    Parameters
    ----------
    params : EngineParams

    Members
    -------
    wr : In(stream of {addr, data})
        Weight word writes. Accepted (``ready``) whenever no product is computing.
    cmd : In(stream of {base, rows, chunks})
        One product: the matrix at word ``base`` with ``rows`` = M rows and ``chunks`` =
        ``ceil(K / trits)`` activation words. Accepted only when idle. A command with
        ``rows == 0`` or ``chunks == 0`` is consumed and does nothing; ``base``, ``rows`` and
        ``chunks`` beyond the memory (:meth:`EngineParams.check_shape`) are the sender's error.
    act : In(stream of activation words)
        After a command, exactly ``chunks`` words (:func:`golden.activation_words`, zero-padded)
        are taken, one per cycle at most.
    res : Out(stream of {value, last})
        ``y[0] .. y[M-1]`` in order, ``last`` set on ``y[M-1]``. Payload and valid stay
        stable until ``ready``.
    busy : Out(1)
        A command has been accepted and its last result not yet transferred.

    Timing
    ------
    After the last activation word, the engine reads one weight word per cycle: every lane
    consumes ``trits`` weights every cycle, ``tiles * chunks`` cycles for ``tiles = ceil(M /
    lanes)``. A tile's results go to an output bank that drains one row per cycle while the
    next tile computes; the last chunk of a tile waits only while the bank still holds the
    previous tile, so the engine runs at full weight bandwidth whenever
    ``chunks >= lanes + PIPELINE_DEPTH + 1`` and ``res`` is ready. First result:
    ``PIPELINE_DEPTH + 1`` cycles after the first tile's last weight word is read.
    Reset clears all control state; the weight memory keeps its contents.
    """

    def __init__(self, *, params):
        if not isinstance(params, EngineParams):
            self._MustUse__silence = True  # a rejected constructor call is not an unused design
            raise TypeError(f"params must be an EngineParams, not {params!r}")
        self._params = params
        self._layouts = EngineLayouts(params)
        lay = self._layouts
        super().__init__({
            "wr": In(stream.Signature(lay.weight_write)),
            "cmd": In(stream.Signature(lay.command)),
            "act": In(stream.Signature(lay.activation)),
            "res": Out(stream.Signature(lay.result)),
            "busy": Out(1),
        })

    @property
    def params(self):
        return self._params

    @property
    def layouts(self):
        return self._layouts

    def elaborate(self, platform):
        m = Module()
        p, lay = self._params, self._layouts

        m.submodules.wmem = wmem = WeightMemory(params=p)
        m.submodules.xmem = xmem = memory.Memory(shape=lay.activation, depth=p.max_chunks, init=[])
        x_rd = xmem.read_port(transparent_for=())
        x_wr = xmem.write_port()

        base = Signal(lay.addr_shape)
        rows = Signal.like(self.cmd.payload.rows)
        chunks = Signal.like(self.cmd.payload.chunks)

        # issue stage
        waddr = Signal(lay.addr_shape)
        chunk = Signal.like(chunks)
        row = Signal(rows.shape().width + 1)
        remaining = Signal.like(row)
        m.d.comb += remaining.eq(rows - row)
        count_w = p.lanes.bit_length()
        is_last = Signal()
        is_final = Signal()
        count = Signal(count_w)
        m.d.comb += [
            is_last.eq(chunk == chunks - 1),
            is_final.eq(remaining <= p.lanes),
            count.eq(Mux(is_final, remaining, p.lanes)),
        ]

        ctrl = data.StructLayout({"valid": 1, "first": 1, "last": 1, "final": 1, "count": count_w})
        stages = [Signal(ctrl, name=f"s{i + 1}") for i in range(PIPELINE_DEPTH)]

        # output bank
        bank = [Signal(signed(p.acc_width), name=f"bank{i}") for i in range(p.lanes)]
        bank_count = Signal(count_w)
        bank_final = Signal()
        last_in_flight = Signal()
        m.d.comb += last_in_flight.eq(Cat(s.valid & s.last for s in stages).any())

        running = Signal()
        issue = Signal()
        m.d.comb += issue.eq(running & ~(is_last & ((bank_count != 0) | last_in_flight)))

        m.d.comb += [
            self.wr.ready.eq(~running),
            wmem.addr.eq(Mux(running, waddr, self.wr.payload.addr)),
            wmem.wr_data.eq(self.wr.payload.data),
            wmem.we.eq(self.wr.valid & ~running),
            x_rd.addr.eq(chunk),
            x_wr.data.eq(self.act.payload),
        ]

        xcount = Signal.like(chunks)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                # a command with no rows or no columns is consumed and produces no result
                with m.If(self.cmd.valid & (self.cmd.payload.rows != 0) & (self.cmd.payload.chunks != 0)):
                    m.d.sync += [base.eq(self.cmd.payload.base), rows.eq(self.cmd.payload.rows),
                                 chunks.eq(self.cmd.payload.chunks), xcount.eq(0)]
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += [self.busy.eq(1), self.act.ready.eq(1),
                             x_wr.addr.eq(xcount), x_wr.en.eq(self.act.valid)]
                with m.If(self.act.valid):
                    m.d.sync += xcount.eq(xcount + 1)
                    with m.If(xcount == chunks - 1):
                        m.d.sync += [waddr.eq(base), chunk.eq(0), row.eq(0)]
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1), running.eq(1)]
                with m.If(issue):
                    m.d.sync += waddr.eq(waddr + 1)
                    with m.If(is_last):
                        m.d.sync += [chunk.eq(0), row.eq(row + p.lanes)]
                        with m.If(is_final):
                            m.next = "DRAIN"
                    with m.Else():
                        m.d.sync += chunk.eq(chunk + 1)
            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                with m.If(~Cat(s.valid for s in stages).any() & (bank_count == 0)):
                    m.next = "IDLE"

        # pipeline control: s1 = memory data valid, s2 = terms registered, s3 = partial registered
        m.d.sync += stages[0].eq(ctrl.const({"valid": 0}))
        with m.If(issue):
            m.d.sync += [stages[0].valid.eq(1), stages[0].first.eq(chunk == 0), stages[0].last.eq(is_last),
                         stages[0].final.eq(is_final), stages[0].count.eq(count)]
        for prev, nxt in zip(stages, stages[1:]):
            m.d.sync += nxt.eq(prev)
        acc_stage = stages[-1]

        # datapath: one TritDot and one accumulator per lane
        accs = []
        for lane in range(p.lanes):
            dot = TritDot(trits=p.trits, packing=p.packing)
            acc = LaneAccumulator(partial_width=p.partial_width, width=p.acc_width)
            m.submodules[f"dot{lane}"] = dot
            m.submodules[f"acc{lane}"] = acc
            m.d.comb += [dot.w.eq(wmem.rd_data[lane]), dot.x.eq(x_rd.data),
                         acc.partial.eq(dot.partial), acc.en.eq(acc_stage.valid), acc.first.eq(acc_stage.first)]
            accs.append(acc)

        # output bank: loaded with a finished tile, shifted out one row per transfer
        m.d.comb += [self.res.valid.eq(bank_count != 0), self.res.payload.value.eq(bank[0]),
                     self.res.payload.last.eq(bank_final & (bank_count == 1))]
        with m.If(acc_stage.valid & acc_stage.last):
            m.d.sync += [b.eq(a.acc_next) for b, a in zip(bank, accs)]
            m.d.sync += [bank_count.eq(acc_stage.count), bank_final.eq(acc_stage.final)]
        with m.Elif(self.res.valid & self.res.ready):
            m.d.sync += [b.eq(n) for b, n in zip(bank, bank[1:])]
            m.d.sync += bank_count.eq(bank_count - 1)
        return m
