"""The device side of the link: frame parser, command sequencer, engine, response framer.

Behaves byte for byte like :class:`tritium.sim.device_model.DeviceModel` (the tests check it);
the protocol itself is defined in :mod:`tritium.hw.protocol`.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..sim.cost import matvec_device_cycles  # the cost model, pure Python: re-exported here
from . import protocol as P
from .engine import TernaryMatVec
from .params import EngineParams, LMParams, rejected

SLOT_BITS = (P.SLOTS - 1).bit_length()

__all__ = ["crc16_next", "matvec_device_cycles", "FrameTx", "LinkDevice"]


def _crc_taps():
    # the byte update is linear over GF(2) in (crc, byte): find which inputs feed each output bit
    taps = [[] for _ in range(16)]
    for i in range(24):
        crc, byte = (1 << i, 0) if i < 16 else (0, 1 << (i - 16))
        out = P.crc16(bytes([byte]), crc)
        for o in range(16):
            if out >> o & 1:
                taps[o].append(i)
    return taps


_CRC_TAPS = _crc_taps()


def crc16_next(crc, byte):
    """CRC-16/CCITT-FALSE after ``byte`` (the update of :func:`protocol.crc16`): an XOR network,
    one byte per cycle."""
    bits = Cat(crc, byte)
    return Cat(*[Cat(*[bits[i] for i in taps]).xor() for taps in _CRC_TAPS])


def _const_mul(value, constant, width):
    """``value * constant`` for a constant, as a sum of shifted copies (adders, never a multiplier)."""
    terms = [(value << i) for i in range(constant.bit_length()) if constant >> i & 1]
    total = Const(0, width)
    for t in terms:
        total = (total + t)[:width]
    return total


class FrameTx(wiring.Component):
    """Emits one frame per ``hdr`` transfer: SYNC, seq, op, length, then ``length`` bytes taken
    from ``data``, then the CRC.

    Members
    -------
    hdr : In(stream of {seq, op, length})
        Accepted when idle.
    data : In(stream of bytes)
        The payload, passed through to ``tx`` byte by byte.
    tx : Out(stream of bytes)
    idle : Out(1)
        No frame in progress.
    """

    def __init__(self):
        super().__init__({
            "hdr": In(stream.Signature(data.StructLayout({"seq": 8, "op": 8, "length": 16}))),
            "data": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        seq, op, length = Signal(8), Signal(8), Signal(16)
        count = Signal(16)
        crc = Signal(16, init=0xFFFF)
        sent = Signal()
        m.d.comb += sent.eq(self.tx.valid & self.tx.ready)

        def emit(byte, nxt, update_crc=True):
            m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(byte)]
            with m.If(sent):
                if update_crc:
                    m.d.sync += crc.eq(crc16_next(crc, byte))
                m.next = nxt

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.hdr.ready.eq(1), self.idle.eq(~self.hdr.valid)]
                with m.If(self.hdr.valid):
                    m.d.sync += [seq.eq(self.hdr.payload.seq), op.eq(self.hdr.payload.op),
                                 length.eq(self.hdr.payload.length), count.eq(0), crc.eq(0xFFFF)]
                    m.next = "SYNC"
            with m.State("SYNC"):
                emit(P.SYNC, "SEQ", update_crc=False)
            with m.State("SEQ"):
                emit(seq, "OP")
            with m.State("OP"):
                emit(op, "LEN_LO")
            with m.State("LEN_LO"):
                emit(length[:8], "LEN_HI")
            with m.State("LEN_HI"):
                emit(length[8:], "DATA")
                with m.If(sent & (length == 0)):
                    m.next = "CRC_LO"
            with m.State("DATA"):
                m.d.comb += [self.tx.valid.eq(self.data.valid), self.tx.payload.eq(self.data.payload),
                             self.data.ready.eq(self.tx.ready)]
                with m.If(sent):
                    m.d.sync += [crc.eq(crc16_next(crc, self.data.payload)), count.eq(count + 1)]
                    with m.If(count == length - 1):
                        m.next = "CRC_LO"
            with m.State("CRC_LO"):
                emit(crc[:8], "CRC_HI", update_crc=False)
            with m.State("CRC_HI"):
                emit(crc[8:], "IDLE", update_crc=False)
        return m


class LinkDevice(wiring.Component):
    """The accelerator behind the framed link: request bytes in, reply bytes out.

    Parameters
    ----------
    params : EngineParams
    clock_hz : int
        Reported by IDENTIFY.
    timeout_cycles : int
        A frame with no byte for this many cycles part-way is dropped (:attr:`Err.TIMEOUT`); the
        same silence ends the skip after an oversize length (also with TIMEOUT).
    lm : LMParams or None
        With it, the device also runs the whole LM step (:class:`tritium.hw.lmcore.LMCore`):
        WRITE_MEM, LM_CONFIG and GENERATE. GENERATE answers with a frame per token as the core
        makes it; the link takes no request meanwhile (a UART front end buffers what arrives).

    Members
    -------
    rx : In(stream of bytes)
        Request bytes. Not ready while a reply is being sent (one request at a time; a UART
        front end buffers what arrives meanwhile).
    tx : Out(stream of bytes)
        Reply bytes.
    busy : Out(1)
        A request is being executed or answered.
    error : Out(1)
        The last reply was an error frame.
    in_frame : Out(1)
        A request frame has started and is not complete, or the payload of a frame refused for
        an oversize length is being skipped (until its declared end or the idle timeout).
    activity : Out(3) (with ``lm`` only)
        For performance counters: bit 0 a generation runs, bit 1 the engine is busy, bit 2 the
        vector unit is busy.
    """

    def __init__(self, *, params, clock_hz=12_000_000, timeout_cycles=1 << 16, lm=None):
        if not isinstance(params, EngineParams):
            raise rejected(self, TypeError(f"params must be an EngineParams, not {params!r}"))
        try:
            P.check_link_params(params)
        except ValueError as e:
            raise rejected(self, e) from None
        if not isinstance(timeout_cycles, int) or timeout_cycles < 2:
            raise rejected(self, ValueError(f"timeout_cycles = {timeout_cycles!r} must be an integer >= 2"))
        if lm is not None and not isinstance(lm, LMParams):
            raise rejected(self, TypeError(f"lm must be an LMParams or None, not {lm!r}"))
        self._params = params
        self._clock_hz = clock_hz
        self._timeout = timeout_cycles
        self._lm = lm
        self.engine = TernaryMatVec(params=params)
        if lm is not None:
            from .lmcore import LMCore
            self.core = LMCore(params=params, lm=lm)
        members = {"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8)),
                   "busy": Out(1), "error": Out(1), "in_frame": Out(1)}
        if lm is not None:
            members["activity"] = Out(3)
        super().__init__(members)

    @property
    def params(self):
        return self._params

    @property
    def lm(self):
        return self._lm

    def elaborate(self, platform):
        m = Module()
        p = self._params
        lay = self.engine.layouts
        m.submodules.engine = eng = self.engine
        m.submodules.ftx = ftx = FrameTx()
        wiring.connect(m, ftx.tx, wiring.flipped(self.tx))

        maxp = P.max_payload(p)
        word_bytes = -(-p.word_bits // 8)
        acc_bytes = P.acc_bytes(p)
        m.submodules.buf = buf = memory.Memory(shape=8, depth=maxp, init=[])
        buf_wr = buf.write_port()
        buf_rd = buf.read_port(transparent_for=())

        slot_layout = data.StructLayout({"base": lay.addr_shape, "rows": lay.command.members["rows"],
                                         "chunks": lay.command.members["chunks"]})
        m.submodules.slots = slots = memory.Memory(shape=slot_layout, depth=P.SLOTS, init=[])
        slot_wr = slots.write_port()
        slot_rd = slots.read_port(transparent_for=())
        slot_valid = Signal(P.SLOTS)

        # frame fields
        seq, op, length = Signal(8), Signal(8), Signal(16)
        hidx = Signal(2)
        idx = Signal(16)
        crc = Signal(16)
        crc_lo = Signal(8)
        lm = self._lm
        pb = [Signal(8, name=f"pb{i}") for i in range(12 if lm else 7)]  # first payload bytes
        wpos = Signal(range(max(word_bytes, 2)))            # payload position mod word_bytes after 2
        expected = Signal(8)
        frames_ok, errors, last_error = Signal(16), Signal(16), Signal(8)
        err_code = Signal(8)
        count_reply = Signal()
        timer = Signal(range(self._timeout + 1))
        skip = Signal()            # the error being answered refused an oversize length
        skip_left = Signal(17)     # bytes of that frame (payload and CRC) still to discard

        rx_byte = self.rx.payload
        rx_take = Signal()
        m.d.comb += rx_take.eq(self.rx.valid & self.rx.ready)

        # decoded fields
        base = Cat(pb[1], pb[2])
        rows = Cat(pb[3], pb[4])
        chunks = Cat(pb[5], pb[6])
        addr16 = Cat(pb[0], pb[1])
        slot_no = pb[0]

        # helpers for execution
        rd_idx = Signal(16)        # next buffer index to read
        waddr = Signal(17)
        word = Signal(word_bytes * 8)
        wcount = Signal(range(word_bytes + 1))
        words_sum = Signal(18)
        rows_left = Signal(17)
        cur = Signal(slot_layout)
        act_word = Signal(p.trits * 8)
        acount = Signal(range(p.trits + 1))
        xleft = Signal(16)
        tile = Signal(lay.result)
        vi = Signal(range(p.lanes + 1))
        bi = Signal(range(acc_bytes + 1))
        bidx = Signal(range(p.lanes * acc_bytes + 1))
        ident = P.identify_payload(p, self._clock_hz, lm)
        ridx = Signal(range(max(len(ident), 8) + 1))

        if lm:
            from .lmcore import OUT_END, OUT_TOKEN, run_layout
            m.submodules.core = core = self.core
            slot_rd2 = slots.read_port(transparent_for=())
            m.d.comb += [slot_rd2.addr.eq(core.slot_addr), core.slot.eq(slot_rd2.data),
                         core.slot_valid.eq(slot_valid), core.eng_busy.eq(eng.busy),
                         core.res.valid.eq(eng.res.valid), core.res.payload.eq(eng.res.payload)]
            lm_ready = Signal()                      # LM_CONFIG accepted (cleared by RESET)
            lm_cfg = Signal(run_layout(lm))          # LM_CONFIG's fields, then GENERATE's
            ibytes = P.instruction_bytes(lm)
            mem_space = Signal(8)
            mem_addr = Signal(33)
            mword = Signal(8 * ibytes)
            mcount = Signal(range(ibytes + 1))
            gen_token, gen_count, gen_reason = Signal(8), Signal(16), Signal()

        def start_reply(code_op, n):
            m.d.comb += [ftx.hdr.valid.eq(1), ftx.hdr.payload.seq.eq(seq), ftx.hdr.payload.op.eq(code_op),
                         ftx.hdr.payload.length.eq(n)]

        def fail(code):
            m.d.sync += err_code.eq(code)
            m.next = "ERROR"

        def receiving():
            # a state that takes request bytes part-way through a frame; a frame that stops
            # arriving (no byte for timeout_cycles) is dropped
            m.d.comb += [self.rx.ready.eq(1), self.in_frame.eq(1)]
            with m.If(rx_take):
                m.d.sync += timer.eq(0)
            with m.Elif(timer == self._timeout - 1):
                fail(P.Err.TIMEOUT)
            with m.Else():
                m.d.sync += timer.eq(timer + 1)

        m.d.comb += self.busy.eq(1)
        with m.FSM():
            with m.State("HUNT"):
                m.d.comb += [self.rx.ready.eq(1), self.busy.eq(0)]
                with m.If(rx_take & (rx_byte == P.SYNC)):
                    m.d.sync += [hidx.eq(0), crc.eq(0xFFFF), seq.eq(0), op.eq(0), timer.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                receiving()
                with m.If(rx_take):
                    m.d.sync += [crc.eq(crc16_next(crc, rx_byte)), hidx.eq(hidx + 1)]
                    with m.Switch(hidx):
                        with m.Case(0):
                            m.d.sync += seq.eq(rx_byte)
                        with m.Case(1):
                            m.d.sync += op.eq(rx_byte)
                        with m.Case(2):
                            m.d.sync += length[:8].eq(rx_byte)
                        with m.Case(3):
                            m.d.sync += [length[8:].eq(rx_byte), idx.eq(0), wpos.eq(0), timer.eq(0)]
                            full = Cat(length[:8], rx_byte)
                            with m.If(full > maxp):
                                # answered now; the declared payload and CRC are then skipped
                                m.d.sync += [skip.eq(1), skip_left.eq(full + 2)]
                                fail(P.Err.BAD_LENGTH)
                            with m.Elif(full == 0):
                                m.next = "CRC_LO"
                            with m.Else():
                                m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                receiving()
                m.d.comb += [buf_wr.addr.eq(idx), buf_wr.data.eq(rx_byte), buf_wr.en.eq(rx_take)]
                with m.If(rx_take):
                    m.d.sync += [crc.eq(crc16_next(crc, rx_byte)), idx.eq(idx + 1)]
                    for i, b in enumerate(pb):
                        with m.If(idx == i):
                            m.d.sync += b.eq(rx_byte)
                    with m.If(idx >= 2):
                        m.d.sync += wpos.eq(Mux(wpos == word_bytes - 1, 0, wpos + 1))
                    with m.If(idx == length - 1):
                        m.next = "CRC_LO"
            with m.State("CRC_LO"):
                receiving()
                with m.If(rx_take):
                    m.d.sync += crc_lo.eq(rx_byte)
                    m.next = "CRC_HI"
            with m.State("CRC_HI"):
                receiving()
                with m.If(rx_take):
                    with m.If(Cat(crc_lo, rx_byte) == crc):
                        m.next = "CHECK"
                    with m.Else():
                        fail(P.Err.BAD_CRC)

            with m.State("CHECK"):
                resync = (op == P.Op.IDENTIFY) | (op == P.Op.RESET)
                with m.If(~resync & (seq != expected)):
                    fail(P.Err.BAD_SEQ)
                with m.Else():
                    m.d.sync += expected.eq(seq + 1)
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                m.d.sync += [count_reply.eq(1), rd_idx.eq(0), ridx.eq(0)]
                with m.Switch(op):
                    with m.Case(P.Op.IDENTIFY, P.Op.STATUS):
                        with m.If(length != 0):
                            fail(P.Err.BAD_LENGTH)
                        with m.Else():
                            m.next = "REPLY_ROM"
                    with m.Case(P.Op.RESET):
                        with m.If(length != 0):
                            fail(P.Err.BAD_LENGTH)
                        with m.Else():
                            m.d.sync += [slot_valid.eq(0), frames_ok.eq(0), errors.eq(0), last_error.eq(0),
                                         count_reply.eq(0)]
                            if lm:
                                m.d.sync += lm_ready.eq(0)
                            m.next = "REPLY_EMPTY"
                    with m.Case(P.Op.WRITE_WEIGHTS):
                        with m.If((length < 2 + word_bytes) | (wpos != 0)):
                            fail(P.Err.BAD_LENGTH)
                        with m.Else():
                            m.d.sync += [waddr.eq(addr16), rd_idx.eq(2), words_sum.eq(0)]
                            m.next = "WW_COUNT"
                    with m.Case(P.Op.SET_SLOT):
                        with m.If(length != 7):
                            fail(P.Err.BAD_LENGTH)
                        with m.Elif(slot_no >= P.SLOTS):
                            fail(P.Err.BAD_SLOT)
                        with m.Elif((rows == 0) | (chunks == 0) | (rows > P.max_link_rows(p)) |
                                    (chunks > p.max_chunks)):
                            fail(P.Err.OUT_OF_RANGE)
                        with m.Else():
                            m.d.sync += [words_sum.eq(base), rows_left.eq(rows)]
                            m.next = "SS_SIZE"
                    with m.Case(P.Op.MATVEC):
                        with m.If(length < 1):
                            fail(P.Err.BAD_LENGTH)
                        with m.Elif(slot_no >= P.SLOTS):
                            fail(P.Err.BAD_SLOT)
                        with m.Elif(~slot_valid.bit_select(slot_no[:SLOT_BITS], 1)):
                            fail(P.Err.EMPTY_SLOT)
                        with m.Else():
                            m.next = "MV_SLOT"
                    if lm:
                        with m.Case(P.Op.WRITE_MEM):
                            with m.If(length < P.WRITE_MEM_HEADER.size):
                                fail(P.Err.BAD_LENGTH)
                            with m.Elif(pb[0] > max(P.Space)):
                                fail(P.Err.OUT_OF_RANGE)
                            with m.Else():
                                m.d.sync += [mem_space.eq(pb[0]), mem_addr.eq(Cat(*pb[1:5])),
                                             rd_idx.eq(P.WRITE_MEM_HEADER.size), words_sum.eq(0)]
                                m.next = "WM_COUNT"
                        with m.Case(P.Op.LM_CONFIG):
                            step_start, prog_end, logits, vocab = (Cat(pb[i], pb[i + 1]) for i in (0, 2, 4, 6))
                            with m.If(length != P.LM_CONFIG_LAYOUT.size):
                                fail(P.Err.BAD_LENGTH)
                            with m.Elif((step_start >= prog_end) | (prog_end > lm.prog_depth) | (vocab == 0) |
                                        (vocab > lm.max_vocab) | (logits + vocab > lm.vmem_depth)):
                                fail(P.Err.OUT_OF_RANGE)
                            with m.Else():
                                m.d.sync += [lm_ready.eq(1), lm_cfg.step_start.eq(step_start),
                                             lm_cfg.prog_end.eq(prog_end), lm_cfg.logits.eq(logits),
                                             lm_cfg.vocab.eq(vocab)]
                                m.next = "REPLY_EMPTY"
                        with m.Case(P.Op.GENERATE):
                            with m.If(length < P.GENERATE_LAYOUT.size + 1):
                                fail(P.Err.BAD_LENGTH)
                            with m.Elif(~lm_ready):
                                fail(P.Err.NOT_LOADED)
                            with m.Elif(Cat(pb[0], pb[1]) == 0):
                                fail(P.Err.OUT_OF_RANGE)
                            with m.Else():
                                m.d.sync += [rd_idx.eq(P.GENERATE_LAYOUT.size), lm_cfg.max_tokens.eq(Cat(pb[0], pb[1])),
                                             lm_cfg.seed.eq(Cat(*pb[2:6])), lm_cfg.inv_temperature.eq(Cat(pb[6], pb[7])),
                                             lm_cfg.top_k.eq(Cat(pb[8], pb[9])), lm_cfg.stop.eq(Cat(pb[10], pb[11]))]
                                m.next = "GEN_SCAN"
                    with m.Default():
                        fail(P.Err.UNKNOWN_OP)

            # -- IDENTIFY / STATUS: bytes from a small table --------------------------------------
            with m.State("REPLY_ROM"):
                n_bytes = Mux(op == P.Op.IDENTIFY, len(ident), 5)
                start_reply(op | P.REPLY, n_bytes)
                with m.If(ftx.hdr.ready):
                    m.next = "ROM_DATA"
            with m.State("ROM_DATA"):
                ident_bits = Const(int.from_bytes(ident, "little"), len(ident) * 8)
                status_bits = Cat(frames_ok, errors, last_error)
                byte = Mux(op == P.Op.IDENTIFY, ident_bits.word_select(ridx, 8), status_bits.word_select(ridx, 8))
                n_bytes = Mux(op == P.Op.IDENTIFY, len(ident), 5)
                m.d.comb += [ftx.data.valid.eq(1), ftx.data.payload.eq(byte)]
                with m.If(ftx.data.ready):
                    m.d.sync += ridx.eq(ridx + 1)
                    with m.If(ridx == n_bytes - 1):
                        m.next = "DONE"
            with m.State("REPLY_EMPTY"):
                start_reply(op | P.REPLY, 0)
                with m.If(ftx.hdr.ready):
                    m.next = "DONE"

            # -- WRITE_WEIGHTS: range check, then words from the buffer into the engine -----------
            with m.State("WW_COUNT"):
                # words = (length - 2) / word_bytes, counted by stepping through the payload
                with m.If(rd_idx < length):
                    m.d.sync += [rd_idx.eq(rd_idx + word_bytes), words_sum.eq(words_sum + 1)]
                with m.Elif(waddr + words_sum > p.weight_depth):
                    fail(P.Err.OUT_OF_RANGE)
                with m.Else():
                    m.d.sync += [rd_idx.eq(2), wcount.eq(0)]
                    m.next = "WW_READ"
            with m.State("WW_READ"):
                m.d.comb += buf_rd.addr.eq(rd_idx)
                m.next = "WW_BYTE"
            with m.State("WW_BYTE"):
                m.d.sync += [word.eq(Cat(word[8:], buf_rd.data)), rd_idx.eq(rd_idx + 1), wcount.eq(wcount + 1)]
                with m.If(wcount == word_bytes - 1):
                    m.next = "WW_WRITE"
                with m.Else():
                    m.next = "WW_READ"
            with m.State("WW_WRITE"):
                m.d.comb += [eng.wr.valid.eq(1), eng.wr.payload.addr.eq(waddr),
                             eng.wr.payload.data.eq(word[:p.word_bits])]
                with m.If(eng.wr.ready):
                    m.d.sync += [waddr.eq(waddr + 1), wcount.eq(0)]
                    with m.If(rd_idx >= length):
                        m.next = "REPLY_EMPTY"
                    with m.Else():
                        m.next = "WW_READ"

            # -- SET_SLOT: words = ceil(rows / lanes) * chunks by repeated addition ---------------
            with m.State("SS_SIZE"):
                with m.If(words_sum > p.weight_depth):
                    fail(P.Err.OUT_OF_RANGE)
                with m.Elif(rows_left != 0):
                    m.d.sync += [words_sum.eq(words_sum + chunks),
                                 rows_left.eq(Mux(rows_left > p.lanes, rows_left - p.lanes, 0))]
                with m.Else():
                    m.d.comb += [slot_wr.addr.eq(slot_no[:SLOT_BITS]), slot_wr.en.eq(1),
                                 slot_wr.data.base.eq(base), slot_wr.data.rows.eq(rows),
                                 slot_wr.data.chunks.eq(chunks)]
                    m.d.sync += slot_valid.bit_select(slot_no[:SLOT_BITS], 1).eq(1)
                    m.next = "REPLY_EMPTY"

            # -- MATVEC: command, activations from the buffer, results to the reply ---------------
            with m.State("MV_SLOT"):
                m.d.comb += slot_rd.addr.eq(slot_no[:SLOT_BITS])
                m.next = "MV_CHECK"
            with m.State("MV_CHECK"):
                m.d.sync += cur.eq(slot_rd.data)
                act_len = _const_mul(slot_rd.data.chunks, p.trits, 17) + 1
                with m.If(length != act_len):
                    fail(P.Err.BAD_LENGTH)
                with m.Else():
                    m.next = "MV_CMD"
            with m.State("MV_CMD"):
                m.d.comb += [eng.cmd.valid.eq(1), eng.cmd.payload.base.eq(cur.base),
                             eng.cmd.payload.rows.eq(cur.rows), eng.cmd.payload.chunks.eq(cur.chunks)]
                with m.If(eng.cmd.ready):
                    m.d.sync += [rd_idx.eq(1), acount.eq(0), xleft.eq(cur.chunks)]
                    m.next = "MV_HDR"
            with m.State("MV_HDR"):
                start_reply(op | P.REPLY, _const_mul(cur.rows, acc_bytes, 16))
                with m.If(ftx.hdr.ready):
                    m.next = "MV_READ"
            with m.State("MV_READ"):
                m.d.comb += buf_rd.addr.eq(rd_idx)
                m.next = "MV_BYTE"
            with m.State("MV_BYTE"):
                m.d.sync += [act_word.eq(Cat(act_word[8:], buf_rd.data)), rd_idx.eq(rd_idx + 1),
                             acount.eq(acount + 1)]
                with m.If(acount == p.trits - 1):
                    m.next = "MV_ACT"
                with m.Else():
                    m.next = "MV_READ"
            with m.State("MV_ACT"):
                m.d.comb += [eng.act.valid.eq(1), eng.act.payload.eq(act_word)]
                with m.If(eng.act.ready):
                    m.d.sync += [acount.eq(0), xleft.eq(xleft - 1)]
                    with m.If(xleft == 1):
                        m.next = "MV_TILE"
                    with m.Else():
                        m.next = "MV_READ"
            with m.State("MV_TILE"):
                m.d.comb += eng.res.ready.eq(1)
                with m.If(eng.res.valid):
                    m.d.sync += [tile.eq(eng.res.payload), vi.eq(0), bi.eq(0), bidx.eq(0)]
                    m.next = "MV_SEND"
            with m.State("MV_SEND"):
                # values sign-extended to acc_bytes each, little-endian, byte `bidx` of the tile
                wide = Cat(*[Cat(v, v[-1].replicate(acc_bytes * 8 - p.acc_width))
                             for v in (tile.values[i] for i in range(p.lanes))])
                m.d.comb += [ftx.data.valid.eq(1), ftx.data.payload.eq(wide.word_select(bidx, 8))]
                with m.If(ftx.data.ready):
                    m.d.sync += bidx.eq(bidx + 1)
                    with m.If(bi == acc_bytes - 1):
                        m.d.sync += [bi.eq(0), vi.eq(vi + 1)]
                        with m.If(vi == tile.count - 1):
                            with m.If(tile.last):
                                m.next = "DONE"
                            with m.Else():
                                m.next = "MV_TILE"
                    with m.Else():
                        m.d.sync += bi.eq(bi + 1)

            if lm:
                # -- WRITE_MEM: count and check the elements, then write them one by one -------
                ebytes = Mux(mem_space == P.Space.PROGRAM, ibytes, Mux(mem_space == P.Space.SCALE, 2, 1))
                depth = Mux(mem_space == P.Space.PROGRAM, lm.prog_depth,
                            Mux(mem_space == P.Space.CONST, lm.cmem_depth,
                                Mux(mem_space == P.Space.EMBED, lm.embed_depth, lm.max_vocab)))
                with m.State("WM_COUNT"):
                    with m.If(rd_idx < length):
                        m.d.sync += [rd_idx.eq(rd_idx + ebytes), words_sum.eq(words_sum + 1)]
                    with m.Elif((rd_idx != length) | (words_sum == 0)):
                        fail(P.Err.BAD_LENGTH)
                    with m.Elif(mem_addr + words_sum > depth):
                        fail(P.Err.OUT_OF_RANGE)
                    with m.Else():
                        m.d.sync += [rd_idx.eq(P.WRITE_MEM_HEADER.size), mcount.eq(0)]
                        m.next = "WM_READ"
                with m.State("WM_READ"):
                    m.d.comb += buf_rd.addr.eq(rd_idx)
                    m.next = "WM_BYTE"
                with m.State("WM_BYTE"):
                    m.d.sync += [mword.eq(Cat(mword[8:], buf_rd.data)), rd_idx.eq(rd_idx + 1), mcount.eq(mcount + 1)]
                    with m.If(mcount == ebytes - 1):
                        m.next = "WM_WRITE"
                    with m.Else():
                        m.next = "WM_READ"
                with m.State("WM_WRITE"):
                    # the element's bytes sit at the top of `mword`, little-endian
                    written = Signal()
                    m.d.comb += [core.prog_wr.payload.addr.eq(mem_addr), core.prog_wr.payload.data.eq(mword),
                                 core.cload.payload.addr.eq(mem_addr), core.cload.payload.data.eq(mword[-8:]),
                                 core.embed_wr.payload.addr.eq(mem_addr), core.embed_wr.payload.data.eq(mword[-8:]),
                                 core.scale_wr.payload.addr.eq(mem_addr), core.scale_wr.payload.data.eq(mword[-16:])]
                    with m.Switch(mem_space):
                        for space, port in ((P.Space.PROGRAM, core.prog_wr), (P.Space.CONST, core.cload),
                                            (P.Space.EMBED, core.embed_wr), (P.Space.SCALE, core.scale_wr)):
                            with m.Case(space):
                                m.d.comb += [port.valid.eq(1), written.eq(port.ready)]
                    with m.If(written):
                        m.d.sync += [mem_addr.eq(mem_addr + 1), mcount.eq(0)]
                        with m.If(rd_idx >= length):
                            m.next = "REPLY_EMPTY"
                        with m.Else():
                            m.next = "WM_READ"

                # -- GENERATE: check the prompt, then run the core and frame what it makes ------
                with m.State("GEN_SCAN"):
                    m.d.comb += buf_rd.addr.eq(rd_idx)
                    m.next = "GEN_SCAN_BYTE"
                with m.State("GEN_SCAN_BYTE"):
                    with m.If(buf_rd.data >= lm_cfg.vocab):
                        fail(P.Err.OUT_OF_RANGE)
                    with m.Elif(rd_idx == length - 1):
                        m.next = "GEN_RUN"
                    with m.Else():
                        m.d.sync += rd_idx.eq(rd_idx + 1)
                        m.next = "GEN_SCAN"
                with m.State("GEN_RUN"):
                    m.d.comb += [core.run.valid.eq(1), core.run.payload.eq(lm_cfg)]
                    with m.If(core.run.ready):
                        m.d.sync += rd_idx.eq(P.GENERATE_LAYOUT.size)
                        m.next = "GEN_READ"

                def take_fault():
                    # the core stops feeding on a fault during the prompt: answer its error
                    m.d.comb += core.out.ready.eq(1)
                    with m.If(core.out.valid):
                        fail(core.out.payload.code)

                with m.State("GEN_READ"):
                    m.d.comb += buf_rd.addr.eq(rd_idx)
                    m.next = "GEN_FEED"
                    take_fault()
                with m.State("GEN_FEED"):
                    last = rd_idx == length - 1
                    m.d.comb += [buf_rd.addr.eq(rd_idx), buf_rd.en.eq(0), core.prompt.valid.eq(1),
                                 core.prompt.payload.token.eq(buf_rd.data), core.prompt.payload.last.eq(last)]
                    with m.If(core.prompt.ready):
                        m.d.sync += rd_idx.eq(rd_idx + 1)
                        with m.If(last):
                            m.next = "GEN_OUT"
                        with m.Else():
                            m.next = "GEN_READ"
                    take_fault()
                with m.State("GEN_OUT"):
                    m.d.comb += core.out.ready.eq(1)
                    with m.If(core.out.valid):
                        m.d.sync += [gen_token.eq(core.out.payload.token), gen_count.eq(core.out.payload.count),
                                     gen_reason.eq(core.out.payload.reason), ridx.eq(0)]
                        with m.Switch(core.out.payload.kind):
                            with m.Case(OUT_TOKEN):
                                m.next = "GEN_TOKEN"
                            with m.Case(OUT_END):
                                m.next = "GEN_END"
                            with m.Default():
                                fail(core.out.payload.code)
                with m.State("GEN_TOKEN"):
                    start_reply(op | P.REPLY, 1)
                    with m.If(ftx.hdr.ready):
                        m.next = "GEN_TOKEN_DATA"
                with m.State("GEN_TOKEN_DATA"):
                    m.d.comb += [ftx.data.valid.eq(1), ftx.data.payload.eq(gen_token)]
                    with m.If(ftx.data.ready):
                        m.next = "GEN_OUT"
                with m.State("GEN_END"):
                    start_reply(op | P.REPLY, P.GENERATE_END_LAYOUT.size)
                    with m.If(ftx.hdr.ready):
                        m.next = "GEN_END_DATA"
                with m.State("GEN_END_DATA"):
                    m.d.comb += [ftx.data.valid.eq(1),
                                 ftx.data.payload.eq(Cat(gen_count, gen_reason.as_unsigned(), Const(0, 7)).word_select(ridx, 8))]
                    with m.If(ftx.data.ready):
                        m.d.sync += ridx.eq(ridx + 1)
                        with m.If(ridx == P.GENERATE_END_LAYOUT.size - 1):
                            m.next = "DONE"

            # -- error replies and completion --------------------------------------------------------
            with m.State("ERROR"):
                start_reply(P.ERROR, 3)
                with m.If(ftx.hdr.ready):
                    m.d.sync += ridx.eq(0)
                    m.next = "ERROR_DATA"
            with m.State("ERROR_DATA"):
                byte = Cat(err_code, op, expected).word_select(ridx, 8)
                m.d.comb += [ftx.data.valid.eq(1), ftx.data.payload.eq(byte)]
                with m.If(ftx.data.ready):
                    m.d.sync += ridx.eq(ridx + 1)
                    with m.If(ridx == 2):
                        m.d.sync += [errors.eq(errors + 1), last_error.eq(err_code), self.error.eq(1)]
                        m.next = "WAIT_TX"
            with m.State("DONE"):
                with m.If(count_reply):
                    m.d.sync += frames_ok.eq(frames_ok + 1)
                m.d.sync += self.error.eq(0)
                m.next = "WAIT_TX"
            with m.State("WAIT_TX"):
                with m.If(ftx.idle):
                    m.d.sync += [skip.eq(0), timer.eq(0)]
                    m.next = "HUNT"
                    with m.If(skip):
                        m.next = "SKIP"
            with m.State("SKIP"):
                # discard the payload and CRC of a frame refused for its length, so that nothing
                # in it is parsed as a frame; silence for the idle timeout ends the skip early,
                # as for any frame that stops part-way (TIMEOUT)
                m.d.comb += [self.rx.ready.eq(1), self.in_frame.eq(1)]
                with m.If(rx_take):
                    m.d.sync += [skip_left.eq(skip_left - 1), timer.eq(0)]
                    with m.If(skip_left == 1):
                        m.next = "HUNT"
                with m.Elif(timer == self._timeout - 1):
                    fail(P.Err.TIMEOUT)
                with m.Else():
                    m.d.sync += timer.eq(timer + 1)

        if lm:
            m.d.comb += self.activity.eq(Cat(core.busy, eng.busy, core.vector.busy))
            # the engine belongs to the core while a generation runs
            with m.If(core.busy):
                m.d.comb += [eng.cmd.valid.eq(core.cmd.valid), eng.cmd.payload.eq(core.cmd.payload),
                             core.cmd.ready.eq(eng.cmd.ready), eng.act.valid.eq(core.act.valid),
                             eng.act.payload.eq(core.act.payload), core.act.ready.eq(eng.act.ready),
                             eng.res.ready.eq(core.res.ready)]
        return m
