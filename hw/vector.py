"""The vector unit of the on-chip LM step: the fixed-point instructions of :mod:`tritium.sim.lmstep`.

The unit owns the vector memory (int32 Q16.16 words), the constant memory (8-bit block-floating-
point mantissas), the sigmoid table and the scalar registers ``M`` (a max), ``SS`` (a sum of
squares) and ``G`` (a rescale gain and shift). It executes one :data:`instruction_layout`
instruction at a time, each bit for bit the function of :func:`tritium.sim.lmstep.execute`; the
ternary products and the embedding rows come from outside through the ``ext`` stream, the
quantized activations leave through ``xq``. The instruction set and its encoding are defined here
once (:class:`VOp`, :func:`instruction_layout`, :func:`encode`) and used by the tests and the
program loader.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, enum, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..sim import golden, lmstep
from ..sim.golden import TritiumValueError
from .params import rejected

__all__ = ["VOp", "instruction_layout", "encode", "decode", "SerialDivider", "SerialSqrt", "VectorUnit"]

class VOp(enum.Enum, shape=4):
    """The vector unit's operations (:data:`tritium.sim.lmstep.OPCODES` gives their arithmetic)."""
    EMBED = 0
    MULC = 1
    MUL = 2
    ADD = 3
    SIGMOID = 4
    SILU = 5
    RSUB = 6
    FGATE = 7
    QUANT = 8
    MATVEC = 9
    GAIN = 10
    RESCALE = 11


#: Width of an instruction's element count (up to :data:`golden.MAX_VECTOR`).
COUNT_BITS = golden.MAX_VECTOR.bit_length()


def instruction_layout(*, addr_bits, caddr_bits):
    """The instruction word: ``op``, ``red`` (0 none, 1 max into ``M``, 2 sum of squares into
    ``SS``), ``dst`` / ``a`` / ``b`` (vector addresses), ``n`` (elements), ``c`` (constant address
    or matrix number), ``shift`` (signed), ``imm`` (16 bits, the gain constant's mantissa)."""
    return data.StructLayout({
        "op": VOp, "red": 2, "dst": addr_bits, "a": addr_bits, "b": addr_bits, "n": COUNT_BITS,
        "c": caddr_bits, "shift": signed(8), "imm": 16,
    })


def encode(op, layout):
    """The bits of :class:`tritium.sim.lmstep.Op` ``op`` in ``layout``; refuses fields that do not fit."""
    fields = {"op": VOp[op.code.upper()], "red": op.red, "dst": op.dst, "a": op.a, "b": op.b, "n": op.n,
              "c": op.c, "shift": op.shift, "imm": op.imm}
    for name, value in fields.items():
        if name == "op":
            continue
        shape = Shape.cast(layout[name].shape)
        lo, hi = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed else (0, (1 << shape.width) - 1)
        if not lo <= value <= hi:
            raise TritiumValueError(f"instruction {op.code}: field {name} = {value} does not fit {shape}")
    if op.red and (op.code not in lmstep.ELEMENTWISE or op.n == 0):
        raise TritiumValueError(f"instruction {op.code}: a reduction needs an elementwise instruction of n > 0")
    for src in ("a", "b"):
        start = getattr(op, src)
        if op.code in lmstep.ELEMENTWISE and op.n and start < op.dst < start + op.n:
            raise TritiumValueError(f"instruction {op.code}: dst {op.dst} overlaps {src} {start}..{start + op.n - 1} "
                                    "part-way (it must equal the source or miss it)")
    return layout.const(fields).as_bits()


def decode(bits, layout):
    """The :class:`tritium.sim.lmstep.Op` of the instruction word ``bits`` (an int) in ``layout``,
    as the unit reads it; ``None`` for an opcode outside :class:`VOp`. No other check: a device
    checks the fields it uses as it runs (``docs/protocol.md``, GENERATE)."""
    fields = {}
    for name, field in layout:
        shape = Shape.cast(field.shape)
        value = (bits >> field.offset) & ((1 << shape.width) - 1)
        if shape.signed and value >> (shape.width - 1):
            value -= 1 << shape.width
        fields[name] = value
    try:
        code = VOp(fields.pop("op")).name.lower()
    except ValueError:
        return None
    return lmstep.Op(code, **fields)


class SerialDivider(wiring.Component):
    """Unsigned ``floor(num / den)``, one quotient bit per cycle (restoring division).

    Members
    -------
    req : In(stream: ``num`` (``num_width`` bits), ``den`` (``den_width`` bits, non-zero))
    res : Out(stream: quotient, ``num_width`` bits)
        The quotient is offered ``num_width + 1`` cycles after the request is taken; a new request
        is taken once it has been.
    """

    def __init__(self, *, num_width, den_width):
        self.num_width, self.den_width = num_width, den_width
        super().__init__({
            "req": In(stream.Signature(data.StructLayout({"num": num_width, "den": den_width}))),
            "res": Out(stream.Signature(num_width)),
        })

    def elaborate(self, platform):
        m = Module()
        nw, dw = self.num_width, self.den_width
        num, den = Signal(nw), Signal(dw)
        rem = Signal(dw + 1)
        count = Signal(range(nw + 1))
        busy = Signal()
        trial = Signal(dw + 2)
        m.d.comb += [self.req.ready.eq(~busy & ~self.res.valid), self.res.payload.eq(num),
                     trial.eq(Cat(num[-1], rem) - den)]
        with m.If(self.req.valid & self.req.ready):
            m.d.sync += [num.eq(self.req.payload.num), den.eq(self.req.payload.den), rem.eq(0),
                         count.eq(nw), busy.eq(1)]
        with m.If(busy):
            # shift the next numerator bit into the remainder; keep the difference if non-negative
            with m.If(~trial[-1]):
                m.d.sync += [rem.eq(trial[:dw + 1]), num.eq((num << 1) | 1)]
            with m.Else():
                m.d.sync += [rem.eq(Cat(num[-1], rem)[:dw + 1]), num.eq(num << 1)]
            m.d.sync += count.eq(count - 1)
            with m.If(count == 1):
                m.d.sync += [busy.eq(0), self.res.valid.eq(1)]
        with m.If(self.res.valid & self.res.ready):
            m.d.sync += self.res.valid.eq(0)
        return m


class SerialSqrt(wiring.Component):
    """``floor(sqrt(x))`` of an unsigned ``width``-bit ``x`` (``width`` even), two bits per cycle
    (the digit-by-digit method).

    Members
    -------
    req : In(stream of ``width`` bits)
    res : Out(stream of ``width // 2`` bits), offered ``width // 2 + 1`` cycles after the request.
    """

    def __init__(self, *, width):
        if width % 2:
            raise rejected(self, TritiumValueError(f"SerialSqrt width = {width} must be even"))
        self.width = width
        super().__init__({"req": In(stream.Signature(width)), "res": Out(stream.Signature(width // 2))})

    def elaborate(self, platform):
        m = Module()
        w, h = self.width, self.width // 2
        x = Signal(w)
        rem = Signal(h + 2)
        root = Signal(h)
        count = Signal(range(h + 1))
        busy = Signal()
        cur = Signal(h + 4)
        trial = Signal(h + 4)
        m.d.comb += [self.req.ready.eq(~busy & ~self.res.valid), self.res.payload.eq(root),
                     cur.eq(Cat(x[-2:], rem)), trial.eq(cur - Cat(Const(1, 2), root))]
        with m.If(self.req.valid & self.req.ready):
            m.d.sync += [x.eq(self.req.payload), rem.eq(0), root.eq(0), count.eq(h), busy.eq(1)]
        with m.If(busy):
            m.d.sync += [x.eq(x << 2), count.eq(count - 1)]
            with m.If(~trial[-1]):
                m.d.sync += [rem.eq(trial), root.eq((root << 1) | 1)]
            with m.Else():
                m.d.sync += [rem.eq(cur), root.eq(root << 1)]
            with m.If(count == 1):
                m.d.sync += [busy.eq(0), self.res.valid.eq(1)]
        with m.If(self.res.valid & self.res.ready):
            m.d.sync += self.res.valid.eq(0)
        return m


def _sat32(m, value, name):
    """A comb signal: ``value`` (signed) saturated to int32."""
    out = Signal(signed(32), name=name)
    with m.If(value > golden.INT32_MAX):
        m.d.comb += out.eq(golden.INT32_MAX)
    with m.Elif(value < golden.INT32_MIN):
        m.d.comb += out.eq(golden.INT32_MIN)
    with m.Else():
        m.d.comb += out.eq(value)
    return out


def _round_first(m, p, sh):
    """First half of ``sat32(golden.shift_round(p, sh))`` for a signed ``p`` (< 2**62 in magnitude)
    and a signed shift ``sh``: ``(t, s, pos, left)`` with ``t = p + 2**(s-1)``, ``s = min(sh, 63)``
    (for ``sh > 0``), ``pos = sh > 0`` and ``left`` the saturated result of a shift ``sh <= 0``."""
    s = Signal(6, name="round_s")
    half = Signal(64, name="round_half")
    t = Signal(signed(67), name="round_t")
    m.d.comb += [s.eq(Mux(sh > 63, 63, sh[:6])), half.eq(Const(1, 64) << (s - 1)[:6]), t.eq(p + half)]
    k = Signal(11, name="round_k")
    m.d.comb += k.eq(Mux(sh < 0, -sh, 0))
    p32 = _sat32(m, p, "round_p32")
    shifted = Signal(signed(64), name="round_shifted")
    m.d.comb += shifted.eq(p32 << k[:5])
    left = Signal(signed(33), name="round_left")
    with m.If((k >= 32) & (p != 0)):
        m.d.comb += left.eq(Mux(p < 0, golden.INT32_MIN, golden.INT32_MAX))
    with m.Else():
        m.d.comb += left.eq(_sat32(m, shifted, "round_left_sat"))
    return t, s, sh > 0, left


def _round_second(m, t, s, pos, left):
    """Second half: the result of :func:`_round_first`'s ``(t, s, pos, left)``, saturated to int32."""
    right = Signal(signed(67), name="round_right")
    m.d.comb += right.eq(t >> s)
    return _sat32(m, Mux(pos, right, left), "round_out")


def _lower_bound(m, c, s):
    """``clamp(golden.shift_round(c, s), 0, FIX_ONE)`` for an int8 ``c`` and a signed shift ``s``
    (fgate's lower bound), combinationally. Small because ``c`` is: a value <= 0 gives 0; a right
    shift of 8 or more gives 0; a left shift of 17 or more passes FIX_ONE."""
    out = Signal(range(golden.FIX_ONE + 1), name="lb_value")
    right = Signal(8, name="lb_right")
    left = Signal(8 + 17, name="lb_left")
    sr = Signal(3, name="lb_sr")
    m.d.comb += [sr.eq(s[:3]), right.eq((c.as_unsigned() + (Const(1, 8) << (sr - 1)[:3])) >> sr),
                 left.eq(c.as_unsigned()[:7] << (-s).as_unsigned()[:5])]
    with m.If(c <= 0):
        m.d.comb += out.eq(0)
    with m.Elif(s >= 8):
        m.d.comb += out.eq(0)
    with m.Elif(s > 0):
        m.d.comb += out.eq(right)
    with m.Elif((s < -16) | (left > golden.FIX_ONE)):
        m.d.comb += out.eq(golden.FIX_ONE)
    with m.Else():
        m.d.comb += out.eq(left)
    return out


class VectorUnit(wiring.Component):
    """Executes the LM step's vector instructions.

    Parameters
    ----------
    vmem_depth : int
        Words of vector memory (int32).
    cmem_depth : int
        Constant mantissas (int8).

    Members
    -------
    instr : In(stream of :func:`instruction_layout`)
        Taken when the unit is idle (``ready``); the next is taken once it has finished. An
        elementwise instruction streams one element per cycle (``n + 9`` cycles with no stall: a 6-stage
        pipeline and two cycles of reduction);
        ``quant`` first normalises ``M`` and divides (about 40 cycles), ``gain`` normalises,
        takes a 62-bit root and divides (about 110 cycles).
    ext : In(stream of signed(32))
        The ``n`` values an ``embed`` or ``matvec`` instruction writes to ``dst``, in order.
    xq : Out(stream of signed(8))
        The ``n`` activations of a ``quant`` instruction, in order; the unit stalls while
        ``xq`` is not ready.
    cload : In(stream: ``addr``, ``data`` (signed 8))
        Writes the constant memory (while idle).
    peek : In(stream of a vector address)
        Reads one word of vector memory while idle (an instruction waiting goes first);
        the word is offered on ``word`` two cycles after, from a register.
    word : Out(stream of signed(32))
    busy : Out(1)
        High from an instruction's acceptance until it has finished.
    """

    def __init__(self, *, vmem_depth, cmem_depth):
        for name, value in (("vmem_depth", vmem_depth), ("cmem_depth", cmem_depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise rejected(self, TritiumValueError(f"{name} = {value!r} must be a positive integer"))
        self.vmem_depth, self.cmem_depth = vmem_depth, cmem_depth
        self.addr_bits = max(1, (vmem_depth - 1).bit_length())
        self.caddr_bits = max(1, (cmem_depth - 1).bit_length())
        self.layout = instruction_layout(addr_bits=self.addr_bits, caddr_bits=self.caddr_bits)
        super().__init__({
            "instr": In(stream.Signature(self.layout)),
            "ext": In(stream.Signature(signed(32))),
            "xq": Out(stream.Signature(signed(8))),
            "cload": In(stream.Signature(data.StructLayout({"addr": self.caddr_bits, "data": signed(8)}))),
            "peek": In(stream.Signature(self.addr_bits)),
            "word": Out(stream.Signature(signed(32))),
            "busy": Out(1),
        })
        self.vmem = memory.Memory(shape=signed(32), depth=vmem_depth, init=[])
        self.cmem = memory.Memory(shape=signed(8), depth=cmem_depth, init=[])
        self.sigmoid = memory.Memory(shape=unsigned(17), depth=golden.SIGMOID_ENTRIES,
                                     init=[int(v) for v in golden.sigmoid_table()])

    def elaborate(self, platform):
        m = Module()
        m.submodules.vmem, m.submodules.cmem, m.submodules.sigmoid = self.vmem, self.cmem, self.sigmoid
        m.submodules.div = div = SerialDivider(num_width=39, den_width=16)
        m.submodules.sqrt = sqrt = SerialSqrt(width=62)
        ra = self.vmem.read_port(transparent_for=())
        rb = self.vmem.read_port(transparent_for=())
        wr = self.vmem.write_port()
        rc = self.cmem.read_port(transparent_for=())
        cw = self.cmem.write_port()
        rs = self.sigmoid.read_port(transparent_for=())

        cur = Signal(self.layout)
        reg_m = Signal(33)                  # M: a max of |int32| (<= 2**31)
        reg_ss = Signal(62)                 # SS
        reg_g = Signal(24)                  # G: gain and shift
        reg_gs = Signal(signed(10))
        q = Signal(24)                      # quant: reciprocal and normalising shift
        qs = Signal(signed(7))
        nx = Signal(64)                     # the scalar normaliser's value and shift
        ns = Signal(signed(8))
        mn, ms = Signal(16), Signal(signed(8))
        kk = Signal(6)
        gnum, gimm, gbit = Signal(31), Signal(16), Signal(4)
        issue = Signal(COUNT_BITS + 1)
        wcount = Signal(COUNT_BITS + 1)
        advance = Signal()

        # -- pipeline: issue -> S1 (operands) -> S2 (select) -> S3 (product) -> S4 (round: add)
        #    -> S5 (round: shift, saturate) -> S6 (addend, saturate, write); then the reductions
        #    fold in two more cycles. Every stage moves together (`advance`): only `xq` stalls it.
        v = [Signal(name=f"v{k}") for k in range(1, 7)]                  # v[0] is S1 ... v[5] is S6
        idx = [Signal(COUNT_BITS, name=f"i{k}") for k in range(1, 7)]
        a2, b2, c2 = Signal(signed(32)), Signal(signed(32)), Signal(signed(8))
        x3, y3 = Signal(signed(32)), Signal(signed(32))
        direct3, use3 = Signal(signed(34)), Signal()
        p4 = Signal(signed(66))
        t5, s5, pos5, left5 = Signal(signed(67)), Signal(6), Signal(), Signal(signed(33))
        r6 = Signal(signed(32))
        sh3, sh4 = Signal(signed(10)), Signal(signed(10))
        add3, add4, add5, add6 = (Signal(signed(33), name=f"add{k}") for k in range(3, 7))
        red_v, red_val = Signal(), Signal(signed(32))
        sq_v, sq_p = Signal(), Signal(54)
        running = Signal()
        peek_word = Signal(signed(32))
        op = cur.op

        m.d.comb += [self.busy.eq(running | ~self.instr.ready)]
        # S1: the operands (read last cycle); the sigmoid table's address; fgate's lower bound
        # clamp((a >> SHIFT) + ENTRIES/2, 0, ENTRIES-1) without an adder: the shifted value is in
        # range exactly when the bits above it are all equal (its sign extension), and adding
        # ENTRIES/2 then flips its top bit; outside, the sign picks the first or the last entry
        ib = (golden.SIGMOID_ENTRIES - 1).bit_length()
        top = ra.data[golden.SIGMOID_SHIFT + ib - 1:]
        in_range = top.all() | ~top.any()
        m.d.comb += [rs.en.eq(advance),
                     rs.addr.eq(Mux(in_range, Cat(ra.data[golden.SIGMOID_SHIFT:golden.SIGMOID_SHIFT + ib - 1],
                                                  ~ra.data[golden.SIGMOID_SHIFT + ib - 1]),
                                    Mux(ra.data[-1], 0, golden.SIGMOID_ENTRIES - 1)))]
        lb = Signal(signed(33))
        with m.If(advance):
            m.d.sync += [v[1].eq(v[0]), idx[1].eq(idx[0]), a2.eq(ra.data), b2.eq(rb.data), c2.eq(rc.data),
                         lb.eq(_lower_bound(m, rc.data, cur.shift - golden.FIX_FRAC))]
        # S2: pick the product's operands, its shift and an addend: one signed 32 x 32 product
        # path (4 SB_MAC16 on the UP5K); add, rsub and sigmoid bypass it
        x, y = Signal(signed(32)), Signal(signed(32))
        direct, use_direct = Signal(signed(34)), Signal()
        sh, addend = Signal(signed(10)), Signal(signed(33))
        sig = rs.data
        un = Signal(signed(34))
        m.d.comb += un.eq(Mux(qs >= 0, a2 >> qs.as_unsigned()[:6], a2 << (-qs).as_unsigned()[:5]))
        with m.Switch(op):
            with m.Case(VOp.MULC):
                m.d.comb += [x.eq(a2), y.eq(c2), sh.eq(cur.shift)]
            with m.Case(VOp.MUL):
                m.d.comb += [x.eq(a2), y.eq(b2), sh.eq(golden.FIX_FRAC)]
            with m.Case(VOp.SILU):
                m.d.comb += [x.eq(a2), y.eq(sig), sh.eq(golden.FIX_FRAC)]
            with m.Case(VOp.FGATE):
                m.d.comb += [x.eq(golden.FIX_ONE - lb), y.eq(a2), sh.eq(golden.FIX_FRAC), addend.eq(lb)]
            with m.Case(VOp.RESCALE):
                m.d.comb += [x.eq(a2), y.eq(reg_g), sh.eq(reg_gs)]
            with m.Case(VOp.QUANT):
                m.d.comb += [x.eq(un), y.eq(q), sh.eq(golden.RECIP_SHIFT)]
            with m.Case(VOp.SIGMOID):
                m.d.comb += [direct.eq(sig), use_direct.eq(1)]
            with m.Case(VOp.ADD):
                m.d.comb += [direct.eq(a2 + b2), use_direct.eq(1)]
            with m.Case(VOp.RSUB):
                m.d.comb += [direct.eq(golden.FIX_ONE - a2), use_direct.eq(1)]
        # S3: the product (or the bypassed value); S4: the rounding's addition, and the left
        # shift of a negative shift; S5: the rounding's right shift and the saturation
        ta, sa, posa, lefta = _round_first(m, p4, sh4)
        rounded = _round_second(m, t5, s5, pos5, left5)
        with m.If(advance):
            m.d.sync += [v[2].eq(v[1]), idx[2].eq(idx[1]), x3.eq(x), y3.eq(y), sh3.eq(sh), add3.eq(addend),
                         direct3.eq(direct), use3.eq(use_direct),
                         v[3].eq(v[2]), idx[3].eq(idx[2]), p4.eq(Mux(use3, direct3, x3 * y3)), sh4.eq(sh3),
                         add4.eq(add3),
                         v[4].eq(v[3]), idx[4].eq(idx[3]), t5.eq(ta), s5.eq(sa), pos5.eq(posa), left5.eq(lefta),
                         add5.eq(add4),
                         v[5].eq(v[4]), idx[5].eq(idx[4]), r6.eq(rounded), add6.eq(add5)]
        # S6: add, saturate, write (or offer the activation); hand the value to the reductions
        result = _sat32(m, r6 + add6, "result")
        qv = Signal(signed(8))
        with m.If(r6 > 127):
            m.d.comb += qv.eq(127)
        with m.Elif(r6 < -127):
            m.d.comb += qv.eq(-127)
        with m.Else():
            m.d.comb += qv.eq(r6)
        is_quant = op == VOp.QUANT
        last = v[5]
        m.d.comb += [self.xq.payload.eq(qv), self.xq.valid.eq(last & is_quant & running),
                     advance.eq(~(last & is_quant & ~self.xq.ready))]
        m.d.sync += red_v.eq(0)
        with m.If(last & advance & running):
            m.d.sync += wcount.eq(wcount + 1)
            with m.If(~is_quant):
                m.d.comb += [wr.addr.eq(cur.dst + idx[5]), wr.data.eq(result), wr.en.eq(1)]
            m.d.sync += [red_v.eq(cur.red != 0), red_val.eq(result)]
        # reductions: |value| against M; the square (after the shift), then its sum into SS
        absr = Signal(33)
        sq_in = Signal(signed(27))
        m.d.comb += [absr.eq(Mux(red_val < 0, -red_val, red_val)), sq_in.eq(red_val >> golden.SUMSQ_SHIFT)]
        m.d.sync += [sq_v.eq(red_v & (cur.red == lmstep.RED_SUMSQ)), sq_p.eq(sq_in * sq_in)]
        with m.If(red_v & (cur.red == lmstep.RED_MAX) & (absr > reg_m)):
            m.d.sync += reg_m.eq(absr)
        with m.If(sq_v):
            m.d.sync += reg_ss.eq(reg_ss + sq_p)
        red_pending = red_v | sq_v

        # issue: read element `issue` of a, b and c
        m.d.comb += [ra.en.eq(advance), rb.en.eq(advance), rc.en.eq(advance),
                     ra.addr.eq(cur.a + issue), rb.addr.eq(cur.b + issue), rc.addr.eq(cur.c + issue)]
        with m.If(advance):
            m.d.sync += v[0].eq(0)
        with m.If(running & advance & (issue < cur.n)):
            m.d.sync += [v[0].eq(1), idx[0].eq(issue), issue.eq(issue + 1)]

        # constant loads (idle only) share the constant memory's write port
        m.d.comb += [cw.addr.eq(self.cload.payload.addr), cw.data.eq(self.cload.payload.data)]

        m.d.comb += [div.res.ready.eq(1), sqrt.res.ready.eq(1)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.instr.ready.eq(1), self.cload.ready.eq(1), cw.en.eq(self.cload.valid),
                             self.peek.ready.eq(~self.instr.valid)]
                with m.If(self.peek.valid & ~self.instr.valid):
                    m.d.comb += ra.addr.eq(self.peek.payload)
                    m.next = "PEEK"
                with m.If(self.instr.valid):
                    p = self.instr.payload
                    m.d.sync += [cur.eq(p), issue.eq(0), wcount.eq(0)]
                    with m.If(p.red == lmstep.RED_MAX):
                        m.d.sync += reg_m.eq(0)
                    with m.If(p.red == lmstep.RED_SUMSQ):
                        m.d.sync += reg_ss.eq(0)
                    with m.Switch(p.op):
                        with m.Case(VOp.EMBED, VOp.MATVEC):
                            with m.If(p.n != 0):
                                m.next = "EXT"
                        with m.Case(VOp.QUANT):
                            m.d.sync += [nx.eq(reg_m), ns.eq(0)]
                            m.next = "Q_NORM"
                        with m.Case(VOp.GAIN):
                            m.d.sync += [nx.eq(reg_m), ns.eq(0)]
                            m.next = "G_NORM_M"
                        with m.Default():
                            m.d.sync += running.eq(1)
                            m.next = "RUN"
            with m.State("PEEK"):      # the word is registered before it leaves (no RAM output path out)
                m.d.sync += peek_word.eq(ra.data)
                m.next = "PEEK_WORD"
            with m.State("PEEK_WORD"):
                m.d.comb += [self.word.valid.eq(1), self.word.payload.eq(peek_word)]
                with m.If(self.word.ready):
                    m.next = "IDLE"
            with m.State("EXT"):
                m.d.comb += self.ext.ready.eq(1)
                with m.If(self.ext.valid):
                    m.d.comb += [wr.addr.eq(cur.dst + wcount), wr.data.eq(self.ext.payload), wr.en.eq(1)]
                    m.d.sync += wcount.eq(wcount + 1)
                    with m.If(wcount + 1 == cur.n):
                        m.next = "IDLE"
            with m.State("RUN"):
                with m.If(wcount == cur.n):
                    m.d.sync += running.eq(0)
                    m.next = "DRAIN"
            with m.State("DRAIN"):     # the last reduction terms land
                with m.If(~red_pending):
                    m.next = "IDLE"

            # normalise nx to `bits` bits: shift right while too wide, left while too narrow
            def normalise(bits, done):
                with m.If(nx == 0):
                    m.next = done
                with m.Elif(nx >= (1 << bits)):
                    m.d.sync += [nx.eq(nx >> 1), ns.eq(ns + 1)]
                with m.Elif(nx < (1 << (bits - 1))):
                    m.d.sync += [nx.eq(nx << 1), ns.eq(ns - 1)]
                with m.Else():
                    m.next = done

            with m.State("Q_NORM"):
                normalise(golden.QUANT_NORM_BITS, "Q_DIV")
            with m.State("Q_DIV"):
                m.d.sync += qs.eq(ns)
                with m.If(nx == 0):
                    m.d.sync += [q.eq(0), running.eq(1)]
                    m.next = "RUN"
                with m.Else():
                    m.d.comb += [div.req.valid.eq(1), div.req.payload.num.eq(127 << golden.RECIP_SHIFT),
                                 div.req.payload.den.eq(nx)]
                    with m.If(div.req.ready):
                        m.next = "Q_WAIT"
            with m.State("Q_WAIT"):
                with m.If(div.res.valid):
                    m.d.sync += [q.eq(div.res.payload), running.eq(1)]
                    m.next = "RUN"

            with m.State("G_NORM_M"):
                normalise(golden.QUANT_NORM_BITS, "G_K")
            with m.State("G_K"):
                m.d.sync += [mn.eq(nx), ms.eq(ns), nx.eq(reg_ss), kk.eq(0), gnum.eq(0), gimm.eq(cur.imm),
                             gbit.eq(0)]
                m.next = "G_MUL"
            with m.State("G_MUL"):      # gnum = mn * imm, shift and add over the 16 bits of imm
                with m.If(gimm[0]):
                    m.d.sync += gnum.eq(gnum + (mn << gbit))
                m.d.sync += [gimm.eq(gimm >> 1), gbit.eq(gbit + 1)]
                with m.If(gbit == 15):
                    m.next = "G_K_LOOP"
            with m.State("G_K_LOOP"):   # scale SS by 4 until its root has 30 or 31 bits
                with m.If((nx != 0) & (nx < (1 << 59))):
                    m.d.sync += [nx.eq(nx << 2), kk.eq(kk + 1)]
                with m.Else():
                    m.next = "G_SQRT"
            with m.State("G_SQRT"):
                with m.If((nx == 0) | (mn == 0)):
                    m.d.sync += [reg_g.eq(0), reg_gs.eq(0)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += [sqrt.req.valid.eq(1), sqrt.req.payload.eq(nx)]
                    with m.If(sqrt.req.ready):
                        m.next = "G_SQRT_WAIT"
            with m.State("G_SQRT_WAIT"):
                with m.If(sqrt.res.valid):
                    m.d.sync += [nx.eq(sqrt.res.payload), ns.eq(0)]
                    m.next = "G_NORM_R"
            with m.State("G_NORM_R"):
                normalise(golden.RSQRT_NORM_BITS, "G_DIV")
            with m.State("G_DIV"):
                m.d.comb += [div.req.valid.eq(1), div.req.payload.num.eq(gnum << golden.GAIN_SHIFT),
                             div.req.payload.den.eq(nx)]
                with m.If(div.req.ready):
                    m.next = "G_WAIT"
            with m.State("G_WAIT"):
                with m.If(div.res.valid):
                    m.d.sync += [reg_g.eq(div.res.payload),
                                 reg_gs.eq(golden.GAIN_SHIFT + cur.shift - ms + ns - kk)]
                    m.next = "IDLE"
        return m
