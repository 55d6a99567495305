"""The token sampler of the on-chip LM step: :func:`tritium.sim.lmstep.choose_token` in gateware.

:class:`TokenSampler` reads the Q16.16 logits from the vector memory (through the vector unit's
``peek`` / ``word`` streams), picks the next token bit for bit as ``choose_token`` does and keeps
the xorshift32 state from one choice to the next. It is sequential and small: a few passes over
the logits (the max and count passes request a whole memory word of ``lanes`` logits every
cycle; the sum and pick passes read one logit at a time), one subtractor and one comparator on the logits, a
shift-and-add multiplier for ``(max - logit) * inv_temperature`` (:class:`ExpWeight`) and
another for the draw's ``(state * sum) >> 32``, the 256-entry exp2 table in a ROM.
:func:`choice_model` is the same algorithm in plain Python with its exact cycle count (the tests
check both against the RTL and the spec).

The algorithm (``docs/vector.md``, "Token sampler"), every test on ``d = max - logit``:

1. *max pass*: the largest logit and its lowest id (the greedy choice).
2. *count passes* (top-k only, ``1 < top_k < vocab``): a search for the threshold ``D``, the
   smallest ``d`` with ``count(d_i <= D) >= top_k`` (the k-th largest logit's), over ``lo ..
   hi``, first ``0 .. Z`` where ``Z = 2**28 >> floor(log2(inv_temperature))``: every ``d >= Z``
   has weight 0 (``d * inv_temperature >= 2**28``, below). Each pass counts ``d_i <= p`` for
   three probes ``p`` at once, at a quarter, a half and three quarters of the interval (``lo +
   s // 4``, ``lo + s // 2``, ``lo + s // 2 + s // 4`` for ``s = hi - lo``), and keeps the part
   below the first probe whose count reaches ``top_k``; a count of exactly ``top_k`` ends the
   search at once (the candidates are then exactly ``d_i <= p``). The candidates are every ``d_i < D`` and the lowest-id ``d_i == D``
   until ``top_k`` are taken: the spec's order (value descending, then id). Where the search
   ends at ``Z`` (fewer than ``top_k`` logits with ``d < Z``) the candidates may differ from the
   spec's only in logits of weight 0, which can neither add to the sum nor be picked. Top-1 is
   ``D = 0``, no pass.
3. *sum pass*: the sum of the candidates' weights ``exp_neg_fix(shift_round(d * inv_temperature,
   8))``; then one xorshift32 step and ``target = (state * sum) >> 32``.
4. *pick pass*: the running sum of the weights in id order; the first candidate where it exceeds
   ``target`` is the token (the pass stops there). The sum is at least 65536 (the max's
   weight), so ``target < sum`` and a pick always exists.

The weight is exact with two clamps at :data:`PRODUCT_CLAMP` ``= 2**28``: ``exp_neg_fix(x)`` is
0 for every ``x >= 2**20`` (there ``t >> 16 >= 23 >= 17``, and ``t`` does not decrease with
``x``), and ``shift_round(p, 8) >= 2**20`` for every ``p >= 2**28``; so ``d`` is clamped to
``2**28`` before the product (with ``inv_temperature >= 1`` the product is then ``>= 2**28``
too) and the product to ``2**28`` as it is formed. ``tests/test_sampler.py`` checks the claims
(exhaustively over ``x < 2**21``, and at the edges for every ``inv_temperature``).
"""

import numpy as np

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..sim import golden, lmstep
from ..sim.golden import TritiumValueError
from .params import rejected
from .vector import word_layout

__all__ = ["SerialMultiplier", "ExpWeight", "TokenSampler", "PRODUCT_CLAMP", "WEIGHT_BITS", "exp_weight",
           "choice_model", "exp_weight_cycles"]

#: ``max - logit`` and ``(max - logit) * inv_temperature`` are clamped to this: the weight is 0
#: from there on (see the module's docstring), so the clamp never changes it.
PRODUCT_CLAMP = 1 << 28
_D_BITS = PRODUCT_CLAMP.bit_length()                        # 29: the clamped difference
_X_BITS = (PRODUCT_CLAMP >> 8).bit_length()                 # 21: the clamped shift_round(p, 8)
_T_BITS = ((((PRODUCT_CLAMP >> 8) * golden.LOG2E_Q16) + (1 << 15)) >> 16).bit_length()   # 21
#: A weight is Q0.16 in ``0 .. 65536``.
WEIGHT_BITS = 17
_INV_BITS = 16
_EXP2 = golden.exp2_table()


def _int_in(owner, name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise rejected(owner, TritiumValueError(f"{type(owner).__name__}: {name} = {value!r} must be an integer "
                                                f"in {lo}..{hi}"))
    return value


class SerialMultiplier(wiring.Component):
    """Unsigned ``a * b``, one bit of ``b`` per cycle (shift and add, an ``a_width + 1``-bit adder).

    Parameters
    ----------
    a_width, b_width : int
        Widths of the operands (1..64).

    Members
    -------
    req : In(stream: ``a`` (``a_width`` bits), ``b`` (``b_width`` bits))
        Taken when idle (``ready`` is high exactly then).
    res : Out(stream of the product, ``a_width + b_width`` bits)
        Offered ``b_width`` cycles after the request's transfer (its valid rises at the
        ``b_width``-th clock edge after it); the next request is taken once it has been.
    """

    def __init__(self, *, a_width, b_width):
        self.a_width = _int_in(self, "a_width", a_width, 1, 64)
        self.b_width = _int_in(self, "b_width", b_width, 1, 64)
        super().__init__({
            "req": In(stream.Signature(data.StructLayout({"a": a_width, "b": b_width}))),
            "res": Out(stream.Signature(a_width + b_width)),
        })

    def elaborate(self, platform):
        m = Module()
        aw, bw = self.a_width, self.b_width
        a, hi, lo = Signal(aw), Signal(aw), Signal(bw)
        count = Signal(range(bw + 1))
        busy = Signal()
        total = Signal(aw + 1)
        # {hi, lo} holds the partial product shifted right by the bits of b consumed so far, and
        # the bits of b still to come: add a where the next bit of b is 1, shift the pair right
        m.d.comb += [self.req.ready.eq(~busy & ~self.res.valid), self.res.payload.eq(Cat(lo, hi)),
                     total.eq(hi + Mux(lo[0], a, 0))]
        with m.If(self.req.valid & self.req.ready):
            m.d.sync += [a.eq(self.req.payload.a), hi.eq(0), lo.eq(self.req.payload.b), count.eq(bw), busy.eq(1)]
        with m.If(busy):
            m.d.sync += [hi.eq(total[1:]), lo.eq(Cat(lo[1:], total[0])), count.eq(count - 1)]
            with m.If(count == 1):
                m.d.sync += [busy.eq(0), self.res.valid.eq(1)]
        with m.If(self.res.valid & self.res.ready):
            m.d.sync += self.res.valid.eq(0)
        return m


def exp_weight(d, inv_temperature):
    """The weight :class:`ExpWeight` computes for ``d = max - logit >= 0`` (ints or arrays), step
    by step with its clamps; equal to ``golden.exp_neg_fix(golden.shift_round(d *
    inv_temperature, 8))`` for ``1 <= inv_temperature < 2**16`` and ``0 <= d < 2**32`` (tested)."""
    d = np.asarray(d, np.int64)
    p = np.minimum(np.minimum(d, PRODUCT_CLAMP) * np.asarray(inv_temperature, np.int64), PRODUCT_CLAMP)
    x = (p + 128) >> 8
    t = (x * golden.LOG2E_Q16 + (1 << 15)) >> 16
    return _EXP2[(t >> 8) & 0xFF] >> (t >> 16)


def _csd_terms(c):
    """``c`` as a sum of signed powers of two with no two adjacent (canonical signed digits):
    ``[(sign, shift), ...]``; ``x * c`` becomes a few shifted adds."""
    terms, shift = [], 0
    while c:
        if c & 1:
            digit = 2 - (c & 3)          # +1 when c = ...01, -1 when c = ...11
            terms.append((digit, shift))
            c -= digit
        c >>= 1
        shift += 1
    return terms


_LOG2E_TERMS = _csd_terms(golden.LOG2E_Q16)       # 2**16 + 2**15 - 2**12 + 2**8 + 2**6 + 2**4 + 2**2
assert sum(sign << shift for sign, shift in _LOG2E_TERMS) == golden.LOG2E_Q16


def exp_weight_cycles(inv_temperature):
    """Cycles :class:`ExpWeight` takes for one weight, from the request's transfer to the
    result's (taken at once): one per bit of ``inv_temperature`` below its top one, then the
    rounding, the log2(e) product, the table, the shift and the offer."""
    return max(int(inv_temperature).bit_length() - 1, 0) + 5


class ExpWeight(wiring.Component):
    """One candidate's weight: ``exp_neg_fix(shift_round(d * inv_temperature, 8))`` (Q0.16).

    ``d`` is ``max - logit`` (``0 .. 2**32 - 1``), ``inv_temperature`` any 16-bit value
    (:class:`tritium.sim.lmstep.SamplingParams`: ``1 .. 2**16 - 1`` when sampling). The product
    ``p = min(d, 2**28) * inv_temperature`` is formed most significant bit first, starting at
    the top set bit of ``inv_temperature``, and held at :data:`PRODUCT_CLAMP` once it reaches it
    (``2 p' + a`` never decreases, so this is ``min(p, 2**28)`` exactly); then ``x = (p + 128) >>
    8``, ``t = (x * LOG2E_Q16 + 2**15) >> 16`` (seven shifted adds) and the weight is the exp2
    table's entry ``t[8:16]`` shifted right by ``t >> 16``: see :func:`exp_weight`.

    Members
    -------
    req : In(stream: ``d`` (32 bits), ``inv_temperature`` (16 bits))
        Taken when idle.
    res : Out(stream of a weight, :data:`WEIGHT_BITS` bits)
        One per request, transferred :func:`exp_weight_cycles` cycles after it at the earliest
        (``bit_length(inv_temperature) + 4``: 13 at ``inv_temperature = 256``); the next request
        is taken once it has been.
    """

    def __init__(self):
        super().__init__({
            "req": In(stream.Signature(data.StructLayout({"d": 32, "inv_temperature": _INV_BITS}))),
            "res": Out(stream.Signature(WEIGHT_BITS)),
        })
        self.table = memory.Memory(shape=unsigned(WEIGHT_BITS), depth=golden.EXP2_ENTRIES,
                                   init=[int(v) for v in _EXP2])

    def elaborate(self, platform):
        m = Module()
        m.submodules.table = self.table
        rd = self.table.read_port(transparent_for=())
        d, inv = self.req.payload.d, self.req.payload.inv_temperature
        a = Signal(_D_BITS)                      # min(d, 2**28)
        p = Signal(_D_BITS)                      # the product so far, at most 2**28
        b = Signal(_INV_BITS)
        bit = Signal(range(_INV_BITS))           # the next bit of b, while `more`
        more = Signal()
        top = Signal(range(_INV_BITS + 1))       # bit_length(inv)
        for i in range(_INV_BITS):
            with m.If(inv[i]):
                m.d.comb += top.eq(i + 1)
        clamped = Signal(_D_BITS)
        m.d.comb += clamped.eq(Mux(d[_D_BITS - 1:].any(), PRODUCT_CLAMP, d))
        step = Signal(_D_BITS + 1)
        m.d.comb += step.eq((p << 1) + Mux(b.bit_select(bit, 1), a, 0))
        x = Signal(_X_BITS)
        t = Signal(_T_BITS)
        n = Signal(_T_BITS - 16)
        prod = 0
        for sign, shift in _LOG2E_TERMS:
            prod = prod + (x << shift) if sign > 0 else prod - (x << shift)
        t_reg = Signal(_T_BITS)
        w = Signal(WEIGHT_BITS)
        m.d.comb += [t.eq((prod + (1 << 15)) >> 16),
                     rd.addr.eq(t_reg[8:16]), rd.en.eq(0),
                     self.res.payload.eq(w)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.req.ready.eq(1)
                with m.If(self.req.valid):
                    # the top set bit of inv contributes a itself; the bits below it follow
                    m.d.sync += [a.eq(clamped), p.eq(Mux(top == 0, 0, clamped)), b.eq(inv),
                                 bit.eq(top - 2), more.eq(top >= 2)]
                    m.next = "PRODUCT"
            with m.State("PRODUCT"):
                with m.If(more):
                    m.d.sync += p.eq(Mux(step[_D_BITS - 1:].any(), PRODUCT_CLAMP, step))
                    m.d.sync += bit.eq(bit - 1)
                    with m.If(bit == 0):
                        m.d.sync += more.eq(0)
                with m.Else():
                    m.d.sync += x.eq((p + 128) >> 8)
                    m.next = "LOG2E"
            with m.State("LOG2E"):      # each step registered: the sums, the table, the shift
                m.d.sync += t_reg.eq(t)
                m.next = "TABLE"
            with m.State("TABLE"):
                m.d.comb += rd.en.eq(1)
                m.d.sync += n.eq(t_reg[16:])
                m.next = "SHIFT"
            with m.State("SHIFT"):
                # a shift of 17 or more leaves 0, as exp_neg_fix does
                m.d.sync += w.eq(rd.data >> n)
                m.next = "OFFER"
            with m.State("OFFER"):
                m.d.comb += self.res.valid.eq(1)
                with m.If(self.res.ready):
                    m.next = "IDLE"
        return m


def _tree_levels(lanes):
    """The registered steps from a word's lanes to its best logit (and its probes' hits)."""
    return max(1, (lanes - 1).bit_length())


def _xorshift32(x):
    """:func:`golden.xorshift32` on a 32-bit value (combinational)."""
    x = x ^ (x << 13)[:32]
    x = x ^ (x >> 17)
    return x ^ (x << 5)[:32]


class _Pass(enum.Enum, shape=2):
    MAX = 0
    COUNT = 1
    SUM = 2
    PICK = 3


class TokenSampler(wiring.Component):
    """The on-chip choice of the next token, bit for bit :func:`tritium.sim.lmstep.choose_token`.

    Parameters
    ----------
    max_vocab : int
        The most logits one choice reads (2..256).
    addr_bits : int
        Width of a vector-memory address (1..16).
    lanes : int
        1, 2, 4 or 8 (at most ``2**addr_bits``): the elements of a vector-memory word (the
        vector unit's lanes). The max and count passes read whole words.

    Members
    -------
    seed : In(stream of 32 bits)
        Loads the xorshift32 state as given (the host sends :func:`tritium.sim.lmstep.rng_seed`
        of a request's seed, never 0; a state of 0 would stay 0, as in the spec). Taken whenever
        the sampler is not busy, also in the cycle a start is taken (that choice then uses it).
        The state persists from one choice to the next (one seed, then one start per token);
        after reset it is ``rng_seed(0)``. Only sampling steps it, once per choice.
    start : In(stream: ``base`` (``addr_bits``), ``vocab`` (``0..max_vocab``), ``inv_temperature``
        (16 bits, 0 = greedy), ``top_k`` (16 bits, 0 = all))
        One choice over the ``vocab`` logits (int32 Q16.16) at ``base .. base + vocab - 1``
        (addresses wrap at ``2**addr_bits``). Taken when not busy. ``vocab = 0`` is answered with
        token 0 at once, nothing read and the state unchanged.
    peek : Out(stream of an address)
        Read requests, one address per transfer: in the max and count passes the words that hold
        the logits (addresses multiples of ``lanes``), one every cycle the port takes it, with any
        number in flight; in the sum and pick passes each logit's address, the next only after
        the answer to the last one has been taken.
    word : In(stream of :func:`tritium.hw.vector.word_layout`)
        The answer to each request, in request order, any number (>= 1) of cycles after it:
        ``value`` (the sum and pick passes read it) and ``line`` (the max and count passes).
    token : Out(stream of ``range(max_vocab)``)
        The chosen id, relative to ``base``, one per start; held until taken.
    busy : Out(1)
        High from a start's transfer until its token's transfer.

    Timing. With each word taken ``L`` cycles after its request (``L = 2`` from
    :class:`~tritium.hw.vector.VectorUnit`, whose word leaves a register) and the token taken at once, a choice takes, from
    the start's transfer to the token's (``V = vocab``, ``W = bit_length(inv_temperature) + 4``
    the cycles of one weight, ``R = ceil((base % lanes + V) / lanes)`` the words that hold the
    logits, ``T`` the registered levels of the tree that finds a word's best logit: 1 up to two
    lanes, 2 at four, 3 at eight; :func:`choice_model` gives it exactly)::

        greedy:    R + L + 3 + T
        sampling:  R + L + 3 + T                 max pass (a word's lanes registered, the tree,
                                                 the running max), the search's end
                 + P (R + L + 3 + T)             P count passes (top-k only)
                 + V (L + 1) + W C               sum pass: C candidates
                 + 34                            the draw: a xorshift32 step, a 32-cycle product
                 + I (L + 1) + W C_I + 1         pick pass over the first I logits (the pick the
                                                 last), C_I candidates among them; the offer

    ``C`` is ``min(top_k, V)``, or ``V`` without top-k. ``P`` is 0 without top-k (``top_k`` 0, 1
    or ``>= V``), else at most ``(30 - floor(log2(inv_temperature))) // 2`` (11 at
    ``inv_temperature = 256``: one per two bits of the zero-weight bound ``Z``, see the module's
    docstring), fewer when a count equals ``top_k`` (on distinct logits the search typically stops
    once a probe falls in the gap between the k-th and the next logit).
    E.g. ``V = 256``, ``L = 2``, ``inv_temperature = 256`` (``W = 13``), four lanes from an
    aligned base (``R = 64``, ``T = 2``): greedy 71 cycles; no top-k at most 8,298; top-k 40 at most 3,463
    (11 count passes, reached only when more than ``top_k`` logits tie at the max).
    ``vocab = 0``: 1 cycle.
    """

    def __init__(self, *, max_vocab, addr_bits, lanes=1):
        self.max_vocab = _int_in(self, "max_vocab", max_vocab, 2, 256)
        self.addr_bits = _int_in(self, "addr_bits", addr_bits, 1, 16)
        if isinstance(lanes, bool) or lanes not in (1, 2, 4, 8) or lanes.bit_length() - 1 > addr_bits:
            raise rejected(self, TritiumValueError(f"TokenSampler: lanes = {lanes!r} must be 1, 2, 4 or 8, "
                                                   f"and at most 2**addr_bits"))
        self.lanes = lanes
        #: The ``word`` stream's payload: the requested element and the whole memory word (the
        #: ``lanes`` elements at ``addr - addr % lanes`` ...) that holds it.
        self.word_layout = word_layout(lanes)
        #: Width of the sum of the weights (at most ``max_vocab * 2**16``).
        self.sum_bits = (max_vocab << golden.FIX_FRAC).bit_length()
        self.start_layout = data.StructLayout({
            "base": addr_bits, "vocab": range(max_vocab + 1), "inv_temperature": _INV_BITS, "top_k": 16,
        })
        super().__init__({
            "seed": In(stream.Signature(32)),
            "start": In(stream.Signature(self.start_layout)),
            "peek": Out(stream.Signature(addr_bits)),
            "word": In(stream.Signature(self.word_layout)),
            "token": Out(stream.Signature(range(max_vocab))),
            "busy": Out(1),
        })
        #: The xorshift32 state (read by the tests; not a port).
        self.rng = Signal(32, init=lmstep.rng_seed(0))

    def elaborate(self, platform):
        m = Module()
        V = self.max_vocab
        m.submodules.weight = weight = ExpWeight()
        m.submodules.draw = draw = SerialMultiplier(a_width=self.sum_bits, b_width=32)
        rng = self.rng
        cmd = Signal(self.start_layout)
        kind = Signal(_Pass)
        L = self.lanes
        lb = L.bit_length() - 1
        idx = Signal(range(V + L + 1))             # the logit being read (sum, pick) or the word (max, count)
        req = Signal(range(V + L + 1))             # the next word to request (max and count passes)
        # the max and count passes read whole words: the first holds the logit at `base` in lane
        # `first` (the lanes before it and past the last logit are masked)
        first = Signal(max(1, lb))
        words, end = Signal(range(V + L + 1)), Signal(range(V + L + 1))
        zmax = Signal(signed(32))
        arg, tok = Signal(range(V)), Signal(range(V))
        # Every test is on d = max - z, through one subtractor and one comparison with `ref`.
        # The search for the threshold D: count(d <= hi) >= top_k (or hi = the zero-weight bound),
        # count(d <= lo - 1) = below < top_k; `ref` is the probe, then D
        span = range(PRODUCT_CLAMP + 1)
        lo, hi, ref = Signal(span), Signal(span), Signal(span)
        probes = [Signal(span, name=f"probe{j}") for j in range(3)]     # a count pass's three probes
        counts = [Signal(range(V + 1), name=f"count{j}") for j in range(3)]
        below = Signal(range(V + 1))
        filtering = Signal()                       # top-k in force: candidates d < D, and the first
        ties, ties_seen = Signal(range(V + 1)), Signal(range(V + 1))   # `ties` of d == D
        # the sum of the weights, then (after the draw) the running sum up to the pick
        acc, target = Signal(self.sum_bits), Signal(self.sum_bits)

        z = self.word.payload.value
        k = cmd.top_k
        d = Signal(signed(33))
        diff = Signal(signed(34))
        candidate = Signal()
        # `d - ref` and `d <= probe` as one comparison of z each (d - ref = (zmax - ref) - z): the
        # thresholds registered, ready before the first word of a pass comes (each pass starts a
        # cycle after SEARCH set its probes or `ref`, and a word comes a cycle after its request)
        t_ref = Signal(signed(34))
        t_probe = [Signal(signed(34), name=f"t_probe{j}") for j in range(3)]
        m.d.sync += [t_ref.eq(zmax - ref)] + [t.eq(zmax - pr) for t, pr in zip(t_probe, probes)]
        m.d.comb += [
            d.eq(zmax - z),
            diff.eq(t_ref - z),
            self.peek.payload.eq(cmd.base + idx),
            self.token.payload.eq(tok),
            candidate.eq(~filtering | (diff < 0) | ((diff == 0) & (ties_seen < ties))),
            weight.req.payload.d.eq(d),
            weight.req.payload.inv_temperature.eq(cmd.inv_temperature),
        ]
        # d >= 2**28 >> (bit_length(inv) - 1) >= 2**28 / inv has weight 0: the search stops there
        top = Signal(range(_INV_BITS + 1))
        for i in range(_INV_BITS):
            with m.If(cmd.inv_temperature[i]):
                m.d.comb += top.eq(i)
        zero_from = Signal(range(PRODUCT_CLAMP + 1))
        m.d.comb += zero_from.eq(Const(PRODUCT_CLAMP, _D_BITS) >> top)

        # the max and count passes' pipeline (see STREAM): w_* a word's lanes, b_* its best logit
        # (the lowest lane of the largest) and each probe's hits
        wbase = Cat(Const(0, lb), cmd.base[lb:]) if lb else cmd.base
        w_v, w_last, b_v, b_last, seen = Signal(), Signal(), Signal(), Signal(), Signal()
        w_line = [Signal(signed(32), name=f"w_line{k}") for k in range(L)]
        w_ok = Signal(L)
        w_pos = Signal(range(V + 2 * L))
        # the word's best by a tree over the lanes, one registered level a cycle (pairs in id order:
        # the later wins only when strictly greater); the probes' hits beside it
        best = [(w_ok[k], w_line[k], (w_pos + k - first)[:len(arg)]) for k in range(L)]
        hits = [Cat(*[w_ok[k] & (w_line[k] >= t) for k in range(L)]) for t in t_probe]
        m.d.sync += w_v.eq(0)             # (set while a word is taken, in STREAM)
        stage_v, stage_last = w_v, w_last
        for level in range(_tree_levels(L)):
            if len(best) > 1:
                nxt = []
                for x, y in zip(best[0::2], best[1::2]):
                    take_y = y[0] & (~x[0] | (y[1] > x[1]))
                    nxt.append((x[0] | y[0], Mux(take_y, y[1], x[1]), Mux(take_y, y[2], x[2])))
                best = nxt
            regs = [(Signal(name=f"b{level}_ok{i}"), Signal(signed(32), name=f"b{level}_z{i}"),
                     Signal(range(V), name=f"b{level}_id{i}")) for i in range(len(best))]
            hit_regs = [Signal(L, name=f"b{level}_hits{j}") for j in range(3)]
            nv, nl = Signal(name=f"b{level}_v"), Signal(name=f"b{level}_last")
            m.d.sync += [nv.eq(stage_v), nl.eq(stage_last)] + [h.eq(x) for h, x in zip(hit_regs, hits)]
            m.d.sync += [r.eq(x) for reg, b in zip(regs, best) for r, x in zip(reg, b)]
            best, hits, stage_v, stage_last = regs, hit_regs, nv, nl
        (b_ok, b_z, b_id), b_hits = best[0], hits
        m.d.comb += [b_v.eq(stage_v), b_last.eq(stage_last)]
        with m.If(b_v):
            with m.If(kind == _Pass.MAX):
                with m.If(b_ok & (~seen | (b_z > zmax))):
                    m.d.sync += [zmax.eq(b_z), arg.eq(b_id), seen.eq(1)]
            with m.Else():
                m.d.sync += [c.eq(c + sum(h[k] for k in range(L))) for c, h in zip(counts, b_hits)]

        def begin(pass_kind):
            m.d.sync += [kind.eq(pass_kind), idx.eq(0), req.eq(0), ties_seen.eq(0), seen.eq(0)]
            m.next = "STREAM" if pass_kind in (_Pass.MAX, _Pass.COUNT) else "READ"

        def advance():      # the sum and pick passes' next logit
            with m.If(idx + 1 == cmd.vocab):
                with m.If(kind == _Pass.SUM):
                    m.next = "DRAW"
                with m.Else():              # not reached: the last candidate's sum exceeds target
                    m.next = "OFFER"
            with m.Else():
                m.d.sync += idx.eq(idx + 1)
                m.next = "READ"

        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += [self.seed.ready.eq(1), self.start.ready.eq(1)]
                with m.If(self.seed.valid):
                    m.d.sync += rng.eq(self.seed.payload)
                with m.If(self.start.valid):
                    sp = self.start.payload
                    f0 = sp.base[:lb] if lb else Const(0, 1)
                    m.d.sync += [cmd.eq(sp), first.eq(f0), end.eq(f0 + sp.vocab),
                                 words.eq((f0 + sp.vocab + (L - 1)) >> lb)]
                    with m.If(self.start.payload.vocab == 0):
                        m.d.sync += tok.eq(0)
                        m.next = "OFFER"
                    with m.Else():
                        begin(_Pass.MAX)

            # -- max and count passes: a word requested every cycle, each taken as it comes; its
            # lanes registered (w_*), then the word's best logit and the probes' hits (b_*), then
            # the running max and the counts
            with m.State("STREAM"):
                m.d.comb += [self.peek.valid.eq(req != words), self.peek.payload.eq(wbase + (req << lb)),
                             self.word.ready.eq(1)]
                with m.If(self.peek.valid & self.peek.ready):
                    m.d.sync += req.eq(req + 1)
                with m.If(self.word.valid):
                    pos = idx << lb
                    m.d.sync += [idx.eq(idx + 1), w_v.eq(1), w_last.eq(idx + 1 == words), w_pos.eq(pos),
                                 w_ok.eq(Cat(*[(pos + k >= first) & (pos + k < end) for k in range(L)]))]
                    m.d.sync += [w.eq(self.word.payload.line[k]) for k, w in enumerate(w_line)]
                with m.If(b_v & b_last):
                    m.next = "MAX_END"
                    with m.If(kind == _Pass.COUNT):
                        m.next = "COUNT_END"

            # -- sum and pick passes: one logit at a time (a candidate's weight takes cycles) ---
            with m.State("READ"):
                m.d.comb += self.peek.valid.eq(1)
                with m.If(self.peek.ready):
                    m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += [self.word.ready.eq(weight.req.ready),
                             weight.req.valid.eq(self.word.valid & candidate)]
                with m.If(self.word.valid & weight.req.ready):
                    with m.If(diff == 0):       # (counted always, used when filtering)
                        m.d.sync += ties_seen.eq(ties_seen + 1)
                    with m.If(candidate):
                        m.next = "WEIGHT"
                    with m.Else():
                        advance()
            with m.State("WEIGHT"):
                m.d.comb += weight.res.ready.eq(1)
                with m.If(weight.res.valid):
                    m.d.sync += acc.eq(acc + weight.res.payload)
                    with m.If(kind == _Pass.SUM):
                        advance()
                    with m.Else():
                        with m.If(acc + weight.res.payload > target):
                            m.d.sync += tok.eq(idx)
                            m.next = "OFFER"
                        with m.Else():
                            advance()

            # -- between the passes --------------------------------------------------------------
            with m.State("MAX_END"):
                with m.If(cmd.inv_temperature == 0):
                    m.d.sync += tok.eq(arg)
                    m.next = "OFFER"
                with m.Else():
                    topk = (k != 0) & (k < cmd.vocab)
                    # top-1 needs no search: D = 0, the first max taken
                    m.d.sync += [filtering.eq(topk), lo.eq(0), hi.eq(Mux(topk & (k != 1), zero_from, 0)),
                                 below.eq(0)]
                    m.next = "SEARCH"
            with m.State("SEARCH"):
                with m.If(lo == hi):
                    m.d.sync += [ref.eq(lo), ties.eq(k - below), acc.eq(0)]
                    begin(_Pass.SUM)
                with m.Else():
                    # three probes, at a quarter, half and three quarters of lo .. hi - 1
                    span_q, span_h = ((hi - lo) >> 2)[:_D_BITS], ((hi - lo) >> 1)[:_D_BITS]
                    m.d.sync += [probes[0].eq(lo + span_q), probes[1].eq(lo + span_h),
                                 probes[2].eq(lo + span_h + span_q)] + [c.eq(0) for c in counts]
                    begin(_Pass.COUNT)
            with m.State("COUNT_END"):
                # the first probe whose count reaches top_k bounds the search; a count of exactly
                # top_k ends it (those d <= probe are the candidates: d < probe + 1, no ties)
                with m.If(counts[0] > k):
                    m.d.sync += hi.eq(probes[0])
                with m.Elif(counts[0] == k):
                    m.d.sync += [lo.eq(probes[0] + 1), hi.eq(probes[0] + 1), below.eq(counts[0])]
                with m.Elif(counts[1] > k):
                    m.d.sync += [lo.eq(probes[0] + 1), below.eq(counts[0]), hi.eq(probes[1])]
                with m.Elif(counts[1] == k):
                    m.d.sync += [lo.eq(probes[1] + 1), hi.eq(probes[1] + 1), below.eq(counts[1])]
                with m.Elif(counts[2] > k):
                    m.d.sync += [lo.eq(probes[1] + 1), below.eq(counts[1]), hi.eq(probes[2])]
                with m.Elif(counts[2] == k):
                    m.d.sync += [lo.eq(probes[2] + 1), hi.eq(probes[2] + 1), below.eq(counts[2])]
                with m.Else():
                    m.d.sync += [lo.eq(probes[2] + 1), below.eq(counts[2])]
                m.next = "SEARCH"
            with m.State("DRAW"):
                # one xorshift32 step; target = (state * sum) >> 32
                step = _xorshift32(rng)
                m.d.comb += [draw.req.valid.eq(1), draw.req.payload.a.eq(acc), draw.req.payload.b.eq(step)]
                with m.If(draw.req.ready):
                    m.d.sync += rng.eq(step)
                    m.next = "DRAW_WAIT"
            with m.State("DRAW_WAIT"):
                m.d.comb += draw.res.ready.eq(1)
                with m.If(draw.res.valid):
                    m.d.sync += [target.eq(draw.res.payload[32:]), acc.eq(0)]
                    begin(_Pass.PICK)

            with m.State("OFFER"):
                m.d.comb += self.token.valid.eq(1)
                with m.If(self.token.ready):
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m


def choice_model(logits, params, rng_state, *, latency=1, lanes=1, base=0):
    """:class:`TokenSampler`'s algorithm in plain Python: ``(token, new rng state, cycles,
    passes)`` for one choice over ``logits`` at ``base`` with :class:`tritium.sim.lmstep.SamplingParams`
    ``params`` by a sampler of ``lanes`` lanes. ``cycles`` runs from the start's transfer to the
    token's with every word arriving ``latency`` cycles after its request and the token taken at
    once (the docstring's formula, exactly); ``passes`` counts the top-k search's passes."""
    z = [int(v) for v in np.asarray(logits, np.int64).ravel()]
    V = len(z)
    if V == 0:
        return 0, rng_state, 1, 0
    words = -(-(base % lanes + V) // lanes)                        # a max or count pass's reads
    element = latency + 1                                          # a read in the sum and pick passes
    levels = _tree_levels(lanes)                                   # a word's lanes to its best
    cycles = words + latency + 2 + levels                          # max pass (pipelined reads), MAX_END
    zmax = max(z)
    if params.inv_temperature == 0:
        return z.index(zmax), rng_state, cycles + 1, 0             # OFFER
    inv, k = params.inv_temperature, params.top_k
    d = [zmax - v for v in z]
    filtering = 0 < k < V
    lo, hi, below, passes = 0, (PRODUCT_CLAMP >> (inv.bit_length() - 1) if filtering and k != 1 else 0), 0, 0
    while lo != hi:                                                # SEARCH, a count pass, COUNT_END
        span = hi - lo
        probes = (lo + (span >> 2), lo + (span >> 1), lo + (span >> 1) + (span >> 2))
        cycles += words + latency + 3 + levels
        passes += 1
        for probe in probes:                                       # three probes a pass
            count = sum(v <= probe for v in d)
            if count > k:
                hi = probe
                break
            if count == k:
                lo = hi = probe + 1
                below = count
                break
            lo, below = probe + 1, count
    cycles += 1                                                    # SEARCH: the sum pass begins
    ties = k - below
    weight = exp_weight_cycles(inv)

    def candidates():
        seen = 0
        for i, v in enumerate(d):
            yield i, not filtering or v < lo or (v == lo and seen < ties)
            seen += v == lo

    total = 0
    for i, take in candidates():
        cycles += element + (weight if take else 0)
        total += int(exp_weight(d[i], inv)) if take else 0
    state = golden.xorshift32(rng_state)
    target = (state * total) >> 32
    cycles += 1 + 32 + 1                                           # DRAW, the product, DRAW_WAIT
    run = 0
    for i, take in candidates():
        cycles += element + (weight if take else 0)
        if take:
            run += int(exp_weight(d[i], inv))
            if run > target:
                return i, state, cycles + 1, passes                # OFFER
    raise AssertionError("no pick: the weights' sum exceeds every target")
