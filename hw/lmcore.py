"""The on-chip token loop: a sequencer running a compiled LM program on the vector unit and the
ternary engine, the embedding beside them, and the token sampler.

:class:`LMCore` executes what :mod:`tritium.sim.lmstep` specifies, bit for bit: the image's reset
program once per generation, the step program once per prompt token, then a choice of token
(:func:`tritium.sim.lmstep.choose_token`) and a step per generated token. The program, constants,
embedding and its scales are written into its memories beforehand; the ternary matrices live in
the engine's weight memory and are named by the device's slot table. The link device
(:class:`tritium.hw.device.LinkDevice`) feeds it prompt tokens and turns its output into reply
frames; the checks it makes on each instruction are the golden device's
(:class:`tritium.sim.device_model.DeviceModel`, ``docs/protocol.md``).
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..sim import golden, lmstep
from ..sim.golden import TritiumValueError
from . import protocol as P
from .layouts import EngineLayouts
from .params import EngineParams, LMParams, rejected
from .sampler import TokenSampler
from .vector import VOp, VectorUnit

__all__ = ["LMCore", "SLOT_BITS", "slot_layout", "run_layout", "out_layout"]

SLOT_BITS = (P.SLOTS - 1).bit_length()


def slot_layout(params):
    """One entry of the device's slot table: a resident matrix's ``base`` word, ``rows``, ``chunks``."""
    cmd = EngineLayouts(params).command
    return data.StructLayout({"base": cmd.members["base"], "rows": cmd.members["rows"],
                              "chunks": cmd.members["chunks"]})


def run_layout(lm):
    """A generation request: the LM_CONFIG fields and GENERATE's header (``docs/protocol.md``)."""
    pc = range(lm.prog_depth + 1)
    return data.StructLayout({
        "step_start": pc, "prog_end": pc, "logits": lm.addr_bits, "vocab": range(lm.max_vocab + 1),
        "max_tokens": 16, "seed": 32, "inv_temperature": 16, "top_k": 16, "stop": 16})


def out_layout():
    """What a generation produces: ``kind`` 0 a token, 1 the end (``count``, ``reason``), 2 a fault
    (``code``: a :class:`tritium.hw.protocol.Err`)."""
    return data.StructLayout({"kind": 2, "token": 8, "count": 16, "reason": 1, "code": 8})


OUT_TOKEN, OUT_END, OUT_FAULT = 0, 1, 2

_ELEMENTWISE = [VOp[c.upper()] for c in lmstep.ELEMENTWISE]
_USES_A, _USES_B, _USES_C = ([VOp[c.upper()] for c in codes]
                             for codes in (lmstep.READS_A, lmstep.READS_B, lmstep.READS_C))


def _one_of(value, ops):
    return Cat(*[value == op for op in ops]).any()


class LMCore(wiring.Component):
    """Runs a compiled MatMul-free LM on the engine and the vector unit, and chooses tokens.

    Parameters
    ----------
    params : EngineParams
        The engine it drives (through ``cmd`` / ``act`` / ``res``).
    lm : LMParams
        Its memory sizes.

    Members
    -------
    prog_wr : In(stream: ``addr``, ``data`` (an instruction))
    cload : In(stream: ``addr``, ``data`` (int8)) -- the constant memory
    embed_wr : In(stream: ``addr``, ``data`` (int8)) -- the embedding, ``token * hidden + i``
    scale_wr : In(stream: ``addr`` (a token), ``data`` (int16)) -- the embedding rows' scales
        Memory writes, one per cycle, taken while no generation runs.
    run : In(stream of :func:`run_layout`)
        Starts a generation (taken when idle): seeds the sampler with
        :func:`tritium.sim.lmstep.rng_seed` of ``seed``, runs instructions ``0 .. step_start-1``
        (with token 0 for an ``embed``),
        then the step ``step_start .. prog_end-1`` for each ``prompt`` token.
    prompt : In(stream: ``token``, ``last``)
        The prompt, taken one token per step; ``last`` on the final one.
    out : Out(stream of :func:`out_layout`)
        Each generated token as it is chosen (the next step starts once it is taken), then the
        end (``count`` tokens; ``reason`` 1 when the ``stop`` token was generated) or a fault.
    cmd, act : Out(engine streams); res : In(engine stream)
        Connect to a :class:`TernaryMatVec` with ``params``; ``eng_busy`` its ``busy``.
    slot_addr : Out(slot number); slot : In(:func:`slot_layout`), the entry one cycle later;
    slot_valid : In(one bit per slot)
        The device's slot table.
    busy : Out(1)
        A generation is running.

    Timing
    ------
    Each instruction costs its vector-unit time (:class:`VectorUnit`) plus one cycle to issue it:
    the next instruction is fetched, decoded and its slot looked up while the current one runs,
    and checked as it ends (an instruction after one that ends within 3 cycles, and the first of
    each step, take 5 cycles of fetch, decode and checks); an elementwise instruction after an
    elementwise one or a rescaling ``matvec`` is checked and offered while that one runs, and the unit takes it once that
    one has issued its last elements when it is safe (:class:`VectorUnit`). A ``quant`` starts the engine on its
    matrix before streaming, so the activations flow into the engine as they are made (``lanes``
    a cycle from an aligned vector), and ``matvec`` takes the tiles as the engine offers them. A
    token choice costs :class:`TokenSampler`'s time.

    Checks (a fault ends the generation, the engine drained, with ``out.kind`` 2): before each
    instruction, in this order: an opcode outside :class:`VOp` (UNKNOWN_OP); a ``quant`` not
    directly followed by the ``matvec`` of the same matrix, or a ``matvec`` without one, or a
    program ending after a ``quant`` (OUT_OF_RANGE); an operand range past its memory, a
    reduction outside an elementwise instruction of ``n > 0``, a sum of squares over more than
    :data:`golden.MAX_VECTOR` elements, a destination overlapping a
    source part-way (OUT_OF_RANGE); for ``quant``/``matvec``: a slot number past the table
    (BAD_SLOT), a slot never set (EMPTY_SLOT), ``quant`` with more than the slot's
    ``chunks * trits`` values or ``matvec`` with other than its ``rows`` (OUT_OF_RANGE).
    """

    def __init__(self, *, params, lm):
        if not isinstance(params, EngineParams):
            raise rejected(self, TypeError(f"params must be an EngineParams, not {params!r}"))
        if not isinstance(lm, LMParams):
            raise rejected(self, TypeError(f"lm must be an LMParams, not {lm!r}"))
        for name in ("trits", "lanes"):
            if getattr(params, name) % lm.vector_lanes:
                raise rejected(self, TritiumValueError(
                    f"a {lm.vector_lanes}-lane vector unit needs an engine whose {name} "
                    f"({getattr(params, name)}) are a multiple of {lm.vector_lanes}"))
        self._params, self._lm = params, lm
        self.vector = VectorUnit(vmem_depth=lm.vmem_depth, cmem_depth=lm.cmem_depth, lanes=lm.vector_lanes)
        self.sampler = TokenSampler(max_vocab=lm.max_vocab, addr_bits=lm.addr_bits, lanes=lm.vector_lanes)
        lay = EngineLayouts(params)
        ebits = max(1, (lm.embed_depth - 1).bit_length())
        super().__init__({
            "prog_wr": In(stream.Signature(data.StructLayout({"addr": range(lm.prog_depth),
                                                              "data": self.vector.layout}))),
            "cload": In(stream.Signature(data.StructLayout({"addr": lm.caddr_bits, "data": signed(8)}))),
            "embed_wr": In(stream.Signature(data.StructLayout({"addr": ebits, "data": signed(8)}))),
            "scale_wr": In(stream.Signature(data.StructLayout({"addr": range(lm.max_vocab), "data": signed(16)}))),
            "run": In(stream.Signature(run_layout(lm))),
            "prompt": In(stream.Signature(data.StructLayout({"token": 8, "last": 1}))),
            "out": Out(stream.Signature(out_layout())),
            "cmd": Out(stream.Signature(lay.command)),
            "act": Out(stream.Signature(lay.activation)),
            "res": In(stream.Signature(lay.result)),
            "eng_busy": In(1),
            "slot_addr": Out(SLOT_BITS),
            "slot": In(slot_layout(params)),
            "slot_valid": In(P.SLOTS),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p, lm = self._params, self._lm
        m.submodules.vector = vu = self.vector
        m.submodules.sampler = smp = self.sampler
        wiring.connect(m, smp.peek, vu.peek)
        wiring.connect(m, vu.word, smp.word)
        wiring.connect(m, wiring.flipped(self.cload), vu.cload)

        m.submodules.prog = prog = memory.Memory(shape=vu.layout, depth=lm.prog_depth, init=[])
        m.submodules.embed = emb = memory.Memory(shape=signed(8), depth=lm.embed_depth, init=[])
        m.submodules.scale = scl = memory.Memory(shape=signed(16), depth=lm.max_vocab, init=[])
        prog_rd, prog_w = prog.read_port(transparent_for=()), prog.write_port()
        emb_rd, emb_w = emb.read_port(transparent_for=()), emb.write_port()
        scl_rd, scl_w = scl.read_port(transparent_for=()), scl.write_port()

        cfg = Signal(run_layout(lm))
        active = Signal()
        m.d.comb += self.busy.eq(active)
        for port, wr in ((self.prog_wr, prog_w), (self.embed_wr, emb_w), (self.scale_wr, scl_w)):
            m.d.comb += [port.ready.eq(~active), wr.addr.eq(port.payload.addr), wr.data.eq(port.payload.data),
                         wr.en.eq(port.valid & ~active)]

        pc = Signal(range(lm.prog_depth + 1))
        end_pc = Signal.like(pc)
        ins = Signal(vu.layout)
        op_raw = ins.op.as_value()
        token = Signal(8)
        last_prompt = Signal()
        generating = Signal()       # the prefill is over: each step is followed by a choice
        count = Signal(16)
        chosen = Signal(8)
        pending_q = Signal()        # a quant has started the engine; its matvec must come next
        pending_c = Signal.like(ins.c)
        fault = Signal(8)

        # -- checks on the fetched instruction (`ins`, with its slot entry) ---------------------
        n = ins.n
        vdepth, cdepth = lm.vmem_depth, lm.cmem_depth
        # the embedding row's first element, token * n: registered (the instruction and the
        # token hold from its decode to its issue, and the checks come two cycles after the decode)
        row_base = Signal(range(256 * (1 << len(n))))
        m.d.sync += row_base.eq(token * n)
        known = op_raw <= max(v.value for v in VOp)
        is_q, is_mv, is_emb = ins.op == VOp.QUANT, ins.op == VOp.MATVEC, ins.op == VOp.EMBED
        elementwise = _one_of(ins.op, _ELEMENTWISE)
        uses_dst = ~(is_q | (ins.op == VOp.GAIN))
        uses_a, uses_b, uses_c = _one_of(ins.op, _USES_A), _one_of(ins.op, _USES_B), _one_of(ins.op, _USES_C)
        # after a quant, elementwise instructions until its matvec (the engine holds its tiles)
        pairing_bad = Mux(pending_q, ~((is_mv & (ins.c == pending_c)) | elementwise), is_mv)
        overlap = ((uses_a & (ins.a < ins.dst) & (ins.dst < ins.a + n)) |
                   (uses_b & (ins.b < ins.dst) & (ins.dst < ins.b + n)))
        range_bad = Cat(
            uses_dst & (ins.dst + n > vdepth), uses_a & (ins.a + n > vdepth), uses_b & (ins.b + n > vdepth),
            uses_c & (ins.c + n > cdepth), is_emb & (row_base + n > lm.embed_depth),
            ins.red == 3, (ins.red != 0) & (~elementwise | (n == 0)),
            (ins.red == lmstep.RED_SUMSQ) & (n > golden.MAX_VECTOR),
            elementwise & (n != 0) & overlap).any()
        slot_in_range = ins.c < P.SLOTS
        slot_set = self.slot_valid.bit_select(ins.c[:SLOT_BITS], 1)
        cap = Signal(range(p.max_chunks * p.trits + 1))
        m.d.comb += cap.eq(self.slot.chunks * p.trits)
        size_bad = Mux(is_q, n > cap, n != self.slot.rows)
        m.d.comb += self.slot_addr.eq(ins.c[:SLOT_BITS])

        # -- the activation packer: quant's int8 values into engine words, zero-padded ----------
        # (`count` values a transfer, at most `lanes`, which divides `trits`: never across words;
        # the padding fills the rest of a word at once)
        trits, lanes_v = p.trits, lm.vector_lanes
        xq = vu.xq.payload
        pk_vals = Signal.like(n)                       # values still to come from `xq`
        pk_fill = Signal(range(p.max_chunks + 1))      # words still to fill
        pk_word = Signal(self.act.payload.shape())
        pk_pos = Signal(range(trits))
        pk_next = Signal(range(trits + 1))
        pk_full = Signal()
        space = ~pk_full | self.act.ready
        byte_valid = Mux(pk_vals != 0, vu.xq.valid, 1)
        take = space & (pk_fill != 0) & byte_valid
        m.d.comb += [self.act.valid.eq(pk_full), self.act.payload.eq(pk_word),
                     vu.xq.ready.eq(space & (pk_fill != 0) & (pk_vals != 0)),
                     pk_next.eq(Mux(pk_vals != 0, pk_pos + xq.count, trits))]
        with m.If(pk_full & self.act.ready):
            m.d.sync += pk_full.eq(0)
        with m.If(take):
            for j in range(trits):
                with m.If(pk_vals == 0):
                    with m.If(j >= pk_pos):
                        m.d.sync += pk_word[j].eq(0)
                for k in range(min(lanes_v, j + 1)):
                    with m.Elif((pk_pos == j - k) & (k < xq.count)):
                        m.d.sync += pk_word[j].eq(xq.values[k])
            with m.If(pk_vals != 0):
                m.d.sync += pk_vals.eq(pk_vals - xq.count)
            with m.If(pk_next == trits):
                m.d.sync += [pk_pos.eq(0), pk_full.eq(1), pk_fill.eq(pk_fill - 1)]
            with m.Else():
                m.d.sync += pk_pos.eq(pk_next)
        packing = (pk_fill != 0) | pk_full

        # -- the vector unit's `ext` input: engine tiles (matvec, `lanes_v` values a transfer) or
        #    embedding values (embed, one a transfer) ---
        lanes = p.lanes
        groups = lanes // lanes_v
        tile_g = Signal(range(groups))       # the group of `lanes_v` tile values offered next
        values = self.res.payload.values
        tile_vals = [Signal(signed(32), name=f"tile_v{k}") for k in range(lanes_v)]
        tile_left = Signal(range(lanes + 1))
        m.d.comb += tile_left.eq(self.res.payload.count - tile_g * lanes_v)
        for k in range(lanes_v):
            m.d.comb += tile_vals[k].eq(values[k])
            for g in range(1, groups):
                with m.If(tile_g == g):
                    m.d.comb += tile_vals[k].eq(values[g * lanes_v + k])
        emb_i = Signal(range(1 << len(n)))     # the next element to read
        emb_pend = Signal()            # a read was issued last cycle: its byte is on the port
        emb_dv = Signal()              # `emb_d` holds a byte read (and `emb_s` its row's scale)
        emb_d, emb_s = Signal(signed(8)), Signal(signed(16))
        emb_full = Signal()            # `emb_val` holds the next value for `ext`
        emb_val = Signal(signed(24))
        # `ext` is fed from a register (ext_r), loaded from either source: the tile multiplexer's
        # path ends there, and a value a cycle still flows
        src_valid, src_ready = Signal(), Signal()
        src_pay = Signal(vu.ext.payload.shape())
        ext_r, ext_full = Signal(vu.ext.payload.shape()), Signal()
        m.d.comb += [src_ready.eq(~ext_full | vu.ext.ready),
                     vu.ext.valid.eq(ext_full), vu.ext.payload.eq(ext_r)]
        with m.If(src_valid & src_ready):
            m.d.sync += [ext_r.eq(src_pay), ext_full.eq(1)]
        with m.Elif(vu.ext.ready):
            m.d.sync += ext_full.eq(0)
        ext_from_tiles = Signal()
        ext_from_embed = Signal()
        with m.If(ext_from_tiles):
            m.d.comb += [src_valid.eq(self.res.valid), src_pay.count.eq(Mux(tile_left < lanes_v, tile_left, lanes_v))]
            m.d.comb += [src_pay.values[k].eq(tile_vals[k]) for k in range(lanes_v)]
            with m.If(src_ready & self.res.valid):
                m.d.sync += tile_g.eq(tile_g + 1)
                with m.If(tile_left <= lanes_v):
                    m.d.comb += self.res.ready.eq(1)
                    m.d.sync += tile_g.eq(0)
        # the embedding reader: read; the byte (and its row's scale) into a register; their
        # product into a register; then `ext` (one value a cycle while `ext` takes them; a
        # stage holds its value while the one after it is full)
        emb_move, emb_capture, emb_issue = Signal(), Signal(), Signal()
        emb_n, emb_base = Signal.like(n), Signal.like(row_base)      # the running embed's, from ISSUE
        with m.If(ext_from_embed):
            m.d.comb += [emb_capture.eq(emb_dv & (~emb_full | src_ready)),
                         emb_move.eq(emb_pend & (~emb_dv | emb_capture)),
                         emb_issue.eq(~(emb_pend & ~emb_move) & (emb_i < emb_n)),
                         emb_rd.addr.eq(emb_base + emb_i), emb_rd.en.eq(emb_issue),
                         src_valid.eq(emb_full), src_pay.values[0].eq(emb_val), src_pay.count.eq(1)]
            with m.If(emb_capture):
                m.d.sync += [emb_val.eq(emb_d * emb_s), emb_full.eq(1)]
            with m.Elif(emb_full & src_ready):
                m.d.sync += emb_full.eq(0)
            with m.If(emb_move):
                m.d.sync += [emb_d.eq(emb_rd.data), emb_s.eq(scl_rd.data), emb_dv.eq(1)]
            with m.Elif(emb_capture):
                m.d.sync += emb_dv.eq(0)
            with m.If(emb_issue):
                m.d.sync += [emb_i.eq(emb_i + 1), emb_pend.eq(1)]
            with m.Elif(emb_move):
                m.d.sync += emb_pend.eq(0)
        m.d.comb += scl_rd.addr.eq(token)

        # -- the sequencer ------------------------------------------------------------------------
        m.d.comb += [vu.instr.payload.eq(ins), smp.start.payload.base.eq(cfg.logits),
                     smp.start.payload.vocab.eq(cfg.vocab), smp.start.payload.inv_temperature.eq(cfg.inv_temperature),
                     smp.start.payload.top_k.eq(cfg.top_k)]

        def finish_fault(code):
            m.d.sync += fault.eq(code)
            m.next = "FAULT"

        def check():
            """The checks of `ins` (its slot entry on `self.slot`), then where it goes."""
            with m.If(~known):
                finish_fault(P.Err.UNKNOWN_OP)
            with m.Elif(pairing_bad | range_bad):
                finish_fault(P.Err.OUT_OF_RANGE)
            with m.Elif((is_q | is_mv) & ~slot_in_range):
                finish_fault(P.Err.BAD_SLOT)
            with m.Elif((is_q | is_mv) & ~slot_set):
                finish_fault(P.Err.EMPTY_SLOT)
            with m.Elif((is_q | is_mv) & size_bad):
                finish_fault(P.Err.OUT_OF_RANGE)
            with m.Elif(is_q):
                m.next = "ENGINE"
            with m.Else():
                m.d.sync += [emb_i.eq(0), emb_pend.eq(0), emb_dv.eq(0), emb_full.eq(0)]
                with m.If(is_mv):
                    m.d.sync += pending_q.eq(0)
                m.next = "ISSUE"

        # while an instruction runs (EXEC), the next is fetched, decoded and its slot looked up
        # (`pre` counts those steps: 3 = ready to check); it issues as the unit finishes
        pre = Signal(range(4))
        exec_tiles, exec_embed, exec_elem = Signal(), Signal(), Signal()

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.run.ready.eq(1)
                with m.If(self.run.valid):
                    m.d.sync += [cfg.eq(self.run.payload), active.eq(1), pc.eq(0), token.eq(0),
                                 end_pc.eq(self.run.payload.step_start), generating.eq(0), count.eq(0),
                                 pending_q.eq(0), last_prompt.eq(0)]
                    m.next = "SEED"
            with m.State("SEED"):
                m.d.comb += [smp.seed.valid.eq(1), smp.seed.payload.eq(Mux(cfg.seed == 0, 0x6D2B79F5, cfg.seed))]
                with m.If(smp.seed.ready):
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += prog_rd.addr.eq(pc)
                with m.If(pc == end_pc):
                    with m.If(pending_q):
                        finish_fault(P.Err.OUT_OF_RANGE)
                    with m.Elif(end_pc == cfg.step_start):      # the reset program is done
                        m.next = "PROMPT"
                    with m.Elif(~generating & ~last_prompt):
                        m.next = "PROMPT"
                    with m.Else():
                        m.next = "SAMPLE"
                with m.Else():
                    m.next = "DECODE"
            with m.State("DECODE"):
                m.d.sync += ins.eq(prog_rd.data)
                m.next = "SLOT"
            with m.State("SLOT"):          # the slot table answers `ins.c` next cycle
                m.next = "CHECK"
            with m.State("CHECK"):
                check()
            with m.State("ENGINE"):        # quant: the engine takes its product's command first
                m.d.comb += [self.cmd.valid.eq(1), self.cmd.payload.base.eq(self.slot.base),
                             self.cmd.payload.rows.eq(self.slot.rows), self.cmd.payload.chunks.eq(self.slot.chunks)]
                with m.If(self.cmd.ready):
                    m.d.sync += [pk_vals.eq(n), pk_fill.eq(self.slot.chunks), pk_pos.eq(0),
                                 pending_q.eq(1), pending_c.eq(ins.c)]
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                # (offered early, while a rescaling matvec still takes its last tiles)
                m.d.comb += [vu.instr.valid.eq(1), ext_from_tiles.eq(exec_tiles)]
                with m.If(vu.instr.ready):
                    m.d.sync += [pc.eq(pc + 1), pre.eq(0), exec_tiles.eq(is_mv), exec_embed.eq(is_emb),
                                 exec_elem.eq(elementwise | (is_mv & (ins.imm != 0))),
                                 emb_n.eq(n), emb_base.eq(row_base)]
                    m.next = "EXEC"
            with m.State("EXEC"):
                m.d.comb += [ext_from_tiles.eq(exec_tiles), ext_from_embed.eq(exec_embed), prog_rd.addr.eq(pc)]
                with m.If((pre == 0) & (pc != end_pc)):      # fetch (the program's end: FETCH decides)
                    m.d.sync += pre.eq(1)
                with m.Elif(pre == 1):                       # decode
                    m.d.sync += [ins.eq(prog_rd.data), pre.eq(2)]
                with m.Elif(pre == 2):                       # the slot table answers `ins.c`
                    m.d.sync += pre.eq(3)
                # an elementwise instruction or a rescaling matvec after an elementwise one or a
                # rescaling matvec is checked and offered while that one still runs (the unit
                # takes it as soon as that is safe)
                with m.If((pre == 3) & (~vu.busy | (exec_elem & (elementwise | (is_mv & (ins.imm != 0)))))):
                    check()
                with m.Elif(~vu.busy & (pre != 3)):
                    m.next = "FETCH"
            with m.State("PROMPT"):
                m.d.comb += self.prompt.ready.eq(1)
                with m.If(self.prompt.valid):
                    m.d.sync += [token.eq(self.prompt.payload.token), last_prompt.eq(self.prompt.payload.last),
                                 pc.eq(cfg.step_start), end_pc.eq(cfg.prog_end)]
                    m.next = "FETCH"
            with m.State("SAMPLE"):
                m.d.comb += smp.start.valid.eq(1)
                with m.If(smp.start.ready):
                    m.next = "CHOOSE"
            with m.State("CHOOSE"):
                m.d.comb += smp.token.ready.eq(1)
                with m.If(smp.token.valid):
                    m.d.sync += [chosen.eq(smp.token.payload), count.eq(count + 1)]
                    m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += [self.out.valid.eq(1), self.out.payload.kind.eq(OUT_TOKEN),
                             self.out.payload.token.eq(chosen)]
                with m.If(self.out.ready):
                    with m.If(chosen == cfg.stop):
                        m.next = "END"
                    with m.Elif(count == cfg.max_tokens):
                        m.next = "END"
                    with m.Else():
                        m.d.sync += [token.eq(chosen), generating.eq(1), pc.eq(cfg.step_start),
                                     end_pc.eq(cfg.prog_end)]
                        m.next = "FETCH"
            with m.State("END"):
                m.d.comb += [self.out.valid.eq(1), self.out.payload.kind.eq(OUT_END),
                             self.out.payload.count.eq(count), self.out.payload.reason.eq(chosen == cfg.stop)]
                with m.If(self.out.ready):
                    m.d.sync += active.eq(0)
                    m.next = "IDLE"
            with m.State("FAULT"):
                # let a started product finish and drop its tiles, so the engine is idle again
                m.d.comb += self.res.ready.eq(1)
                with m.If(~packing & ~self.eng_busy):
                    m.d.comb += [self.out.valid.eq(1), self.out.payload.kind.eq(OUT_FAULT),
                                 self.out.payload.code.eq(fault)]
                    with m.If(self.out.ready):
                        m.d.sync += [active.eq(0), pk_fill.eq(0)]
                        m.next = "IDLE"
        return m
