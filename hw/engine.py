"""The ternary matrix-vector (TMV) engine: ``y = W x`` with no multipliers."""

from types import SimpleNamespace

from amaranth.hdl import Cat, Module, Mux, ResetSignal, Shape, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..sim import golden
from ..sim.cost import product_cycles  # the cycle model, pure Python: re-exported for the gateware side
from ..sim.golden import Packing
from .layouts import EngineLayouts
from .params import EngineParams, rejected
from .wmem import RegisteredRAM, WeightMemory

__all__ = ["TritDot", "LaneAccumulator", "TernaryMatVec", "PIPELINE_DEPTH", "product_cycles"]

#: Cycles from a weight-word read being issued to its lane sum reaching the accumulators
#: (one more with ``EngineParams.read_register``: see :attr:`EngineParams.pipeline_depth`).
PIPELINE_DEPTH = 3


def _sext(value, width):
    """``value`` (signed) sign-extended to ``width`` bits, as an unsigned bit vector."""
    return Cat(value, value[-1].replicate(width - len(value)))


def signed_add(a, b, carry=None, *, width=None):
    """``a + b + carry`` for signed ``a``, ``b`` and a 1-bit ``carry``, exact in ``width`` bits
    (default one more than the wider operand).

    Built as an unsigned add of sign-extended operands, so that Yosys sees the 1-bit ``carry``
    as the adder's carry-in (a mixed signed/unsigned expression would widen it to an operand).
    """
    width = width or max(len(a), len(b)) + 1
    total = _sext(a, width) + _sext(b, width)
    if carry is not None:
        total = total + carry
    return total[:width].as_signed()


def _carry_save_tree(values, carries):
    """Sum ``values`` pairwise in a balanced tree, giving each adder one of the 1-bit ``carries``
    as its carry-in (Yosys maps ``a + b + c`` with a 1-bit ``c`` onto the carry chain's input,
    so these cost no logic). Returns ``(sum, leftover carries)``."""
    values, carries = list(values), list(carries)
    while len(values) > 1:
        nxt = []
        for i in range(0, len(values) - 1, 2):
            nxt.append(signed_add(values[i], values[i + 1], carries.pop(0) if carries else None))
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
    return values[0], carries


class TritDot(wiring.Component):
    """One lane's dot product of ``trits`` ternary weights with ``trits`` int8 activations.

    Each weight adds, subtracts or skips its activation; no multiplier is used. A negated
    term is formed as ``~x``, and the ``+1`` that completes two's complement rides in an
    adder's carry-in, so negation costs no carry chain.

    Parameters
    ----------
    trits : int
    packing : Packing

    Members
    -------
    w : In(lane weight layout)
    x : In(ArrayLayout(signed(8), trits))
    partial : Out(signed(golden.partial_width(trits)))
    carry : Out(1)
        ``partial + carry == sum_t w_t * x_t`` for the ``w`` and ``x`` presented two cycles
        earlier (latency 2, a new input every cycle, no stall). The one carry left over by the
        adder tree is handed on for the accumulator's carry-in.
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
            "carry": Out(1),
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
                m.d.comb += step.eq((cur << 1) + cur)  # x3 as a shift-add: `* 3` would map to DSPs on ECP5
                codes.append(step[8:10])
                cur = step[:8]
        return codes

    def elaborate(self, platform):
        m = Module()
        terms, negs = [], []
        for t, code in enumerate(self.codes(m)):
            # code 0 (NEG) -> ~x (+1 as a carry), code 2 (POS) -> x, codes 1 (ZERO) and 3 -> 0
            nz = ~code[0]
            neg = nz & ~code[1]
            term = Signal(signed(8), name=f"term{t}", reset_less=True)
            negr = Signal(name=f"neg{t}", reset_less=True)
            m.d.sync += [term.eq(Mux(nz, self.x[t] ^ neg.replicate(8), 0)), negr.eq(neg)]
            terms.append(term)
            negs.append(negr)
        total, (leftover,) = _carry_save_tree(terms, negs)
        partial = Signal.like(self.partial, reset_less=True)
        carry = Signal(reset_less=True)
        m.d.sync += [partial.eq(total), carry.eq(leftover)]
        m.d.comb += [self.partial.eq(partial), self.carry.eq(carry)]
        return m


class LaneAccumulator(wiring.Component):
    """A lane's running sum, cleared as a tile's result leaves.

    Members
    -------
    partial : In(signed(partial_width))
    carry : In(1)
    en : In(1)
    last : In(1)
        When ``en``: ``acc <= 0`` if ``last`` (the tile's sum is taken from ``sum`` that cycle)
        else ``acc <= sum``. The clear (and the domain reset) use the flip-flops' synchronous
        reset, gated by their enable, so no multiplexer sits in front of the accumulator.
    sum : Out(signed(width))
        ``acc + partial + carry`` (combinational): the running sum including this cycle's input.
    acc : Out(signed(width))
        Registered; 0 after reset.
    """

    def __init__(self, *, partial_width, width):
        if width < partial_width:
            raise ValueError(f"accumulator width {width} is narrower than the partial sum width {partial_width}")
        super().__init__({
            "partial": In(signed(partial_width)), "carry": In(1), "en": In(1), "last": In(1),
            "sum": Out(signed(width)), "acc": Out(signed(width)),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.sum.eq(signed_add(self.acc, self.partial, self.carry, width=len(self.acc)))
        acc = Signal.like(self.acc, reset_less=True)
        rst = ResetSignal(allow_reset_less=True)
        with m.If(self.en | rst):
            with m.If(self.last | rst):
                m.d.sync += acc.eq(0)
            with m.Else():
                m.d.sync += acc.eq(self.sum)
        m.d.comb += self.acc.eq(acc)
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
        Weight word writes. Accepted (``ready``) whenever no product is computing, one a cycle;
        each lands in the memory the cycle after its transfer.
    cmd : In(stream of {base, rows, chunks})
        One product: the matrix at word ``base`` with ``rows`` = M rows and ``chunks`` =
        ``ceil(K / trits)`` activation words. Accepted only when idle and no write is offered
        or still to land (so a product reads every write transferred before it). A command with
        ``rows == 0`` or ``chunks == 0`` is consumed and does nothing; ``base``, ``rows`` and
        ``chunks`` beyond the memory (:meth:`EngineParams.check_shape`) are the sender's error.
    act : In(stream of activation words)
        After a command, exactly ``chunks`` words (:func:`golden.activation_words`, zero-padded)
        are taken, one per cycle at most.
    res : Out(stream of {values, count, last})
        One transfer per tile of ``lanes`` rows, in order: ``values[i]`` is ``y[tile * lanes + i]``
        for ``i < count`` (``count`` is ``lanes`` except in the final tile); ``last`` is set on the
        final tile. Payload and valid stay stable until ``ready``.
    busy : Out(1)
        A command has been accepted and its last result not yet transferred.

    Timing
    ------
    Each activation word is multiplied with its chunk of the first tile's weights as it arrives
    (and stored for the later tiles); after the last one the engine reads one weight word per
    cycle: every lane consumes ``trits`` weights every cycle, ``tiles * chunks`` cycles in all for
    ``tiles = ceil(M / lanes)``, the first tile's while the activations stream in. A finished tile waits in an output register while the next tile computes; the
    last chunk of a tile is issued only once that register is free and no earlier tile end is
    in the pipeline, so with ``res`` always ready the engine reads a weight word every cycle
    whenever ``chunks >= params.pipeline_depth + 1``. A tile's result is valid
    ``params.pipeline_depth`` cycles after its last weight word is read (3, or 4 with
    ``read_register``); :func:`product_cycles` gives the exact count.
    Reset clears all control state; the weight memory keeps its contents.
    """

    def __init__(self, *, params):
        if not isinstance(params, EngineParams):
            raise rejected(self, TypeError(f"params must be an EngineParams, not {params!r}"))
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
        if p.read_register:  # activation words through a registered-output RAM, like the weights
            m.submodules.xmem = xmem = RegisteredRAM(width=Shape.cast(lay.activation).width, depth=p.max_chunks)
            x_rd = SimpleNamespace(addr=xmem.raddr, data=lay.activation(xmem.rdata))
            x_wr = SimpleNamespace(addr=xmem.waddr, data=xmem.wdata, en=xmem.we)
        else:
            m.submodules.xmem = xmem = memory.Memory(shape=lay.activation, depth=p.max_chunks, init=[])
            x_rd = xmem.read_port(transparent_for=())
            x_wr = xmem.write_port()

        # issue stage: `last_chunk` = chunks - 1 is registered so no subtraction sits in a loop
        waddr = Signal(lay.addr_shape)
        last_chunk = Signal.like(self.cmd.payload.chunks)
        chunk = Signal.like(last_chunk)
        rows_left = Signal.like(self.cmd.payload.rows)  # rows of this and later tiles
        count_w = p.lanes.bit_length()
        # `is_last` (chunk == last_chunk) is a register updated with `chunk`, so no comparator
        # sits between the counters and `issue`, the clock enable of the issue stage
        is_last = Signal()
        single = Signal()                        # the command has one chunk
        last_chunk_m1 = Signal.like(last_chunk)  # chunks - 2, compared only when chunks >= 2
        is_final = Signal()
        count = Signal(count_w)
        m.d.comb += [
            is_final.eq(rows_left <= p.lanes),
            count.eq(Mux(is_final, rows_left, p.lanes)),
        ]

        ctrl = data.StructLayout({"valid": 1, "last": 1, "final": 1, "count": count_w})
        stages = [Signal(ctrl, name=f"s{i + 1}") for i in range(p.pipeline_depth)]

        # output register: one finished tile
        bank = [Signal(signed(p.acc_width), name=f"bank{i}", reset_less=True) for i in range(p.lanes)]
        bank_full = Signal()
        bank_count = Signal(count_w, reset_less=True)
        bank_final = Signal(reset_less=True)
        last_in_flight = Signal()
        m.d.comb += last_in_flight.eq(Cat(s.valid & s.last for s in stages).any())

        running = Signal()
        loading = Signal()          # LOAD: each activation word also issues its chunk of the first tile
        issue = Signal()
        m.d.comb += issue.eq(Mux(loading, self.act.valid, running & ~(is_last & (bank_full | last_in_flight))))

        # a weight write is taken into a register and written from there the next cycle (the
        # memory's address pins see only registers through the one multiplexer); a command waits
        # until no write is pending or being offered, so its reads follow every earlier write
        wr_v = Signal()
        wr_r = Signal(lay.weight_write, reset_less=True)
        idle = ~running & ~loading
        m.d.comb += self.wr.ready.eq(idle)
        with m.If(self.wr.valid & idle):
            m.d.sync += [wr_v.eq(1), wr_r.eq(self.wr.payload)]
        with m.Elif(idle):
            m.d.sync += wr_v.eq(0)
        m.d.comb += [
            wmem.addr.eq(Mux(running | loading, waddr, wr_r.addr)),
            wmem.wr_data.eq(wr_r.data),
            wmem.we.eq(wr_v & idle),
            x_rd.addr.eq(chunk),
            x_wr.data.eq(self.act.payload),
        ]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(~wr_v & ~self.wr.valid)
                # a command with no rows or no columns is consumed and produces no result
                with m.If(self.cmd.valid & self.cmd.ready & (self.cmd.payload.rows != 0) & (self.cmd.payload.chunks != 0)):
                    chunks = self.cmd.payload.chunks
                    m.d.sync += [waddr.eq(self.cmd.payload.base),
                                 rows_left.eq(self.cmd.payload.rows), last_chunk.eq(chunks - 1), chunk.eq(0),
                                 last_chunk_m1.eq(chunks - 2), single.eq(chunks == 1), is_last.eq(chunks == 1)]
                    m.next = "LOAD"
            with m.State("LOAD"):
                # each activation word is stored (for the later tiles) and, bypassing the store,
                # multiplies its chunk of the first tile's weights at once
                m.d.comb += [self.busy.eq(1), self.act.ready.eq(1), loading.eq(1),
                             x_wr.addr.eq(chunk), x_wr.en.eq(self.act.valid)]
                with m.If(self.act.valid):
                    m.d.sync += waddr.eq(waddr + 1)
                    with m.If(is_last):
                        m.d.sync += [chunk.eq(0), is_last.eq(single), rows_left.eq(rows_left - p.lanes)]
                        with m.If(is_final):
                            m.next = "DRAIN"
                        with m.Else():
                            m.next = "RUN"
                    with m.Else():
                        m.d.sync += [chunk.eq(chunk + 1), is_last.eq(~(chunk ^ last_chunk_m1).any())]
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1), running.eq(1)]
                with m.If(issue):
                    m.d.sync += waddr.eq(waddr + 1)
                    with m.If(is_last):
                        m.d.sync += [chunk.eq(0), is_last.eq(single), rows_left.eq(rows_left - p.lanes)]
                        with m.If(is_final):
                            m.next = "DRAIN"
                    with m.Else():  # (an XOR-reduce, not ==: Yosys' abc9 asserts on the compare here)
                        m.d.sync += [chunk.eq(chunk + 1), is_last.eq(~(chunk ^ last_chunk_m1).any())]
            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                with m.If(~Cat(s.valid for s in stages).any() & ~bank_full):
                    m.next = "IDLE"

        # pipeline control: s1 = memory data valid, s2 = terms registered, s3 = partial registered
        m.d.sync += stages[0].eq(ctrl.const({"valid": 0}))
        with m.If(issue):
            m.d.sync += [stages[0].valid.eq(1), stages[0].last.eq(is_last),
                         stages[0].final.eq(is_final), stages[0].count.eq(count)]
        for prev, nxt in zip(stages, stages[1:]):
            m.d.sync += nxt.eq(prev)
        acc_stage = stages[-1]

        # datapath: one TritDot and one accumulator per lane; a chunk issued while loading takes
        # its activation word from the stream, delayed as the stored words are (`x_latency`)
        x_latency = 2 if p.read_register else 1
        bypass = [(Signal(), Signal(lay.activation, reset_less=True)) for _ in range(x_latency)]
        m.d.sync += [bypass[0][0].eq(loading), bypass[0][1].eq(self.act.payload)]
        for (v_prev, w_prev), (v, w) in zip(bypass, bypass[1:]):
            m.d.sync += [v.eq(v_prev), w.eq(w_prev)]
        w_word, x_word = wmem.rd_data, Mux(bypass[-1][0], bypass[-1][1], x_rd.data)
        if p.read_register and wmem.latency == 1:  # SPRAM: the read register is in the fabric
            w_word = Signal.like(wmem.rd_data, reset_less=True)
            m.d.sync += w_word.eq(wmem.rd_data)
        accs = []
        for lane in range(p.lanes):
            dot = TritDot(trits=p.trits, packing=p.packing)
            acc = LaneAccumulator(partial_width=p.partial_width, width=p.acc_width)
            m.submodules[f"dot{lane}"] = dot
            m.submodules[f"acc{lane}"] = acc
            m.d.comb += [dot.w.eq(w_word[lane]), dot.x.eq(x_word),
                         acc.partial.eq(dot.partial), acc.carry.eq(dot.carry),
                         acc.en.eq(acc_stage.valid), acc.last.eq(acc_stage.last)]
            accs.append(acc)

        # output register: loaded with a finished tile, freed by the transfer
        m.d.comb += [self.res.valid.eq(bank_full), self.res.payload.count.eq(bank_count),
                     self.res.payload.last.eq(bank_final)]
        m.d.comb += [self.res.payload.values[i].eq(b) for i, b in enumerate(bank)]
        with m.If(acc_stage.valid & acc_stage.last):
            m.d.sync += [b.eq(a.sum) for b, a in zip(bank, accs)]
            m.d.sync += [bank_full.eq(1), bank_count.eq(acc_stage.count), bank_final.eq(acc_stage.final)]
        with m.Elif(self.res.valid & self.res.ready):
            m.d.sync += bank_full.eq(0)
        return m
