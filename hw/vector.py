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
from amaranth.lib import data, enum, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..sim import golden, lmstep
from ..sim.golden import TritiumValueError
from .params import rejected

__all__ = ["VOp", "xq_layout", "ext_layout", "word_layout", "instruction_layout", "encode", "decode", "SerialDivider", "SerialSqrt", "VectorUnit"]

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
    SFGATE = 12
    MULR = 13


#: The vector unit's widths: elements per cycle of an aligned elementwise instruction.
LANES = (1, 2, 4, 8)
#: Quotient bits per cycle of the scalar divider (``quant``'s reciprocal, ``gain``'s quotient).
DIVIDER_BITS = 3
#: Root bits per cycle of the scalar square root (``gain``).
ROOT_BITS = 2
#: Width of an instruction's element count (up to :data:`golden.MAX_VECTOR`).
COUNT_BITS = golden.MAX_VECTOR.bit_length()
#: An elementwise instruction may be taken while the one before it drains once that one has
#: issued this many times (its elements then stand far enough ahead in the pipeline: see
#: :class:`VectorUnit`).
OVERLAP_ISSUES = 7

#: ``quant`` transfers the unit holds for ``xq`` (in its pipeline and its output FIFO): enough
#: that a consumer taking one a cycle never waits for the issue, which pauses at this many owed.
XQ_DEPTH = 16

_ELEMENTWISE = [VOp[c.upper()] for c in lmstep.ELEMENTWISE]
_READS_A = [VOp[c.upper()] for c in lmstep.READS_A]
_READS_B = [VOp[c.upper()] for c in lmstep.READS_B]


def _one_of(value, ops):
    return Cat(*[value == op for op in ops]).any()


def xq_layout(lanes):
    """A transfer of ``quant`` activations: ``values`` (``lanes`` int8), the first ``count`` valid."""
    return data.StructLayout({"values": data.ArrayLayout(signed(8), lanes), "count": range(lanes + 1)})


def word_layout(lanes):
    """A ``peek``'s answer: ``value``, the element at the requested address, and ``line``, the
    ``lanes`` elements of the memory word that holds it (element ``addr - addr % lanes + k`` in
    ``line[k]``)."""
    return data.StructLayout({"value": signed(32), "line": data.ArrayLayout(signed(32), lanes)})


def ext_layout(lanes):
    """A transfer into ``ext``: ``values`` (``lanes`` int32), the first ``count`` (at least 1) valid."""
    return data.StructLayout({"values": data.ArrayLayout(signed(32), lanes), "count": range(lanes + 1)})


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
    """Unsigned ``floor(num / den)``, ``bits_per_cycle`` quotient bits per cycle (restoring division).

    ``skip``: the top ``skip`` (at most ``den_width``) quotient bits are known to be zero, that is,
    ``num >> (num_width - skip) < den`` for every request (the sender's promise): they take no
    cycles.

    Members
    -------
    req : In(stream: ``num`` (``num_width`` bits), ``den`` (``den_width`` bits, non-zero))
    res : Out(stream: quotient, ``num_width`` bits)
        The quotient is offered ``ceil((num_width - skip) / bits_per_cycle) + 1`` cycles after the
        request is taken; a new request is taken once it has been.
    """

    def __init__(self, *, num_width, den_width, bits_per_cycle=1, skip=0):
        for name, value in (("num_width", num_width), ("den_width", den_width), ("bits_per_cycle", bits_per_cycle)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise rejected(self, TritiumValueError(f"{name} = {value!r} must be a positive integer"))
        if isinstance(skip, bool) or not isinstance(skip, int) or not 0 <= skip <= min(den_width, num_width - 1):
            raise rejected(self, TritiumValueError(f"skip = {skip!r} must be an integer in 0..{min(den_width, num_width - 1)}"))
        self.num_width, self.den_width, self.bits_per_cycle, self.skip = num_width, den_width, bits_per_cycle, skip
        super().__init__({
            "req": In(stream.Signature(data.StructLayout({"num": num_width, "den": den_width}))),
            "res": Out(stream.Signature(num_width)),
        })

    def elaborate(self, platform):
        m = Module()
        r, dw, width = self.bits_per_cycle, self.den_width, self.num_width
        steps = -(-(width - self.skip) // r)
        nw = steps * r                  # the numerator bits the steps take (padded with leading zeros
        num, den = Signal(nw), Signal(dw)      # when more than all); those above start the remainder
        rem = Signal(dw + 1)
        count = Signal(range(steps + 1))
        busy = Signal()
        m.d.comb += [self.req.ready.eq(~busy & ~self.res.valid), self.res.payload.eq(num[:width])]
        with m.If(self.req.valid & self.req.ready):
            m.d.sync += [num.eq(self.req.payload.num[:nw]), den.eq(self.req.payload.den),
                         rem.eq(self.req.payload.num[nw:] if nw < width else 0), count.eq(steps), busy.eq(1)]
        # each of the r steps shifts the next numerator bit into the remainder and keeps the
        # difference when it is non-negative (the remainder stays below `den`)
        rem_k, num_k = rem, num
        for k in range(r):
            trial = Signal(dw + 2, name=f"trial{k}")
            m.d.comb += trial.eq(Cat(num_k[-1], rem_k) - den)
            rem_n, num_n = Signal.like(rem, name=f"rem{k}"), Signal.like(num, name=f"num{k}")
            m.d.comb += [rem_n.eq(Mux(trial[-1], Cat(num_k[-1], rem_k)[:dw + 1], trial[:dw + 1])),
                         num_n.eq(Cat(~trial[-1], num_k[:-1]))]
            rem_k, num_k = rem_n, num_n
        with m.If(busy):
            m.d.sync += [rem.eq(rem_k), num.eq(num_k), count.eq(count - 1)]
            with m.If(count == 1):
                m.d.sync += [busy.eq(0), self.res.valid.eq(1)]
        with m.If(self.res.valid & self.res.ready):
            m.d.sync += self.res.valid.eq(0)
        return m


class SerialSqrt(wiring.Component):
    """``floor(sqrt(x))`` of an unsigned ``width``-bit ``x`` (``width`` even), ``bits_per_cycle``
    root bits per cycle (the digit-by-digit method).

    Members
    -------
    req : In(stream of ``width`` bits)
    res : Out(stream of ``width // 2`` bits), offered ``ceil(width / 2 / bits_per_cycle) + 1``
        cycles after the request.
    """

    def __init__(self, *, width, bits_per_cycle=1):
        if isinstance(width, bool) or not isinstance(width, int) or width < 2 or width % 2:
            raise rejected(self, TritiumValueError(f"SerialSqrt width = {width!r} must be a positive even integer"))
        if isinstance(bits_per_cycle, bool) or not isinstance(bits_per_cycle, int) or bits_per_cycle < 1:
            raise rejected(self, TritiumValueError(f"bits_per_cycle = {bits_per_cycle!r} must be a positive integer"))
        self.width, self.bits_per_cycle = width, bits_per_cycle
        super().__init__({"req": In(stream.Signature(width)), "res": Out(stream.Signature(width // 2))})

    def elaborate(self, platform):
        m = Module()
        r = self.bits_per_cycle
        steps = -(-(self.width // 2) // r)
        h = steps * r                   # root bits, the radicand padded with leading zeros
        w = 2 * h
        x = Signal(w)
        rem = Signal(h + 2)
        root = Signal(h)
        count = Signal(range(steps + 1))
        busy = Signal()
        m.d.comb += [self.req.ready.eq(~busy & ~self.res.valid), self.res.payload.eq(root[:self.width // 2])]
        with m.If(self.req.valid & self.req.ready):
            m.d.sync += [x.eq(self.req.payload), rem.eq(0), root.eq(0), count.eq(steps), busy.eq(1)]
        # each step brings down the next two radicand bits and keeps `rem - (4 root + 1)` when it
        # is non-negative (a 1 bit of the root)
        x_k, rem_k, root_k = x, rem, root
        for k in range(r):
            cur, trial = Signal(h + 4, name=f"cur{k}"), Signal(h + 4, name=f"trial{k}")
            m.d.comb += [cur.eq(Cat(x_k[-2:], rem_k)), trial.eq(cur - Cat(Const(1, 2), root_k))]
            rem_n, root_n = Signal.like(rem, name=f"srem{k}"), Signal.like(root, name=f"root{k}")
            m.d.comb += [rem_n.eq(Mux(trial[-1], cur, trial)), root_n.eq(Cat(~trial[-1], root_k[:-1]))]
            x_k, rem_k, root_k = (x_k << 2)[:w], rem_n, root_n
        with m.If(busy):
            m.d.sync += [x.eq(x_k), rem.eq(rem_k), root.eq(root_k), count.eq(count - 1)]
            with m.If(count == 1):
                m.d.sync += [busy.eq(0), self.res.valid.eq(1)]
        with m.If(self.res.valid & self.res.ready):
            m.d.sync += self.res.valid.eq(0)
        return m


def _bit_length(m, value):
    """A comb signal: the bit length of unsigned ``value`` (0 for 0), a priority encoder over its
    bits (constants only: no adder)."""
    out = Signal(range(len(value) + 1), name="bit_length")
    for i in range(len(value)):
        with m.If(value[i]):
            m.d.comb += out.eq(i + 1)
    return out


def _sat32(m, value, name):
    """A comb signal: ``value`` (signed) saturated to int32. In range exactly when the bits from
    bit 31 up are all equal (a sign extension): a reduction, not a comparison's carry chain."""
    out = Signal(signed(32), name=name)
    assert value.shape().signed, "saturating an unsigned value"
    top = value[31:]
    with m.If(top.all() | ~top.any()):
        m.d.comb += out.eq(value[:32])
    with m.Elif(value[-1]):
        m.d.comb += out.eq(golden.INT32_MIN)
    with m.Else():
        m.d.comb += out.eq(golden.INT32_MAX)
    return out


def _funnel(m, src, amount, width, name):
    """A comb signal: ``width`` bits of ``src`` from bit ``amount`` up (unsigned ``amount``; the
    bits past the top of ``src`` are its top bit repeated): a log shifter that keeps, at each
    level, only the bits the levels below it still need."""
    span = width + (1 << len(amount)) - 1
    cur = Cat(src, *(src[-1] for _ in range(max(0, span - len(src)))))
    for b in reversed(range(len(amount))):
        step = 1 << b
        keep = width + step - 1
        nxt = Signal(keep, name=f"{name}_l{b}")
        m.d.comb += nxt.eq(Mux(amount[b], cur[step:step + keep], cur[:keep]))
        cur = nxt
    return cur


#: ``_round_*``: the product's rounding, ``sat32(golden.shift_round(p, sh))`` of a signed ``p``
#: (66 bits, ``|p| < 2**62``) and a signed shift ``sh``, as one funnel shift. ``src = p * 2**33``;
#: a shift ``sh > 0`` takes the 34-bit window ``w = p >> (min(sh, 63) - 1)`` (floor) at ``amount =
#: 32 + min(sh, 63)`` and rounds it (``(w + 1) >> 1``, the same as ``floor((p + 2**(sh-1)) /
#: 2**sh)``); ``sh <= 0`` takes ``(p << -sh)`` mod 2**34 at ``amount = max(33 + sh, 0)``. The
#: window is the true value exactly when the bits of ``p`` from bit ``amount`` up all equal its
#: sign (``fits``); otherwise the result saturates by the sign of ``p``.
_ROUND_SRC_ZEROS = 33
_ROUND_WINDOW = 34


def _round_amount(m, sh):
    """The rounding's shift ``sh`` decoded, to be registered: ``(amount, pos)`` (7 bits, and
    ``sh > 0``)."""
    amount, pos = Signal(7, name="round_amount"), Signal(name="round_pos")
    m.d.comb += pos.eq(sh > 0)
    with m.If(sh > 63):
        m.d.comb += amount.eq(32 + 63)
    with m.Elif(sh > 0):
        m.d.comb += amount.eq(32 + sh)
    with m.Elif(sh > -_ROUND_SRC_ZEROS):
        m.d.comb += amount.eq(_ROUND_SRC_ZEROS + sh)
    with m.Else():
        m.d.comb += amount.eq(0)
    return amount, pos


def _round_mask(m, amount, width):
    """The thermometer of ``amount``, shared by the lanes, to be registered: bit ``i`` (of
    ``width``) set when ``i >= amount``."""
    mask = Signal(width, name="round_mask")
    m.d.comb += mask.eq(Cat(*(amount <= i for i in range(width))))
    return mask


def _round(m, p, amount, pos, mask, name):
    """A comb signal: ``sat32(golden.shift_round(p, sh))`` from ``p`` and the decoded shift
    (:func:`_round_amount`, :func:`_round_mask` over ``len(p) - 1`` bits)."""
    window = _funnel(m, Cat(Const(0, _ROUND_SRC_ZEROS), p), amount, _ROUND_WINDOW, f"{name}_w").as_signed()
    sign = p[-1]
    fits = Signal(name=f"{name}_fits")
    m.d.comb += fits.eq(~((p[:-1] ^ sign.replicate(len(p) - 1)) & mask).any())
    rounded = Signal(signed(_ROUND_WINDOW + 1), name=f"{name}_rounded")
    m.d.comb += rounded.eq(Mux(pos, (window + 1) >> 1, window))
    out = Signal(signed(32), name=f"{name}_out")
    with m.If(~fits):
        m.d.comb += out.eq(Mux(sign, golden.INT32_MIN, golden.INT32_MAX))
    with m.Else():
        m.d.comb += out.eq(_sat32(m, rounded, f"{name}_sat"))
    return out


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
    lanes : int
        1, 2, 4 or 8: elements per cycle of an elementwise instruction whose ``dst``, ``a``, ``b``
        and ``c`` are multiples of ``lanes``, of a ``quant`` whose ``a`` is and of a rescaling
        ``matvec`` whose ``dst`` is (others take one per cycle). Speed only: every result is the
        same.

    Members
    -------
    instr : In(stream of :func:`instruction_layout`)
        Taken when the unit is idle (``ready``); the next is taken once it has finished, or, for
        an elementwise instruction after an elementwise one or a rescaling ``matvec``, the cycle after that one's last issue
        when it is safe: that one issued at least :data:`OVERLAP_ISSUES` times, no gain is being
        taken, no term of a reduction into the register the new one reduces into is in flight,
        and each vector the new one reads misses the one being written or starts at the same
        address (a wide new one after a narrow one waits); ``ready`` then depends on the
        payload. Such instructions cost ``ceil(n / lanes) + 1`` cycles each back to back. An
        elementwise instruction streams one element (or ``lanes``) per cycle: ``ceil(n / lanes)
        + 10`` cycles with no stall (a 7-stage pipeline), 2 more with a reduction (folded in
        over 4 cycles); ``quant`` first normalises ``M`` (2 cycles) and divides (``DIVIDER_BITS``
        quotient bits a cycle, the top 15 known to be zero: 9 cycles), ``gain`` normalises, takes a 62-bit root
        (``ROOT_BITS`` a cycle) and divides (about 37 cycles). A ``quant`` with ``imm != 0``
        starts its ``gain`` as its activations stream (they issue while it is taken) and ends with the activations; until the
        gain is taken only a ``matvec`` is accepted, and a rescaling one issues no product
        before it.
    ext : In(stream of :func:`ext_layout`)
        The ``n`` values an ``embed`` or ``matvec`` instruction writes to ``dst``, in order,
        ``values[0 .. count-1]`` of each transfer; every transfer but an instruction's last
        carries ``lanes`` values. A rescaling ``matvec`` (``imm != 0``) takes them through the
        pipeline (written 7 cycles later): a whole transfer a cycle when ``dst`` is a multiple of
        ``lanes``, else one value a cycle; an ``embed`` or a plain ``matvec`` writes one value a
        cycle. (A transfer is taken with its last value.)
    xq : Out(stream of :func:`xq_layout`)
        The ``n`` activations of a ``quant`` instruction, in order: ``count`` of them a transfer
        in ``values[0 .. count-1]`` (``lanes`` when ``a`` is aligned, the last transfer perhaps
        fewer; else one), from a FIFO of :data:`XQ_DEPTH` transfers: while ``xq`` is not
        ready the unit stops issuing once that many are owed (the instruction may end, and the
        next start, before the FIFO is drained).
    cload : In(stream: ``addr``, ``data`` (signed 8))
        Writes the constant memory (while idle).
    peek : In(stream of a vector address)
        Reads one element of vector memory while idle, one request a cycle while the words are
        taken (two in flight at most); each word is offered on ``word`` two cycles after its
        request, from a register, in request order. An instruction waiting stops new requests
        and is taken once the words in flight have been.
    word : Out(stream of :func:`word_layout`)
        Each peek's element (``value``) and the whole memory word holding it (``line``).
    busy : Out(1)
        High from an instruction's acceptance until it has finished.
    """

    def __init__(self, *, vmem_depth, cmem_depth, lanes=1):
        for name, value in (("vmem_depth", vmem_depth), ("cmem_depth", cmem_depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise rejected(self, TritiumValueError(f"{name} = {value!r} must be a positive integer"))
        if lanes not in LANES or isinstance(lanes, bool):
            raise rejected(self, TritiumValueError(f"lanes = {lanes!r} must be one of {LANES}"))
        self.vmem_depth, self.cmem_depth, self.lanes = vmem_depth, cmem_depth, lanes
        self.addr_bits = max(1, (vmem_depth - 1).bit_length())
        self.caddr_bits = max(1, (cmem_depth - 1).bit_length())
        self.layout = instruction_layout(addr_bits=self.addr_bits, caddr_bits=self.caddr_bits)
        super().__init__({
            "instr": In(stream.Signature(self.layout)),
            "ext": In(stream.Signature(ext_layout(lanes))),
            "xq": Out(stream.Signature(xq_layout(lanes))),
            "cload": In(stream.Signature(data.StructLayout({"addr": self.caddr_bits, "data": signed(8)}))),
            "peek": In(stream.Signature(self.addr_bits)),
            "word": Out(stream.Signature(word_layout(lanes))),
            "busy": Out(1),
        })
        # L elements a word (element e: word e // L, lane e % L)
        self.vmem = memory.Memory(shape=unsigned(32 * lanes), depth=-(-vmem_depth // lanes), init=[])
        self.cmem = memory.Memory(shape=unsigned(8 * lanes), depth=-(-cmem_depth // lanes), init=[])
        self.sigmoid = memory.Memory(shape=unsigned(17), depth=golden.SIGMOID_ENTRIES,
                                     init=[int(v) for v in golden.sigmoid_table()])

    def elaborate(self, platform):
        m = Module()
        m.submodules.vmem, m.submodules.cmem, m.submodules.sigmoid = self.vmem, self.cmem, self.sigmoid
        # the divider's numerators: 127 << 30 over a 15-bit M (quant), mn * imm << 8 < 2**39 over a
        # 16-bit root (gain): the top 15 bits of either are below its denominator (skip)
        m.submodules.div = div = SerialDivider(num_width=39, den_width=16, bits_per_cycle=DIVIDER_BITS, skip=15)
        m.submodules.sqrt = sqrt = SerialSqrt(width=62, bits_per_cycle=ROOT_BITS)
        L = self.lanes
        lane_bits = (L - 1).bit_length()
        ra = self.vmem.read_port(transparent_for=())
        rb = self.vmem.read_port(transparent_for=())
        wr = self.vmem.write_port(granularity=32)
        rc = self.cmem.read_port(transparent_for=())
        cw = self.cmem.write_port(granularity=8)
        rs = [self.sigmoid.read_port(transparent_for=()) for _ in range(L)]

        def word_of(addr):              # the memory word holding element `addr`, and its lane
            return addr >> lane_bits

        def lane_of(addr):
            return addr[:lane_bits] if L > 1 else Const(0, 1)

        def one_hot(lane):              # the write enable of one lane
            return (Const(1, L) << lane)[:L] if L > 1 else Const(1, 1)

        def lane_value(word, lane, width):
            return word.word_select(lane, width) if L > 1 else word

        cur = Signal(self.layout)
        reg_m = Signal(33)                  # M: a max of |int32| (<= 2**31)
        reg_ss = Signal(62)                 # SS
        reg_g = Signal(24)                  # G: gain and shift
        reg_gs = Signal(signed(10))
        q = Signal(24)                      # quant: reciprocal and normalising shift
        q_amount = Signal(6)                # the normalising shift ns as the funnel's position (32 + ns: un = a >> ns)
        nx = Signal(64)                     # the scalar normaliser's value and shift
        ns = Signal(signed(8))
        nx_len, norm_wait = Signal(7), Signal()
        m.d.sync += nx_len.eq(_bit_length(m, nx))
        mn, ms = Signal(16), Signal(signed(8))
        kk = Signal(6)
        gnum, gimm, gbit, gmul = Signal(31), Signal(16), Signal(4), Signal()
        gshift = Signal(signed(8))          # the gain's instruction's shift (a matvec may follow it meanwhile)
        issue = Signal(COUNT_BITS + 1)
        more = Signal(L, name="more")       # lane k of the next issue is in range: issue + k < n, kept one issue ahead
        wcount = Signal(COUNT_BITS + 1)
        gain_go, gain_busy = Signal(), Signal()
        wide = Signal()                     # this instruction streams L elements per issue
        issues = Signal(range(OVERLAP_ISSUES + 1))  # its issues so far (up to OVERLAP_ISSUES)
        overlappable, overlap = Signal(), Signal()  # it is elementwise; the next is taken now

        # -- pipeline: issue -> S0 (the words read, registered) -> S1 (operands) -> S2 (select) -> S3 (partial
        #    products) -> S4 (their sum) -> S5 (round: funnel shift, add half, saturate) -> S6 (addend, saturate,
        #    write); then the reductions fold in two more cycles. No stage ever stalls: what may wait (a quant's `xq`) waits at the issue.
        #    Lane k of a wide issue is element idx + k; otherwise lane 0 alone carries element idx,
        #    its operands picked out of their words by their own lanes (sel).
        v = [Signal(L, name=f"v{k}") for k in range(1, 7)]   # v[0]: the read; then S0 (v0r); v[1] is S1 ... v[5] S6
        idx = [Signal(COUNT_BITS, name=f"i{k}") for k in range(1, 7)]
        #    Each stage carries the fields of its element's instruction that its work needs (an
        #    elementwise instruction is taken while the one before it drains, so the stages may
        #    hold two): ctl[k] beside v[k], ctl0r beside v0r.
        ctl_layout = data.StructLayout({"op": VOp, "wide": 1, "shift": signed(8), "dst": self.addr_bits, "red": 2})
        ctl = [Signal(ctl_layout, name=f"ctl{k}") for k in range(1, 7)]
        ctl0r = Signal(ctl_layout)
        sel_a, sel_b, sel_c = (Signal(max(1, lane_bits), name=f"sel_{x}") for x in "abc")
        a2 = [Signal(signed(32), name=f"a2_{k}") for k in range(L)]
        b2 = [Signal(signed(32), name=f"b2_{k}") for k in range(L)]
        b2r = [Signal(signed(32), name=f"b2r_{k}") for k in range(L)]     # sat32(1.0 - b), for mulr
        c2 = [Signal(signed(8), name=f"c2_{k}") for k in range(L)]
        lb = [Signal(signed(33), name=f"lb_{k}") for k in range(L)]
        ext_q = [Signal(signed(32), name=f"ext_q{k}") for k in range(L)]   # a rescaling matvec's values, at issue
        ext_k = Signal(max(1, lane_bits))   # the next value of an `ext` transfer taken one a cycle
        ext_one = Signal(signed(32))        # that value
        ext_end = Signal()                  # ... is the transfer's last
        m.d.comb += [ext_one.eq(self.ext.payload.values[0] if L == 1 else self.ext.payload.values[ext_k]),
                     ext_end.eq(ext_k + 1 >= self.ext.payload.count)]
        from_ext = Signal()
        x3 = [Signal(signed(32), name=f"x3_{k}") for k in range(L)]
        y3 = [Signal(signed(32), name=f"y3_{k}") for k in range(L)]
        direct3 = [Signal(signed(34), name=f"direct3_{k}") for k in range(L)]
        # the product's partial products (16 x 16 bits: one MULT18X18D / SB_MAC16 each), the middle
        # two summed, registered at S3; summed at S4 (the DSPs and the whole carry chain were too
        # slow for one cycle on the ECP5)
        pl4 = [Signal(signed(35), name=f"pl4_{k}") for k in range(L)]     # low x low, or the bypassed value
        pm4 = [Signal(signed(34), name=f"pm4_{k}") for k in range(L)]     # low x high + high x low
        ph4 = [Signal(signed(32), name=f"ph4_{k}") for k in range(L)]     # high x high
        p4 = [Signal(signed(66), name=f"p4_{k}") for k in range(L)]
        p5 = [Signal(signed(66), name=f"p5_{k}") for k in range(L)]       # the product
        # its rounding (_round), decoded once, registered per lane as that lane's element moves
        # on (a copy each: one register drove every lane's funnel shifter, a net across the unit)
        amount5 = [Signal(7, name=f"amount5_{k}") for k in range(L)]
        pos5 = [Signal(name=f"pos5_{k}") for k in range(L)]
        mask5 = [Signal(65, name=f"mask5_{k}") for k in range(L)]
        r6 = [Signal(signed(32), name=f"r6_{k}") for k in range(L)]
        use3 = Signal()
        sh3 = Signal(signed(10))
        amount4, pos4 = Signal(7), Signal()     # S3's shift decoded (_round_amount)
        add = [[Signal(signed(33), name=f"add{s}_{k}") for k in range(L)] for s in range(3, 7)]
        red_v, red_val = Signal(L), [Signal(signed(32), name=f"red_val_{k}") for k in range(L)]
        red_kind = Signal(2)                # red_v's instruction's reduction
        sq_v, sq_p = Signal(L), [Signal(54, name=f"sq_p_{k}") for k in range(L)]
        running = Signal()
        peek_word = Signal(signed(32))
        peek_lane = Signal(max(1, lane_bits))
        op = cur.op

        # peeks (idle only): the read in flight (p1: its word on the RAM port), then the word in
        # a register (p2: offered on `word`); a read every cycle while the words are taken
        p1, p2 = Signal(), Signal()
        move = Signal()
        peek_line = Signal(self.word.payload.line.shape())
        m.d.comb += [move.eq(p1 & (~p2 | self.word.ready)), self.word.valid.eq(p2),
                     self.word.payload.value.eq(peek_word), self.word.payload.line.eq(peek_line)]
        with m.If(move):
            m.d.sync += [peek_word.eq(lane_value(ra.data, peek_lane, 32)), peek_line.eq(ra.data), p2.eq(1)]
        with m.Elif(self.word.ready):
            m.d.sync += p2.eq(0)
        m.d.sync += p1.eq(self.peek.valid & self.peek.ready | (p1 & ~move))
        # S0: the words read last cycle, registered as they leave the memories (a block RAM's
        # output is slow); S1: the operands picked out of them, the sigmoid table's address,
        # fgate's lower bound
        v0r, idx0r = Signal(L), Signal(COUNT_BITS)
        ra_q, rb_q, rc_q = Signal.like(ra.data), Signal.like(rb.data), Signal.like(rc.data)
        sel_ar, sel_br, sel_cr = Signal.like(sel_a), Signal.like(sel_b), Signal.like(sel_c)
        ext_qr = [Signal(signed(32), name=f"ext_qr{k}") for k in range(L)]
        m.d.sync += [v0r.eq(v[0]), idx0r.eq(idx[0]), ctl0r.eq(ctl[0]), ra_q.eq(ra.data), rb_q.eq(rb.data), rc_q.eq(rc.data),
                     sel_ar.eq(sel_a), sel_br.eq(sel_b), sel_cr.eq(sel_c)] + \
            [ext_qr[k].eq(ext_q[k]) for k in range(L)]
        a1 = [Signal(signed(32), name=f"a1_{k}") for k in range(L)]
        b1 = [Signal(signed(32), name=f"b1_{k}") for k in range(L)]
        c1 = [Signal(signed(8), name=f"c1_{k}") for k in range(L)]
        for k in range(L):
            w0 = ctl0r.wide
            sa, sb, sc = (k, k, k) if k else (Mux(w0, 0, sel_ar), Mux(w0, 0, sel_br), Mux(w0, 0, sel_cr))
            m.d.comb += [a1[k].eq(lane_value(ra_q, sa, 32)), b1[k].eq(lane_value(rb_q, sb, 32)),
                         c1[k].eq(lane_value(rc_q, sc, 8))]
        # clamp((a >> SHIFT) + ENTRIES/2, 0, ENTRIES-1) without an adder: the shifted value is in
        # range exactly when the bits above it are all equal (its sign extension), and adding
        # ENTRIES/2 then flips its top bit; outside, the sign picks the first or the last entry
        ib = (golden.SIGMOID_ENTRIES - 1).bit_length()
        for k in range(L):
            top = a1[k][golden.SIGMOID_SHIFT + ib - 1:]
            in_range = top.all() | ~top.any()
            m.d.comb += [rs[k].en.eq(1),
                         rs[k].addr.eq(Mux(in_range, Cat(a1[k][golden.SIGMOID_SHIFT:golden.SIGMOID_SHIFT + ib - 1],
                                                         ~a1[k][golden.SIGMOID_SHIFT + ib - 1]),
                                           Mux(a1[k][-1], 0, golden.SIGMOID_ENTRIES - 1)))]
        m.d.sync += [v[1].eq(v0r), idx[1].eq(idx0r), ctl[1].eq(ctl0r)]
        for k in range(L):
            m.d.sync += [a2[k].eq(Mux(ctl0r.op == VOp.MATVEC, ext_qr[k], a1[k])), b2[k].eq(b1[k]),
                         b2r[k].eq(_sat32(m, golden.FIX_ONE - b1[k], f"one_minus_b_{k}")), c2[k].eq(c1[k]),
                         lb[k].eq(_lower_bound(m, c1[k], ctl0r.shift - golden.FIX_FRAC))]
        # S2: pick the product's operands, its shift and an addend: one signed 32 x 32 product
        # path per lane (4 SB_MAC16 on the UP5K); add, rsub and sigmoid bypass it
        x = [Signal(signed(32), name=f"x_{k}") for k in range(L)]
        y = [Signal(signed(32), name=f"y_{k}") for k in range(L)]
        direct = [Signal(signed(34), name=f"direct_{k}") for k in range(L)]
        addend = [Signal(signed(33), name=f"addend_{k}") for k in range(L)]
        use_direct, sh = Signal(), Signal(signed(10))
        sig = [rs[k].data for k in range(L)]
        un = [Signal(signed(32), name=f"un_{k}") for k in range(L)]
        m.d.comb += [un[k].eq(_funnel(m, Cat(Const(0, 32), a2[k]), q_amount, 32, f"un_{k}").as_signed())
                     for k in range(L)]
        with m.Switch(ctl[1].op):
            with m.Case(VOp.MULC):
                m.d.comb += sh.eq(ctl[1].shift)
                m.d.comb += [s for k in range(L) for s in (x[k].eq(a2[k]), y[k].eq(c2[k]))]
            with m.Case(VOp.MUL):
                m.d.comb += sh.eq(golden.FIX_FRAC)
                m.d.comb += [s for k in range(L) for s in (x[k].eq(a2[k]), y[k].eq(b2[k]))]
            with m.Case(VOp.MULR):
                m.d.comb += sh.eq(golden.FIX_FRAC)
                m.d.comb += [s for k in range(L) for s in (x[k].eq(a2[k]), y[k].eq(b2r[k]))]
            with m.Case(VOp.SILU):
                m.d.comb += sh.eq(golden.FIX_FRAC)
                m.d.comb += [s for k in range(L) for s in (x[k].eq(a2[k]), y[k].eq(sig[k]))]
            with m.Case(VOp.FGATE):
                m.d.comb += sh.eq(golden.FIX_FRAC)
                m.d.comb += [s for k in range(L)
                             for s in (x[k].eq(golden.FIX_ONE - lb[k]), y[k].eq(a2[k]), addend[k].eq(lb[k]))]
            with m.Case(VOp.SFGATE):
                m.d.comb += sh.eq(golden.FIX_FRAC)
                m.d.comb += [s for k in range(L)
                             for s in (x[k].eq(golden.FIX_ONE - lb[k]), y[k].eq(sig[k]), addend[k].eq(lb[k]))]
            with m.Case(VOp.RESCALE, VOp.MATVEC):
                m.d.comb += sh.eq(reg_gs)
                m.d.comb += [s for k in range(L) for s in (x[k].eq(a2[k]), y[k].eq(reg_g))]
            with m.Case(VOp.QUANT):
                m.d.comb += sh.eq(golden.RECIP_SHIFT)
                m.d.comb += [s for k in range(L) for s in (x[k].eq(un[k]), y[k].eq(q))]
            with m.Case(VOp.SIGMOID):
                m.d.comb += use_direct.eq(1)
                m.d.comb += [direct[k].eq(sig[k]) for k in range(L)]
            with m.Case(VOp.ADD):
                m.d.comb += use_direct.eq(1)
                m.d.comb += [direct[k].eq(a2[k] + b2[k]) for k in range(L)]
            with m.Case(VOp.RSUB):
                m.d.comb += use_direct.eq(1)
                m.d.comb += [direct[k].eq(golden.FIX_ONE - a2[k]) for k in range(L)]
        # S3: the partial products (or the bypassed value), and the shift decoded; S4: their sum,
        # and the shift's thermometer; S5: the rounding (one funnel shift, the half added, the
        # saturation: _round)
        amount3d, pos3d = _round_amount(m, sh3)
        m.d.sync += [ctl[k + 1].eq(ctl[k]) for k in range(1, 5)]
        m.d.sync += [v[2].eq(v[1]), idx[2].eq(idx[1]), sh3.eq(sh), use3.eq(use_direct),
                     v[3].eq(v[2]), idx[3].eq(idx[2]), amount4.eq(amount3d), pos4.eq(pos3d),
                     v[4].eq(v[3]), idx[4].eq(idx[3]),
                     v[5].eq(v[4]), idx[5].eq(idx[4])]
        rounded = []
        for k in range(L):
            xl, xh = x3[k][:16], x3[k][16:].as_signed()
            yl, yh = y3[k][:16], y3[k][16:].as_signed()
            m.d.comb += p4[k].eq(pl4[k] + (pm4[k] << 16) + (ph4[k] << 32))
            rounded.append(_round(m, p5[k], amount5[k], pos5[k], mask5[k], f"round_{k}"))
            m.d.sync += [x3[k].eq(x[k]), y3[k].eq(y[k]), add[0][k].eq(addend[k]), direct3[k].eq(direct[k]),
                         pl4[k].eq(Mux(use3, direct3[k], xl * yl)), pm4[k].eq(Mux(use3, 0, xl * yh + xh * yl)),
                         ph4[k].eq(Mux(use3, 0, xh * yh)), add[1][k].eq(add[0][k]),
                         p5[k].eq(p4[k]), add[2][k].eq(add[1][k]),
                         r6[k].eq(rounded[k]), add[3][k].eq(add[2][k])]
        mask4 = _round_mask(m, amount4, 65)
        # amount4 and p4 belong to the element of v[3]; a lane that carries none keeps its copy
        for k in range(L):
            with m.If(v[3][k]):
                m.d.sync += [amount5[k].eq(amount4), pos5[k].eq(pos4), mask5[k].eq(mask4)]
        # S6: add, saturate, write (or offer the activation); hand the values to the reductions
        result = [_sat32(m, r6[k] + add[3][k], f"result_{k}") for k in range(L)]
        # quant's activations go into a FIFO (XQ_DEPTH transfers) that `xq` drains: the pipeline
        # never stalls; a quant issues only while the FIFO has room for every transfer in flight
        xq_fifo = m.submodules.xq_fifo = fifo.SyncFIFOBuffered(width=Shape.cast(self.xq.payload.shape()).width,
                                                               depth=XQ_DEPTH)
        xq_in = Signal(self.xq.payload.shape())
        for k in range(L):
            qv = xq_in.values[k]
            with m.If(r6[k] > 127):
                m.d.comb += qv.eq(127)
            with m.Elif(r6[k] < -127):
                m.d.comb += qv.eq(-127)
            with m.Else():
                m.d.comb += qv.eq(r6[k])
        is_quant = ctl[5].op == VOp.QUANT
        last, wide6 = v[5], ctl[5].wide
        m.d.comb += [xq_in.count.eq(sum(last[k] for k in range(L))),
                     xq_fifo.w_data.eq(xq_in), xq_fifo.w_en.eq(last.any() & is_quant & running),
                     self.xq.payload.eq(xq_fifo.r_data), self.xq.valid.eq(xq_fifo.r_rdy),
                     xq_fifo.r_en.eq(self.xq.ready)]
        xq_owed = Signal(range(XQ_DEPTH + 1))       # quant transfers issued and not yet taken from `xq`
        xq_room = Signal()
        m.d.comb += xq_room.eq(xq_owed != XQ_DEPTH)
        xq_issue = Signal()
        m.d.sync += xq_owed.eq(xq_owed + xq_issue - (self.xq.valid & self.xq.ready))
        m.d.sync += red_v.eq(0)
        with m.If(last.any() & running):
            m.d.sync += wcount.eq(wcount + sum(last[k] for k in range(L)))
            with m.If(~is_quant):
                elem = ctl[5].dst + idx[5]
                m.d.comb += [wr.addr.eq(word_of(elem)),
                             wr.data.eq(Mux(wide6, Cat(*result), Cat(*(result[0] for _ in range(L))))),
                             wr.en.eq(Mux(wide6, last, one_hot(lane_of(elem))))]
            m.d.sync += [red_v.eq(Mux(ctl[5].red != 0, last, 0)), red_kind.eq(ctl[5].red)] + \
                [red_val[k].eq(result[k]) for k in range(L)]
        # reductions, pipelined: each lane's |value| and square (after the shift), registered; the
        # lanes' largest |value| and the sum of their squares by a tree, registered; then into M
        # and SS (a lane that carries no element adds 0)
        # The square takes three registered steps so that no DSP output meets a fabric adder in
        # its cycle: |value >> SUMSQ_SHIFT| (27 bits) registered; its halves' three products
        # (17 x 17, 10 x 17, 10 x 10 bits: one 18 x 18 multiplier each) registered; their sum.
        absr = [Signal(33, name=f"absr_{k}") for k in range(L)]
        abs_p = [Signal(33, name=f"abs_p_{k}") for k in range(L)]
        sq_in = [Signal(signed(27), name=f"sq_in_{k}") for k in range(L)]
        sq_a = [Signal(27, name=f"sq_a_{k}") for k in range(L)]
        sq_ll = [Signal(34, name=f"sq_ll_{k}") for k in range(L)]
        sq_lh = [Signal(27, name=f"sq_lh_{k}") for k in range(L)]
        sq_hh = [Signal(20, name=f"sq_hh_{k}") for k in range(L)]
        sq_v1, sq_v2 = Signal(L), Signal(L)
        is_max, is_ss = red_kind == lmstep.RED_MAX, red_kind == lmstep.RED_SUMSQ
        mx_v = Signal()
        for k in range(L):
            m.d.comb += [absr[k].eq(Mux(red_val[k] < 0, -red_val[k], red_val[k])),
                         sq_in[k].eq(red_val[k] >> golden.SUMSQ_SHIFT)]
            lo, hi = sq_a[k][:17], sq_a[k][17:]
            m.d.sync += [sq_a[k].eq(Mux(sq_in[k] < 0, -sq_in[k], sq_in[k])),
                         sq_ll[k].eq(lo * lo), sq_lh[k].eq(lo * hi), sq_hh[k].eq(hi * hi),
                         sq_p[k].eq(sq_ll[k] + (sq_lh[k] << 18) + (sq_hh[k] << 34)),
                         abs_p[k].eq(Mux(red_v[k], absr[k], 0))]
        m.d.sync += [sq_v1.eq(Mux(is_ss, red_v, 0)), sq_v2.eq(sq_v1), sq_v.eq(sq_v2),
                     mx_v.eq(is_max & red_v.any())]

        def tree(values, combine):
            while len(values) > 1:
                values = [combine(values[i], values[i + 1]) if i + 1 < len(values) else values[i]
                          for i in range(0, len(values), 2)]
            return values[0]

        part_m, part_ss = Signal(33), Signal(62)
        part_mv, part_sv = Signal(), Signal()
        m.d.sync += [part_m.eq(tree(abs_p, lambda x, y: Mux(x > y, x, y))),
                     part_ss.eq(tree([Mux(sq_v[k], sq_p[k], 0) for k in range(L)], lambda x, y: x + y)),
                     part_mv.eq(mx_v), part_sv.eq(sq_v.any())]
        with m.If(part_mv & (part_m > reg_m)):
            m.d.sync += reg_m.eq(part_m)
        with m.If(part_sv):
            m.d.sync += reg_ss.eq(reg_ss + part_ss)
        squaring = (sq_v1 | sq_v2 | sq_v).any()      # a square on its way to part_ss
        red_pending = red_v.any() | squaring | mx_v | part_mv | part_sv

        def reducing(kind):             # a term of a reduction into M (RED_MAX) or SS is in flight
            staged = [(c.red == kind) & vv.any() for c, vv in zip(ctl + [ctl0r], v + [v0r])]
            after = [mx_v, part_mv] if kind == lmstep.RED_MAX else [squaring, part_sv]
            return Cat(*staged, red_v.any() & (red_kind == kind), *after).any()

        # issue: read the words of element `issue` of a, b and c (a wide issue: L elements from
        # aligned words; a rescaling matvec: take the element from `ext`)
        ea, eb, ec = cur.a + issue, cur.b + issue, cur.c + issue
        m.d.comb += [ra.en.eq(1), rb.en.eq(1), rc.en.eq(1),
                     ra.addr.eq(word_of(ea)), rb.addr.eq(word_of(eb)), rc.addr.eq(word_of(ec)),
                     from_ext.eq(op == VOp.MATVEC)]
        m.d.sync += v[0].eq(0)
        # a rescale waits for its gain (a quant streams while its own gain is taken); a quant
        # waits for room in the activation FIFO
        can_issue = running & more[0] & ~(gain_busy & from_ext) & ((op != VOp.QUANT) | xq_room)
        m.d.comb += xq_issue.eq(can_issue & (op == VOp.QUANT))
        # a wide matvec takes a whole transfer an issue; otherwise one value of it an issue
        with m.If(from_ext & wide):
            m.d.comb += self.ext.ready.eq(can_issue)
        with m.Elif(from_ext):
            m.d.comb += self.ext.ready.eq(can_issue & ext_end)
            with m.If(can_issue & self.ext.valid):
                m.d.sync += ext_k.eq(Mux(ext_end, 0, ext_k + 1))
        step = Mux(wide, L, 1)
        more_next = Cat(*[(issue + step + k < cur.n) for k in range(L)])
        with m.If(can_issue & (~from_ext | self.ext.valid)):
            m.d.sync += [idx[0].eq(issue), ext_q[0].eq(Mux(wide, self.ext.payload.values[0], ext_one))] + \
                [ext_q[k].eq(self.ext.payload.values[k]) for k in range(1, L)]
            m.d.sync += [ctl[0].op.eq(cur.op), ctl[0].wide.eq(wide), ctl[0].shift.eq(cur.shift),
                         ctl[0].dst.eq(cur.dst), ctl[0].red.eq(cur.red),
                         issues.eq(Mux(issues == OVERLAP_ISSUES, issues, issues + 1))]
            m.d.sync += [sel_a.eq(lane_of(ea)), sel_b.eq(lane_of(eb)), sel_c.eq(lane_of(ec))]
            with m.If(wide):
                m.d.sync += [v[0].eq(more), issue.eq(issue + L)]
            with m.Else():
                m.d.sync += [v[0].eq(1), issue.eq(issue + 1)]
            m.d.sync += more.eq(more_next)

        # constant loads (idle only) share the constant memory's write port
        caddr = self.cload.payload.addr
        m.d.comb += [cw.addr.eq(word_of(caddr)), cw.data.eq(Cat(*(self.cload.payload.data for _ in range(L))))]

        m.d.comb += [div.res.ready.eq(1), sqrt.res.ready.eq(1)]

        # taking an instruction; an elementwise one is taken while an elementwise one or a
        # rescaling matvec before it drains (`overlap`) once that has issued OVERLAP_ISSUES times and is done issuing, no
        # gain runs, no term of a reduction into the register it starts is in flight, and each
        # vector it reads either misses the one being written or starts where it does (then it
        # reads each element at least 8 cycles after the element's issue, once it is written,
        # unless it streams faster than the one before: a wide one after a narrow one waits)
        p = self.instr.payload
        p_elem = _one_of(p.op, _ELEMENTWISE)
        p_rmv = (p.op == VOp.MATVEC) & (p.imm != 0)     # a rescaling matvec: elementwise on `ext`
        p_wide = Cat(*(lane_of(f) == 0 for f in (p.dst, p.a, p.b, p.c))).all() if L > 1 else Const(0, 1)

        def take(p):
            m.d.sync += [cur.eq(p), issue.eq(0), more.eq(Cat(*[p.n > k for k in range(L)])), wcount.eq(0), wide.eq(0), ext_k.eq(0), issues.eq(0),
                         overlappable.eq(0)]
            with m.If(p.red == lmstep.RED_MAX):
                m.d.sync += reg_m.eq(0)
            with m.If(p.red == lmstep.RED_SUMSQ):
                m.d.sync += reg_ss.eq(0)

        def clear(start, reads):
            misses = (start + p.n <= cur.dst) | (start >= cur.dst + cur.n)
            return ~reads | misses | ((start == cur.dst) & (wide | ~p_wide))

        red_free = ~(((p.red == lmstep.RED_MAX) & reducing(lmstep.RED_MAX)) |
                     ((p.red == lmstep.RED_SUMSQ) & reducing(lmstep.RED_SUMSQ)))
        m.d.comb += overlap.eq(running & overlappable & ~more[0] & (issues == OVERLAP_ISSUES) & (p_elem | p_rmv) &
                               ~gain_busy & red_free & clear(p.a, _one_of(p.op, _READS_A)) &
                               clear(p.b, _one_of(p.op, _READS_B)))

        with m.FSM() as fsm:
            with m.State("IDLE"):
                # while a quant's gain is still being taken, only its matvec is accepted
                take_instr = ~p1 & ~p2 & (~gain_busy | (self.instr.payload.op == VOp.MATVEC))
                m.d.comb += [self.instr.ready.eq(take_instr), self.cload.ready.eq(1),
                             cw.en.eq(Mux(self.cload.valid, one_hot(lane_of(caddr)), 0)),
                             self.peek.ready.eq(~self.instr.valid & (~p1 | move)), ra.en.eq(~p1 | move)]
                with m.If(self.peek.valid & self.peek.ready):
                    m.d.comb += ra.addr.eq(word_of(self.peek.payload))
                    m.d.sync += peek_lane.eq(lane_of(self.peek.payload))
                with m.If(self.instr.valid & take_instr):
                    take(p)
                    with m.Switch(p.op):
                        with m.Case(VOp.EMBED, VOp.MATVEC):
                            with m.If((p.op == VOp.MATVEC) & (p.imm != 0)):     # rescaled on the way
                                m.d.sync += [running.eq(1), wide.eq(lane_of(p.dst) == 0 if L > 1 else 0),
                                             overlappable.eq(1)]
                                m.next = "RUN"
                            with m.Elif(p.n != 0):
                                m.next = "EXT"
                        with m.Case(VOp.QUANT):     # wide when `a` is aligned
                            m.d.sync += [nx.eq(reg_m), ns.eq(0), wide.eq(lane_of(p.a) == 0 if L > 1 else 0)]
                            m.next = "Q_NORM"
                        with m.Case(VOp.GAIN):
                            m.d.sync += [nx.eq(reg_m), ns.eq(0)]
                            m.d.comb += gain_go.eq(1)
                            m.next = "GAIN"
                        with m.Default():   # elementwise: wide when every address is aligned
                            m.d.sync += [running.eq(1), wide.eq(p_wide), overlappable.eq(p_elem)]
                            m.next = "RUN"
            with m.State("EXT"):           # one value a cycle
                m.d.comb += self.ext.ready.eq(ext_end)
                with m.If(self.ext.valid):
                    elem = cur.dst + wcount
                    m.d.comb += [wr.addr.eq(word_of(elem)), wr.data.eq(Cat(*(ext_one for _ in range(L)))),
                                 wr.en.eq(one_hot(lane_of(elem)))]
                    m.d.sync += ext_k.eq(Mux(ext_end, 0, ext_k + 1))
                    m.d.sync += wcount.eq(wcount + 1)
                    with m.If(wcount + 1 == cur.n):
                        m.next = "IDLE"
            with m.State("RUN"):
                m.d.comb += self.instr.ready.eq(overlap)
                with m.If(self.instr.valid & overlap):      # the next elementwise one, while this drains
                    take(p)
                    m.d.sync += [wide.eq(Mux(p_rmv, lane_of(p.dst) == 0, p_wide) if L > 1 else 0), overlappable.eq(1)]
                with m.Elif(~more[0] & ~Cat(*v, v0r).any()):
                    m.d.sync += running.eq(0)
                    m.next = "DRAIN"
            with m.State("DRAIN"):     # the last reduction terms land (a quant's gain goes on alone)
                with m.If(~red_pending):
                    m.next = "IDLE"
            with m.State("GAIN"):
                with m.If(~gain_busy):
                    m.next = "IDLE"

            # normalise nx to exactly `bits` bits (shifted right when wider, left when narrower;
            # the shift added to ns) in two cycles: the first lets `nx_len` (the bit length of nx,
            # registered) catch up with the nx just loaded, the second shifts
            def normalise(bits, done):
                with m.If(~norm_wait):
                    m.d.sync += norm_wait.eq(1)
                with m.Else():
                    m.d.sync += norm_wait.eq(0)
                    with m.If(nx_len > bits):
                        m.d.sync += [nx.eq(nx >> (nx_len - bits)[:6]), ns.eq(ns + (nx_len - bits))]
                    with m.Elif(nx_len != 0):
                        m.d.sync += [nx.eq(nx << (bits - nx_len)[:5]), ns.eq(ns - (bits - nx_len))]
                    m.next = done

            with m.State("Q_NORM"):
                normalise(golden.QUANT_NORM_BITS, "Q_DIV")
            def stream_and_gain():   # the activations stream; the gain of imm != 0 alongside
                m.d.sync += running.eq(1)
                with m.If(cur.imm != 0):
                    m.d.sync += [nx.eq(reg_m), ns.eq(0)]
                    m.d.comb += gain_go.eq(1)
                m.next = "RUN"

            with m.State("Q_DIV"):
                m.d.sync += q_amount.eq(Mux(ns > 31, 63, Mux(ns < -32, 0, 32 + ns)))
                with m.If(nx == 0):
                    m.d.sync += q.eq(0)
                    stream_and_gain()
                with m.Else():
                    m.d.comb += [div.req.valid.eq(1), div.req.payload.num.eq(127 << golden.RECIP_SHIFT),
                                 div.req.payload.den.eq(nx)]
                    with m.If(div.req.ready):
                        m.next = "Q_WAIT"
            with m.State("Q_WAIT"):
                with m.If(div.res.valid):
                    m.d.sync += q.eq(div.res.payload)
                    stream_and_gain()


        # the gain (`gain`, or a `quant` with imm != 0 while its activations stream): its own
        # FSM, started by `gain_go` with nx = M, ns = 0; the divider is free by then
        with m.FSM(name="gain") as gfsm:
            with m.State("G_IDLE"):
                with m.If(gain_go):
                    m.next = "G_NORM_M"
            with m.State("G_NORM_M"):
                normalise(golden.QUANT_NORM_BITS, "G_K")
            with m.State("G_K"):        # gnum = mn * imm from here on, beside the root (gmul)
                m.d.sync += [mn.eq(nx), ms.eq(ns), nx.eq(reg_ss), kk.eq(0), gnum.eq(0), gimm.eq(cur.imm), gshift.eq(cur.shift),
                             gbit.eq(0), gmul.eq(1)]
                m.next = "G_K_LOOP"
            with m.State("G_K_LOOP"):   # SS times 4**kk, the least kk that makes it 60 bits or more
                with m.If(~norm_wait):      # (its root then has 30 or 31 bits): `nx_len` catches up
                    m.d.sync += norm_wait.eq(1)
                with m.Else():
                    m.d.sync += norm_wait.eq(0)
                    with m.If((nx_len != 0) & (nx_len < 60)):
                        k_up = ((61 - nx_len) >> 1)[:5]
                        m.d.sync += [nx.eq(nx << Cat(Const(0, 1), k_up)), kk.eq(k_up)]
                    m.next = "G_SQRT"
            with m.State("G_SQRT"):
                with m.If((nx == 0) | (mn == 0)):
                    m.d.sync += [reg_g.eq(0), reg_gs.eq(0)]
                    m.next = "G_IDLE"
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
                m.d.comb += [div.req.valid.eq(~gmul), div.req.payload.num.eq(gnum << golden.GAIN_SHIFT),
                             div.req.payload.den.eq(nx)]
                with m.If(div.req.ready & ~gmul):
                    m.next = "G_WAIT"
            with m.State("G_WAIT"):
                with m.If(div.res.valid):
                    m.d.sync += [reg_g.eq(div.res.payload),
                                 reg_gs.eq(golden.GAIN_SHIFT + gshift - ms + ns - kk)]
                    m.next = "G_IDLE"
        # gnum = mn * imm: shift and add, 2 bits of imm a cycle, while the root is taken
        with m.If(gmul):
            part = Mux(gimm[0], mn, 0) + Mux(gimm[1], mn << 1, 0)
            m.d.sync += [gnum.eq(gnum + (part << gbit)), gimm.eq(gimm >> 2), gbit.eq(gbit + 2)]
            with m.If(gbit == 14):
                m.d.sync += gmul.eq(0)
        m.d.comb += gain_busy.eq(~gfsm.ongoing("G_IDLE") | gmul)
        m.d.comb += self.busy.eq(running | ~fsm.ongoing("IDLE"))
        return m
