"""The command side of the link device: each request frame checked, executed and answered.

:class:`CommandSequencer` takes the frames :class:`tritium.hw.link.FrameReceiver` reports, runs
each command of ``docs/protocol.md`` on the engine (and the LM core) it owns, and hands every
reply to :class:`tritium.hw.link.FrameTransmitter`. It behaves byte for byte like the golden
device's :meth:`tritium.sim.device_model.DeviceModel._execute`.
"""

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from . import protocol as P
from .engine import TernaryMatVec
from .link import ReplySignature, frame_layout
from .params import EngineParams, LMParams, rejected

__all__ = ["SLOT_BITS", "CommandSequencer"]

SLOT_BITS = (P.SLOTS - 1).bit_length()


def _const_mul(value, constant, width):
    """``value * constant`` for a constant, as a sum of shifted copies (adders, never a multiplier)."""
    total = Const(0, width)
    for i in range(constant.bit_length()):
        if constant >> i & 1:
            total = (total + (value << i))[:width]
    return total


class CommandSequencer(wiring.Component):
    """Executes request frames one at a time and sends their replies.

    Parameters
    ----------
    params : EngineParams
        The engine it owns (:attr:`engine`).
    clock_hz : int
        Reported by IDENTIFY.
    lm : LMParams or None
        With it, it also owns the LM core (:attr:`core`) and executes WRITE_MEM, LM_CONFIG and
        GENERATE; without, those are UNKNOWN_OP.

    Members
    -------
    frame : In(stream of :func:`tritium.hw.link.frame_layout` (:attr:`head_bytes`))
        A request frame, or a frame the receiver refused. Taken once its replies have all left
        (``reply.idle``): the frame's fields and its payload in ``buffer`` are read until then.
    buffer : In(:class:`amaranth.lib.memory.ReadPort.Signature` of bytes)
        The frame's payload (a synchronous read port: data the cycle after the address).
    reply : Out(:class:`tritium.hw.link.ReplySignature`)
        The replies: one frame, or for GENERATE a frame per token and the end (or error) frame.
    error : Out(1)
        The last reply was an error frame.
    activity : Out(3) (with ``lm`` only)
        Bit 0 a generation runs, bit 1 the engine is busy, bit 2 the vector unit is busy.

    Attributes
    ----------
    engine : TernaryMatVec
    core : LMCore or None
    head_bytes : int
        The leading payload bytes it decodes from the frame event: its commands' fixed fields.

    Timing
    ------
    A frame's event is checked (sequence number) in its first cycle and dispatched by its op in
    the next; command checks answer an error frame on the cycle after that. Data moves at one
    buffer byte every two cycles (address, then data) and one reply byte per cycle.
    ``sim/cost.py`` (``matvec_device_cycles``) models a MATVEC from this.
    """

    def __init__(self, *, params, clock_hz, lm=None):
        if not isinstance(params, EngineParams):
            raise rejected(self, TypeError(f"params must be an EngineParams, not {params!r}"))
        if lm is not None and not isinstance(lm, LMParams):
            raise rejected(self, TypeError(f"lm must be an LMParams or None, not {lm!r}"))
        try:
            P.check_link_params(params)
        except ValueError as e:
            raise rejected(self, e) from None
        self._params, self._clock_hz, self._lm = params, clock_hz, lm
        self.engine = TernaryMatVec(params=params)
        self.core = None
        if lm is not None:
            from .lmcore import LMCore
            self.core = LMCore(params=params, lm=lm)
        members = {
            "frame": In(stream.Signature(frame_layout(self.head_bytes))),
            "buffer": In(memory.ReadPort.Signature(addr_width=(P.max_payload(params) - 1).bit_length(), shape=8)),
            "reply": Out(ReplySignature()),
            "error": Out(1),
        }
        if lm is not None:
            members["activity"] = Out(3)
        super().__init__(members)

    @property
    def head_bytes(self):
        layouts = [P.WRITE_WEIGHTS_HEADER, P.SET_SLOT_LAYOUT, P.MATVEC_HEADER]
        if self._lm is not None:
            layouts += [P.WRITE_MEM_HEADER, P.LM_CONFIG_LAYOUT, P.GENERATE_LAYOUT]
        return max(layout.size for layout in layouts)

    def elaborate(self, platform):
        m = Module()
        p, lm = self._params, self._lm
        m.submodules.engine = self.engine
        slot_layout = data.StructLayout({name: self.engine.layouts.command.members[name]
                                         for name in ("base", "rows", "chunks")})
        m.submodules.slots = slots = memory.Memory(shape=slot_layout, depth=P.SLOTS, init=[])

        frame = self.frame.payload
        head = frame.head

        def fields(layout):
            # the frame's leading payload bytes, seen through a payload layout of the protocol
            return layout.shape(head[:8 * layout.size])

        # what every command state may use
        c = SimpleNamespace(
            m=m, frame=frame, seq=frame.header.seq, op=frame.header.op, length=frame.header.length,
            fields=fields, buffer=self.buffer, reply=self.reply, engine=self.engine,
            slots_wr=slots.write_port(), slots_rd=slots.read_port(transparent_for=()),
            slot_valid=Signal(P.SLOTS),        # which slots are set
            expected=Signal(8),                 # the seq the next request must carry
            status=Signal(P.STATUS_LAYOUT.shape),   # the STATUS counters
            err_code=Signal(8),                 # the error being answered
            count_reply=Signal(),               # the reply counts in frames_ok
            rd_idx=Signal(16),                  # the next buffer address to read
            ridx=Signal(range(max(len(P.identify_payload(p, self._clock_hz, lm)), 8) + 1)),  # reply byte
            words_sum=Signal(18),               # elements counted / a slot's last word
        )

        # the commands' arguments, set by DISPATCH
        c.waddr = Signal(17)                    # WRITE_WEIGHTS: the next word's address
        c.rows_left = Signal(17)                # SET_SLOT: rows not yet counted into words_sum
        if lm is not None:
            from .lmcore import run_layout
            m.submodules.core = self.core
            c.slots_rd2 = slots.read_port(transparent_for=())   # the core's
            c.lm_ready = Signal()               # LM_CONFIG accepted (cleared by RESET)
            c.run = Signal(run_layout(lm))      # LM_CONFIG's fields, then GENERATE's
            c.mem_space = Signal(8)             # WRITE_MEM: the space
            c.mem_addr = Signal(33)             # WRITE_MEM: the next element's address

        def reply_header(op, length):
            # offer a reply's header; the condition is its being taken
            m.d.comb += [self.reply.header.valid.eq(1), self.reply.header.payload.seq.eq(c.seq),
                         self.reply.header.payload.op.eq(op), self.reply.header.payload.length.eq(length)]
            return self.reply.header.ready

        def send(byte, count):
            # offer payload byte `ridx` of `count`; the condition is the last one's being taken
            m.d.comb += [self.reply.payload.valid.eq(1), self.reply.payload.payload.eq(byte)]
            with m.If(self.reply.payload.ready):
                m.d.sync += c.ridx.eq(c.ridx + 1)
            return self.reply.payload.ready & (c.ridx == count - 1)

        def fail(code):
            m.d.sync += c.err_code.eq(code)
            m.next = "ERROR"

        c.reply_header, c.send, c.fail = reply_header, send, fail

        with m.FSM():
            with m.State("IDLE"):
                self._accept(c)
            with m.State("DISPATCH"):
                m.d.sync += [c.count_reply.eq(1), c.rd_idx.eq(0), c.ridx.eq(0)]
                with m.Switch(c.op):
                    self._dispatch(c)
                    with m.Default():
                        fail(P.Err.UNKNOWN_OP)
            self._identify_status_reset(c)
            self._write_weights(c)
            self._set_slot(c)
            self._matvec(c)
            if lm is not None:
                self._write_mem(c)
                self._generate(c)
            self._finish(c)

        if lm is not None:
            self._share_engine(c)
        return m

    # -- the frame event, and the op's first checks ----------------------------------------------
    def _accept(self, c):
        """IDLE: a frame the receiver refused is answered at once; a good one is checked for its
        seq (IDENTIFY and RESET take any, and resynchronise), then dispatched."""
        m = c.m
        with m.If(self.frame.valid):
            with m.If(c.frame.error != 0):
                m.d.sync += c.err_code.eq(c.frame.error)
                with m.If(c.reply_header(P.ERROR, P.ERROR_LAYOUT.size)):
                    m.d.sync += c.ridx.eq(0)
                    m.next = "ERROR_DATA"
            with m.Elif((c.op != P.Op.IDENTIFY) & (c.op != P.Op.RESET) & (c.seq != c.expected)):
                c.fail(P.Err.BAD_SEQ)
            with m.Else():
                m.d.sync += c.expected.eq(c.seq + 1)
                m.next = "DISPATCH"

    def _dispatch(self, c):
        """DISPATCH, one case per op: the checks the frame's length and leading fields decide (in
        the protocol's order), then the command's first state."""
        m, p, lm, fail, length = c.m, self._params, self._lm, c.fail, c.length
        with m.Case(P.Op.IDENTIFY, P.Op.STATUS):
            with m.If(length != 0):
                fail(P.Err.BAD_LENGTH)
            with m.Else():
                m.next = "REPLY_ROM"
        with m.Case(P.Op.RESET):
            with m.If(length != 0):
                fail(P.Err.BAD_LENGTH)
            with m.Else():
                m.d.sync += [c.slot_valid.eq(0), c.status.eq(0), c.count_reply.eq(0)]
                if lm is not None:
                    m.d.sync += c.lm_ready.eq(0)
                m.next = "REPLY_EMPTY"
        with m.Case(P.Op.WRITE_WEIGHTS):
            word_bytes = -(-p.word_bits // 8)
            with m.If((length < P.WRITE_WEIGHTS_HEADER.size + word_bytes) | ~c.frame.whole_words):
                fail(P.Err.BAD_LENGTH)
            with m.Else():
                m.d.sync += [c.waddr.eq(c.fields(P.WRITE_WEIGHTS_HEADER).addr),
                             c.rd_idx.eq(P.WRITE_WEIGHTS_HEADER.size), c.words_sum.eq(0)]
                m.next = "WW_COUNT"
        with m.Case(P.Op.SET_SLOT):
            slot = c.fields(P.SET_SLOT_LAYOUT)
            with m.If(length != P.SET_SLOT_LAYOUT.size):
                fail(P.Err.BAD_LENGTH)
            with m.Elif(slot.slot >= P.SLOTS):
                fail(P.Err.BAD_SLOT)
            with m.Elif((slot.rows == 0) | (slot.chunks == 0) | (slot.rows > P.max_link_rows(p)) |
                        (slot.chunks > p.max_chunks)):
                fail(P.Err.OUT_OF_RANGE)
            with m.Else():
                m.d.sync += [c.words_sum.eq(slot.base), c.rows_left.eq(slot.rows)]
                m.next = "SS_SIZE"
        with m.Case(P.Op.MATVEC):
            slot = c.fields(P.MATVEC_HEADER).slot
            with m.If(length < P.MATVEC_HEADER.size):
                fail(P.Err.BAD_LENGTH)
            with m.Elif(slot >= P.SLOTS):
                fail(P.Err.BAD_SLOT)
            with m.Elif(~c.slot_valid.bit_select(slot[:SLOT_BITS], 1)):
                fail(P.Err.EMPTY_SLOT)
            with m.Else():
                m.next = "MV_SLOT"
        if lm is None:
            return
        with m.Case(P.Op.WRITE_MEM):
            header = c.fields(P.WRITE_MEM_HEADER)
            with m.If(length < P.WRITE_MEM_HEADER.size):
                fail(P.Err.BAD_LENGTH)
            with m.Elif(header.space > max(P.Space)):
                fail(P.Err.OUT_OF_RANGE)
            with m.Else():
                m.d.sync += [c.mem_space.eq(header.space), c.mem_addr.eq(header.addr),
                             c.rd_idx.eq(P.WRITE_MEM_HEADER.size), c.words_sum.eq(0)]
                m.next = "WM_COUNT"
        with m.Case(P.Op.LM_CONFIG):
            cfg = c.fields(P.LM_CONFIG_LAYOUT)
            with m.If(length != P.LM_CONFIG_LAYOUT.size):
                fail(P.Err.BAD_LENGTH)
            with m.Elif((cfg.step_start >= cfg.prog_end) | (cfg.prog_end > lm.prog_depth) | (cfg.vocab == 0) |
                        (cfg.vocab > lm.max_vocab) | (cfg.logits + cfg.vocab > lm.vmem_depth)):
                fail(P.Err.OUT_OF_RANGE)
            with m.Else():
                m.d.sync += [c.lm_ready.eq(1), c.run.step_start.eq(cfg.step_start), c.run.prog_end.eq(cfg.prog_end),
                             c.run.logits.eq(cfg.logits), c.run.vocab.eq(cfg.vocab)]
                m.next = "REPLY_EMPTY"
        with m.Case(P.Op.GENERATE):
            gen = c.fields(P.GENERATE_LAYOUT)
            with m.If(length < P.GENERATE_LAYOUT.size + 1):
                fail(P.Err.BAD_LENGTH)
            with m.Elif(~c.lm_ready):
                fail(P.Err.NOT_LOADED)
            with m.Elif(gen.max_tokens == 0):
                fail(P.Err.OUT_OF_RANGE)
            with m.Else():
                m.d.sync += [c.rd_idx.eq(P.GENERATE_LAYOUT.size), c.run.max_tokens.eq(gen.max_tokens),
                             c.run.seed.eq(gen.seed), c.run.inv_temperature.eq(gen.inv_temperature),
                             c.run.top_k.eq(gen.top_k), c.run.stop.eq(gen.stop)]
                m.next = "GEN_SCAN"

    # -- the commands ---------------------------------------------------------------------------
    def _identify_status_reset(self, c):
        """IDENTIFY and STATUS: bytes from a constant and the counters; RESET (and the other
        commands without reply data): an empty reply."""
        m = c.m
        ident = P.identify_payload(self._params, self._clock_hz, self._lm)
        is_identify = c.op == P.Op.IDENTIFY
        count = Mux(is_identify, len(ident), P.STATUS_LAYOUT.size)
        with m.State("REPLY_ROM"):
            with m.If(c.reply_header(c.op | P.REPLY, count)):
                m.next = "ROM_DATA"
        with m.State("ROM_DATA"):
            ident_bits = Const(int.from_bytes(ident, "little"), len(ident) * 8)
            byte = Mux(is_identify, ident_bits.word_select(c.ridx, 8), c.status.as_value().word_select(c.ridx, 8))
            with m.If(c.send(byte, count)):
                m.next = "DONE"
        with m.State("REPLY_EMPTY"):
            with m.If(c.reply_header(c.op | P.REPLY, 0)):
                m.next = "DONE"

    @staticmethod
    def _gather_bytes(c, prefix, value, count, nbytes, then):
        """States ``{prefix}_READ`` / ``{prefix}_BYTE``: the payload's next ``nbytes`` bytes (from
        ``c.rd_idx``, ``count`` counting them from 0) shifted into the top of ``value``, little-endian;
        then state ``then``. A byte every two cycles (the buffer's read, then its data)."""
        m = c.m
        with m.State(f"{prefix}_READ"):
            m.d.comb += c.buffer.addr.eq(c.rd_idx)
            m.next = f"{prefix}_BYTE"
        with m.State(f"{prefix}_BYTE"):
            m.d.sync += [value.eq(Cat(value[8:], c.buffer.data)), c.rd_idx.eq(c.rd_idx + 1), count.eq(count + 1)]
            with m.If(count == nbytes - 1):
                m.next = then
            with m.Else():
                m.next = f"{prefix}_READ"

    def _write_weights(self, c):
        """WRITE_WEIGHTS: the range check (words counted by stepping through the payload), then
        each word gathered from the buffer and written into the engine."""
        m, p, eng = c.m, self._params, c.engine
        word_bytes = -(-p.word_bits // 8)
        waddr = c.waddr
        word = Signal(word_bytes * 8)
        count = Signal(range(word_bytes + 1))
        with m.State("WW_COUNT"):
            with m.If(c.rd_idx < c.length):
                m.d.sync += [c.rd_idx.eq(c.rd_idx + word_bytes), c.words_sum.eq(c.words_sum + 1)]
            with m.Elif(waddr + c.words_sum > p.weight_depth):
                c.fail(P.Err.OUT_OF_RANGE)
            with m.Else():
                m.d.sync += [c.rd_idx.eq(P.WRITE_WEIGHTS_HEADER.size), count.eq(0)]
                m.next = "WW_READ"
        self._gather_bytes(c, "WW", word, count, word_bytes, "WW_WRITE")
        with m.State("WW_WRITE"):
            m.d.comb += [eng.wr.valid.eq(1), eng.wr.payload.addr.eq(waddr), eng.wr.payload.data.eq(word[:p.word_bits])]
            with m.If(eng.wr.ready):
                m.d.sync += [waddr.eq(waddr + 1), count.eq(0)]
                with m.If(c.rd_idx >= c.length):
                    m.next = "REPLY_EMPTY"
                with m.Else():
                    m.next = "WW_READ"

    def _set_slot(self, c):
        """SET_SLOT: the matrix's last word, ``base + ceil(rows / lanes) * chunks``, by repeated
        addition (one tile per cycle), checked against the memory; then the slot is written."""
        m, p = c.m, self._params
        slot = c.fields(P.SET_SLOT_LAYOUT)
        rows_left = c.rows_left
        with m.State("SS_SIZE"):
            with m.If(c.words_sum > p.weight_depth):
                c.fail(P.Err.OUT_OF_RANGE)
            with m.Elif(rows_left != 0):
                m.d.sync += [c.words_sum.eq(c.words_sum + slot.chunks),
                             rows_left.eq(Mux(rows_left > p.lanes, rows_left - p.lanes, 0))]
            with m.Else():
                m.d.comb += [c.slots_wr.addr.eq(slot.slot[:SLOT_BITS]), c.slots_wr.en.eq(1),
                             c.slots_wr.data.base.eq(slot.base), c.slots_wr.data.rows.eq(slot.rows),
                             c.slots_wr.data.chunks.eq(slot.chunks)]
                m.d.sync += c.slot_valid.bit_select(slot.slot[:SLOT_BITS], 1).eq(1)
                m.next = "REPLY_EMPTY"

    def _matvec(self, c):
        """MATVEC: the slot's entry and the length check, the engine's command, the activations
        gathered from the buffer a word at a time, then each result tile sent as it comes, every
        value sign-extended to ``acc_bytes`` little-endian bytes."""
        m, p, eng = c.m, self._params, c.engine
        acc_bytes = P.acc_bytes(p)
        cur = Signal.like(c.slots_rd.data)       # the slot's entry
        act_word = Signal(p.trits * 8)
        count = Signal(range(p.trits + 1))       # bytes of the activation word gathered
        chunks_left = Signal(16)
        tile = Signal(eng.layouts.result)
        value = Signal(range(p.lanes + 1))       # of the tile being sent
        value_byte = Signal(range(acc_bytes + 1))
        tile_byte = Signal(range(p.lanes * acc_bytes + 1))
        # the byte picked out of the tile is registered before it leaves (the tile's byte
        # multiplexer then ends at a register, not in the transmitter's CRC): a byte every two
        # cycles, far above the UART's rate
        send_b, send_full = Signal(8), Signal()
        with m.State("MV_SLOT"):
            m.d.comb += c.slots_rd.addr.eq(c.fields(P.MATVEC_HEADER).slot[:SLOT_BITS])
            m.next = "MV_CHECK"
        with m.State("MV_CHECK"):
            m.d.sync += cur.eq(c.slots_rd.data)
            with m.If(c.length != P.MATVEC_HEADER.size + _const_mul(c.slots_rd.data.chunks, p.trits, 17)):
                c.fail(P.Err.BAD_LENGTH)
            with m.Else():
                m.next = "MV_CMD"
        with m.State("MV_CMD"):
            m.d.comb += [eng.cmd.valid.eq(1), eng.cmd.payload.base.eq(cur.base), eng.cmd.payload.rows.eq(cur.rows),
                         eng.cmd.payload.chunks.eq(cur.chunks)]
            with m.If(eng.cmd.ready):
                m.d.sync += [c.rd_idx.eq(P.MATVEC_HEADER.size), count.eq(0), chunks_left.eq(cur.chunks)]
                m.next = "MV_HDR"
        with m.State("MV_HDR"):
            with m.If(c.reply_header(c.op | P.REPLY, _const_mul(cur.rows, acc_bytes, 16))):
                m.next = "MV_READ"
        with m.State("MV_READ"):
            m.d.comb += c.buffer.addr.eq(c.rd_idx)
            m.next = "MV_BYTE"
        with m.State("MV_BYTE"):
            m.d.sync += [act_word.eq(Cat(act_word[8:], c.buffer.data)), c.rd_idx.eq(c.rd_idx + 1),
                         count.eq(count + 1)]
            with m.If(count == p.trits - 1):
                m.next = "MV_ACT"
            with m.Else():
                m.next = "MV_READ"
        with m.State("MV_ACT"):
            m.d.comb += [eng.act.valid.eq(1), eng.act.payload.eq(act_word)]
            with m.If(eng.act.ready):
                m.d.sync += [count.eq(0), chunks_left.eq(chunks_left - 1)]
                with m.If(chunks_left == 1):
                    m.next = "MV_TILE"
                with m.Else():
                    m.next = "MV_READ"
        with m.State("MV_TILE"):
            m.d.comb += eng.res.ready.eq(1)
            with m.If(eng.res.valid):
                m.d.sync += [tile.eq(eng.res.payload), value.eq(0), value_byte.eq(0), tile_byte.eq(0), send_full.eq(0)]
                m.next = "MV_SEND"
        with m.State("MV_SEND"):
            wide = Cat(*[Cat(v, v[-1].replicate(acc_bytes * 8 - p.acc_width))
                         for v in (tile.values[i] for i in range(p.lanes))])
            with m.If(~send_full):
                m.d.sync += [send_b.eq(wide.word_select(tile_byte, 8)), send_full.eq(1)]
            m.d.comb += [self.reply.payload.valid.eq(send_full), self.reply.payload.payload.eq(send_b)]
            with m.If(send_full & self.reply.payload.ready):
                m.d.sync += [tile_byte.eq(tile_byte + 1), send_full.eq(0)]
                with m.If(value_byte == acc_bytes - 1):
                    m.d.sync += [value_byte.eq(0), value.eq(value + 1)]
                    with m.If(value == tile.count - 1):
                        with m.If(tile.last):
                            m.next = "DONE"
                        with m.Else():
                            m.next = "MV_TILE"
                with m.Else():
                    m.d.sync += value_byte.eq(value_byte + 1)

    def _write_mem(self, c):
        """WRITE_MEM: the elements counted and checked (whole, at least one, in range), then each
        gathered from the buffer and written into the LM core's memory of its space."""
        m, lm, core = c.m, self._lm, self.core
        ibytes = P.instruction_bytes(lm)
        mem_space, mem_addr = c.mem_space, c.mem_addr
        element = Signal(8 * ibytes)               # its bytes at the top, little-endian
        count = Signal(range(ibytes + 1))
        ebytes = Mux(mem_space == P.Space.PROGRAM, ibytes, Mux(mem_space == P.Space.SCALE, 2, 1))
        depth = Mux(mem_space == P.Space.PROGRAM, lm.prog_depth,
                    Mux(mem_space == P.Space.CONST, lm.cmem_depth,
                        Mux(mem_space == P.Space.EMBED, lm.embed_depth, lm.max_vocab)))
        with m.State("WM_COUNT"):
            with m.If(c.rd_idx < c.length):
                m.d.sync += [c.rd_idx.eq(c.rd_idx + ebytes), c.words_sum.eq(c.words_sum + 1)]
            with m.Elif((c.rd_idx != c.length) | (c.words_sum == 0)):
                c.fail(P.Err.BAD_LENGTH)
            with m.Elif(mem_addr + c.words_sum > depth):
                c.fail(P.Err.OUT_OF_RANGE)
            with m.Else():
                m.d.sync += [c.rd_idx.eq(P.WRITE_MEM_HEADER.size), count.eq(0)]
                m.next = "WM_READ"
        self._gather_bytes(c, "WM", element, count, ebytes, "WM_WRITE")
        with m.State("WM_WRITE"):
            written = Signal()
            m.d.comb += [core.prog_wr.payload.addr.eq(mem_addr), core.prog_wr.payload.data.eq(element),
                         core.cload.payload.addr.eq(mem_addr), core.cload.payload.data.eq(element[-8:]),
                         core.embed_wr.payload.addr.eq(mem_addr), core.embed_wr.payload.data.eq(element[-8:]),
                         core.scale_wr.payload.addr.eq(mem_addr), core.scale_wr.payload.data.eq(element[-16:])]
            with m.Switch(mem_space):
                for space, port in ((P.Space.PROGRAM, core.prog_wr), (P.Space.CONST, core.cload),
                                    (P.Space.EMBED, core.embed_wr), (P.Space.SCALE, core.scale_wr)):
                    with m.Case(space):
                        m.d.comb += [port.valid.eq(1), written.eq(port.ready)]
            with m.If(written):
                m.d.sync += [mem_addr.eq(mem_addr + 1), count.eq(0)]
                with m.If(c.rd_idx >= c.length):
                    m.next = "REPLY_EMPTY"
                with m.Else():
                    m.next = "WM_READ"

    def _generate(self, c):
        """GENERATE: the prompt checked against ``vocab``, the core started and fed the prompt,
        then a reply frame for each token it makes and one for its end (or fault)."""
        from .lmcore import OUT_END, OUT_TOKEN
        m, core = c.m, self.core
        token, count, reason = Signal(8), Signal(16), Signal()
        with m.State("GEN_SCAN"):
            m.d.comb += c.buffer.addr.eq(c.rd_idx)
            m.next = "GEN_SCAN_BYTE"
        with m.State("GEN_SCAN_BYTE"):
            with m.If(c.buffer.data >= c.run.vocab):
                c.fail(P.Err.OUT_OF_RANGE)
            with m.Elif(c.rd_idx == c.length - 1):
                m.next = "GEN_RUN"
            with m.Else():
                m.d.sync += c.rd_idx.eq(c.rd_idx + 1)
                m.next = "GEN_SCAN"
        with m.State("GEN_RUN"):
            m.d.comb += [core.run.valid.eq(1), core.run.payload.eq(c.run)]
            with m.If(core.run.ready):
                m.d.sync += c.rd_idx.eq(P.GENERATE_LAYOUT.size)
                m.next = "GEN_READ"

        def take_fault():
            # the core stops taking the prompt on a fault: answer its error
            m.d.comb += core.out.ready.eq(1)
            with m.If(core.out.valid):
                c.fail(core.out.payload.code)

        with m.State("GEN_READ"):
            m.d.comb += c.buffer.addr.eq(c.rd_idx)
            m.next = "GEN_FEED"
            take_fault()
        with m.State("GEN_FEED"):
            last = c.rd_idx == c.length - 1
            m.d.comb += [c.buffer.addr.eq(c.rd_idx), c.buffer.en.eq(0), core.prompt.valid.eq(1),
                         core.prompt.payload.token.eq(c.buffer.data), core.prompt.payload.last.eq(last)]
            with m.If(core.prompt.ready):
                m.d.sync += c.rd_idx.eq(c.rd_idx + 1)
                with m.If(last):
                    m.next = "GEN_OUT"
                with m.Else():
                    m.next = "GEN_READ"
            take_fault()
        with m.State("GEN_OUT"):
            m.d.comb += core.out.ready.eq(1)
            with m.If(core.out.valid):
                m.d.sync += [token.eq(core.out.payload.token), count.eq(core.out.payload.count),
                             reason.eq(core.out.payload.reason), c.ridx.eq(0)]
                with m.Switch(core.out.payload.kind):
                    with m.Case(OUT_TOKEN):
                        m.next = "GEN_TOKEN"
                    with m.Case(OUT_END):
                        m.next = "GEN_END"
                    with m.Default():
                        c.fail(core.out.payload.code)
        with m.State("GEN_TOKEN"):
            with m.If(c.reply_header(c.op | P.REPLY, 1)):
                m.next = "GEN_TOKEN_DATA"
        with m.State("GEN_TOKEN_DATA"):
            with m.If(c.send(token, 1)):
                m.next = "GEN_OUT"
        with m.State("GEN_END"):
            with m.If(c.reply_header(c.op | P.REPLY, P.GENERATE_END_LAYOUT.size)):
                m.next = "GEN_END_DATA"
        with m.State("GEN_END_DATA"):
            end = Signal(P.GENERATE_END_LAYOUT.shape)
            m.d.comb += [end.count.eq(count), end.reason.eq(reason)]
            with m.If(c.send(end.as_value().word_select(c.ridx, 8), P.GENERATE_END_LAYOUT.size)):
                m.next = "DONE"

    # -- error replies and completion -------------------------------------------------------------
    def _finish(self, c):
        """An error frame (ERROR), or the success count (DONE); then the frame is released once
        every reply byte has left (WAIT_TX)."""
        m, status = c.m, c.status
        with m.State("ERROR"):
            with m.If(c.reply_header(P.ERROR, P.ERROR_LAYOUT.size)):
                m.d.sync += c.ridx.eq(0)
                m.next = "ERROR_DATA"
        with m.State("ERROR_DATA"):
            error = Signal(P.ERROR_LAYOUT.shape)
            m.d.comb += [error.code.eq(c.err_code), error.op.eq(c.op), error.expected.eq(c.expected)]
            with m.If(c.send(error.as_value().word_select(c.ridx, 8), P.ERROR_LAYOUT.size)):
                m.d.sync += [status.errors.eq(status.errors + 1), status.last_error.eq(c.err_code),
                             self.error.eq(1)]
                m.next = "WAIT_TX"
        with m.State("DONE"):
            with m.If(c.count_reply):
                m.d.sync += status.frames_ok.eq(status.frames_ok + 1)
            m.d.sync += self.error.eq(0)
            m.next = "WAIT_TX"
        with m.State("WAIT_TX"):
            m.d.comb += self.frame.ready.eq(self.reply.idle)
            with m.If(self.reply.idle):
                m.next = "IDLE"

    def _share_engine(self, c):
        """The LM core's wiring: the slot table's second read port, the engine's results, and the
        engine itself, which belongs to the core while a generation runs."""
        m, core, eng = c.m, self.core, c.engine
        slots_rd = c.slots_rd2
        m.d.comb += [slots_rd.addr.eq(core.slot_addr), core.slot.eq(slots_rd.data),
                     core.slot_valid.eq(c.slot_valid), core.eng_busy.eq(eng.busy),
                     core.res.valid.eq(eng.res.valid), core.res.payload.eq(eng.res.payload),
                     self.activity.eq(Cat(core.busy, eng.busy, core.vector.busy))]
        with m.If(core.busy):
            m.d.comb += [eng.cmd.valid.eq(core.cmd.valid), eng.cmd.payload.eq(core.cmd.payload),
                         core.cmd.ready.eq(eng.cmd.ready), eng.act.valid.eq(core.act.valid),
                         eng.act.payload.eq(core.act.payload), core.act.ready.eq(eng.act.ready),
                         eng.res.ready.eq(core.res.ready)]
